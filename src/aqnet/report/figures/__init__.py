"""The report's figures (matplotlib, no pyplot state: each function builds and saves one figure).

File names are stable (the Snakemake report and the captions in ``workflow/report/`` refer to
them): see :data:`FIGURES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

FIGURES: dict[str, str] = {
    "val_loss": "val_loss.png",
    "alpha": "alpha.png",
    "rmse": "rmse_by_pollutant.png",
    "error_map": "error_map.png",
    "gain_by_elevation": "gain_by_elevation.png",
    "gain_by_region": "gain_by_region.png",
    "gates": "gates.png",
    "variants": "variants.png",
}
"""Figure key -> file name in the report folder."""

DPI = 110
BASELINE_COLOUR = "0.35"
FINETUNED_COLOUR = "tab:blue"
THRESHOLD_COLOUR = "tab:red"
STATUS_COLOURS = {"PASS": "#2e7d32", "FAIL": "#c62828", "MISSING": "#9e9e9e"}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def pct_label(value: float) -> str:
    """A signed percentage with enough digits to show small changes: ``+1.2%``, ``-0.034%``."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.1f}%" if abs(value) >= 1 else f"{value:+.2g}%"


def _robust_max(values: np.ndarray, q: float = 99.0) -> float:
    """The ``q``-th percentile of ``|values|`` over finite entries (1 when there is none)."""
    finite = np.abs(values[np.isfinite(values)])
    top = float(np.percentile(finite, q)) if finite.size else 0.0
    return top if top > 0 else (float(finite.max()) if finite.size and finite.max() > 0 else 1.0)


def _colours(n: int) -> list[Any]:
    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_val_loss(
    metrics: Mapping[str, pd.DataFrame],
    *,
    baseline_val_loss: float,
    threshold: float,
    out: Path,
) -> Path:
    """val_loss against step per variant with the baseline and threshold lines; train loss beside.

    Args:
        metrics: ``{variant: metrics DataFrame}`` (columns ``step``, ``val_loss``,
            ``train_loss``).
        baseline_val_loss: the baseline's validation loss (a horizontal line).
        threshold: the success threshold (a horizontal line).
        out: the PNG to write.
    """
    fig = Figure(figsize=(11, 4.2))
    ax_val, ax_train = fig.subplots(1, 2)
    for colour, (name, df) in zip(_colours(len(metrics)), metrics.items(), strict=True):
        val = df[df["val_loss"].notna()]
        ax_val.plot(val["step"], val["val_loss"], "o-", color=colour, ms=3, label=name)
        tr = df[df["train_loss"].notna()]
        ax_train.plot(tr["step"], tr["train_loss"], "-", color=colour, lw=1, label=name)
    ax_val.axhline(
        baseline_val_loss,
        color=BASELINE_COLOUR,
        ls="--",
        label=f"baseline val_loss {baseline_val_loss:.4f}",
    )
    if not np.isclose(threshold, baseline_val_loss):
        ax_val.axhline(
            threshold, color=THRESHOLD_COLOUR, ls=":", label=f"threshold {threshold:.4f}"
        )
    else:
        ax_val.plot([], [], color=THRESHOLD_COLOUR, ls=":", label="threshold = baseline val_loss")
    ax_val.set(xlabel="optimizer step", ylabel="val_loss (masked MSE, normalised)")
    ax_val.set_title("Validation loss of the fine-tune")
    ax_val.legend(fontsize=8)
    ax_train.set(xlabel="optimizer step", ylabel="train_loss (masked MSE, normalised)")
    ax_train.set_title("Training loss")
    ax_train.legend(fontsize=8)
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_alpha(
    metrics: Mapping[str, pd.DataFrame], alpha_cols: Mapping[str, Mapping[int, str]], *, out: Path
) -> Path:
    """``elevation_alpha`` of each TopoFlow block against step, per variant.

    Args:
        metrics: ``{variant: metrics DataFrame}``.
        alpha_cols: ``{variant: {block: column}}`` (``aqnet.report.inputs.alpha_columns``).
        out: the PNG to write.
    """
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    blocks = sorted({b for cols in alpha_cols.values() for b in cols})
    colours = dict(zip(blocks, _colours(len(blocks)), strict=True))
    drawn = 0
    for k, (name, df) in enumerate(metrics.items()):
        for block, col in alpha_cols.get(name, {}).items():
            rows = df[df[col].notna()]
            ax.plot(
                rows["step"],
                rows[col],
                styles[k % len(styles)],
                color=colours[block],
                label=f"{name}: block {block}",
            )
            drawn += 1
    ax.axhline(0.0, color="0.5", lw=0.8)
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no TopoFlow block in any variant (no alpha_block<i> column)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.legend(fontsize=8)
    ax.set(xlabel="optimizer step", ylabel="elevation_alpha")
    ax.set_title("Elevation-bias strength alpha per TopoFlow block (starts at 0)")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_rmse(table: pd.DataFrame, *, out: Path, title: str = "") -> Path:
    """Grouped bars: RMSE per lead time, baseline vs fine-tuned, one panel per pollutant.

    Args:
        table: :func:`aqnet.report.analysis.rmse_table`.
        out: the PNG to write.
        title: suptitle (e.g. the variant).
    """
    per_lead = table[table["lead_time_h"] != "all"]
    pollutants = list(dict.fromkeys(per_lead["pollutant"]))
    ncol = 3
    nrow = int(np.ceil(len(pollutants) / ncol))
    fig = Figure(figsize=(12, 3.3 * nrow))
    axes = np.atleast_1d(fig.subplots(nrow, ncol)).ravel()
    width = 0.38
    for ax, p in zip(axes, pollutants, strict=False):
        rows = per_lead[per_lead["pollutant"] == p]
        x = np.arange(len(rows))
        ax.bar(x - width / 2, rows["rmse_baseline"], width, color=BASELINE_COLOUR, label="baseline")
        ax.bar(
            x + width / 2, rows["rmse_finetuned"], width, color=FINETUNED_COLOUR, label="fine-tuned"
        )
        for xi, change, top in zip(
            x,
            rows["change_pct"],
            np.maximum(rows["rmse_baseline"], rows["rmse_finetuned"]),
            strict=True,
        ):
            ax.annotate(
                pct_label(change),
                (xi, top),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(x, [f"{int(h)} h" for h in rows["lead_time_h"]])
        ax.set_title(p)
        ax.set_ylabel(f"RMSE [{rows['units'].iloc[0]}]")
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(pollutants) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "RMSE per pollutant and lead time", y=1.0)
    fig.tight_layout()
    return _save(fig, out)


def _extent(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float, float, float]:
    dlon = float(lon[1] - lon[0]) if lon.size > 1 else 1.0
    dlat = float(lat[1] - lat[0]) if lat.size > 1 else 1.0
    return (
        float(lon[0] - dlon / 2),
        float(lon[-1] + dlon / 2),
        float(lat[0] - dlat / 2),
        float(lat[-1] + dlat / 2),
    )


def _terrain_contours(ax: Any, lon: np.ndarray, lat: np.ndarray, elevation_m: np.ndarray) -> None:
    if np.nanmax(elevation_m) - np.nanmin(elevation_m) <= 0:
        return
    levels = np.linspace(np.nanmin(elevation_m), np.nanmax(elevation_m), 7)[1:-1]
    cs = ax.contour(lon, lat, elevation_m, levels=levels, colors="k", linewidths=0.6, alpha=0.7)
    ax.clabel(cs, fmt="%.0f m", fontsize=6)


def plot_error_map(
    base_map: np.ndarray,
    ft_map: np.ndarray,
    *,
    lat: np.ndarray,
    lon: np.ndarray,
    elevation_m: np.ndarray,
    out: Path,
    title: str = "",
) -> Path:
    """Baseline error map and the error difference (fine-tuned - baseline) with terrain contours.

    Args:
        base_map: ``(H, W)`` baseline MSE per pixel (normalised), NaN outside the domain.
        ft_map: ``(H, W)`` fine-tuned MSE per pixel.
        lat: ``(H,)`` ascending; lon: ``(W,)`` ascending.
        elevation_m: ``(H, W)`` terrain height (contours).
        out: the PNG to write.
    """
    diff = ft_map - base_map
    extent = _extent(lat, lon)
    fig = Figure(figsize=(13, 4.4))
    ax_base, ax_diff = fig.subplots(1, 2)
    base_top = _robust_max(base_map)
    im = ax_base.imshow(
        base_map,
        origin="lower",
        extent=extent,
        cmap="viridis",
        aspect="auto",
        vmin=0.0,
        vmax=base_top,
    )
    fig.colorbar(im, ax=ax_base, label="MSE (normalised), baseline", extend="max")
    _terrain_contours(ax_base, lon, lat, elevation_m)
    ax_base.set_title("Baseline error (mean over pollutants, lead times, samples)")
    vmax = _robust_max(diff)
    im = ax_diff.imshow(
        diff,
        origin="lower",
        extent=extent,
        cmap="RdBu_r",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
        aspect="auto",
    )
    fig.colorbar(
        im, ax=ax_diff, label="MSE difference, fine-tuned - baseline (blue = better)", extend="both"
    )
    _terrain_contours(ax_diff, lon, lat, elevation_m)
    ax_diff.set_title("Error difference (fine-tuned - baseline)")
    for ax in (ax_base, ax_diff):
        ax.set(xlabel="longitude [deg E]", ylabel="latitude [deg N]")
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_gain_by_elevation(
    bands: pd.DataFrame, terrain: pd.DataFrame, *, out: Path, title: str = ""
) -> Path:
    """Gain (%) by elevation band, and by terrain class of the regions.

    Args:
        bands: :func:`aqnet.report.analysis.gain_by_elevation`.
        terrain: :func:`aqnet.report.analysis.gain_by_terrain`.
        out: the PNG to write.
    """
    fig = Figure(figsize=(11, 4))
    ax_b, ax_t = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    for ax, df, label_col, xlabel in (
        (ax_b, bands, "band", "elevation band (equal numbers of grid cells)"),
        (ax_t, terrain, "terrain", "terrain class of the region"),
    ):
        if df.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        x = np.arange(len(df))
        gains = df["gain_pct"].to_numpy(dtype=float)
        colours = [FINETUNED_COLOUR if g >= 0 else THRESHOLD_COLOUR for g in gains]
        ax.bar(x, gains, color=colours)
        count_col = "n_cells" if "n_cells" in df.columns else None
        for xi, g, n in zip(
            x, gains, df[count_col] if count_col else [None] * len(df), strict=True
        ):
            text = pct_label(g) + (f"\n{int(n)} cells" if n is not None else "")
            ax.annotate(
                text,
                (xi, g),
                ha="center",
                va="bottom" if g >= 0 else "top",
                fontsize=7,
                xytext=(0, 2 if g >= 0 else -2),
                textcoords="offset points",
            )
        ax.set_xticks(x, list(df[label_col]), rotation=20, ha="right")
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set(xlabel=xlabel, ylabel="gain [%] (baseline - fine-tuned) / baseline MSE")
        ax.margins(y=0.25)
        ax.grid(axis="y", alpha=0.3)
    ax_b.set_title("Gain by elevation band")
    ax_t.set_title("Gain by terrain class")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out)


def plot_gain_by_region(
    gain_grid: np.ndarray,
    *,
    lat: np.ndarray,
    lon: np.ndarray,
    elevation_m: np.ndarray,
    out: Path,
    title: str = "",
) -> Path:
    """Gain (%) per wind-scan region as a map, with terrain contours.

    Args:
        gain_grid: ``(Ry, Rx)`` gain per region (NaN outside the domain).
        lat, lon: the grid's cell centres, ``(H,)`` and ``(W,)``.
        elevation_m: ``(H, W)`` terrain height.
        out: the PNG to write.
    """
    extent = _extent(lat, lon)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    vmax = _robust_max(gain_grid, q=100.0)
    im = ax.imshow(
        gain_grid,
        origin="lower",
        extent=extent,
        cmap="RdBu",
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
        aspect="auto",
    )
    fig.colorbar(im, ax=ax, label="gain [%] (blue = fine-tune better)")
    _terrain_contours(ax, lon, lat, elevation_m)
    ry, rx = gain_grid.shape
    if ry * rx <= 64:
        x0, x1, y0, y1 = extent
        for r in range(ry):
            for c in range(rx):
                if np.isfinite(gain_grid[r, c]):
                    ax.text(
                        x0 + (c + 0.5) * (x1 - x0) / rx,
                        y0 + (r + 0.5) * (y1 - y0) / ry,
                        pct_label(gain_grid[r, c]),
                        ha="center",
                        va="center",
                        fontsize=7,
                    )
    ax.set(xlabel="longitude [deg E]", ylabel="latitude [deg N]")
    ax.set_title(title or "Gain per region")
    return _save(fig, out)


def plot_gates(rows: Sequence[Mapping[str, Any]], costs: pd.DataFrame, *, out: Path) -> Path:
    """Gate outcomes (a coloured table) and the projected vs measured fine-tune cost.

    Args:
        rows: :func:`aqnet.report.inputs.gate_rows`.
        costs: one row per variant with ``variant``, ``projected_gpu_hours``,
            ``measured_gpu_hours`` (NaN when unknown).
        out: the PNG to write.
    """
    n = len(rows)
    fig = Figure(figsize=(14, max(3.0, 0.42 * n + 1.4)))
    ax_t, ax_c = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3.2, 1]})
    ax_t.axis("off")
    cells = [[r["gate"], r["variant"], r["status"], _clip(str(r["detail"]), 95)] for r in rows]
    table = ax_t.table(
        cellText=cells,
        colLabels=["gate", "variant", "status", "detail"],
        colWidths=[0.17, 0.1, 0.08, 0.65],
        loc="upper left",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1.0, 1.3)
    for i, r in enumerate(rows, start=1):
        cell = table[i, 2]
        cell.set_facecolor(STATUS_COLOURS.get(str(r["status"]), "#9e9e9e"))
        cell.get_text().set_color("white")
        cell.get_text().set_fontweight("bold")
    ax_t.set_title("Gate outcomes", loc="left")

    x = np.arange(len(costs))
    width = 0.38
    proj = costs["projected_gpu_hours"].to_numpy(dtype=float)
    meas = costs["measured_gpu_hours"].to_numpy(dtype=float)
    ax_c.bar(x - width / 2, np.nan_to_num(proj), width, color="tab:orange", label="projected")
    ax_c.bar(x + width / 2, np.nan_to_num(meas), width, color=FINETUNED_COLOUR, label="measured")
    for xi, p, m in zip(x, proj, meas, strict=True):
        if np.isfinite(p) and np.isfinite(m) and p > 0:
            ax_c.annotate(
                pct_label(100 * (m - p) / p),
                (xi, max(p, m)),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
        for off, v in ((-width / 2, p), (width / 2, m)):
            if not np.isfinite(v):
                ax_c.text(xi + off, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax_c.set_xticks(x, list(costs["variant"]), rotation=20, ha="right")
    ax_c.set_ylabel("fine-tune cost [GPU-hours]")
    ax_c.set_title("Short-run projection vs full run")
    ax_c.legend(fontsize=8)
    ax_c.margins(y=0.2)
    ax_c.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def plot_variants(
    table: pd.DataFrame,
    rmse_change: pd.DataFrame,
    alphas: Mapping[str, Mapping[int, float]],
    *,
    baseline_loss: float,
    out: Path,
) -> Path:
    """Comparison across variants: loss with CIs, RMSE change per pollutant, alphas, GPU-hours.

    Args:
        table: one row per variant with ``variant``, ``eval_loss``, ``eval_loss_ci_low``,
            ``eval_loss_ci_high``, ``final_val_loss``, ``gpu_hours`` (measured, NaN if unknown).
        rmse_change: index = variant, columns = pollutants, values = RMSE change in % vs the
            baseline (negative = better).
        alphas: ``{variant: {block: final elevation_alpha}}``.
        baseline_loss: the baseline's mean loss on the evaluated samples (a line).
        out: the PNG to write.
    """
    fig = Figure(figsize=(13, 8.5))
    (ax_l, ax_r), (ax_a, ax_g) = fig.subplots(2, 2)
    names = list(table["variant"])
    x = np.arange(len(names))
    mean = table["eval_loss"].to_numpy(dtype=float)
    err = np.vstack(
        [mean - table["eval_loss_ci_low"].to_numpy(float), table["eval_loss_ci_high"] - mean]
    )
    ax_l.errorbar(x, mean, yerr=err, fmt="o", color=FINETUNED_COLOUR, capsize=4, label="evaluation")
    ax_l.plot(x, table["final_val_loss"], "s", color="tab:green", ms=5, label="final val_loss")
    ax_l.axhline(baseline_loss, color=BASELINE_COLOUR, ls="--", label="baseline (evaluation)")
    ax_l.set_xticks(x, names, rotation=20, ha="right")
    ax_l.set_ylabel("loss (masked MSE, normalised)")
    ax_l.set_title("Loss with block-bootstrap CI")
    ax_l.legend(fontsize=8)

    pollutants = list(rmse_change.columns)
    width = 0.8 / max(1, len(names))
    xp = np.arange(len(pollutants))
    for k, (name, colour) in enumerate(zip(names, _colours(len(names)), strict=True)):
        ax_r.bar(
            xp - 0.4 + width * (k + 0.5),
            rmse_change.loc[name].to_numpy(float),
            width,
            color=colour,
            label=name,
        )
    ax_r.axhline(0.0, color="0.4", lw=0.8)
    ax_r.set_xticks(xp, pollutants)
    ax_r.set_ylabel("RMSE change vs baseline [%] (negative = better)")
    ax_r.set_title("RMSE change per pollutant (all lead times)")
    ax_r.legend(fontsize=8)

    blocks = sorted({b for a in alphas.values() for b in a})
    if blocks:
        width_a = 0.8 / len(blocks)
        for k, (block, colour) in enumerate(zip(blocks, _colours(len(blocks)), strict=True)):
            values = [alphas.get(n, {}).get(block, np.nan) for n in names]
            ax_a.bar(
                x - 0.4 + width_a * (k + 0.5), values, width_a, color=colour, label=f"block {block}"
            )
        ax_a.legend(fontsize=8)
    else:
        ax_a.text(0.5, 0.5, "no TopoFlow block", ha="center", va="center", transform=ax_a.transAxes)
    ax_a.axhline(0.0, color="0.4", lw=0.8)
    ax_a.set_xticks(x, names, rotation=20, ha="right")
    ax_a.set_ylabel("final elevation_alpha")
    ax_a.set_title("Learned alpha per TopoFlow block")

    gpu = table["gpu_hours"].to_numpy(dtype=float)
    ax_g.bar(x, np.nan_to_num(gpu), color="tab:purple")
    for xi, v in zip(x, gpu, strict=True):
        ax_g.annotate(
            "n/a" if not np.isfinite(v) else f"{v:.3g}",
            (xi, np.nan_to_num(v)),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax_g.set_xticks(x, names, rotation=20, ha="right")
    ax_g.set_ylabel("fine-tune cost [GPU-hours, measured]")
    ax_g.set_title("Cost")
    ax_g.margins(y=0.2)
    for ax in (ax_l, ax_r, ax_a, ax_g):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


@dataclass(frozen=True)
class FigureData:
    """Everything the report's figures show (computed by :func:`aqnet.report.build.build_report`).

    Attributes:
        metrics: ``{variant: metrics.csv DataFrame}``.
        alpha_cols: ``{variant: {block: alpha column}}``.
        baseline_val_loss: the baseline's recorded validation loss.
        threshold: the success threshold.
        rmse: :func:`aqnet.report.analysis.rmse_table` of the primary variant.
        base_map, ft_map: ``(H, W)`` per-pixel MSE of the primary variant's two models.
        lat, lon: ``(H,)``, ``(W,)`` cell centres; elevation_m: ``(H, W)`` terrain height.
        bands, terrain: gain by elevation band and by terrain class.
        gain_grid: ``(Ry, Rx)`` gain per region; region_cells: region size in cells.
        gates: :func:`aqnet.report.inputs.gate_rows`.
        costs: per variant ``variant``, ``projected_gpu_hours``, ``measured_gpu_hours``.
        comparison: the variants table (``variant``, ``eval_loss`` and its CI,
            ``final_val_loss``, ``gpu_hours``).
        rmse_change: RMSE change (%) per variant (rows) and pollutant (columns).
        alphas: ``{variant: {block: final alpha}}``.
        baseline_eval_loss: the baseline's mean loss on the evaluated samples.
        tag: names the primary variant in titles.
    """

    metrics: Mapping[str, pd.DataFrame]
    alpha_cols: Mapping[str, Mapping[int, str]]
    baseline_val_loss: float
    threshold: float
    rmse: pd.DataFrame
    base_map: np.ndarray
    ft_map: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    elevation_m: np.ndarray
    bands: pd.DataFrame
    terrain: pd.DataFrame
    gain_grid: np.ndarray
    region_cells: tuple[int, int]
    gates: Sequence[Mapping[str, Any]]
    costs: pd.DataFrame
    comparison: pd.DataFrame
    rmse_change: pd.DataFrame
    alphas: Mapping[str, Mapping[int, float]]
    baseline_eval_loss: float
    tag: str


def make_figures(data: FigureData, out_dir: str | Path) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` into ``out_dir``; returns ``{key: path}``."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in FIGURES.items()}
    plot_val_loss(
        data.metrics,
        baseline_val_loss=data.baseline_val_loss,
        threshold=data.threshold,
        out=paths["val_loss"],
    )
    plot_alpha(data.metrics, data.alpha_cols, out=paths["alpha"])
    plot_rmse(data.rmse, out=paths["rmse"], title=f"RMSE per pollutant and lead time ({data.tag})")
    plot_error_map(
        data.base_map,
        data.ft_map,
        lat=data.lat,
        lon=data.lon,
        elevation_m=data.elevation_m,
        out=paths["error_map"],
        title=data.tag,
    )
    plot_gain_by_elevation(data.bands, data.terrain, out=paths["gain_by_elevation"], title=data.tag)
    rows, cols = data.region_cells
    plot_gain_by_region(
        data.gain_grid,
        lat=data.lat,
        lon=data.lon,
        elevation_m=data.elevation_m,
        out=paths["gain_by_region"],
        title=f"Gain per region of {rows}x{cols} cells ({data.tag})",
    )
    plot_gates(data.gates, data.costs, out=paths["gates"])
    plot_variants(
        data.comparison,
        data.rmse_change,
        data.alphas,
        baseline_loss=data.baseline_eval_loss,
        out=paths["variants"],
    )
    return paths

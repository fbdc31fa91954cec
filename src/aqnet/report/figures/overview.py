"""Overview figures: the gates and the cost, and the comparison across variants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aqnet.report.figures.style import (
    BASELINE_COLOUR,
    FINETUNED_COLOUR,
    STATUS_COLOURS,
    clip,
    palette,
    pct_label,
    save,
)


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
    cells = [[r["gate"], r["variant"], r["status"], clip(str(r["detail"]), 95)] for r in rows]
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
    return save(fig, out)


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
    for k, (name, colour) in enumerate(zip(names, palette(len(names)), strict=True)):
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
        for k, (block, colour) in enumerate(zip(blocks, palette(len(blocks)), strict=True)):
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
    return save(fig, out)

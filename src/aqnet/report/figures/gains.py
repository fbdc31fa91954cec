"""Where the fine-tune gains: by elevation band, by terrain class and per region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aqnet.report.figures.style import (
    FINETUNED_COLOUR,
    THRESHOLD_COLOUR,
    diverging_map,
    label_tiles,
    map_extent,
    pct_label,
    robust_max,
    save,
    terrain_contours,
)


def plot_gain_by_elevation(
    bands: pd.DataFrame, terrain: pd.DataFrame, *, out: Path, title: str = ""
) -> Path:
    """Gain (%) by elevation band, and by terrain class of the regions.

    Args:
        bands: :func:`aqnet.report.regions.gain_by_elevation`.
        terrain: :func:`aqnet.report.regions.gain_by_terrain`.
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
    return save(fig, out)


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
    extent = map_extent(lat, lon)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    im = diverging_map(ax, gain_grid, extent, vmax=robust_max(gain_grid, q=100.0), cmap="RdBu")
    fig.colorbar(im, ax=ax, label="gain [%] (blue = fine-tune better)")
    terrain_contours(ax, lon, lat, elevation_m)
    labels = np.vectorize(lambda g: pct_label(g) if np.isfinite(g) else "", otypes=[object])
    label_tiles(ax, extent, labels(gain_grid))
    ax.set(xlabel="longitude [deg E]", ylabel="latitude [deg N]")
    ax.set_title(title or "Gain per region")
    return save(fig, out)


def significant_gain(gain_pct: np.ndarray, significant: np.ndarray) -> np.ma.MaskedArray:
    """The array the significance map draws: the gain where significant, masked elsewhere.

    Args:
        gain_pct: ``(Ry, Rx)`` gain per tile (NaN where not tested).
        significant: ``(Ry, Rx)`` bool, significant after the correction.
    """
    gain = np.asarray(gain_pct, dtype=np.float64)
    keep = np.asarray(significant, dtype=bool) & np.isfinite(gain)
    return np.ma.masked_array(gain, mask=~keep)


def plot_significance_map(
    gain_pct: np.ndarray,
    significant: np.ndarray,
    *,
    lat: np.ndarray,
    lon: np.ndarray,
    elevation_m: np.ndarray,
    out: Path,
    title: str = "",
    note: str = "",
) -> Path:
    """Where the gain over the control is significant: tiles coloured by gain, the rest grey.

    Args:
        gain_pct: ``(Ry, Rx)`` gain per tile, NaN where not tested (outside the domain).
        significant: ``(Ry, Rx)`` bool, significant after the multiple-testing correction.
        lat, lon: the grid's cell centres, ``(H,)`` and ``(W,)``.
        elevation_m: ``(H, W)`` terrain height (contours).
        out: the PNG to write.
        title: the axes title; note: a line under the map (the test and its correction).
    """
    box = map_extent(lat, lon)
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.subplots()
    gain = np.asarray(gain_pct, dtype=np.float64)
    tested = np.isfinite(gain)
    # not significant: light grey; not tested: white (the figure's background)
    ax.imshow(
        np.ma.masked_array(np.ones_like(gain), mask=~tested),
        origin="lower",
        extent=box,
        cmap="Greys",
        vmin=0.0,
        vmax=5.0,
        aspect="auto",
    )
    shown = significant_gain(gain, significant)
    im = diverging_map(ax, shown, box, vmax=robust_max(gain, q=100.0), cmap="RdBu")
    fig.colorbar(im, ax=ax, label="gain over the control [%] (blue = better), significant tiles")
    terrain_contours(ax, lon, lat, elevation_m)
    labels = np.empty(gain.shape, dtype=object)
    for r, c in zip(*np.nonzero(tested), strict=True):
        labels[r, c] = pct_label(gain[r, c]) + ("*" if significant[r, c] else "")
    label_tiles(ax, box, labels, np.where(significant, "white", "black"))
    ax.set(xlabel="longitude [deg E]", ylabel="latitude [deg N]")
    ax.set_title(title or "Where the gain over the control is significant")
    if note:
        ax.text(0.0, -0.16, note, transform=ax.transAxes, fontsize=7, va="top", wrap=True)
    return save(fig, out)

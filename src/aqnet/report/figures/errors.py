"""Error figures: RMSE per pollutant and lead time, and the error maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from aqnet.report.figures.style import (
    BASELINE_COLOUR,
    FINETUNED_COLOUR,
    diverging_map,
    map_extent,
    pct_label,
    robust_max,
    save,
    terrain_contours,
)


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
    return save(fig, out)


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
    extent = map_extent(lat, lon)
    fig = Figure(figsize=(13, 4.4))
    ax_base, ax_diff = fig.subplots(1, 2)
    base_top = robust_max(base_map)
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
    terrain_contours(ax_base, lon, lat, elevation_m)
    ax_base.set_title("Baseline error (mean over pollutants, lead times, samples)")
    im = diverging_map(ax_diff, diff, extent, vmax=robust_max(diff), cmap="RdBu_r")
    fig.colorbar(
        im, ax=ax_diff, label="MSE difference, fine-tuned - baseline (blue = better)", extend="both"
    )
    terrain_contours(ax_diff, lon, lat, elevation_m)
    ax_diff.set_title("Error difference (fine-tuned - baseline)")
    for ax in (ax_base, ax_diff):
        ax.set(xlabel="longitude [deg E]", ylabel="latitude [deg N]")
    if title:
        fig.suptitle(title)
    return save(fig, out)

"""The report's figures (matplotlib, no pyplot state: each function builds and saves one figure).

File names are stable (the Snakemake report and the captions in ``workflow/report/`` refer to
them): see :data:`FIGURES`. One module per family of figures:
:mod:`~aqnet.report.figures.training` (loss and alpha against step, the seed spread),
:mod:`~aqnet.report.figures.errors` (RMSE, error maps), :mod:`~aqnet.report.figures.gains` (gain by
elevation, terrain class and region; where the gain over the control is significant) and
:mod:`~aqnet.report.figures.overview` (gates and cost, the variants); what they share is
:mod:`~aqnet.report.figures.style`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqnet.report.figures.errors import plot_error_map, plot_rmse
from aqnet.report.figures.gains import (
    plot_gain_by_elevation,
    plot_gain_by_region,
    plot_significance_map,
)
from aqnet.report.figures.overview import plot_gates, plot_variants
from aqnet.report.figures.style import pct_label
from aqnet.report.figures.training import plot_alpha, plot_val_loss
from aqnet.report.significance import SignificanceMap

FIGURES: dict[str, str] = {
    "val_loss": "val_loss.png",
    "alpha": "alpha.png",
    "rmse": "rmse_by_pollutant.png",
    "error_map": "error_map.png",
    "gain_by_elevation": "gain_by_elevation.png",
    "gain_by_region": "gain_by_region.png",
    "significance_map": "gain_significance.png",
    "gates": "gates.png",
    "variants": "variants.png",
}
"""Figure key -> file name in the report folder."""

__all__ = [
    "FIGURES",
    "FigureData",
    "make_figures",
    "pct_label",
    "plot_alpha",
    "plot_error_map",
    "plot_gain_by_elevation",
    "plot_gain_by_region",
    "plot_gates",
    "plot_rmse",
    "plot_significance_map",
    "plot_val_loss",
    "plot_variants",
]


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
        significance: per-tile tests of the primary variant against the control
            (:func:`aqnet.report.significance.significance_map`); ``None`` when not tested.
        runs: ``{variant: every seed's metrics}`` (``finetune.seeds``): the training figures
            show the seeds' mean and min-max band.
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
    significance: SignificanceMap | None = None
    runs: Mapping[str, Sequence[pd.DataFrame]] = field(default_factory=dict)


def make_figures(data: FigureData, out_dir: str | Path) -> dict[str, Path]:
    """Write every figure of :data:`FIGURES` into ``out_dir``; returns ``{key: path}``."""
    out_dir = Path(out_dir)
    paths = {key: out_dir / name for key, name in FIGURES.items()}
    plot_val_loss(
        data.metrics,
        baseline_val_loss=data.baseline_val_loss,
        threshold=data.threshold,
        out=paths["val_loss"],
        runs=data.runs,
    )
    plot_alpha(data.metrics, data.alpha_cols, out=paths["alpha"], runs=data.runs)
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
    _plot_significance(data, paths["significance_map"])
    plot_gates(data.gates, data.costs, out=paths["gates"])
    plot_variants(
        data.comparison,
        data.rmse_change,
        data.alphas,
        baseline_loss=data.baseline_eval_loss,
        out=paths["variants"],
    )
    return paths


def _plot_significance(data: FigureData, out: Path) -> Path:
    """The significance map of ``data.significance``, or an empty one that says why."""
    sig = data.significance
    rows, cols = data.region_cells
    if sig is None:
        ry, rx = data.elevation_m.shape[0] // rows, data.elevation_m.shape[1] // cols
        empty = np.full((max(ry, 1), max(rx, 1)), np.nan)
        return plot_significance_map(
            empty,
            np.zeros(empty.shape, dtype=bool),
            lat=data.lat,
            lon=data.lon,
            elevation_m=data.elevation_m,
            out=out,
            title=f"Significant gain over the control ({data.tag}): not tested",
            note="No control arm, or evaluations without per-tile errors (tile_mse).",
        )
    return plot_significance_map(
        sig.gain_pct,
        sig.significant,
        lat=data.lat,
        lon=data.lon,
        elevation_m=data.elevation_m,
        out=out,
        title=f"{sig.new_name} vs {sig.ref_name}: significant gain per tile of {rows}x{cols} cells",
        note=(
            f"{sig.n_significant} of {sig.n_tested} tiles significant (coloured, *) at a "
            f"family-wise {sig.alpha:g} after {sig.correction}'s correction over the "
            f"{sig.n_tested} tiles; grey: not significant; white: not tested."
        ),
    )

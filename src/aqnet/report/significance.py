"""Where the gain over the control is significant: a calibrated paired test per wind-scan tile.

The evaluation's ``tile_mse`` holds each sample's masked MSE over every tile of ``region_cells``
grid cells (the wind-scan regions). Per tile, the variant's per-sample loss (mean over lead
times) is tested against the control's on the forecast start times both hold, with
:func:`aqnet.report.calibrated.calibrated_test`; Holm's correction runs over all tested tiles
(one family), so a tile marked significant on the map keeps the family-wise error rate at
``report.significance``. Tiles outside the domain (nothing scored) are not tested, nor are tiles
whose days make fewer than 2 blocks (:attr:`~aqnet.report.calibrated.CalibratedTest.testable`):
they cannot reject, stay out of Holm's family and are drawn as not tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqnet.report.analysis import BASELINE, FINETUNED, min_block_days
from aqnet.report.breakdown import column_tests, per_sample_table
from aqnet.report.holm import holm_where

CORRECTION = "Holm"
"""The multiple-testing correction across the tiles."""


@dataclass(frozen=True)
class SignificanceMap:
    """Per-tile tests of ``new`` against ``ref`` and the grids the map shows.

    Attributes:
        table: one row per tested tile: ``tile, row, col, n_samples, block_days, mean_ref,
            mean_new, gain_pct`` (``100 (ref - new) / ref``), ``ci_low, ci_high`` (of the mean
            loss difference new - ref), ``p_value, p_holm, significant``.
        gain_pct: ``(Ry, Rx)`` gain per tile, NaN where not tested.
        significant: ``(Ry, Rx)`` bool, True where the Holm-adjusted p is below ``alpha``.
        alpha: the family-wise significance level.
        ref_name, new_name: the compared models.
        correction: the multiple-testing correction (:data:`CORRECTION`).
    """

    table: pd.DataFrame
    gain_pct: np.ndarray
    significant: np.ndarray
    alpha: float
    ref_name: str
    new_name: str
    correction: str = CORRECTION

    @property
    def n_tested(self) -> int:
        """Tiles with a test (at least 2 blocks); the others are drawn as not tested."""
        return int(self.table["testable"].sum()) if len(self.table) else 0

    @property
    def n_significant(self) -> int:
        return int(self.significant.sum())


def significance_map(
    ev_new: xr.Dataset,
    report_cfg: Mapping[str, Any],
    *,
    ev_ref: xr.Dataset | None = None,
    ref_name: str,
    new_name: str,
    grid_shape: tuple[int, int],
) -> SignificanceMap | None:
    """Test ``new`` against ``ref`` in every wind-scan tile (module docstring).

    Args:
        ev_new: the variant's evaluation (its fine-tune is ``new``); must hold ``tile_mse``.
        report_cfg: the ``report`` section (``significance``, ``block_hours``).
        ev_ref: the control's evaluation (its fine-tune is ``ref``); ``None``: ``ref`` is the
            baseline of ``ev_new``.
        ref_name, new_name: names for the table.
        grid_shape: ``(H, W)`` of the evaluated grid (the tiles are ``region_cells`` of it).

    Returns:
        The map, or ``None`` when an evaluation holds no ``tile_mse`` (written before it).
    """
    if "tile_mse" not in ev_new or (ev_ref is not None and "tile_mse" not in ev_ref):
        return None
    rows, cols = (int(c) for c in np.atleast_1d(ev_new.attrs["region_cells"]))
    h, w = (int(s) for s in grid_shape)
    ry, rx = h // rows, w // cols
    if ry * rx != ev_new.sizes["tile"]:
        raise ValueError(
            f"significance_map: {ev_new.sizes['tile']} tiles in the evaluation, but tiles of "
            f"{rows}x{cols} cells cut the {h}x{w} grid into {ry}x{rx}"
        )
    alpha = float(report_cfg["significance"])
    min_days = min_block_days(ev_new, report_cfg)
    new = per_sample_table(ev_new, FINETUNED, "lead_time", "tile_mse")
    ref = per_sample_table(
        ev_new if ev_ref is None else ev_ref,
        BASELINE if ev_ref is None else FINETUNED,
        "lead_time",
        "tile_mse",
    )
    records: list[dict[str, Any]] = []
    for key, _, t in column_tests(
        ref, new, min_block_days=min_days, alpha=alpha, ref_name=ref_name, new_name=new_name
    ):
        tile = int(key)
        records.append(
            {
                "tile": tile,
                "row": tile // rx,
                "col": tile % rx,
                "n_samples": t.n_samples,
                "block_days": t.block_days,
                "mean_ref": t.mean_ref,
                "mean_new": t.mean_new,
                "gain_pct": -100.0 * t.rel_diff,
                "ci_low": t.ci_low,
                "ci_high": t.ci_high,
                "p_value": t.p_value,
                "testable": t.testable,
            }
        )
    gain = np.full((ry, rx), np.nan)  # NaN: not tested (no data, or fewer than 2 blocks)
    significant = np.zeros((ry, rx), dtype=bool)
    adjusted = holm_where([r["p_value"] for r in records], [r["testable"] for r in records])
    for r, p in zip(records, adjusted, strict=True):
        r["p_holm"] = float(p)
        r["significant"] = bool(p < alpha)
        if r["testable"]:
            gain[r["row"], r["col"]] = r["gain_pct"]
            significant[r["row"], r["col"]] = r["significant"]
    return SignificanceMap(
        table=pd.DataFrame(records),
        gain_pct=gain,
        significant=significant,
        alpha=alpha,
        ref_name=ref_name,
        new_name=new_name,
    )

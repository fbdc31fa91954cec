"""The verdict's comparison broken down by lead time, by pollutant and by named region (basin,
plateau, plain, mountain: :func:`aqnet.report.regions.named_region_codes`), each a calibrated
paired test with its confidence interval, Holm-adjusted within its family (the lead times; the
pollutants; the regions), with the RMSE in physical units beside the published figure.

The per-sample loss of one lead time is the sample's masked MSE at that lead averaged over the
pollutants; of one pollutant, averaged over the lead times (:mod:`aqnet.report.analysis`'s
conventions). The two models compared are the fine-tunes of two evaluations (a variant against
its control) on the forecast start times both hold, or an evaluation's fine-tune against its own
baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqnet.report.analysis import BASELINE, FINETUNED, min_block_days
from aqnet.report.calibrated import calibrated_test
from aqnet.report.holm import holm_where

PUBLISHED_RMSE: dict[str, tuple[float, str]] = {"pm25": (9.71, "ug m-3")}
"""RMSE the study reports for the TopoFlow model, by pollutant (value, units)."""


def per_sample_table(ev: xr.Dataset, model: str, dim_mean: str, var: str = "mse") -> pd.DataFrame:
    """``(init_time x key)`` per-sample loss of ``model`` in ``var``, averaged over ``dim_mean``."""
    mse = ev[var].sel(model=model)  # (sample, lead_time, pollutant | region)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        table = mse.mean(dim_mean, skipna=True)  # (sample, key)
    key = next(d for d in mse.dims if d not in ("sample", dim_mean))
    frame = pd.DataFrame(
        table.transpose("sample", key).values,
        index=pd.DatetimeIndex(ev["init_time"].values),
        columns=[str(k) for k in ev[key].values],
    )
    return frame


def _rmse(ev: xr.Dataset, model: str, init_times: pd.DatetimeIndex) -> dict[str, float]:
    """RMSE per pollutant in physical units over ``init_times`` and every lead time."""
    sel = np.isin(ev["init_time"].values, init_times.values)
    sq = ev["rmse_phys"].sel(model=model).isel(sample=np.flatnonzero(sel)) ** 2
    out = np.sqrt(sq.mean(("sample", "lead_time"), skipna=True))
    return {str(p): float(out.sel(pollutant=p)) for p in ev["pollutant"].values}


def column_tests(
    ref: pd.DataFrame,
    new: pd.DataFrame,
    *,
    min_block_days: float,
    alpha: float,
    ref_name: str,
    new_name: str,
) -> Iterator[tuple[Any, pd.DataFrame, Any]]:
    """The calibrated paired test (:func:`aqnet.report.calibrated.calibrated_test`) of each column
    of ``new`` against the same column of ``ref``.

    Args:
        ref, new: per-sample tables (rows: samples indexed by time, the same in both where they
            overlap; columns: a lead time, a pollutant, a region, a tile).

    Yields:
        ``(column, both, test)``: ``both`` the samples where both are finite (columns ``ref``,
        ``new``); a column with fewer than 2 such samples is skipped.
    """
    ref, new = ref.align(new, join="inner", axis=0)
    for key in new.columns:
        both = pd.concat({"ref": ref[key], "new": new[key]}, axis=1).dropna()
        if len(both) < 2:
            continue
        test = calibrated_test(
            both["ref"].to_numpy(),
            both["new"].to_numpy(),
            both.index.to_numpy(),
            min_block_days=min_block_days,
            alpha=alpha,
            ref_name=ref_name,
            new_name=new_name,
        )
        yield key, both, test


def breakdown_tests(
    ev_new: xr.Dataset,
    report_cfg: Mapping[str, Any],
    *,
    ev_ref: xr.Dataset | None = None,
    ref_name: str,
    new_name: str,
) -> pd.DataFrame:
    """Paired tests of ``new`` against ``ref`` per lead time and per pollutant (module docstring).

    Args:
        ev_new: the evaluation of the variant (its fine-tune is ``new``).
        report_cfg: the ``report`` section (``significance``, ``block_hours``).
        ev_ref: the control's evaluation (its fine-tune is ``ref``); ``None``: ``ref`` is the
            baseline of ``ev_new``.
        ref_name, new_name: names for the table.

    Returns:
        One row per lead time, per pollutant, then per named region (when the evaluation holds
        ``region_mse``): ``family`` (``lead_time_h`` / ``pollutant`` / ``region``),
        ``key``, ``n_samples``, ``block_days``, ``mean_ref``, ``mean_new``, ``mean_diff``,
        ``change_pct``, ``ci_low``, ``ci_high``, ``p_value``, ``testable`` (false: fewer than 2
        blocks, so no test; p = 1, an unbounded CI, outside Holm's family), ``p_holm``,
        ``significant``, and
        for pollutants ``units``, ``rmse_ref``, ``rmse_new`` (physical units, test year) and
        ``published_rmse`` (NaN where the study gives none).
    """
    alpha = float(report_cfg["significance"])
    min_days = min_block_days(ev_new, report_cfg)
    rows: list[dict[str, Any]] = []
    units = {
        str(p): str(u)
        for p, u in zip(ev_new["pollutant"].values, ev_new["units"].values, strict=True)
    }
    families = [("lead_time_h", "pollutant", "mse"), ("pollutant", "lead_time", "mse")]
    if "region_mse" in ev_new and (ev_ref is None or "region_mse" in ev_ref):
        families.append(("region", "lead_time", "region_mse"))
    for family, dim_mean, var in families:
        new = per_sample_table(ev_new, FINETUNED, dim_mean, var)
        if ev_ref is None:
            ref = per_sample_table(ev_new, BASELINE, dim_mean, var)
        else:
            ref = per_sample_table(ev_ref, FINETUNED, dim_mean, var)
        family_rows = []
        for key, both, t in column_tests(
            ref, new, min_block_days=min_days, alpha=alpha, ref_name=ref_name, new_name=new_name
        ):
            row: dict[str, Any] = {
                "family": family,
                "key": key,
                "n_samples": t.n_samples,
                "block_days": t.block_days,
                "mean_ref": t.mean_ref,
                "mean_new": t.mean_new,
                "mean_diff": t.mean_diff,
                "change_pct": 100.0 * t.rel_diff,
                "ci_low": t.ci_low,
                "ci_high": t.ci_high,
                "p_value": t.p_value,
                "testable": t.testable,
            }
            if family == "pollutant":
                times = pd.DatetimeIndex(both.index)
                ref_ev, ref_model = (ev_new, BASELINE) if ev_ref is None else (ev_ref, FINETUNED)
                row["units"] = units[key]
                row["rmse_ref"] = _rmse(ref_ev, ref_model, times)[key]
                row["rmse_new"] = _rmse(ev_new, FINETUNED, times)[key]
                published = PUBLISHED_RMSE.get(key)
                row["published_rmse"] = published[0] if published else float("nan")
            family_rows.append(row)
        adjusted = holm_where(
            [r["p_value"] for r in family_rows], [r["testable"] for r in family_rows]
        )
        for r, p in zip(family_rows, adjusted, strict=True):
            r["p_holm"] = float(p)
            r["significant"] = bool(p < alpha)
        rows.extend(family_rows)
    return pd.DataFrame(rows)

"""Tables computed from ``evaluation.nc`` files: per-sample losses, the paired tests, RMSE and
error maps (the gains over the terrain are in :mod:`aqnet.report.regions`).

The layout of ``evaluation.nc`` is documented in :mod:`aqnet.report.evaluate`. Conventions here:

* the *loss* of a sample is its masked MSE in normalised units averaged over pollutants and lead
  times (what ``val_loss`` measures);
* an *RMSE* over a set of samples is ``sqrt(mean(rmse_phys ** 2))`` in the pollutant's physical
  units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from aqnet.report.calibrated import CalibratedTest, calibrated_test, min_block_days_for
from aqnet.report.stats import PairedTest, block_bootstrap_mean_ci, block_ids, paired_test

BASELINE = "baseline"
FINETUNED = "finetuned"
MODELS: tuple[str, str] = (BASELINE, FINETUNED)


def check_evaluation(ev: xr.Dataset, *, source: str = "evaluation") -> None:
    """Raise ``ValueError`` naming ``source`` when ``ev`` lacks what the report needs."""
    needed_vars = ("mse", "rmse_phys", "sq_err_map")
    needed_coords = ("model", "init_time", "lead_time", "pollutant", "units", "lat", "lon")
    missing = [v for v in needed_vars if v not in ev.data_vars]
    missing += [c for c in needed_coords if c not in ev.coords]
    missing += [f"attribute {a}" for a in ("region_cells",) if a not in ev.attrs]
    if missing:
        raise ValueError(f"{source}: not an aqnet evaluation file, it lacks {missing}")
    models = [str(m) for m in ev["model"].values]
    if sorted(models) != sorted(MODELS):
        raise ValueError(f"{source}: model coordinate is {models}, expected {list(MODELS)}")
    if ev.sizes.get("sample", 0) < 1:
        raise ValueError(f"{source}: holds no evaluated sample")


def sample_losses(ev: xr.Dataset) -> dict[str, np.ndarray]:
    """``{model: (n_sample,) loss}``: each sample's masked MSE averaged over pollutants and leads.

    Samples with no finite value (e.g. a lead time past the end of the split for every lead) are
    kept as NaN; :func:`paired_samples` drops them.
    """
    mse = ev["mse"].transpose("model", "sample", "lead_time", "pollutant").values
    with np.errstate(invalid="ignore"):
        per_sample = np.nanmean(mse.reshape(mse.shape[0], mse.shape[1], -1), axis=2)
    return {str(m): per_sample[i] for i, m in enumerate(ev["model"].values)}


def paired_samples(
    ev: xr.Dataset,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(baseline loss, fine-tuned loss, init_time)`` of the samples where both are finite."""
    losses = sample_losses(ev)
    base, ft = losses[BASELINE], losses[FINETUNED]
    keep = np.isfinite(base) & np.isfinite(ft)
    return base[keep], ft[keep], ev["init_time"].values[keep]


def compare_to_baseline(
    ev: xr.Dataset, report_cfg: Mapping[str, Any], *, new_name: str = "fine-tuned"
) -> PairedTest:
    """The paired test of one evaluation's fine-tune against its baseline (``report`` config)."""
    base, ft, times = paired_samples(ev)
    return paired_test(
        base,
        ft,
        times,
        block_hours=int(report_cfg["block_hours"]),
        alpha=float(report_cfg["significance"]),
        n_boot=int(report_cfg["bootstrap_samples"]),
        ref_name="baseline",
        new_name=new_name,
    )


def compare_fine_tunes(
    ev_ref: xr.Dataset,
    ev_new: xr.Dataset,
    report_cfg: Mapping[str, Any],
    *,
    ref_name: str,
    new_name: str,
) -> PairedTest:
    """Paired test of two fine-tunes on the forecast start times both evaluated.

    Raises:
        ValueError: when the two evaluations share fewer than 2 samples.
    """
    ref = pd.Series(sample_losses(ev_ref)[FINETUNED], index=ev_ref["init_time"].values)
    new = pd.Series(sample_losses(ev_new)[FINETUNED], index=ev_new["init_time"].values)
    both = pd.concat({"ref": ref, "new": new}, axis=1, join="inner").dropna()
    if len(both) < 2:
        raise ValueError(
            f"variants {ref_name!r} and {new_name!r} share {len(both)} evaluated sample(s) "
            f"({len(ref)} and {len(new)} evaluated): evaluate both on the same validation split"
        )
    return paired_test(
        both["ref"].to_numpy(),
        both["new"].to_numpy(),
        both.index.to_numpy(),
        block_hours=int(report_cfg["block_hours"]),
        alpha=float(report_cfg["significance"]),
        n_boot=int(report_cfg["bootstrap_samples"]),
        ref_name=ref_name,
        new_name=new_name,
    )


def min_block_days(ev: xr.Dataset, report_cfg: Mapping[str, Any]) -> int:
    """Shortest block of the calibrated tests: the longest evaluated lead time (and
    ``report.block_hours``), in whole days."""
    return min_block_days_for(
        [int(h) for h in np.atleast_1d(ev["lead_time"].values)], int(report_cfg["block_hours"])
    )


def calibrated_vs_baseline(
    ev: xr.Dataset, report_cfg: Mapping[str, Any], *, new_name: str
) -> CalibratedTest:
    """The calibrated paired test (:mod:`aqnet.report.calibrated`) of one evaluation's fine-tune
    against its baseline on the samples where both are finite."""
    base, ft, times = paired_samples(ev)
    return calibrated_test(
        base,
        ft,
        times,
        min_block_days=min_block_days(ev, report_cfg),
        alpha=float(report_cfg["significance"]),
        ref_name="baseline",
        new_name=new_name,
    )


def calibrated_between(
    ev_ref: xr.Dataset,
    ev_new: xr.Dataset,
    report_cfg: Mapping[str, Any],
    *,
    ref_name: str,
    new_name: str,
) -> CalibratedTest:
    """The calibrated paired test of two fine-tunes on the forecast start times both evaluated.

    Raises:
        ValueError: when the two evaluations are of different splits or share fewer than 2
            samples.
    """
    splits = (ev_ref.attrs.get("split"), ev_new.attrs.get("split"))
    if splits[0] != splits[1]:
        raise ValueError(
            f"variants {ref_name!r} and {new_name!r} were evaluated on different splits "
            f"({splits[0]!r} and {splits[1]!r}): evaluate both on report.split"
        )
    ref = pd.Series(sample_losses(ev_ref)[FINETUNED], index=ev_ref["init_time"].values)
    new = pd.Series(sample_losses(ev_new)[FINETUNED], index=ev_new["init_time"].values)
    both = pd.concat({"ref": ref, "new": new}, axis=1, join="inner").dropna()
    if len(both) < 2:
        raise ValueError(
            f"variants {ref_name!r} and {new_name!r} share {len(both)} evaluated sample(s) "
            f"({len(ref)} and {len(new)} evaluated): evaluate both on the same split"
        )
    return calibrated_test(
        both["ref"].to_numpy(),
        both["new"].to_numpy(),
        both.index.to_numpy(),
        min_block_days=min_block_days(ev_new, report_cfg),
        alpha=float(report_cfg["significance"]),
        ref_name=ref_name,
        new_name=new_name,
    )


def loss_ci(
    loss: np.ndarray, times: np.ndarray, report_cfg: Mapping[str, Any]
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean per-sample loss and its block-bootstrap interval."""
    blocks = block_ids(times, int(report_cfg["block_hours"]))
    low, high, _ = block_bootstrap_mean_ci(
        loss,
        blocks,
        n_boot=int(report_cfg["bootstrap_samples"]),
        confidence=1.0 - float(report_cfg["significance"]),
    )
    return float(np.mean(loss)), low, high


def rmse_table(ev: xr.Dataset) -> pd.DataFrame:
    """RMSE per pollutant and lead time (physical units), baseline vs fine-tuned.

    Returns:
        One row per (pollutant, lead time), plus a row ``lead_time_h = "all"`` per pollutant,
        with columns ``pollutant, lead_time_h, units, rmse_baseline, rmse_finetuned,
        change_pct, n_samples`` (``change_pct`` < 0 = the fine-tune's error is lower).
    """
    sq = ev["rmse_phys"] ** 2  # (model, sample, lead_time, pollutant)
    per_lead = np.sqrt(sq.mean("sample", skipna=True))  # (model, lead_time, pollutant)
    overall = np.sqrt(sq.mean(("sample", "lead_time"), skipna=True))  # (model, pollutant)
    counts = np.isfinite(ev["rmse_phys"].sel(model=BASELINE)).sum("sample")  # (lead, pollutant)
    units = {
        str(p): str(u) for p, u in zip(ev["pollutant"].values, ev["units"].values, strict=True)
    }
    rows: list[dict[str, Any]] = []
    for p in ev["pollutant"].values:
        for lead in [*ev["lead_time"].values, "all"]:
            if lead == "all":
                b = float(overall.sel(model=BASELINE, pollutant=p))
                f = float(overall.sel(model=FINETUNED, pollutant=p))
                n = int(counts.sel(pollutant=p).sum())
            else:
                b = float(per_lead.sel(model=BASELINE, pollutant=p, lead_time=lead))
                f = float(per_lead.sel(model=FINETUNED, pollutant=p, lead_time=lead))
                n = int(counts.sel(pollutant=p, lead_time=lead))
            rows.append(
                {
                    "pollutant": str(p),
                    "lead_time_h": lead if lead == "all" else int(lead),
                    "units": units[str(p)],
                    "rmse_baseline": b,
                    "rmse_finetuned": f,
                    "change_pct": 100.0 * (f - b) / b if b > 0 else float("nan"),
                    "n_samples": n,
                }
            )
    return pd.DataFrame(rows)


def mse_maps(ev: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(baseline, fine-tuned)`` per-pixel MSE ``(H, W)`` averaged over pollutants (normalised)."""
    maps = ev["sq_err_map"].mean("pollutant", skipna=False)  # (model, y, x)
    return maps.sel(model=BASELINE).values, maps.sel(model=FINETUNED).values

"""Tables computed from ``evaluation.nc`` files: per-sample losses, RMSE, spatial gains, variants.

The layout of ``evaluation.nc`` is documented in :mod:`aqnet.report.evaluate`. Conventions here:

* the *loss* of a sample is its masked MSE in normalised units averaged over pollutants and lead
  times (what ``val_loss`` measures);
* an *RMSE* over a set of samples is ``sqrt(mean(rmse_phys ** 2))`` in the pollutant's physical
  units;
* a *gain* is ``100 * (baseline - fine-tuned) / baseline`` of a mean squared error: positive means
  the fine-tune is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
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


def _gain_pct(base: float, ft: float) -> float:
    return 100.0 * (base - ft) / base if base > 0 else float("nan")


def gain_by_elevation(ev: xr.Dataset, elevation_m: np.ndarray, *, n_bands: int = 5) -> pd.DataFrame:
    """Gain by elevation band: equal-count bands of the in-domain cells' elevation.

    Args:
        ev: an evaluation dataset.
        elevation_m: ``(H, W)`` terrain height in metres (the cache's ``static.npz``).
        n_bands: number of bands (fewer when elevations repeat).

    Returns:
        Columns ``band, elev_low_m, elev_high_m, n_cells, mse_baseline, mse_finetuned,
        gain_pct``.
    """
    base, ft = mse_maps(ev)
    elevation_m = np.asarray(elevation_m, dtype=np.float64)
    if elevation_m.shape != base.shape:
        raise ValueError(
            f"elevation_m has shape {elevation_m.shape}, the evaluation maps {base.shape}: the "
            "evaluation and the cache are not on one grid"
        )
    valid = np.isfinite(base) & np.isfinite(ft) & np.isfinite(elevation_m)
    if not valid.any():
        raise ValueError("no grid cell with a finite error in both models to group by elevation")
    elev = elevation_m[valid]
    edges = np.unique(np.quantile(elev, np.linspace(0.0, 1.0, n_bands + 1)))
    if edges.size < 2:
        edges = np.array([elev.min(), elev.max()])
    band = np.clip(np.searchsorted(edges, elev, side="right") - 1, 0, edges.size - 2)
    rows = []
    for i in range(edges.size - 1):
        sel = band == i
        if not sel.any():
            continue
        b, f = float(base[valid][sel].mean()), float(ft[valid][sel].mean())
        rows.append(
            {
                "band": f"{edges[i]:.0f}-{edges[i + 1]:.0f} m",
                "elev_low_m": float(edges[i]),
                "elev_high_m": float(edges[i + 1]),
                "n_cells": int(sel.sum()),
                "mse_baseline": b,
                "mse_finetuned": f,
                "gain_pct": _gain_pct(b, f),
            }
        )
    return pd.DataFrame(rows)


def _terrain_class(mean_m: np.ndarray, relief_m: np.ndarray) -> np.ndarray:
    """``basin`` / ``mountain`` / ``plain`` per region of a ``(Ry, Rx)`` region grid.

    * ``basin``: lower than the mean of its (up to 8) neighbours by more than a quarter of the
      spread (std) of the region means;
    * ``mountain``: relief (90th - 10th percentile of height) in the top third of the regions;
    * ``plain``: everything else.
    """
    ry, rx = mean_m.shape
    padded = np.pad(mean_m, 1, mode="constant", constant_values=np.nan)
    neigh = np.stack(
        [
            padded[1 + dy : 1 + dy + ry, 1 + dx : 1 + dx + rx]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dy, dx) != (0, 0)
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods give NaN
        neigh_mean = np.nanmean(neigh, axis=0)
    spread = float(np.nanstd(mean_m)) if np.isfinite(mean_m).any() else 0.0
    relief_cut = float(np.nanquantile(relief_m, 2.0 / 3.0)) if np.isfinite(relief_m).any() else 0.0
    out = np.full(mean_m.shape, "plain", dtype=object)
    out[(relief_m >= relief_cut) & (relief_m > 0)] = "mountain"
    basin = np.isfinite(neigh_mean) & (mean_m < neigh_mean - 0.25 * spread) & (spread > 0)
    out[basin] = "basin"
    out[~np.isfinite(mean_m)] = "outside"
    return out


REGION_NAMES: tuple[str, ...] = ("basin", "plateau", "plain", "mountain")
"""The named regions of :func:`named_region_codes`, by code."""


def named_region_codes(elevation_m: np.ndarray, region_cells: Sequence[int]) -> np.ndarray:
    """Each grid cell's named region (an index into :data:`REGION_NAMES`), from terrain classes.

    The grid is cut into tiles of ``region_cells`` (the wind-scan regions); each tile is a
    ``mountain`` (relief in the top third), a ``basin`` (lower than its neighbours by more than a
    quarter of the spread of the tile means), a ``plateau`` (otherwise, mean height above the
    2/3 quantile of the tiles') or a ``plain``; every cell takes its tile's class.

    Args:
        elevation_m: ``(H, W)`` terrain height in metres.
        region_cells: ``(rows, cols)`` cells per tile; must tile the grid.

    Returns:
        ``(H, W)`` int64 codes.
    """
    h_m = np.asarray(elevation_m, dtype=np.float64)
    ch, cw = (int(c) for c in region_cells)
    h, w = h_m.shape
    if ch < 1 or cw < 1 or h % ch or w % cw:
        raise ValueError(f"region size {ch}x{cw} cells does not tile the {h}x{w} grid")
    ry, rx = h // ch, w // cw
    tiles = h_m.reshape(ry, ch, rx, cw).transpose(0, 2, 1, 3).reshape(ry, rx, ch * cw)
    mean = tiles.mean(axis=2)
    relief = np.percentile(tiles, 90, axis=2) - np.percentile(tiles, 10, axis=2)
    terrain = _terrain_class(mean, relief)  # basin / mountain / plain
    terrain[terrain == "outside"] = "plain"
    high = mean > np.quantile(mean, 2.0 / 3.0)
    terrain[(terrain == "plain") & high & (np.ptp(mean) > 0)] = "plateau"
    codes = np.vectorize(REGION_NAMES.index)(terrain).astype(np.int64)  # (ry, rx)
    return np.repeat(np.repeat(codes, ch, axis=0), cw, axis=1)


def gain_by_region(
    ev: xr.Dataset, elevation_m: np.ndarray, *, region_cells: Sequence[int]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Gain per region of ``region_cells = (rows, cols)`` grid cells (the wind-scan regions).

    Returns:
        ``(table, gain_grid)``: the table has one row per region with ``region, row, col,
        lat_min, lat_max, lon_min, lon_max, elev_mean_m, relief_m, terrain, n_cells,
        mse_baseline, mse_finetuned, gain_pct``, sorted by gain (best first); ``gain_grid`` is
        ``(Ry, Rx)`` gain_pct (NaN for regions outside the domain).
    """
    base, ft = mse_maps(ev)
    ch, cw = (int(c) for c in region_cells)
    h, w = base.shape
    if ch < 1 or cw < 1 or h % ch or w % cw:
        raise ValueError(f"region size {ch}x{cw} cells does not tile the {h}x{w} grid")
    elevation_m = np.asarray(elevation_m, dtype=np.float64)
    if elevation_m.shape != base.shape:
        raise ValueError(
            f"elevation_m has shape {elevation_m.shape}, the evaluation maps {base.shape}"
        )
    ry, rx = h // ch, w // cw

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(ry, ch, rx, cw).transpose(0, 2, 1, 3).reshape(ry, rx, ch * cw)

    valid = blocks(np.isfinite(base) & np.isfinite(ft))
    n_cells = valid.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mb = np.where(valid, blocks(base), 0.0).sum(axis=2) / n_cells
        mf = np.where(valid, blocks(ft), 0.0).sum(axis=2) / n_cells
        el = np.where(valid, blocks(elevation_m), np.nan)
        inside = n_cells > 0
        el_mean = np.where(inside, np.nansum(el, axis=2) / np.maximum(n_cells, 1), np.nan)
    relief = np.full((ry, rx), np.nan)
    relief[inside] = np.nanpercentile(el[inside], 90, axis=1) - np.nanpercentile(
        el[inside], 10, axis=1
    )
    gain = np.where(inside & (mb > 0), 100.0 * (mb - mf) / np.where(mb > 0, mb, 1.0), np.nan)
    terrain = _terrain_class(el_mean, relief)
    lat = np.asarray(ev["lat"].values, dtype=np.float64)
    lon = np.asarray(ev["lon"].values, dtype=np.float64)
    rows = []
    for r in range(ry):
        for c in range(rx):
            if not inside[r, c]:
                continue
            rows.append(
                {
                    "region": r * rx + c,
                    "row": r,
                    "col": c,
                    "lat_min": float(lat[r * ch : (r + 1) * ch].min()),
                    "lat_max": float(lat[r * ch : (r + 1) * ch].max()),
                    "lon_min": float(lon[c * cw : (c + 1) * cw].min()),
                    "lon_max": float(lon[c * cw : (c + 1) * cw].max()),
                    "elev_mean_m": float(el_mean[r, c]),
                    "relief_m": float(relief[r, c]),
                    "terrain": str(terrain[r, c]),
                    "n_cells": int(n_cells[r, c]),
                    "mse_baseline": float(mb[r, c]),
                    "mse_finetuned": float(mf[r, c]),
                    "gain_pct": float(gain[r, c]),
                }
            )
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("gain_pct", ascending=False, na_position="last")
        table = table.reset_index(drop=True)
    return table, gain


def gain_by_terrain(region_table: pd.DataFrame) -> pd.DataFrame:
    """Gain per terrain class (``basin``, ``mountain``, ``plain``) from :func:`gain_by_region`."""
    if region_table.empty:
        return pd.DataFrame(columns=["terrain", "regions", "mse_baseline", "mse_finetuned"])
    w = region_table["n_cells"]
    grouped = region_table.assign(
        wb=region_table["mse_baseline"] * w, wf=region_table["mse_finetuned"] * w
    ).groupby("terrain")
    out = pd.DataFrame(
        {
            "regions": grouped.size(),
            "n_cells": grouped["n_cells"].sum(),
            "mse_baseline": grouped["wb"].sum() / grouped["n_cells"].sum(),
            "mse_finetuned": grouped["wf"].sum() / grouped["n_cells"].sum(),
        }
    ).reset_index()
    out["gain_pct"] = [
        _gain_pct(b, f) for b, f in zip(out["mse_baseline"], out["mse_finetuned"], strict=True)
    ]
    return out

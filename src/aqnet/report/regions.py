"""Where on the terrain the gain is: the grid cut into the wind-scan regions (tiles of
``region_cells``), their terrain classes and named regions, and the gain by elevation band, by
region and by terrain class.

A *gain* is ``100 * (baseline - fine-tuned) / baseline`` of a mean squared error: positive means
the fine-tune is better. The errors are the per-pixel maps of
:func:`aqnet.report.analysis.mse_maps` (normalised units, averaged over pollutants).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from aqnet.report.analysis import mse_maps


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

"""The evaluation file, ``evaluation.nc``: its layout, and how it is assembled, written and read.

:func:`aqnet.report.evaluate.evaluate` fills it and the report reads it back
(:func:`open_evaluation`). ``evaluation.nc`` (netCDF through xarray) holds:

=====================  ===========================================  ===============================
variable               dimensions                                   meaning
=====================  ===========================================  ===============================
``mse``                ``(model, sample, lead_time, pollutant)``    masked MSE, normalised units
``rmse_phys``          ``(model, sample, lead_time, pollutant)``    masked RMSE in physical units
``sq_err_map``         ``(model, pollutant, y, x)``                 mean squared error per pixel
                                                                    over samples and lead times,
                                                                    normalised units; NaN where the
                                                                    domain mask is never set
``region_mse``         ``(model, sample, lead_time, region)``       masked MSE over each named
                                                                    region (basin, plateau, plain,
                                                                    mountain), mean of pollutants
``tile_mse``           ``(model, sample, lead_time, tile)``         masked MSE over each wind-scan
                                                                    tile of ``region_cells``
                                                                    (row-major), mean of pollutants
=====================  ===========================================  ===============================

Coordinates: ``model`` (``baseline``, ``finetuned``); ``sample`` (one forecast start: the input
time ``init_time``, with ``year`` and ``time_index`` in the cache); ``lead_time`` (hours);
``valid_time (sample, lead_time)`` (from :meth:`CacheDataset.sample_info`); ``pollutant`` and its
``units``; ``lat (y)``, ``lon (x)`` from the cache's ``static.npz``. All lead times of a start
time share one input, so they stay together as one sample (the paired tests block by
``init_time``). A (sample, lead time) pair the split does not hold is NaN.

Physical units: the cache normalises every channel as ``(value - mean) / std`` (``stats.json``),
so an error in physical units is the normalised error times ``std``: ``rmse_phys = sqrt(mse) *
std``. Units come from the cache's ``meta.json`` (``units``), else from the ``units`` attributes
of the source files it lists.

Attributes record the variant, the split, the checkpoints, the baseline's recorded val_loss, which
model configuration each model was built from, the region size in grid cells (for the report's
gain by region) and how many items were evaluated.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from aqnet.atomic import atomic_save
from aqnet.config import POLLUTANTS
from aqnet.report.analysis import MODELS
from aqnet.report.regions import REGION_NAMES

__all__ = ["evaluation_dataset", "open_evaluation", "write_evaluation"]


def evaluation_dataset(
    *,
    mse: np.ndarray,
    std: np.ndarray,
    sq_err_map: np.ndarray,
    init_time: np.ndarray,
    valid_time: np.ndarray,
    starts: Sequence[tuple[int, int]],
    lead_times_h: Sequence[int],
    units: Sequence[str],
    lat: np.ndarray,
    lon: np.ndarray,
    region_cells: Sequence[int],
    attrs: Mapping[str, Any] | None = None,
    region_mse: np.ndarray | None = None,
    tile_mse: np.ndarray | None = None,
) -> xr.Dataset:
    """Assemble the evaluation dataset (layout in the module docstring).

    Args:
        mse: ``(2, S, L, C)`` masked MSE in normalised units (model order :data:`MODELS`).
        std: ``(C,)`` normalisation std of each pollutant (physical units per normalised unit).
        sq_err_map: ``(2, C, H, W)`` mean squared error per pixel (normalised), NaN outside.
        init_time: ``(S,)`` datetime64 forecast start times.
        valid_time: ``(S, L)`` datetime64 valid times.
        starts: ``(year, time_index)`` of each sample in the cache.
        lead_times_h: ``(L,)`` lead times in hours.
        units: ``(C,)`` physical units of each pollutant.
        lat: ``(H,)``; lon: ``(W,)``.
        region_cells: ``(rows, cols)`` grid cells of one wind-scan region (gain by region).
        attrs: further attributes (variant, split, checkpoints, ...).
        region_mse: ``(2, S, L, R)`` masked MSE over the cells of each named region
            (:data:`aqnet.report.regions.REGION_NAMES`), averaged over pollutants; optional.
        tile_mse: ``(2, S, L, T)`` masked MSE over each wind-scan tile of ``region_cells``
            grid cells (row-major, ``T = (H / rows) * (W / cols)``), averaged over pollutants;
            optional.
    """
    mse = np.asarray(mse, dtype=np.float64)
    n_models, n_s, n_l, n_c = mse.shape
    std = np.asarray(std, dtype=np.float64)
    if n_models != len(MODELS) or std.shape != (n_c,) or len(units) != n_c:
        raise ValueError(
            f"evaluation_dataset: mse {mse.shape} must be (2, S, L, C) with std {std.shape} and "
            f"{len(units)} units for C = {n_c} pollutants"
        )
    if n_c != len(POLLUTANTS):
        raise ValueError(f"evaluation_dataset: {n_c} pollutants, expected {list(POLLUTANTS)}")
    rmse_phys = np.sqrt(mse) * std[None, None, None, :]
    all_attrs = {
        "title": "aqnet evaluation: baseline vs fine-tuned on the same samples",
        "region_cells": np.array([int(c) for c in region_cells], dtype=np.int32),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **dict(attrs or {}),
    }
    ds = xr.Dataset(
        data_vars={
            "mse": (
                ("model", "sample", "lead_time", "pollutant"),
                mse,
                {"long_name": "masked mean squared error", "units": "1 (normalised)"},
            ),
            "rmse_phys": (
                ("model", "sample", "lead_time", "pollutant"),
                rmse_phys,
                {"long_name": "masked root mean squared error, physical units (see units)"},
            ),
            "sq_err_map": (
                ("model", "pollutant", "y", "x"),
                np.asarray(sq_err_map, dtype=np.float64),
                {
                    "long_name": "squared error per pixel, mean over samples and lead times",
                    "units": "1 (normalised)",
                },
            ),
        },
        coords={
            "model": ("model", list(MODELS)),
            "sample": ("sample", np.arange(n_s)),
            "init_time": (
                "sample",
                np.asarray(init_time, dtype="datetime64[ns]"),
                {"long_name": "forecast start (input) time"},
            ),
            "year": ("sample", np.array([k[0] for k in starts], dtype=np.int32)),
            "time_index": ("sample", np.array([k[1] for k in starts], dtype=np.int32)),
            "lead_time": ("lead_time", np.array(lead_times_h, dtype=np.int32), {"units": "h"}),
            "valid_time": (("sample", "lead_time"), np.asarray(valid_time, dtype="datetime64[ns]")),
            "pollutant": ("pollutant", list(POLLUTANTS)),
            "units": ("pollutant", [str(u) for u in units]),
            "lat": ("y", np.asarray(lat, dtype=np.float64), {"units": "degrees_north"}),
            "lon": ("x", np.asarray(lon, dtype=np.float64), {"units": "degrees_east"}),
        },
        attrs=all_attrs,
    )
    if region_mse is not None:
        ds["region_mse"] = xr.DataArray(
            np.asarray(region_mse, dtype=np.float64),
            dims=("model", "sample", "lead_time", "region"),
            coords={"region": list(REGION_NAMES)},
            attrs={
                "long_name": "masked mean squared error over each named region (terrain class), "
                "mean over pollutants",
                "units": "1 (normalised)",
            },
        )
    if tile_mse is not None:
        ds["tile_mse"] = xr.DataArray(
            np.asarray(tile_mse, dtype=np.float64),
            dims=("model", "sample", "lead_time", "tile"),
            coords={"tile": np.arange(np.shape(tile_mse)[-1])},
            attrs={
                "long_name": "masked mean squared error over each wind-scan tile of region_cells "
                "grid cells (row-major), mean over pollutants",
                "units": "1 (normalised)",
            },
        )
    return ds


def write_evaluation(ds: xr.Dataset, path: str | Path) -> Path:
    """Write an evaluation dataset to netCDF, atomically (temporary file and rename)."""
    path = Path(path)
    encoding = {
        name: {"zlib": True, "complevel": 4}
        for name in ("mse", "rmse_phys", "sq_err_map", "region_mse", "tile_mse")
        if name in ds
    }
    atomic_save(lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding), path)
    return path


def open_evaluation(path: str | Path) -> xr.Dataset:
    """Read an ``evaluation.nc`` fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file not found: {path}")
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()

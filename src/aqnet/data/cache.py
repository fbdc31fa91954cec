"""The training cache: validated, regridded, normalised yearly arrays, statistics and scan orders.

``build_cache(cfg, files, out_dir)`` writes (see docs/ARCHITECTURE.md)::

    out_dir/
      meta.json         variables, grid, years and split, time ranges, NaN counts, sources,
                        lead times, wind-orders digest (written last: its presence = complete)
      stats.json        {var: {"mean": float, "std": float}} from the training years only
      static.npz        elevation_m (H, W) float32 metres, mask (H, W) bool, lat (H,), lon (W,)
      year_<year>.npy   (T, V, H, W) float32, normalised, channels = MODEL_VARIABLES
      wind_orders.npz   aqnet.orders.save_orders for the model's grid

How it works, memory-bounded whatever the size of a year:

1. every file is opened lazily (xarray + dask) and validated
   (:func:`aqnet.data.validate.validate_year`) before any work starts;
2. each year is read **time chunk by time chunk** (``data.chunk_mb`` MiB per chunk, aligned to the
   file's own chunks), NaNs are filled, the chunk is regridded onto ``grid.ny x grid.nx`` (rows
   south to north) and written into a memory-mapped ``.npy`` in physical units; chunks of the
   training years update running per-channel statistics (Chan's parallel mean/variance, float64);
3. each ``.npy`` is normalised in place, chunk by chunk, with the training statistics;
4. the scan orders of the model's patch grid are written and their digest printed;
5. ``meta.json`` is written last and the folder, built under a temporary name beside ``out_dir``,
   is renamed into place, so a failed build never leaves a cache that looks complete.

Channels: the 13 input variables (static ones repeated over time) and ``lat``/``lon``, the target
grid's coordinates, normalised like every other channel (or kept in degrees: ``data.coordinates``).
Statistics are taken over every cell of the target grid and every time step of the training years,
or from a given table (``data.normalization``, :mod:`aqnet.data.reference`); ``meta.json`` records
which, and which loss mask ``static.npz`` holds.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from aqnet import __version__
from aqnet.config import MODEL_VARIABLES
from aqnet.data.cache_write import (
    RunningStats,
    normalise_in_place,
    replace_dir,
    write_orders,
    write_static,
    write_year,
)
from aqnet.data.io import NAN_FILL_METHOD, DataValidationError, YearInfo, open_year, source_info
from aqnet.data.layout import (
    CACHE_FORMAT_VERSION,
    META_FILE,
    ORDERS_FILE,
    SPLITS,
    STATIC_FILE,
    STATS_FILE,
    load_static,
    load_stats,
    read_meta,
    year_file,
)
from aqnet.data.reference import baseline_stats
from aqnet.data.regrid import Regridder, target_grid
from aqnet.data.validate import validate_year
from aqnet.stage import write_json

log = logging.getLogger("aqnet.data.cache")

__all__ = ["build_cache", "load_static", "load_stats", "read_meta", "year_file"]


def _split_of(cfg: Mapping[str, Any]) -> dict[int, str]:
    split = cfg["data"]["split"]
    out: dict[int, str] = {}
    for name in SPLITS:
        for year in split.get(name, []):
            if int(year) in out:
                raise ValueError(
                    f"data.split: year {year} is in both {out[int(year)]!r} and {name!r}"
                )
            out[int(year)] = name
    return out


def _open_and_validate(
    cfg: Mapping[str, Any],
    given: Mapping[int, Path],
    years: list[int],
    stack: contextlib.ExitStack,
) -> tuple[dict[int, xr.Dataset], dict[int, YearInfo]]:
    """Open every year lazily and validate it against the first (grid, time step)."""
    data_cfg = cfg["data"]
    datasets: dict[int, xr.Dataset] = {}
    infos: dict[int, YearInfo] = {}
    reference: YearInfo | None = None
    for year in years:
        ds = stack.enter_context(open_year(given[year]))
        infos[year] = validate_year(
            ds,
            source=given[year],
            year=year,
            max_nan_fraction=float(data_cfg["max_nan_fraction"]),
            elevation_range_m=data_cfg["elevation_range_m"],
            reference=reference,
            units=data_cfg["units"],
            elevation_min_relief_m=float(data_cfg["elevation_min_relief_m"]),
        )
        datasets[year] = ds
        reference = reference or infos[year]
    return datasets, infos


def _check_lead_times(lead_times: list[int], infos: Mapping[int, YearInfo]) -> None:
    reference = next(iter(infos.values()))
    step_h = reference.time_step_h
    bad = [h for h in lead_times if not math.isclose(h / step_h, round(h / step_h))]
    if bad:
        raise ValueError(
            f"build_cache: lead_times_h {bad} are not multiples of the data's time step "
            f"{step_h:g} h ({reference.source})"
        )
    short = {y: i.n_times for y, i in infos.items() if i.n_times <= max(lead_times) / step_h}
    if short:
        raise ValueError(
            f"build_cache: year(s) with too few time steps {short}: not more than the longest "
            f"lead time {max(lead_times)} h, no sample would remain"
        )


def build_cache(
    cfg: Mapping[str, Any], files: Mapping[int, str | Path], out_dir: str | Path
) -> Path:
    """Validate the yearly files, regrid and normalise them into a cache folder; return it.

    Args:
        cfg: a validated pipeline config (``data``, ``grid``, ``lead_times_h``, ``model``).
        files: ``{year: path}`` of the input files; every year of ``data.split`` must be there,
            other years are ignored.
        out_dir: the cache folder (replaced atomically when the build succeeds).

    Raises:
        DataValidationError: a file fails validation (the message names file and variable).
        ValueError: a split year without a file, lead times that are not multiples of the time
            step or longer than a year, a grid that does not fit the model's patches.
    """
    from aqnet.model.presets import from_pipeline_config

    out_dir = Path(out_dir)
    data_cfg, grid_cfg = cfg["data"], cfg["grid"]
    split = _split_of(cfg)
    given = {int(y): Path(p) for y, p in files.items()}
    missing = sorted(set(split) - set(given))
    if missing:
        raise ValueError(
            f"build_cache: no input file for year(s) {missing} of data.split "
            f"(files given for {sorted(given)})"
        )
    ignored = sorted(set(given) - set(split))
    if ignored:
        log.warning("build_cache: ignoring input years %s, not in data.split", ignored)
    years = sorted(split)
    lead_times = [int(h) for h in cfg["lead_times_h"]]
    region = (int(cfg["model"]["region_patches"][0]), int(cfg["model"]["region_patches"][1]))
    from_pipeline_config(cfg)  # the grid must fit the model's patches and regions: fail early
    chunk_mb = int(data_cfg.get("chunk_mb", 256))

    with contextlib.ExitStack() as stack:  # closes every opened file, on any outcome
        # 1. Open and validate everything before doing any work.
        datasets, infos = _open_and_validate(cfg, given, years, stack)
        _check_lead_times(lead_times, infos)
        reference = infos[years[0]]
        lat, lon = target_grid(
            reference.lat2d,
            reference.lon2d,
            ny=int(grid_cfg["ny"]),
            nx=int(grid_cfg["nx"]),
            lat_range=grid_cfg.get("lat_range"),
            lon_range=grid_cfg.get("lon_range"),
        )
        try:
            regridder = Regridder(
                src_lat2d=reference.lat2d, src_lon2d=reference.lon2d, dst_lat=lat, dst_lon=lon
            )
        except ValueError as exc:
            raise DataValidationError(f"{reference.source}: cannot regrid: {exc}") from exc

        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        try:
            # 2. Regrid, write physical values, accumulate the training years' statistics.
            running = RunningStats(len(MODEL_VARIABLES))
            filled: dict[int, dict[str, int]] = {}
            for year in years:
                log.info("build_cache: regridding %s (%d steps)", given[year], infos[year].n_times)
                filled[year] = write_year(
                    datasets[year],
                    infos[year],
                    regridder,
                    tmp / year_file(year),
                    chunk_mb=chunk_mb,
                    lat=lat,
                    lon=lon,
                    stats=running if split[year] == "train" else None,
                )
            stats, constant = running.result(MODEL_VARIABLES)
            if constant:
                log.warning("build_cache: constant training channels %s get std 1", constant)
            # The baseline's normalisation: these statistics or a given table (data.reference).
            stats, normalization = baseline_stats(cfg, stats)
            write_json(tmp / STATS_FILE, stats)

            # 3. Normalise in place with the baseline's statistics.
            mean = np.array([stats[v]["mean"] for v in MODEL_VARIABLES])
            std = np.array([stats[v]["std"] for v in MODEL_VARIABLES])
            for year in years:
                normalise_in_place(tmp / year_file(year), mean, std, chunk_mb=chunk_mb)
            mask, mask_record = write_static(
                tmp / STATIC_FILE, datasets[years[0]], reference, regridder, lat, lon, cfg
            )

            # 4. Wind scan orders for the model's patch grid.
            mcfg = from_pipeline_config(cfg, stats=stats)
            digest, params = write_orders(tmp / ORDERS_FILE, mcfg, region)

            # 5. meta.json last, then the rename.
            meta = {
                "format_version": CACHE_FORMAT_VERSION,
                "aqnet_version": __version__,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "variables": list(MODEL_VARIABLES),
                # physical units (the files' attributes, else data.units): evaluate reads them
                "units": dict(reference.units),
                "grid": {
                    "ny": len(lat),
                    "nx": len(lon),
                    "lat": [float(lat[0]), float(lat[-1])],
                    "lon": [float(lon[0]), float(lon[-1])],
                    "rows": "south_to_north",
                    "regrid": f"linear ({regridder.mode} input)",
                    "source_shape": list(regridder.src_shape),
                    "extrapolated_cells": regridder.n_extrapolated,
                },
                "years": years,
                "split": {name: [y for y in years if split[y] == name] for name in SPLITS},
                "stats_years": [y for y in years if split[y] == "train"],
                "time_step_h": reference.time_step_h,
                "per_year": {
                    str(y): {
                        "file": year_file(y),
                        "split": split[y],
                        "n_times": infos[y].n_times,
                        "time_start": str(infos[y].time_start),
                        "time_end": str(infos[y].times()[-1]),
                    }
                    for y in years
                },
                "nan_fill": NAN_FILL_METHOD,
                "nan_counts": {str(y): infos[y].nan_counts for y in years},
                "nan_outside_mask": {str(y): infos[y].nan_outside_mask for y in years},
                "nan_filled": {str(y): filled[y] for y in years},
                "max_nan_fraction": float(data_cfg["max_nan_fraction"]),
                "mask": {
                    "variable": reference.mask_variable,
                    "fraction_inside": float(mask.mean()),
                    **mask_record,
                },
                "normalization": normalization,
                "constant_channels": constant,
                "sources": {str(y): source_info(given[y]) for y in years},
                "lead_times_h": lead_times,
                "wind_orders": {"file": ORDERS_FILE, "digest": digest, "params": params},
            }
            write_json(tmp / META_FILE, meta)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir

"""Validate one yearly input file before any work is done: :func:`validate_year`.

The layout it checks is :mod:`aqnet.data.io`'s: the variables on ``(time, y, x)`` (static ones on
``(y, x)``), latitude/longitude, a uniform time axis within the year, the domain mask, the
elevation in metres (range, relief, the same field in every year) and the units (the file's
attribute or ``data.units``; every pollutant has them, the same in every year). A failure raises
:class:`~aqnet.data.io.DataValidationError` naming the file and the variable.

NaNs inside the domain mask are counted; above ``max_nan_fraction`` of a variable's values the
file is refused, below it they are **filled** by :func:`aqnet.data.io.fill_nans` with the value of
the nearest valid cell of the same time step (before regridding), and the counts go into the
cache's metadata. NaNs outside the mask are filled the same way and counted separately. A time
step with no valid value inside the domain cannot be filled and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from aqnet.config import INPUT_VARIABLES, POLLUTANTS
from aqnet.data.io import (
    MASK_NAMES,
    METRE_UNITS,
    STATIC_ALLOWED,
    DataValidationError,
    YearInfo,
    spatial_coords,
)

__all__ = ["validate_year"]


def _check_time(ds: xr.Dataset, source: str, year: int | None) -> tuple[np.ndarray, float]:
    if "time" not in ds.variables or ds["time"].ndim != 1:
        raise DataValidationError(f"{source}: no 1-D 'time' coordinate")
    times = np.asarray(ds["time"].values)
    if np.issubdtype(times.dtype, np.datetime64):
        times = times.astype("datetime64[s]")  # readable in messages
    if not np.issubdtype(times.dtype, np.datetime64):
        raise DataValidationError(
            f"{source}: variable 'time' is not decodable to dates (dtype {times.dtype}); "
            "give it CF units such as 'hours since 2013-01-01'"
        )
    if times.size < 2:
        raise DataValidationError(f"{source}: variable 'time' has {times.size} step(s), need >= 2")
    if np.isnat(times).any():
        i = int(np.flatnonzero(np.isnat(times))[0])
        raise DataValidationError(f"{source}: variable 'time' is missing at index {i} (NaT)")
    diffs_s = np.diff(times).astype("timedelta64[s]").astype(np.int64)
    step_s = int(np.median(diffs_s))
    if step_s <= 0 or np.any(diffs_s <= 0):
        i = int(np.flatnonzero(diffs_s <= 0)[0])
        raise DataValidationError(
            f"{source}: variable 'time' is not increasing: {times[i]} then {times[i + 1]}"
        )
    bad = np.flatnonzero(diffs_s != step_s)
    if bad.size:
        i = int(bad[0])
        gap = diffs_s[i] > step_s and diffs_s[i] % step_s == 0
        kind = "missing time step(s)" if gap else "non-uniform time step"
        raise DataValidationError(
            f"{source}: variable 'time': {kind} between {times[i]} and {times[i + 1]} "
            f"({diffs_s[i] / 3600:g} h where the step is {step_s / 3600:g} h; "
            f"{bad.size} irregular step(s) in all)"
        )
    if year is not None:
        years = times.astype("datetime64[Y]").astype(int) + 1970
        if np.any(years != year):
            i = int(np.flatnonzero(years != year)[0])
            raise DataValidationError(
                f"{source}: variable 'time' has {times[i]} outside the file's year {year}"
            )
    return times, step_s / 3600.0


def _mask(ds: xr.Dataset, source: str, dims: tuple[str, str]) -> tuple[np.ndarray, str | None]:
    name = next((n for n in MASK_NAMES if n in ds.variables), None)
    shape = (ds.sizes[dims[0]], ds.sizes[dims[1]])
    if name is None:
        return np.ones(shape, dtype=bool), None
    var = ds[name]
    if var.dims == ("time", *dims):
        var = var.isel(time=0)
    if var.dims != dims:
        raise DataValidationError(
            f"{source}: variable {name!r} (the domain mask) has dimensions {var.dims}; expected "
            f"{dims}"
        )
    values = np.asarray(var.values, dtype=np.float64)
    mask = np.isfinite(values) & (values != 0)
    if not mask.any():
        raise DataValidationError(f"{source}: variable {name!r} (the domain mask) is empty")
    return mask, name


def _check_elevation(
    ds: xr.Dataset,
    source: str,
    elevation_range_m: Sequence[float],
    *,
    min_relief_m: float = 0.0,
    reference: YearInfo | None = None,
) -> np.ndarray:
    """Units, value range, relief (max - min over the grid) and sameness across years of the
    elevation; returns the ``(ny, nx)`` field in metres."""
    var = ds["elevation"]
    units = var.attrs.get("units")
    if units is None:
        raise DataValidationError(
            f"{source}: variable 'elevation' has no units attribute; expected metres ('m')"
        )
    if str(units).strip().lower() not in METRE_UNITS:
        raise DataValidationError(
            f"{source}: variable 'elevation' has units {units!r}; expected metres ('m')"
        )
    field = var.isel(time=0) if "time" in var.dims else var
    values = np.asarray(field.values, dtype=np.float64)
    if not np.isfinite(values).any():
        raise DataValidationError(f"{source}: variable 'elevation' holds no finite value")
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    low, high = float(elevation_range_m[0]), float(elevation_range_m[1])
    if lo < low or hi > high:
        raise DataValidationError(
            f"{source}: variable 'elevation' spans [{lo:.1f}, {hi:.1f}] m, outside the plausible "
            f"range [{low:g}, {high:g}] m (data.elevation_range_m); is it in metres?"
        )
    relief = hi - lo
    if relief < min_relief_m:
        raise DataValidationError(
            f"{source}: variable 'elevation' spans [{lo:.2f}, {hi:.2f}] m, a relief of "
            f"{relief:.2f} m over the whole grid, below data.elevation_min_relief_m = "
            f"{min_relief_m:g} m: is it in kilometres labelled 'm'? (set "
            "data.elevation_min_relief_m lower only for a truly flat domain)"
        )
    if reference is not None and reference.elevation_m is not None:
        ref = reference.elevation_m
        ref_lo, ref_hi = float(np.nanmin(ref)), float(np.nanmax(ref))
        tol = max(1.0, 0.01 * (ref_hi - ref_lo))
        diff = float(np.nanmax(np.abs(values - ref)))
        if diff > tol:
            raise DataValidationError(
                f"{source}: variable 'elevation' (range [{lo:.1f}, {hi:.1f}] m) differs from "
                f"{reference.source}'s (range [{ref_lo:.1f}, {ref_hi:.1f}] m) by up to "
                f"{diff:.1f} m (tolerance {tol:.1f} m): the static field must be the same in "
                "every year - different units or a different field?"
            )
    return values


def _units(
    ds: xr.Dataset,
    source: str,
    variables: Sequence[str],
    configured: Mapping[str, str],
    reference: YearInfo | None,
) -> dict[str, str]:
    """The units of every variable (the file's attribute, else ``data.units``); pollutants must
    have them (evaluate and report show errors in physical units) and keep them across years."""
    units: dict[str, str] = {}
    conflicts = []
    for name in variables:
        found = ds[name].attrs.get("units")
        found = str(found).strip() if found is not None and str(found).strip() else None
        given = configured.get(name)
        if found is not None and given is not None and found != str(given):
            conflicts.append(f"{name!r}: {found!r} in the file, {given!r} in data.units")
        value = found if found is not None else given
        if value is not None:
            units[name] = str(value)
    if conflicts:
        raise DataValidationError(
            f"{source}: units differ between the file and data.units: {'; '.join(conflicts)}"
        )
    missing = [p for p in POLLUTANTS if p in variables and p not in units]
    if missing:
        example = ", ".join(f"{p}: <units>" for p in missing)
        raise DataValidationError(
            f"{source}: pollutant variable(s) {', '.join(map(repr, missing))} have no units "
            "attribute; evaluate and report need their physical units. Add the attribute to the "
            f"file, or give them in the config: data: {{units: {{{example}}}}}"
        )
    if reference is not None and reference.units:
        changed = [
            f"{n!r}: {reference.units[n]!r} in {reference.source}, {u!r} here"
            for n, u in units.items()
            if n in reference.units and reference.units[n] != u
        ]
        if changed:
            raise DataValidationError(
                f"{source}: units differ between years: {'; '.join(changed)}; convert the files "
                "to one set of units"
            )
    return units


def validate_year(
    ds: xr.Dataset,
    *,
    source: str | Path | None = None,
    year: int | None = None,
    max_nan_fraction: float = 0.01,
    elevation_range_m: Sequence[float] = (-500.0, 9000.0),
    reference: YearInfo | None = None,
    variables: Sequence[str] = INPUT_VARIABLES,
    units: Mapping[str, str] | None = None,
    elevation_min_relief_m: float = 0.0,
) -> YearInfo:
    """Check one year's dataset; return what the cache needs to know about it.

    Checks, in order: the time coordinate (decodable, uniform step, no gap, in ``year``); the
    latitude/longitude; every variable present with dimensions ``(time, y, x)`` (or ``(y, x)``
    for the static ones); the same grid as ``reference`` (the first year); units of every
    pollutant (the file's ``units`` attributes, else ``units``, the config's ``data.units``), the
    same in every year; elevation units, range, relief (at least ``elevation_min_relief_m``) and
    the same field as in ``reference``; the NaN fraction of every variable inside the domain mask
    (one streamed dask pass).

    Raises:
        DataValidationError: naming the file, the variable and the numbers.
    """
    src = str(source or ds.encoding.get("source", "<dataset>"))
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise DataValidationError(
            f"{src}: variable(s) {', '.join(map(repr, missing))} missing "
            f"(the file has: {', '.join(sorted(map(str, ds.data_vars)))})"
        )
    times, step_h = _check_time(ds, src, year)
    lat2d, lon2d, (ydim, xdim) = spatial_coords(ds, src)
    ny, nx = lat2d.shape
    time_varying: dict[str, bool] = {}
    for name in variables:
        var = ds[name]
        if var.dims == ("time", ydim, xdim):
            time_varying[name] = True
        elif name in STATIC_ALLOWED and var.dims == (ydim, xdim):
            time_varying[name] = False
        else:
            expected = f"('time', {ydim!r}, {xdim!r}) = ({times.size}, {ny}, {nx})"
            if name in STATIC_ALLOWED:
                expected += f" or ({ydim!r}, {xdim!r})"
            raise DataValidationError(
                f"{src}: variable {name!r} has dimensions {var.dims} of shape {var.shape}; "
                f"expected {expected} (wrong grid or dimensions)"
            )
    if reference is not None:
        if (ny, nx) != reference.grid_shape:
            raise DataValidationError(
                f"{src}: grid {ny} x {nx} differs from {reference.grid_shape[0]} x "
                f"{reference.grid_shape[1]} in {reference.source} (variable 'lat2d')"
            )
        dlat = float(np.max(np.abs(lat2d - reference.lat2d)))
        dlon = float(np.max(np.abs(lon2d - reference.lon2d)))
        if max(dlat, dlon) > 1e-6:
            raise DataValidationError(
                f"{src}: latitude/longitude differ from {reference.source} by up to "
                f"{dlat:.3g} / {dlon:.3g} degrees; all years must share one grid"
            )
        if not np.isclose(step_h, reference.time_step_h):
            raise DataValidationError(
                f"{src}: variable 'time' has a step of {step_h:g} h but {reference.source} has "
                f"{reference.time_step_h:g} h"
            )
    mask, mask_name = _mask(ds, src, (ydim, xdim))
    found_units = _units(ds, src, variables, units or {}, reference)
    elevation_m = None
    if "elevation" in variables:
        elevation_m = _check_elevation(
            ds,
            src,
            elevation_range_m,
            min_relief_m=elevation_min_relief_m,
            reference=reference,
        )

    # NaN counts per time step, inside and outside the mask, in one streamed pass.
    lazy = {}
    for name in variables:
        arr = ds[name].data
        arr = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))
        nan = da.isnan(arr)
        lazy[name] = ((nan & mask).sum(axis=(-2, -1)), (nan & ~mask).sum(axis=(-2, -1)))
    (computed,) = dask.compute(lazy)
    n_mask = int(mask.sum())
    nan_in: dict[str, int] = {}
    nan_out: dict[str, int] = {}
    for name, (per_t_in, per_t_out) in computed.items():
        per_t_in = np.atleast_1d(np.asarray(per_t_in))
        nan_in[name] = int(per_t_in.sum())
        nan_out[name] = int(np.sum(per_t_out))
        total = n_mask * per_t_in.size
        fraction = nan_in[name] / total
        if fraction > max_nan_fraction:
            raise DataValidationError(
                f"{src}: variable {name!r} is {fraction:.2%} NaN inside the domain mask "
                f"({nan_in[name]} of {total} values), above data.max_nan_fraction = "
                f"{max_nan_fraction:.2%}"
            )
        full = np.flatnonzero(per_t_in == n_mask)
        if full.size:
            when = times[full[0]] if time_varying[name] else "(static field)"
            raise DataValidationError(
                f"{src}: variable {name!r} is NaN everywhere in the domain at {when} "
                f"({full.size} such time step(s)); a missing field cannot be filled"
            )
    return YearInfo(
        source=src,
        year=int(year) if year is not None else int(str(times[0])[:4]),
        n_times=int(times.size),
        time_start=times[0].astype("datetime64[s]"),
        time_step_h=float(step_h),
        dims=("time", ydim, xdim),
        lat2d=lat2d,
        lon2d=lon2d,
        mask=mask,
        mask_variable=mask_name,
        time_varying=time_varying,
        nan_counts=nan_in,
        nan_outside_mask=nan_out,
        units=found_units,
        elevation_m=elevation_m,
    )

"""Open and validate the yearly input files (netCDF or Zarr), lazily with xarray + dask.

The input layout (what users have and what the demo generator writes): one file per year, hourly
(or any uniform step), with

* the data variables of ``aqnet.config.INPUT_VARIABLES`` on dimensions ``(time, y, x)``;
  ``elevation`` and ``population`` (and the mask) may be static, ``(y, x)``;
* 2-D latitude/longitude ``lat2d``/``lon2d`` (coordinates or variables; ``lat``/``lon`` or
  ``latitude``/``longitude`` are accepted too) whose dimensions are the grid's ``(y, x)``;
* where present, a land/domain mask (``mask``, ``domain_mask``, ``land_mask``, ``landmask`` or
  ``lsm``; non-zero = inside the domain); without one every cell is inside;
* ``elevation`` in metres (its ``units`` attribute says so).

:func:`validate_year` checks all of this before any work is done and raises
:class:`DataValidationError` naming the file and the variable. NaNs inside the domain mask are
counted; above ``max_nan_fraction`` of a variable's values the file is refused, below it they are
**filled** by :func:`fill_nans` with the value of the nearest valid cell of the same time step
(before regridding), and the counts go into the cache's metadata. NaNs outside the mask are filled
the same way and counted separately. A time step with no valid value inside the domain cannot be
filled and is refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from aqnet.config import INPUT_VARIABLES, POLLUTANTS

STATIC_ALLOWED: tuple[str, ...] = ("elevation", "population")
"""Variables that may come without a time dimension."""
MASK_NAMES: tuple[str, ...] = ("mask", "domain_mask", "land_mask", "landmask", "lsm")
LAT_NAMES: tuple[str, ...] = ("lat2d", "lat", "latitude")
LON_NAMES: tuple[str, ...] = ("lon2d", "lon", "longitude")
METRE_UNITS: frozenset[str] = frozenset({"m", "metre", "metres", "meter", "meters", "m asl"})
NAN_FILL_METHOD = (
    "NaNs are filled before regridding with the value of the nearest valid cell of the same "
    "time step (scipy.ndimage.distance_transform_edt); counts per variable are in nan_counts "
    "(inside the domain mask, checked against data.max_nan_fraction) and nan_outside_mask"
)


class DataValidationError(ValueError):
    """An input file that cannot be used; the message names the file and the variable."""


@dataclasses.dataclass
class YearInfo:
    """What :func:`validate_year` learnt about one input file.

    Attributes:
        source: the file.
        year: calendar year of its time steps.
        n_times: number of time steps.
        time_start: first time step.
        time_step_h: the (uniform) time step in hours.
        dims: ``(time_dim, y_dim, x_dim)``.
        lat2d, lon2d: ``(ny, nx)`` cell centres, degrees.
        mask: ``(ny, nx)`` bool, the domain mask (all True without a mask variable).
        mask_variable: the name of the mask variable, or None.
        time_varying: ``{var: bool}`` whether each variable has a time dimension.
        nan_counts: ``{var: int}`` NaN values inside the mask (static variables: cells).
        nan_outside_mask: ``{var: int}`` NaN values outside the mask.
        units: ``{var: units}`` of every variable that has them (the file's ``units`` attribute,
            else ``data.units``); every pollutant has them.
        elevation_m: ``(ny, nx)`` the elevation field (metres), compared across years.
    """

    source: str
    year: int
    n_times: int
    time_start: np.datetime64
    time_step_h: float
    dims: tuple[str, str, str]
    lat2d: np.ndarray
    lon2d: np.ndarray
    mask: np.ndarray
    mask_variable: str | None
    time_varying: dict[str, bool]
    nan_counts: dict[str, int]
    nan_outside_mask: dict[str, int]
    units: dict[str, str] = dataclasses.field(default_factory=dict)
    elevation_m: np.ndarray | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.lat2d.shape  # type: ignore[return-value]

    def times(self) -> np.ndarray:
        """``(n_times,)`` datetime64[s] time steps."""
        step = np.timedelta64(int(round(self.time_step_h * 3600)), "s")
        return self.time_start.astype("datetime64[s]") + step * np.arange(self.n_times)


def is_zarr(path: str | Path) -> bool:
    """A Zarr store: a ``.zarr`` path or a folder with Zarr metadata."""
    p = Path(path)
    return p.suffix == ".zarr" or (
        p.is_dir() and any((p / m).exists() for m in (".zgroup", ".zattrs", "zarr.json"))
    )


def open_year(path: str | Path, *, chunks: dict[str, int] | None = None) -> xr.Dataset:
    """Open one yearly file lazily (dask arrays; the file's own chunks unless ``chunks`` says).

    Raises:
        DataValidationError: the file is missing or cannot be opened.
    """
    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{path}: input file not found")
    try:
        if is_zarr(path):
            ds = xr.open_zarr(path, chunks=chunks if chunks is not None else {})
        else:
            ds = xr.open_dataset(path, chunks=chunks if chunks is not None else {})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataValidationError(f"{path}: cannot be opened as netCDF or Zarr: {exc}") from exc
    ds.encoding["source"] = str(path)
    return ds


_YEAR_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")


def infer_year(path: str | Path, ds: xr.Dataset | None = None) -> int:
    """The year of a file: from its name (``data_2013_china.zarr``) and/or its time coordinate.

    Raises:
        DataValidationError: no year in the name and no time coordinate, or the two disagree.
    """
    path = Path(path)
    found = {int(y) for y in _YEAR_IN_NAME.findall(path.name)}
    name_year = found.pop() if len(found) == 1 else None
    time_year = None
    if ds is not None and "time" in ds.variables and ds["time"].size:
        first = ds["time"].values[0]
        if np.issubdtype(np.asarray(first).dtype, np.datetime64):
            time_year = int(str(np.datetime_as_string(first, unit="Y")))
    if name_year is not None and time_year is not None and name_year != time_year:
        raise DataValidationError(
            f"{path}: the file name says year {name_year} but its first time step is in {time_year}"
        )
    year = name_year if name_year is not None else time_year
    if year is None:
        raise DataValidationError(
            f"{path}: cannot tell the year: no single 4-digit year in the file name and no "
            "decodable time coordinate"
        )
    return year


def spatial_coords(ds: xr.Dataset, source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """``(lat2d, lon2d, (y_dim, x_dim))``; 1-D latitude/longitude dimensions are broadcast.

    Raises:
        DataValidationError: no latitude/longitude, or of mismatched or unsupported shapes.
    """
    lat_name = next((n for n in LAT_NAMES if n in ds.variables), None)
    lon_name = next((n for n in LON_NAMES if n in ds.variables), None)
    if lat_name is None or lon_name is None:
        missing = "latitude" if lat_name is None else "longitude"
        raise DataValidationError(
            f"{source}: no {missing} variable (looked for "
            f"{', '.join(LAT_NAMES if lat_name is None else LON_NAMES)})"
        )
    lat, lon = ds[lat_name], ds[lon_name]
    if lat.ndim == 2 and lon.ndim == 2:
        if lat.dims != lon.dims:
            raise DataValidationError(
                f"{source}: variable {lat_name!r} has dimensions {lat.dims} but {lon_name!r} "
                f"has {lon.dims}; they must share the grid's (y, x)"
            )
        ydim, xdim = lat.dims
        return np.asarray(lat.values, float), np.asarray(lon.values, float), (ydim, xdim)
    if lat.ndim == 1 and lon.ndim == 1 and lat.dims != lon.dims:
        lon2d, lat2d = np.meshgrid(np.asarray(lon.values, float), np.asarray(lat.values, float))
        return lat2d, lon2d, (lat.dims[0], lon.dims[0])
    raise DataValidationError(
        f"{source}: variables {lat_name!r} {lat.dims} and {lon_name!r} {lon.dims} are neither "
        "2-D on (y, x) nor 1-D on two different dimensions"
    )


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


def fill_nans(field: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaNs of ``field (..., ny, nx)`` from the nearest valid cell of the same 2-D slice.

    Returns ``(filled float32 copy (or the input when it has no NaN), number filled)``. A slice
    that is entirely NaN is left as it is (validation refuses such inputs first).
    """
    nan = np.isnan(field)
    n = int(nan.sum())
    if n == 0:
        return field, 0
    out = np.array(field, dtype=np.float32, copy=True)
    flat_out = out.reshape(-1, *out.shape[-2:])
    flat_nan = nan.reshape(-1, *nan.shape[-2:])
    for k in np.flatnonzero(flat_nan.any(axis=(1, 2))):
        if flat_nan[k].all():
            continue
        idx = ndimage.distance_transform_edt(
            flat_nan[k], return_distances=False, return_indices=True
        )
        flat_out[k] = flat_out[k][tuple(idx)]
    return out, n


def source_info(path: str | Path) -> dict[str, Any]:
    """Size (bytes; a Zarr folder's files summed) and modification time of an input file."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        mtime = max([p.stat().st_mtime, *(f.stat().st_mtime for f in files)])
    else:
        st = p.stat()
        size, mtime = st.st_size, st.st_mtime
    return {"path": str(p.resolve()), "size_bytes": int(size), "mtime": float(mtime)}

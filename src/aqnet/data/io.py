"""Open the yearly input files (netCDF or Zarr), lazily with xarray + dask, and their layout.

The input layout (what users have and what the demo generator writes): one file per year, hourly
(or any uniform step), with

* the data variables of ``aqnet.config.INPUT_VARIABLES`` on dimensions ``(time, y, x)``;
  ``elevation`` and ``population`` (and the mask) may be static, ``(y, x)``;
* 2-D latitude/longitude ``lat2d``/``lon2d`` (coordinates or variables; ``lat``/``lon`` or
  ``latitude``/``longitude`` are accepted too) whose dimensions are the grid's ``(y, x)``;
* where present, a land/domain mask (``mask``, ``domain_mask``, ``land_mask``, ``landmask`` or
  ``lsm``; non-zero = inside the domain); without one every cell is inside;
* ``elevation`` in metres (its ``units`` attribute says so).

:func:`aqnet.data.validate.validate_year` checks all of this before any work is done and
raises :class:`DataValidationError` naming the file and the variable; the NaNs it counts inside
the domain mask (and, separately, outside it) are **filled** by :func:`fill_nans` with the value
of the nearest valid cell of the same time step (before regridding).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy import ndimage

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
    """What :func:`aqnet.data.validate.validate_year` learnt about one input file.

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

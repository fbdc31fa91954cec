"""The demo files: one year as a Dataset in the input layout, and the netCDF files on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from aqnet.atomic import atomic_save
from aqnet.data.demo.emissions import static_fields
from aqnet.data.demo.simulate import simulate_year
from aqnet.data.demo.terrain import BLOCKED_FLOWS, DEMO_BLOCKED_FLOW, Terrain, load_terrain

UNITS: dict[str, str] = {
    "u": "m s-1",
    "v": "m s-1",
    "temp": "K",
    "rh": "%",
    "psfc": "Pa",
    "pm25": "ug m-3",
    "pm10": "ug m-3",
    "so2": "ug m-3",
    "no2": "ug m-3",
    "co": "mg m-3",
    "o3": "ug m-3",
    "elevation": "m",
    "population": "people km-2",
}
LONG_NAMES: dict[str, str] = {
    "u": "eastward wind at 10 m",
    "v": "northward wind at 10 m",
    "temp": "air temperature at 2 m",
    "rh": "relative humidity at 2 m",
    "psfc": "surface pressure",
    "pm25": "PM2.5 mass concentration",
    "pm10": "PM10 mass concentration",
    "so2": "sulfur dioxide concentration",
    "no2": "nitrogen dioxide concentration",
    "co": "carbon monoxide concentration",
    "o3": "ozone concentration",
    "elevation": "surface elevation above sea level (sea clipped to 0 m)",
    "population": "population density",
}


def demo_dataset(
    terrain: Terrain, *, seed: int, year: int, hours: int, blocked_flow: str = DEMO_BLOCKED_FLOW
) -> xr.Dataset:
    """One demo year as an ``xarray.Dataset`` in the input layout (rows north to south)."""
    fields = simulate_year(terrain, seed=seed, year=year, hours=hours, blocked_flow=blocked_flow)
    static = static_fields(terrain, seed)
    flip = slice(None, None, -1)  # files hold rows from north to south
    lon2d, lat2d = np.meshgrid(terrain.lon, terrain.lat[flip])
    time = pd.date_range(f"{year}-01-01", periods=hours, freq="h")
    dims3, dims2 = ("time", "y", "x"), ("y", "x")
    data_vars: dict[str, tuple] = {}
    for name, arr in fields.items():
        data_vars[name] = (
            dims3,
            arr[:, flip, :],
            {"units": UNITS[name], "long_name": LONG_NAMES[name]},
        )
    data_vars["elevation"] = (
        dims2,
        terrain.elevation_m[flip].astype(np.float32),
        {"units": UNITS["elevation"], "long_name": LONG_NAMES["elevation"]},
    )
    data_vars["population"] = (
        dims2,
        static.population[flip].astype(np.float32),
        {"units": UNITS["population"], "long_name": LONG_NAMES["population"]},
    )
    data_vars["mask"] = (
        dims2,
        terrain.land[flip].astype(np.int8),
        {"long_name": "land/domain mask (1 = inside the domain)", "flag_values": "0 1"},
    )
    return xr.Dataset(
        data_vars,
        coords={
            "time": ("time", time),
            "lat2d": (dims2, lat2d, {"units": "degrees_north", "long_name": "latitude"}),
            "lon2d": (dims2, lon2d, {"units": "degrees_east", "long_name": "longitude"}),
        },
        attrs={
            "title": f"aqnet demo air-quality data, {year}",
            "source": "aqnet.data.demo: matplotlib sample DEM (topobathy.npz), synthetic "
            "meteorology and an advection-diffusion transport model",
            "seed": int(seed),
            "year": int(year),
            "blocked_flow": blocked_flow,
            "Conventions": "CF-1.8",
        },
    )


def make_demo_data(
    out_dir: str | Path,
    *,
    seed: int,
    years: Sequence[int],
    hours: int,
    ny: int,
    nx: int,
    blocked_flow: str = DEMO_BLOCKED_FLOW,
) -> list[Path]:
    """Write ``demo_<year>.nc`` for each year into ``out_dir``; return the paths in year order.

    ``blocked_flow`` (``data.demo.blocked_flow``): the direction of steep-slope flow the terrain
    blocks (:func:`terrain_wind`).

    Raises:
        ValueError: duplicate years, fewer than 8 rows/columns, no hours or an unknown
            ``blocked_flow``.
    """
    if blocked_flow not in BLOCKED_FLOWS:
        raise ValueError(
            f"make_demo_data: blocked_flow must be one of {list(BLOCKED_FLOWS)}, got "
            f"{blocked_flow!r}"
        )
    years = [int(y) for y in years]
    if len(set(years)) != len(years) or not years:
        raise ValueError(f"make_demo_data: years must be distinct and non-empty, got {years}")
    if ny < 8 or nx < 8:
        raise ValueError(
            f"make_demo_data: the demo grid needs at least 8 x 8 cells, got {ny} x {nx}"
        )
    if hours < 1:
        raise ValueError(f"make_demo_data: hours must be >= 1, got {hours}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    terrain = load_terrain(ny, nx)
    paths = []
    for year in years:
        ds = demo_dataset(terrain, seed=seed, year=year, hours=hours, blocked_flow=blocked_flow)
        encoding = {
            name: {
                "dtype": "float32",
                "zlib": True,
                "complevel": 1,
                "chunksizes": (min(hours, 24), ny, nx),
            }
            for name in ds.data_vars
            if ds[name].dims[0] == "time"
        }
        encoding["time"] = {"units": f"hours since {year}-01-01 00:00:00", "dtype": "int32"}
        path = out / f"demo_{year}.nc"
        atomic_save(lambda tmp, ds=ds, enc=encoding: ds.to_netcdf(tmp, encoding=enc), path)
        umask = os.umask(0)
        os.umask(umask)
        path.chmod(0o666 & ~umask)  # the temporary file was created private
        paths.append(path)
    return paths

"""Checks that build_cache makes so that nothing after the fine-tune fails on its inputs:
pollutant units (the researchers' Zarr stores carry none) and a plausible elevation in metres."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from aqnet.config import POLLUTANTS
from aqnet.data import DataValidationError, build_cache, read_meta
from aqnet.data.validate import validate_year
from aqnet.report.evaluate import pollutant_units


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    with xr.open_dataset(src) as ds:
        ds = ds.load()
    edit(ds)
    ds.to_netcdf(dst)
    return dst


def _strip_pollutant_units(ds: xr.Dataset) -> None:
    for name in POLLUTANTS:
        ds[name].attrs.pop("units", None)


def test_pollutants_without_units_are_refused_by_build_cache_or_take_the_configs(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    bare = {
        y: _rewrite(p, tmp_path / f"bare_{y}.nc", _strip_pollutant_units)
        for y, p in demo_files.items()
    }
    out = tmp_path / "cache"
    first = min(bare)
    with pytest.raises(DataValidationError) as err:
        build_cache(tiny_config, bare, out)
    msg = str(err.value)
    assert msg.startswith(f"{bare[first]}: pollutant variable(s) 'pm25', 'pm10', 'so2', 'no2'")
    assert "have no units attribute" in msg and "data: {units: {pm25: <units>, pm10:" in msg
    assert not out.exists()  # refused before any work

    # Explicit units in the config: accepted, recorded in meta.json, and what evaluate reads.
    with xr.open_dataset(demo_files[first]) as ds:
        demo_units = {p: ds[p].attrs["units"] for p in POLLUTANTS}
    cfg = copy.deepcopy(tiny_config)
    cfg["data"]["units"] = {p: f"{u}" for p, u in demo_units.items()}
    build_cache(cfg, bare, out)
    meta = read_meta(out)
    assert {p: meta["units"][p] for p in POLLUTANTS} == demo_units
    assert pollutant_units({"units": meta["units"]}) == [demo_units[p] for p in POLLUTANTS]

    # A config unit that contradicts the file's attribute is refused, naming both.
    cfg["data"]["units"] = {"pm25": "ppb"}
    with pytest.raises(DataValidationError, match=r"'pm25': '.+' in the file, 'ppb' in data"):
        build_cache(cfg, demo_files, tmp_path / "unused")


def test_units_that_change_between_years_are_refused(demo_files: dict[int, Path]) -> None:
    years = sorted(demo_files)
    with xr.open_dataset(demo_files[years[0]]) as a, xr.open_dataset(demo_files[years[1]]) as b:
        ref = validate_year(a, source="a.nc", year=years[0])
        b = b.load()
        b["co"].attrs["units"] = "ppm"
        with pytest.raises(DataValidationError, match=r"units differ between years: 'co': "):
            validate_year(b, source="b.nc", year=years[1], reference=ref)


def test_elevation_in_km_labelled_m_is_refused_by_build_cache(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    def to_km(ds: xr.Dataset) -> None:
        attrs = dict(ds["elevation"].attrs)
        ds["elevation"] = ds["elevation"] / 1000.0
        ds["elevation"].attrs = attrs  # still says "m"

    years = sorted(demo_files)
    km = {y: _rewrite(p, tmp_path / f"km_{y}.nc", to_km) for y, p in demo_files.items()}
    with xr.open_dataset(km[years[0]]) as ds:
        top = float(ds["elevation"].max())
        low = float(ds["elevation"].min())
    assert ds["elevation"].attrs["units"] == "m" and top < 10  # a few "m" of relief
    with pytest.raises(DataValidationError) as err:
        build_cache(tiny_config, km, tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{km[years[0]]}: variable 'elevation' spans [{low:.2f}, {top:.2f}] m")
    assert f"a relief of {top - low:.2f} m" in msg and "kilometres labelled 'm'" in msg

    # Only one year in km: caught by the comparison with the first year.
    mixed = {**demo_files, years[1]: km[years[1]]}
    cfg = copy.deepcopy(tiny_config)
    cfg["data"]["elevation_min_relief_m"] = 0.0  # a flat domain: the relief says nothing
    with pytest.raises(DataValidationError) as err:
        build_cache(cfg, mixed, tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{km[years[1]]}: variable 'elevation' (range [")
    assert f"differs from {demo_files[years[0]]}'s" in msg and "the same in every year" in msg

"""Input validation: every refused input is named with its file, variable and numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from aqnet.data.io import (
    DataValidationError,
    fill_nans,
    infer_year,
    open_year,
)
from aqnet.data.validate import validate_year

SRC = "data_2013.nc"


@pytest.fixture()
def ds(demo_files: dict[int, Path]) -> xr.Dataset:
    """A fresh in-memory copy of the 2013 demo file (tests modify it)."""
    with xr.open_dataset(demo_files[2013]) as opened:
        return opened.load()


def _validate(ds: xr.Dataset, **kwargs: object) -> object:
    return validate_year(ds, source=SRC, year=2013, **kwargs)  # type: ignore[arg-type]


def test_valid_demo_file_passes(ds: xr.Dataset) -> None:
    info = _validate(ds)
    assert info.n_times == 120 and info.time_step_h == 1.0 and info.grid_shape == (24, 48)
    assert info.mask_variable == "mask" and 0 < info.mask.mean() < 1
    assert info.time_varying["u"] and not info.time_varying["elevation"]
    assert set(info.nan_counts.values()) == {0}


def test_missing_variable(ds: xr.Dataset) -> None:
    with pytest.raises(DataValidationError, match=r"data_2013\.nc: variable\(s\) 'o3' missing"):
        _validate(ds.drop_vars("o3"))


def test_wrong_dimensions(ds: xr.Dataset) -> None:
    bad = ds.assign(u=ds["u"].transpose("time", "x", "y"))
    with pytest.raises(
        DataValidationError,
        match=r"data_2013\.nc: variable 'u' has dimensions \('time', 'x', 'y'\).*expected "
        r"\('time', 'y', 'x'\) = \(120, 24, 48\)",
    ):
        _validate(bad)
    # a pollutant may not be static, elevation may
    with pytest.raises(DataValidationError, match=r"variable 'pm25' has dimensions \('y', 'x'\)"):
        _validate(ds.assign(pm25=ds["pm25"].isel(time=0, drop=True)))


def test_variable_on_another_grid(ds: xr.Dataset) -> None:
    coarse = xr.DataArray(
        np.zeros((120, 12, 24), np.float32), dims=("time", "y2", "x2"), attrs={"units": "K"}
    )
    with pytest.raises(
        DataValidationError, match=r"variable 'temp' has dimensions \('time', 'y2', 'x2'\)"
    ):
        _validate(ds.drop_vars("temp").assign(temp=coarse))


def test_grid_differs_between_years(ds: xr.Dataset) -> None:
    reference = _validate(ds)
    shifted = ds.assign_coords(lat2d=ds["lat2d"] + 0.1)
    with pytest.raises(DataValidationError, match=r"latitude/longitude differ from data_2013\.nc"):
        validate_year(shifted, source="data_2014.nc", reference=reference)


def test_missing_time_step(ds: xr.Dataset) -> None:
    gap = ds.isel(time=[i for i in range(120) if i != 10])
    with pytest.raises(
        DataValidationError,
        match=r"data_2013\.nc: variable 'time': missing time step\(s\) between "
        r"2013-01-01T09:00.* and 2013-01-01T11:00.* \(2 h where the step is 1 h",
    ):
        _validate(gap)


def test_non_uniform_time_step(ds: xr.Dataset) -> None:
    times = ds["time"].values.copy()
    times[50] = times[50] + np.timedelta64(30, "m")
    with pytest.raises(DataValidationError, match=r"variable 'time': non-uniform time step"):
        _validate(ds.assign_coords(time=times))


def test_time_outside_the_year(ds: xr.Dataset) -> None:
    with pytest.raises(
        DataValidationError, match=r"2013-01-01T00:00.* outside the file's year 2014"
    ):
        validate_year(ds, source=SRC, year=2014)


def test_nan_fraction_above_threshold(ds: xr.Dataset) -> None:
    pm = ds["pm25"].values.copy()
    mask = ds["mask"].values.astype(bool)
    rows, cols = np.nonzero(mask)
    n_bad = int(0.05 * pm.shape[0] * mask.sum())
    rng = np.random.default_rng(0)
    pick = rng.choice(pm.shape[0] * rows.size, size=n_bad, replace=False)
    t, k = np.divmod(pick, rows.size)
    pm[t, rows[k], cols[k]] = np.nan
    bad = ds.assign(pm25=(ds["pm25"].dims, pm, ds["pm25"].attrs))
    total = pm.shape[0] * int(mask.sum())
    with pytest.raises(
        DataValidationError,
        match=rf"data_2013\.nc: variable 'pm25' is 5\.00% NaN inside the domain mask "
        rf"\({n_bad} of {total} values\), above data\.max_nan_fraction = 1\.00%",
    ):
        _validate(bad, max_nan_fraction=0.01)
    # the same file passes with a higher threshold, and the NaNs are counted
    info = _validate(bad, max_nan_fraction=0.1)
    assert info.nan_counts["pm25"] == n_bad and info.nan_counts["o3"] == 0


def test_nans_outside_the_mask_do_not_count(ds: xr.Dataset) -> None:
    sea = ~ds["mask"].values.astype(bool)
    no2 = ds["no2"].values.copy()
    no2[:, sea] = np.nan  # a "masked" file: no data outside the domain
    info = _validate(ds.assign(no2=(ds["no2"].dims, no2, ds["no2"].attrs)))
    assert info.nan_counts["no2"] == 0
    assert info.nan_outside_mask["no2"] == 120 * int(sea.sum())


def test_time_step_entirely_nan(ds: xr.Dataset) -> None:
    co = ds["co"].values.copy()
    co[7] = np.nan
    with pytest.raises(
        DataValidationError,
        match=r"variable 'co' is NaN everywhere in the domain at 2013-01-01T07:00",
    ):
        _validate(ds.assign(co=(ds["co"].dims, co, ds["co"].attrs)), max_nan_fraction=0.05)


def test_elevation_units(ds: xr.Dataset) -> None:
    feet = ds.copy()
    feet["elevation"] = ds["elevation"] * 3.28084
    feet["elevation"].attrs["units"] = "ft"
    with pytest.raises(
        DataValidationError, match=r"variable 'elevation' has units 'ft'; expected metres"
    ):
        _validate(feet)
    no_units = ds.copy()
    no_units["elevation"] = ds["elevation"].copy()
    no_units["elevation"].attrs = {}
    with pytest.raises(DataValidationError, match=r"'elevation' has no units attribute"):
        _validate(no_units)


def test_elevation_out_of_range(ds: xr.Dataset) -> None:
    km_as_m = ds.copy()
    km_as_m["elevation"] = ds["elevation"] * 10.0
    km_as_m["elevation"].attrs["units"] = "m"
    top = float(ds["elevation"].max()) * 10.0
    with pytest.raises(
        DataValidationError,
        match=rf"'elevation' spans \[0\.0, {top:.1f}\] m, outside the plausible range "
        r"\[-500, 9000\] m",
    ):
        _validate(km_as_m)


def test_missing_latitude(ds: xr.Dataset) -> None:
    with pytest.raises(DataValidationError, match=r"data_2013\.nc: no latitude variable"):
        _validate(ds.drop_vars("lat2d"))


def test_fill_nans_takes_the_nearest_valid_cell() -> None:
    field = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    field[0, 1, 1] = np.nan
    field[0, 2, 3] = np.nan
    filled, n = fill_nans(field)
    assert n == 2 and np.isfinite(filled).all()
    assert filled[0, 1, 1] in (1.0, 4.0, 6.0, 9.0)  # one of its four neighbours
    assert filled[0, 2, 3] in (7.0, 10.0)
    untouched, n0 = fill_nans(np.ones((2, 2), np.float32))
    assert n0 == 0 and untouched.sum() == 4


def test_open_year_netcdf_and_zarr(demo_files: dict[int, Path], tmp_path: Path) -> None:
    nc = open_year(demo_files[2014])
    assert nc["u"].chunks is not None  # lazy, dask-backed
    store = tmp_path / "data_2014_china_masked.zarr"
    nc.to_zarr(store, zarr_format=2)
    z = open_year(store)
    info = validate_year(z, year=2014)
    assert info.source == str(store) and info.n_times == 120
    np.testing.assert_array_equal(z["o3"].values, nc["o3"].values)
    assert infer_year(store, z) == 2014
    with pytest.raises(DataValidationError, match=r"not found"):
        open_year(tmp_path / "nope.nc")


def test_infer_year(demo_files: dict[int, Path]) -> None:
    with xr.open_dataset(demo_files[2015]) as ds:
        assert infer_year(Path("anything.nc"), ds) == 2015
        with pytest.raises(
            DataValidationError,
            match=r"file name says year 2016 but its first time step is in 2015",
        ):
            infer_year(Path("data_2016.nc"), ds)
    assert infer_year(Path("/x/data_2018_china_masked.zarr")) == 2018
    with pytest.raises(DataValidationError, match="cannot tell the year"):
        infer_year(Path("data.nc"))

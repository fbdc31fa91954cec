"""The demo data set: layout, determinism, physical sanity, and mountains that block transport."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib import cbook

from aqnet.config import INPUT_VARIABLES, POLLUTANTS
from aqnet.data.demo import (
    Transport,
    demo_dataset,
    load_terrain,
    make_demo_data,
    simulate_tracer,
    terrain_gradient,
    terrain_wind,
)
from aqnet.orders import sector_of


@pytest.fixture(scope="module")
def demo_2013(demo_files: dict[int, Path]) -> xr.Dataset:
    with xr.open_dataset(demo_files[2013]) as ds:
        return ds.load()


def test_layout_is_the_input_layout(demo_files: dict[int, Path], demo_2013: xr.Dataset) -> None:
    assert sorted(demo_files) == [2013, 2014, 2015]
    assert [p.name for p in demo_files.values()] == ["demo_2013.nc", "demo_2014.nc", "demo_2015.nc"]
    ds = demo_2013
    assert dict(ds.sizes) == {"time": 120, "y": 24, "x": 48}
    for name in INPUT_VARIABLES:
        assert "units" in ds[name].attrs, name
        expected = ("y", "x") if name in ("elevation", "population") else ("time", "y", "x")
        assert ds[name].dims == expected, name
    assert ds["elevation"].attrs["units"] == "m"
    assert ds["mask"].dims == ("y", "x")
    assert set(np.unique(ds["mask"].values)) == {0, 1}
    assert ds["lat2d"].dims == ds["lon2d"].dims == ("y", "x")
    lat = ds["lat2d"].values
    assert lat[0, 0] > lat[-1, 0]  # rows north to south, like most reanalysis files
    times = ds["time"].values
    assert times[0] == np.datetime64("2013-01-01T00:00")
    assert np.all(np.diff(times) == np.timedelta64(1, "h"))
    with xr.open_dataset(demo_files[2015]) as ds15:
        assert str(ds15["time"].values[-1])[:4] == "2015"


def test_deterministic_for_a_seed(demo_files: dict[int, Path], tmp_path: Path) -> None:
    again = make_demo_data(tmp_path / "a", seed=0, years=[2013], hours=120, ny=24, nx=48)[0]
    other = make_demo_data(tmp_path / "b", seed=1, years=[2013], hours=120, ny=24, nx=48)[0]
    with (
        xr.open_dataset(demo_files[2013]) as ref,
        xr.open_dataset(again) as ds,
        xr.open_dataset(other) as ds_other,
    ):
        for name in INPUT_VARIABLES:
            np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
        assert not np.array_equal(ds_other["pm25"].values, ref["pm25"].values)
        assert not np.array_equal(ds_other["u"].values, ref["u"].values)
        np.testing.assert_array_equal(ds_other["elevation"].values, ref["elevation"].values)


def test_terrain_is_the_real_dem() -> None:
    dem = cbook.get_sample_data("topobathy.npz")
    dem_max = float(dem["topo"].max())
    terrain = load_terrain(40, 80)
    assert terrain.elevation_m.min() == 0.0  # sea clipped to 0 m
    assert 0.8 * dem_max < terrain.elevation_m.max() <= dem_max
    assert terrain.lat[0] == pytest.approx(float(dem["latitude"].min()), abs=1e-4)
    assert terrain.lon[-1] == pytest.approx(float(dem["longitude"].max()) - 360.0, abs=1e-4)
    assert 0.3 < terrain.land.mean() < 0.9
    assert np.all(terrain.elevation_m[~terrain.land] == 0.0)


def test_physically_sane(demo_2013: xr.Dataset) -> None:
    ds = demo_2013
    for name in POLLUTANTS:
        assert float(ds[name].min()) >= 0.0, f"{name} has negative concentrations"
        assert np.isfinite(ds[name].values).all()
    elev = ds["elevation"].values
    mask = ds["mask"].values.astype(bool)
    assert elev.min() == 0.0 and 1000.0 < elev.max() < 2300.0
    assert np.all(elev[~mask] == 0.0)
    # Temperature falls with elevation at about the standard lapse rate (6.5 K/km).
    t_mean = ds["temp"].mean("time").values
    slope = np.polyfit(elev[mask], t_mean[mask], 1)[0]
    assert -0.008 < slope < -0.005
    # Surface pressure: barometric, lower on higher ground at every hour.
    high, low = (
        np.unravel_index(elev.argmax(), elev.shape),
        np.unravel_index(elev.argmin(), elev.shape),
    )
    psfc = ds["psfc"].values
    assert np.all(psfc[:, high[0], high[1]] < psfc[:, low[0], low[1]] - 1e4)
    assert psfc.min() > 70_000 and psfc.max() < 105_000
    rh = ds["rh"].values
    assert rh.min() >= 5.0 and rh.max() <= 100.0
    # People live in the lowlands, not on the mountains nor at sea.
    pop = ds["population"].values
    assert np.all(pop[~mask] == 0.0)
    assert pop[mask & (elev < 100)].mean() > 5 * pop[mask & (elev > 800)].mean()
    # Ozone is titrated where NO2 is high.
    no2, o3 = ds["no2"].values[:, mask].ravel(), ds["o3"].values[:, mask].ravel()
    assert np.corrcoef(no2, o3)[0, 1] < -0.3
    # The wind turns through many of the 16 scan sectors over the year.
    sectors = sector_of(ds["u"].mean(("y", "x")).values, ds["v"].mean(("y", "x")).values)
    assert len(np.unique(sectors)) >= 8


def test_terrain_wind_blocks_flow_into_steep_slopes() -> None:
    gx = np.array([[0.0, 0.2, 0.2]])  # flat, steep slope rising to the east, same
    gy = np.zeros((1, 3))
    u, v = terrain_wind(np.array([[5.0, 5.0, 0.0]]), np.array([[0.0, 0.0, 5.0]]), gx, gy)
    assert u[0, 0] == 5.0  # flat ground: unchanged
    assert 0.0 <= u[0, 1] < 0.01 * 5.0  # straight into a 20 % slope: blocked
    assert (u[0, 2], v[0, 2]) == (0.0, 5.0)  # along the contour: unchanged
    u_down, _ = terrain_wind(np.array([[-5.0]]), np.zeros((1, 1)), gx[:, 1:2], gy[:, 1:2])
    assert u_down[0, 0] == -5.0  # downslope: unchanged


def test_transport_keeps_a_uniform_background_and_positivity() -> None:
    rng = np.random.default_rng(0)
    elev = rng.uniform(0, 2000, (10, 12))
    model = Transport(elevation_m=elev, dx_m=3000.0, dy_m=4000.0, background=[7.0, 0.0])
    u, v = rng.normal(0, 8, (10, 12)), rng.normal(0, 8, (10, 12))
    c = np.stack([np.full((10, 12), 7.0), rng.uniform(0, 1, (10, 12))])
    out = model.advance(c, u, v, 3600.0)
    np.testing.assert_allclose(out[0], 7.0, rtol=1e-12)
    assert out[1].min() >= 0.0
    assert out[1].sum() < c[1].sum()  # open boundaries with clean inflow drain the blob


def _ridge_case(blocking: bool) -> tuple[float, float]:
    ny, nx, dx = 12, 48, 4000.0
    x = np.broadcast_to(np.arange(nx, dtype=float), (ny, nx))
    ridge = 1500.0 * np.exp(-(((x - 24.0) / 2.5) ** 2))  # a north-south ridge mid-domain
    source = np.where(ridge < 50.0, 1.0, 0.0)  # people and emissions in the lowlands only
    conc = simulate_tracer(
        ridge,
        dx_m=dx,
        dy_m=dx,
        wind_u=np.full((ny, nx), 5.0),  # westerly: the west basin is upwind of the ridge
        wind_v=np.zeros((ny, nx)),
        source=source,
        lifetime_h=12.0,
        hours=36,
        blocking=blocking,
    )
    mean = conc[-12:].mean(axis=(0, 1))  # last 12 hours, averaged over rows: (nx,)
    return float(mean[15:20].mean()), float(mean[30:36].mean())  # upwind basin, lee side


def test_mountain_blocks_transport_upwind_basin_dirtier_than_lee() -> None:
    basin, lee = _ridge_case(blocking=True)
    assert basin > 2.0 * lee
    # Control: the same ridge ignored by the transport, pollution keeps piling up downwind.
    basin_free, lee_free = _ridge_case(blocking=False)
    assert lee_free > basin_free
    assert basin > basin_free * 0.95


def test_terrain_gradient_units() -> None:
    h = np.broadcast_to(np.arange(5.0) * 100.0, (3, 5))  # +100 m per column
    gx, gy = terrain_gradient(h, dx_m=1000.0, dy_m=1000.0)
    np.testing.assert_allclose(gx, 0.1)
    np.testing.assert_allclose(gy, 0.0)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 8 x 8"):
        make_demo_data(tmp_path, seed=0, years=[2013], hours=10, ny=4, nx=16)
    with pytest.raises(ValueError, match="distinct"):
        make_demo_data(tmp_path, seed=0, years=[2013, 2013], hours=10, ny=8, nx=8)


def test_demo_dataset_values_match_written_file(demo_files: dict[int, Path]) -> None:
    terrain = load_terrain(24, 48)
    ds = demo_dataset(terrain, seed=0, year=2014, hours=120)
    with xr.open_dataset(demo_files[2014]) as written:
        np.testing.assert_array_equal(written["o3"].values, ds["o3"].values)
        np.testing.assert_allclose(written["lat2d"].values, ds["lat2d"].values)

"""The training cache: round trip, training-only statistics, chunking, orders, failures, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from aqnet.cli import main
from aqnet.config import MODEL_VARIABLES, dump_config
from aqnet.data import DataValidationError, build_cache, load_static, load_stats, read_meta
from aqnet.orders import build_orders, grid_params, load_orders, orders_digest


def _physical(cache: Path, year: int) -> np.ndarray:
    """The cached year de-normalised: ``(T, V, H, W)`` float64 in physical units."""
    stats = load_stats(cache)
    arr = np.load(cache / f"year_{year}.npy").astype(np.float64)
    mean = np.array([stats[v]["mean"] for v in MODEL_VARIABLES])[None, :, None, None]
    std = np.array([stats[v]["std"] for v in MODEL_VARIABLES])[None, :, None, None]
    return arr * std + mean


def _regridded_by_xarray(path: Path, lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    """Independent reference: xarray's own linear interpolation of the input file."""
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    ds = ds.assign_coords(y=ds["lat2d"].values[:, 0], x=ds["lon2d"].values[0, :])
    return ds.drop_vars(["lat2d", "lon2d"]).interp(y=lat, x=lon)


def test_cache_files_and_meta(tiny_cache: Path, tiny_config: dict[str, Any]) -> None:
    names = {p.name for p in tiny_cache.iterdir()}
    assert names == {
        "meta.json",
        "stats.json",
        "static.npz",
        "wind_orders.npz",
        "year_2013.npy",
        "year_2014.npy",
        "year_2015.npy",
    }
    meta = read_meta(tiny_cache)
    assert meta["variables"] == list(MODEL_VARIABLES)
    assert meta["grid"]["ny"] == 16 and meta["grid"]["nx"] == 32
    assert meta["split"] == {"train": [2013], "val": [2014], "test": [2015]}
    assert meta["stats_years"] == [2013]
    assert meta["per_year"]["2014"]["n_times"] == 120
    assert meta["per_year"]["2014"]["time_start"] == "2014-01-01T00:00:00"
    assert meta["lead_times_h"] == [12, 24, 48, 96]
    assert meta["nan_counts"]["2013"]["pm25"] == 0
    assert "nearest valid cell" in meta["nan_fill"]
    src = meta["sources"]["2015"]
    assert src["path"].endswith("demo_2015.nc") and src["size_bytes"] > 0 and src["mtime"] > 0
    assert np.load(tiny_cache / "year_2013.npy", mmap_mode="r").shape == (120, 15, 16, 32)
    assert np.load(tiny_cache / "year_2013.npy", mmap_mode="r").dtype == np.float32


def test_round_trip_gives_back_the_regridded_input(
    tiny_cache: Path, demo_files: dict[int, Path]
) -> None:
    static = load_static(tiny_cache)
    lat, lon = static["lat"], static["lon"]
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0)  # rows south to north
    ref = _regridded_by_xarray(demo_files[2014], lat, lon)
    cached = _physical(tiny_cache, 2014)
    for name in ("u", "temp", "psfc", "pm25", "o3", "population", "elevation"):
        expected = ref[name].values
        expected = expected if expected.ndim == 3 else np.broadcast_to(expected, (120, 16, 32))
        got = cached[:, MODEL_VARIABLES.index(name)]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, atol=2e-5 * scale, err_msg=name)
    # lat/lon channels are the target grid's coordinates
    np.testing.assert_allclose(cached[3, MODEL_VARIABLES.index("lat"), :, 0], lat, atol=1e-4)
    np.testing.assert_allclose(cached[3, MODEL_VARIABLES.index("lon"), 0, :], lon, atol=1e-4)
    # static fields: elevation in metres, the mask from the data's own mask variable
    np.testing.assert_allclose(static["elevation_m"], ref["elevation"].values, atol=1e-2)
    np.testing.assert_array_equal(static["mask"], ref["mask"].values >= 0.5)
    assert static["elevation_m"].dtype == np.float32 and static["mask"].dtype == bool


def test_statistics_come_from_training_years_only(
    tiny_cache: Path,
    tiny_config: dict[str, Any],
    demo_files: dict[int, Path],
    tmp_path: Path,
) -> None:
    stats = load_stats(tiny_cache)
    train = _physical(tiny_cache, 2013)
    for i, name in enumerate(MODEL_VARIABLES):
        assert stats[name]["mean"] == pytest.approx(train[:, i].mean(), rel=1e-5, abs=1e-6)
        assert stats[name]["std"] == pytest.approx(train[:, i].std(), rel=1e-4)
    normalised = np.load(tiny_cache / "year_2013.npy")
    np.testing.assert_allclose(normalised.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    # Poison the validation and test years: the statistics must not move.
    poisoned = {2013: demo_files[2013]}
    for year in (2014, 2015):
        with xr.open_dataset(demo_files[year]) as ds:
            ds = ds.load()
        for name in ("pm25", "u", "temp"):
            ds[name] = ds[name] * 10.0 + 100.0
        poisoned[year] = tmp_path / f"poisoned_{year}.nc"
        ds.to_netcdf(poisoned[year])
    other = build_cache(tiny_config, poisoned, tmp_path / "cache")
    assert load_stats(other) == stats
    np.testing.assert_array_equal(
        np.load(other / "year_2013.npy"), np.load(tiny_cache / "year_2013.npy")
    )
    assert not np.allclose(np.load(other / "year_2014.npy"), np.load(tiny_cache / "year_2014.npy"))


def test_small_time_chunks_give_the_same_cache(
    tiny_cache: Path, tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["data"]["chunk_mb"] = 1  # a few time steps per chunk: dozens of chunks per year
    chunked = build_cache(cfg, demo_files, tmp_path / "chunked")
    ref, got = load_stats(tiny_cache), load_stats(chunked)
    for name in MODEL_VARIABLES:
        assert got[name]["mean"] == pytest.approx(ref[name]["mean"], rel=1e-9, abs=1e-9)
        assert got[name]["std"] == pytest.approx(ref[name]["std"], rel=1e-9)
    for year in (2013, 2015):
        np.testing.assert_allclose(
            np.load(chunked / f"year_{year}.npy"),
            np.load(tiny_cache / f"year_{year}.npy"),
            atol=1e-5,
        )


def test_wind_orders_file_and_digest(tiny_cache: Path) -> None:
    meta = read_meta(tiny_cache)
    orders, params, digest = load_orders(tiny_cache / "wind_orders.npz")
    assert digest == meta["wind_orders"]["digest"]
    assert params == grid_params(img_size=(16, 32), patch_size=2, region_patches=(2, 4))
    expected = build_orders((8, 16), region_patches=(2, 4))
    assert orders_digest(orders, params) == orders_digest(expected, params) == digest
    assert orders["global"].shape == (16, 128) and orders["regional"].shape == (16, 16, 8)
    for k in range(16):
        assert sorted(orders["global"][k]) == list(range(128))


def test_nans_below_threshold_are_filled_and_counted(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    with xr.open_dataset(demo_files[2014]) as ds:
        ds = ds.load()
    no2 = ds["no2"].values.copy()
    no2[5:8, 10, 20:25] = np.nan  # 15 values, all inside the domain? count what the mask says
    inside = int(np.isnan(no2[:, ds["mask"].values.astype(bool)]).sum())
    ds["no2"] = (ds["no2"].dims, no2, ds["no2"].attrs)
    holed = tmp_path / "holes_2014.nc"
    ds.to_netcdf(holed)
    cache = build_cache(tiny_config, {**demo_files, 2014: holed}, tmp_path / "cache")
    meta = read_meta(cache)
    assert meta["nan_counts"]["2014"]["no2"] == inside
    assert meta["nan_counts"]["2014"]["no2"] + meta["nan_outside_mask"]["2014"]["no2"] == 15
    assert meta["nan_filled"]["2014"]["no2"] == 15
    assert np.isfinite(np.load(cache / "year_2014.npy")).all()


def test_zarr_inputs_give_the_same_cache(
    tiny_cache: Path, tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    stores = {}
    for year, path in demo_files.items():
        with xr.open_dataset(path) as ds:
            stores[year] = tmp_path / f"data_{year}_china_masked.zarr"
            ds.to_zarr(stores[year], zarr_format=2)
    cache = build_cache(tiny_config, stores, tmp_path / "cache")
    ref = load_stats(tiny_cache)
    for name, value in load_stats(cache).items():
        assert value == pytest.approx(ref[name]), name
    np.testing.assert_allclose(
        np.load(cache / "year_2015.npy"), np.load(tiny_cache / "year_2015.npy"), atol=1e-6
    )


def test_failed_build_leaves_no_complete_cache(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    with xr.open_dataset(demo_files[2015]) as ds:
        broken = tmp_path / "broken_2015.nc"
        ds.drop_vars("so2").to_netcdf(broken)
    out = tmp_path / "cache"
    with pytest.raises(DataValidationError, match=r"broken_2015\.nc: variable\(s\) 'so2' missing"):
        build_cache(tiny_config, {**demo_files, 2015: broken}, out)
    assert not out.exists()
    # An existing cache stays as it was when a rebuild fails.
    build_cache(tiny_config, demo_files, out)
    before = (out / "meta.json").read_bytes()
    with pytest.raises(DataValidationError):
        build_cache(tiny_config, {**demo_files, 2015: broken}, out)
    assert (out / "meta.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_2015.nc", "cache"]


def test_split_year_without_file(tiny_config: dict[str, Any], demo_files: dict[int, Path]) -> None:
    with pytest.raises(ValueError, match=r"no input file for year\(s\) \[2015\] of data.split"):
        build_cache(tiny_config, {2013: demo_files[2013], 2014: demo_files[2014]}, "unused")


def test_cli_make_demo_data_and_build_cache(
    tiny_config: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["data"]["demo"]["years"] = [2013, 2014, 2015]
    cfg_path = tmp_path / "config.yaml"
    dump_config(cfg, cfg_path)
    demo_dir = tmp_path / "demo"
    assert main(["make-demo-data", "--config", str(cfg_path), "--out", str(demo_dir)]) == 0
    files = sorted(demo_dir.glob("demo_*.nc"))
    assert [p.name for p in files] == ["demo_2013.nc", "demo_2014.nc", "demo_2015.nc"]
    report = tmp_path / "build_cache.json"
    argv = ["build-cache", "--config", str(cfg_path), "--out", str(tmp_path / "cache")]
    assert main([*argv, "--inputs", *map(str, files), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    digest = read_meta(tmp_path / "cache")["wind_orders"]["digest"]
    assert f"wind orders digest {digest}" in out
    assert "build_cache: PASS" in out
    assert json.loads(report.read_text())["wind_orders_digest"] == digest
    # Bad input: one readable line and a non-zero exit.
    assert main([*argv, "--inputs", str(files[0]), str(files[1])]) == 1
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("build_cache:")][0]
    assert line.startswith("build_cache: FAIL - build_cache: no input file for year(s) [2015]")
    assert main([*argv]) == 1  # no --inputs with data.source demo
    assert "no --inputs given" in capsys.readouterr().out


def test_config_problems_fail_before_any_work(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], tmp_path: Path
) -> None:
    long_leads = copy.deepcopy(tiny_config)
    long_leads["lead_times_h"] = [12, 240]
    with pytest.raises(ValueError, match=r"too few time steps \{2013: 120, 2014: 120, 2015: 120\}"):
        build_cache(long_leads, demo_files, tmp_path / "a")
    odd_grid = copy.deepcopy(tiny_config)
    odd_grid["grid"]["nx"] = 36  # 18 patch columns: regions of 4 columns do not tile them
    with pytest.raises(ValueError, match=r"region_patches 2x4 must divide the patch grid 8x18"):
        build_cache(odd_grid, demo_files, tmp_path / "b")
    assert sorted(tmp_path.iterdir()) == []

"""Regridding onto the target grid: exact for linear fields, rows flipped to south-to-north."""

from __future__ import annotations

import numpy as np
import pytest

from aqnet.data.regrid import Regridder, linear_weights, target_grid


def _linear(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return 3.0 * lat - 2.0 * lon + 7.0


def test_rectilinear_north_to_south_input_is_flipped_and_exact() -> None:
    lat1 = np.linspace(50.0, 40.0, 11)  # rows north to south
    lon1 = np.linspace(100.0, 120.0, 21)
    lon2d, lat2d = np.meshgrid(lon1, lat1)
    lat, lon = target_grid(lat2d, lon2d, ny=7, nx=9)
    assert lat[0] == 40.0 and lat[-1] == 50.0 and lon[0] == 100.0 and lon[-1] == 120.0
    rg = Regridder(src_lat2d=lat2d, src_lon2d=lon2d, dst_lat=lat, dst_lon=lon)
    assert rg.mode == "rectilinear"
    field = np.stack([_linear(lat2d, lon2d), 2 * _linear(lat2d, lon2d)])  # (2, ny, nx)
    out = rg(field)
    assert out.shape == (2, 7, 9) and out.dtype == np.float32
    expected = _linear(lat[:, None], lon[None, :])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1], 2 * expected, rtol=1e-6)
    # row 0 of the output is the southernmost latitude
    assert out[0, 0, 0] == pytest.approx(_linear(40.0, 100.0), rel=1e-6)


def test_curvilinear_input_uses_triangulation() -> None:
    rows, cols = np.meshgrid(np.arange(15.0), np.arange(20.0), indexing="ij")
    angle = np.radians(10.0)  # a rotated grid: latitude varies along both axes
    lat2d = 40.0 + 0.5 * (rows * np.cos(angle) + cols * np.sin(angle))
    lon2d = 100.0 + 0.5 * (cols * np.cos(angle) - rows * np.sin(angle))
    lat, lon = np.linspace(43.0, 46.0, 5), np.linspace(101.0, 105.0, 6)  # inside the hull
    rg = Regridder(src_lat2d=lat2d, src_lon2d=lon2d, dst_lat=lat, dst_lon=lon)
    assert rg.mode == "curvilinear" and rg.n_extrapolated == 0
    out = rg(_linear(lat2d, lon2d)[None])
    np.testing.assert_allclose(out[0], _linear(lat[:, None], lon[None, :]), rtol=1e-5)
    outside = Regridder(
        src_lat2d=lat2d, src_lon2d=lon2d, dst_lat=np.array([39.0, 44.0]), dst_lon=np.array([102.0])
    )
    assert outside.n_extrapolated == 1  # (39 N, 102 E) lies south of the rotated grid


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"target latitude range \[39\.0000, 45\.0000\] exceeds"):
        linear_weights(np.linspace(40, 50, 5), np.array([39.0, 45.0]), name="latitude")
    with pytest.raises(ValueError, match="not strictly monotonic"):
        linear_weights(np.array([1.0, 1.0, 2.0]), np.array([1.5]))
    lon2d, lat2d = np.meshgrid(np.arange(4.0), np.arange(3.0))
    rg = Regridder(src_lat2d=lat2d, src_lon2d=lon2d, dst_lat=np.arange(3.0), dst_lon=np.arange(4.0))
    with pytest.raises(ValueError, match=r"field of shape \(2, 4\) does not end with"):
        rg(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="transpose the input"):
        # latitude along the columns, longitude along the rows
        Regridder(src_lat2d=lon2d, src_lon2d=lat2d, dst_lat=np.arange(3.0), dst_lon=np.arange(2.0))

"""The demo terrain: the sample DEM on the demo grid, its gradient, and the wind it deflects."""

from __future__ import annotations

import dataclasses

import numpy as np
from matplotlib import cbook
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

DEM_SAMPLE = "topobathy.npz"
EARTH_RADIUS_M = 6_371_000.0
BLOCKING_SLOPE = 0.02  # s_b: upslope gradient (m/m) over which flow and diffusion are damped
BLOCKED_FLOWS: dict[str, float] = {"upslope": 1.0, "downslope": -1.0}
"""``terrain_wind``'s ``blocked_flow``: the sign applied to the uphill unit vector."""
DEMO_BLOCKED_FLOW = "downslope"
"""The demo's default (``data.demo.blocked_flow``): an effect the TopoFlow bias can represent, so
the demo is a known-answer test of the verdict (the formula's direction should help, the reversed
one should not)."""


@dataclasses.dataclass(frozen=True)
class Terrain:
    """Static fields of the demo grid, rows south to north.

    Attributes:
        lat: ``(ny,)`` degrees north, ascending.
        lon: ``(nx,)`` degrees east, ascending.
        elevation_m: ``(ny, nx)`` metres, sea clipped to 0.
        land: ``(ny, nx)`` bool, the domain mask.
        dx_m: ``(ny, 1)`` east-west cell size per row, metres.
        dy_m: north-south cell size, metres.
    """

    lat: np.ndarray
    lon: np.ndarray
    elevation_m: np.ndarray
    land: np.ndarray
    dx_m: np.ndarray
    dy_m: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.elevation_m.shape  # type: ignore[return-value]

    def gradient(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dh/dx, dh/dy)``, each ``(ny, nx)``, dimensionless (m per m)."""
        return terrain_gradient(self.elevation_m, dx_m=self.dx_m, dy_m=self.dy_m)

    def distance_to_sea_km(self) -> np.ndarray:
        """``(ny, nx)`` distance of each land cell to the nearest sea cell (0 on the sea)."""
        if self.land.all():
            return np.full(self.shape, 1e3)
        sampling = (self.dy_m / 1e3, float(np.mean(self.dx_m)) / 1e3)
        return ndimage.distance_transform_edt(self.land, sampling=sampling)

    def distance_to_land_km(self) -> np.ndarray:
        """``(ny, nx)`` distance of each sea cell to the nearest land cell (0 on land)."""
        if not self.land.any():
            return np.full(self.shape, 1e3)
        sampling = (self.dy_m / 1e3, float(np.mean(self.dx_m)) / 1e3)
        return ndimage.distance_transform_edt(~self.land, sampling=sampling)


def load_terrain(ny: int, nx: int) -> Terrain:
    """The sample DEM interpolated bilinearly onto an ``ny x nx`` grid over its own extent."""
    if ny < 2 or nx < 2:
        raise ValueError(f"demo grid must be at least 2 x 2 cells, got {ny} x {nx}")
    dem = cbook.get_sample_data(DEM_SAMPLE)
    topo = np.asarray(dem["topo"], dtype=np.float64)  # (91, 120), rows south to north
    dem_lat = np.asarray(dem["latitude"], dtype=np.float64)
    dem_lon = np.asarray(dem["longitude"], dtype=np.float64)
    lat = np.linspace(dem_lat.min(), dem_lat.max(), ny)
    lon = np.linspace(dem_lon.min(), dem_lon.max(), nx)
    interp = RegularGridInterpolator((dem_lat, dem_lon), topo, method="linear")
    mesh_lat, mesh_lon = np.meshgrid(lat, lon, indexing="ij")
    raw = interp(np.stack([mesh_lat, mesh_lon], axis=-1))  # (ny, nx)
    lon = np.where(lon > 180.0, lon - 360.0, lon)  # degrees east in [-180, 180)
    dlat = np.radians(lat[1] - lat[0])
    dlon = np.radians(lon[1] - lon[0])
    return Terrain(
        lat=lat,
        lon=lon,
        elevation_m=np.clip(raw, 0.0, None),
        land=raw > 0.0,
        dx_m=(EARTH_RADIUS_M * np.cos(np.radians(lat)) * dlon)[:, None],
        dy_m=float(EARTH_RADIUS_M * dlat),
    )


def terrain_gradient(
    elevation_m: np.ndarray, *, dx_m: np.ndarray | float, dy_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centred differences ``(dh/dx, dh/dy)`` of ``elevation_m (ny, nx)``, rows south to north."""
    grad_y = np.gradient(elevation_m, axis=0) / dy_m
    grad_x = np.gradient(elevation_m, axis=1) / np.asarray(dx_m)
    return grad_x, grad_y


def terrain_wind(
    u: np.ndarray,
    v: np.ndarray,
    grad_x: np.ndarray,
    grad_y: np.ndarray,
    *,
    blocking_slope: float = BLOCKING_SLOPE,
    blocked_flow: str = "upslope",
) -> tuple[np.ndarray, np.ndarray]:
    """Deflect a wind by the terrain: remove the fraction ``beta`` of its component into the slope.

    Args:
        u, v: ``(..., ny, nx)`` wind toward east / north, m s-1.
        grad_x, grad_y: ``(ny, nx)`` terrain gradient (m per m).
        blocking_slope: ``s_b``; ``beta = 1 - exp(-s_par / s_b)`` with ``s_par`` the gradient
            along the flow in the blocked direction.
        blocked_flow: ``"upslope"`` blocks flow climbing a steep slope (a high receptor does not
            see a low source); ``"downslope"`` blocks flow descending one (a low receptor does
            not see a high source: what the TopoFlow bias, which penalises a low query attending
            a high key, can represent; see :data:`BLOCKED_FLOWS`).

    Returns:
        ``(u, v)`` of the same shape: blocked against steep slopes in the blocked direction,
        turned along the contours.
    """
    if blocked_flow not in BLOCKED_FLOWS:
        raise ValueError(f"blocked_flow must be one of {list(BLOCKED_FLOWS)}, got {blocked_flow!r}")
    slope = np.hypot(grad_x, grad_y)
    safe = np.where(slope > 0, slope, 1.0)
    sign = BLOCKED_FLOWS[blocked_flow]
    # unit vector of the blocked direction: uphill, or downhill (0 on flat ground)
    nx_hat, ny_hat = sign * grad_x / safe, sign * grad_y / safe
    into = np.maximum(u * nx_hat + v * ny_hat, 0.0) * (slope > 0)  # speed into the slope
    speed = np.hypot(u, v)
    along = into * slope / np.where(speed > 0, speed, 1.0)  # upslope gradient along the flow
    beta = -np.expm1(-along / blocking_slope)
    return u - beta * into * nx_hat, v - beta * into * ny_hat

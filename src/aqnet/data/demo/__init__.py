r"""The demo data set: real terrain, a small meteorology and an advection-diffusion transport model.

``make_demo_data`` writes one netCDF file per year, ``demo_<year>.nc``, in exactly the layout of
the users' input files (see :mod:`aqnet.data.io`): dimensions ``(time, y, x)`` with rows from north
to south (as most reanalysis files are; the cache flips them), 2-D ``lat2d``/``lon2d`` coordinates,
an hourly ``time`` coordinate starting on 1 January of the year, the 13 variables of
``aqnet.config.INPUT_VARIABLES`` with ``units`` attributes (``elevation`` and ``population``
static, without time) and the domain mask ``mask`` (1 = land, inside the domain). Everything is a
deterministic function of ``(seed, year)``: the static fields (cities, ports) of ``seed``, the
weather noise and the daily emission factors of ``(seed, year)``.

Every year has the same climate - the same train of weather systems, the same emissions; years
differ only by the synoptic phase on 1 January and by weather noise. A system passes every
``SYNOPTIC_PERIOD_H`` = 90 h, so each one arrives 6 h later in the day than the one before: a demo
year of a whole number of periods sees every wind regime equally often, and a year of four
(360 h) meets each regime at four evenly spread hours of the day (stagnation by night, when the
mixed layer is shallow, traps far more than by day). Such years share their statistics, so the
normalisation statistics of the training years fit the validation year. Within a year the
weather evolves smoothly and predictably (the veering wind, pressure and temperature of a passing
system) and the pollutant fields follow it with lifetimes of hours to days, so the fields 12-96 h
ahead are largely predictable from the present fields, the terrain and the emissions: that is
what the forecaster has to learn.

Terrain
    The DEM that matplotlib ships as sample data (``topobathy.npz``: 91 x 120 cells, 48.0-50.0 N,
    126.0-122.0 W, the Salish Sea with the Olympic Mountains, Vancouver Island, the Coast
    Mountains and the Cascades) is interpolated bilinearly onto the demo grid, a regular grid over
    the DEM's own latitude/longitude extent; the sea is clipped to 0 m and is the region outside
    the domain mask. Distances use :math:`\Delta x = R\cos\varphi\,\Delta\lambda`,
    :math:`\Delta y = R\,\Delta\varphi` (a Cartesian approximation on this small domain).

Synoptic weather
    A cyclone passes every :math:`P` = 90 h (``SYNOPTIC_PERIOD_H``). Its phase

    .. math:: \theta(t) = \theta_0 + 2\pi t / P + \epsilon_\theta(t)

    has a random start :math:`\theta_0` per year and a red-noise jitter :math:`\epsilon_\theta`
    (an AR(1) process, standard deviation 0.2 rad, memory 48 h); everything synoptic below is a
    function of :math:`\theta`, so the present weather tells where the cycle stands and what
    follows.

Wind (m s-1)
    A synoptic wind of speed :math:`S(t) = (S_0 + S_1 \cos(\theta - \pi/4))\,(1 +
    \epsilon_S(t))` (:math:`S_0` = 5, :math:`S_1` = 2.5 m s-1; strongest in the south-westerlies
    around the low, weakest in the stagnant north-easterlies under the following high;
    :math:`\epsilon_S` red noise of standard deviation 0.1 and memory 24 h, :math:`1 +
    \epsilon_S` floored at 0.25) blowing toward
    :math:`\phi(t) = \pi/2 - \theta(t) + 0.3 (y' - 1/2)`: a southerly ahead of the system that
    veers (turns clockwise) through westerly, northerly and easterly, through all 16 scan sectors
    once per period, with a weak shear over the normalised northing :math:`y'`. It is 25 % faster
    over the sea (lower roughness), plus a diurnal slope wind
    :math:`A_d \sin(2\pi (\tau - 8) / 24)\, \nabla h / (|\nabla h| + s_r)` with :math:`A_d` = 2 m
    s-1 and :math:`s_r` = 0.05 (upslope by day, downslope by night; :math:`\tau` is the local solar
    hour, UTC + longitude / 15). The terrain then deflects it: with the uphill unit vector
    :math:`\hat n = \nabla h / |\nabla h|` and the upslope gradient along the flow
    :math:`s_\parallel = \max(0, \mathbf{u} \cdot \nabla h) / |\mathbf{u}|`, the component into
    the slope is removed by the fraction :math:`\beta = 1 - e^{-s_\parallel / s_b}`:

    .. math:: \mathbf{u} \leftarrow \mathbf{u} - \beta \max(0, \mathbf{u}\cdot\hat n)\,\hat n

    so flow against a steep slope is blocked and turned along the contours (``terrain_wind``;
    :math:`s_b` = ``BLOCKING_SLOPE``). That is ``data.demo.blocked_flow: upslope``. The default,
    ``downslope``, uses the downhill unit vector :math:`-\hat n` (and the downslope gradient)
    instead: flow *descending* a steep slope is blocked, so a low receptor does not see a high
    source -- the effect the TopoFlow bias (a low query penalised for attending a high key) can
    represent, which makes the demo a known-answer test of the verdict.

Temperature (K), pressure (Pa), humidity (%)
    :math:`T = T_{sea} + D \cos(2\pi(\tau - 15)/24) - \Gamma h` with the sea-level temperature
    :math:`T_{sea} = 277 + A_T \cos\theta - 0.7 (\varphi - \varphi_0)` (:math:`A_T` = 3 K: the
    warm sector in the southerlies, cold air behind the front), the lapse rate :math:`\Gamma` =
    6.5 K km-1 and a diurnal range :math:`D` of 4 K over land, 1 K over the sea. Surface pressure
    from the barometric formula, :math:`p = p_0(t) (1 - \Gamma h / T_0)^{g M / (R \Gamma)}` with
    the synoptic sea-level pressure :math:`p_0 = 101325\,Pa - A_p \cos(\theta - \pi/4)`
    (:math:`A_p` = 900 Pa: lowest as the low passes, highest in the stagnant phase). Relative
    humidity :math:`100\, e / e_s(T)` (Magnus formula) with the vapour
    pressure :math:`e = 0.85\, e_s(T_{sea}) e^{-h/2500\,m} (0.75 + 0.25 e^{-d_{sea}/30\,km}) (1 +
    0.3 w')`, where :math:`w' = \mathrm{clip}(\mathbf{u}\cdot\nabla h / 0.2\,m\,s^{-1}, 0, 1)` is
    the orographic lift; clipped to [5, 100] %.

Population (people km-2) and emissions
    On land only: :math:`20 + 60 e^{-h/150} + 200 e^{-h/150} e^{-d_{sea}/6\,km}` plus four
    Gaussian cities placed (seeded) on low coastal land. Traffic :math:`E_{tr}` is proportional to
    population with a rush-hour profile (peaks 08 and 18 local time), residential heating to
    population times :math:`\mathrm{clip}((288 - T)/10, 0, 2)` with an evening peak, three seeded
    ports on the coast emit SO2, a shipping band over the sea within 15 km of land emits SO2 and
    NO2, and sea salt (PM10) grows with the wind speed squared over the sea. A smooth daily factor
    :math:`\exp(0.15\,\xi_d)` modulates the anthropogenic emissions. Emission tendencies are
    divided by the mixing height :math:`H(t)` relative to 600 m (300 m at night, 1200 m at
    midday over land; 500 m over the sea).

Transport and chemistry, per pollutant :math:`c` (operator split: half an hour of chemistry,
one hour of transport, half an hour of chemistry)
    .. math::

        \partial_t c + \mathbf{u}\cdot\nabla c = \nabla\cdot(K_f \nabla c) + S - (c - c_b)/\tau

    with first-order upwind differences for the advection (the deflected wind above), face
    diffusivities damped across steep steps of the terrain,
    :math:`K_f = K e^{-|\Delta h / \Delta x| / s_b}` (:math:`K` = 1500 m2 s-1), inflow at the
    background :math:`c_b` through the open boundaries, and as many sub-steps per hour as keep the
    explicit scheme a convex combination (each cell's total exchange rate times the sub-step below
    0.9). Where the wind is blocked in front of a mountain the air stalls and keeps collecting the
    basin's emissions; the lee side receives air that crossed slowly over the unpopulated
    mountains, decaying on the way. Decay and sources are integrated exactly,
    :math:`c \leftarrow c e^{-\Delta t/\tau} + (S + c_b/\tau)\tau(1 - e^{-\Delta t/\tau})`, with
    lifetimes :math:`\tau` of 48 h (PM2.5), 18 h (PM10), 24 h (SO2), 4 h by day / 16 h by night
    (NO2) and 30 days (CO); half of the SO2 lost is a PM2.5 source (secondary sulfate). Ozone
    relaxes to an elevation-dependent background over 24 h, is produced in daylight and titrated
    by NO2, integrated implicitly (hence anti-correlated with NO2 and never negative):

    .. math::

        o_3 \leftarrow \frac{o_3 + \Delta t\,(o_b/\tau_o + P\,\mathrm{sun}(\tau))}
                            {1 + \Delta t\,(1/\tau_o + k\,\mathrm{NO_2})}

    Every step is a convex combination of non-negative values plus non-negative sources, so no
    concentration is ever negative. A 48-hour spin-up precedes the first stored hour.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import cbook
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

from aqnet.config import POLLUTANTS
from aqnet.stage import atomic_save

DEM_SAMPLE = "topobathy.npz"
EARTH_RADIUS_M = 6_371_000.0
GRAVITY = 9.80665  # m s-2
MOLAR_MASS_AIR = 0.0289644  # kg mol-1
GAS_CONSTANT = 8.31446  # J mol-1 K-1
LAPSE_RATE = 0.0065  # K m-1
T_STANDARD = 288.15  # K
P_STANDARD = 101325.0  # Pa
BLOCKING_SLOPE = 0.02  # s_b: upslope gradient (m/m) over which flow and diffusion are damped
BLOCKED_FLOWS: dict[str, float] = {"upslope": 1.0, "downslope": -1.0}
"""``terrain_wind``'s ``blocked_flow``: the sign applied to the uphill unit vector."""
DEMO_BLOCKED_FLOW = "downslope"
"""The demo's default (``data.demo.blocked_flow``): an effect the TopoFlow bias can represent, so
the demo is a known-answer test of the verdict (the formula's direction should help, the reversed
one should not)."""
DIFFUSIVITY_M2_S = 1500.0  # K: horizontal eddy diffusivity
SPINUP_H = 48
MAX_COURANT = 0.9
# The demo climate, the same in every year: a train of identical cyclones passes every
# SYNOPTIC_PERIOD_H hours (the wind veers once through all 16 sectors); years differ only by the
# phase on 1 January and by the weather noise. Demo years of a whole number of periods see every
# wind regime equally often (four periods: at four evenly spread hours of the day), so their
# statistics agree.
SYNOPTIC_PERIOD_H = 90.0  # P
SPEED_MEAN, SPEED_AMP = 5.0, 2.5  # S_0, S_1 (m s-1)
TEMP_AMP = 3.0  # A_T (K): warm sector vs cold air behind the front
PRESSURE_AMP = 900.0  # A_p (Pa)
PHASE_NOISE_RAD, PHASE_MEMORY_H = 0.2, 48.0  # sigma_theta, tau_theta of the phase jitter
SPEED_NOISE, SPEED_MEMORY_H = 0.1, 24.0  # sigma_S, tau_S of the relative wind-speed noise

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

# Per pollutant (POLLUTANTS order): background / inflow value and lifetime in hours.
BACKGROUND: dict[str, float] = {
    "pm25": 4.0,
    "pm10": 8.0,
    "so2": 1.0,
    "no2": 2.0,
    "co": 0.2,
    "o3": 60.0,
}
LIFETIME_H: dict[str, float] = {"pm25": 48.0, "pm10": 18.0, "so2": 24.0, "co": 720.0}
NO2_LIFETIME_DAY_H, NO2_LIFETIME_NIGHT_H = 4.0, 16.0
O3_RELAX_H = 24.0
O3_PER_KM = 10.0  # ug m-3 more background ozone per km of elevation
O3_PRODUCTION = 6.0  # ug m-3 h-1 at full sun
O3_TITRATION = 1.0 / (O3_RELAX_H * 8.0)  # k: per (ug m-3 of NO2) per hour
SULFATE_YIELD = 0.5  # PM2.5 mass formed per SO2 mass lost
# Emission tendencies at the reference mixing height (600 m), concentration units per hour, per
# unit of the normalised source maps (traffic = population / max, ports, shipping band) and of the
# time profiles (rush hour, heating), or per (m s-1)^2 of wind for sea salt.
EMISSION: dict[str, float] = {
    "pm25_heating": 8.0,
    "pm25_traffic": 3.0,
    "pm10_dust": 8.0,
    "pm10_sea_salt": 0.08,
    "so2_ports": 15.0,
    "so2_ships": 2.0,
    "no2_traffic": 25.0,
    "no2_ships": 2.0,
    "co_traffic": 0.15,
    "co_heating": 0.12,
}


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


class Transport:
    """Upwind advection and terrain-damped diffusion on a regular grid with open boundaries.

    Args:
        elevation_m: ``(ny, nx)`` terrain, rows south to north; damps diffusion across steep
            steps (``K_f = K exp(-|dh/dx| / s_b)``).
        dx_m: east-west cell size, scalar or ``(ny, 1)`` per row.
        dy_m: north-south cell size.
        background: ``(P,)`` inflow value of each species through the boundaries.
        diffusivity_m2_s: ``K``.
        blocking_slope: ``s_b``.
    """

    def __init__(
        self,
        *,
        elevation_m: np.ndarray,
        dx_m: np.ndarray | float,
        dy_m: float,
        background: Sequence[float],
        diffusivity_m2_s: float = DIFFUSIVITY_M2_S,
        blocking_slope: float = BLOCKING_SLOPE,
    ) -> None:
        h = np.asarray(elevation_m, dtype=np.float64)
        ny, nx = h.shape
        self.shape = (ny, nx)
        self.dx = np.broadcast_to(np.asarray(dx_m, dtype=np.float64).reshape(-1, 1), (ny, 1))
        self.dy = float(dy_m)
        self.background = np.asarray(background, dtype=np.float64)[:, None, None]  # (P, 1, 1)
        k = float(diffusivity_m2_s)
        # Face diffusivities, boundary faces undamped: x faces (ny, nx + 1), y faces (ny + 1, nx).
        kx = np.full((ny, nx + 1), k)
        kx[:, 1:-1] = k * np.exp(-np.abs(np.diff(h, axis=1)) / self.dx / blocking_slope)
        ky = np.full((ny + 1, nx), k)
        ky[1:-1, :] = k * np.exp(-np.abs(np.diff(h, axis=0)) / self.dy / blocking_slope)
        self.kx_dx = kx / self.dx  # K / dx at x faces
        self.ky_dy = ky / self.dy
        self._pad = np.empty((len(self.background), ny + 2, nx + 2))

    def substeps(self, u: np.ndarray, v: np.ndarray, dt_s: float) -> int:
        """Sub-steps of ``dt_s`` that keep every cell's outflow fraction below ``MAX_COURANT``."""
        out_rate = (
            np.abs(u) / self.dx
            + np.abs(v) / self.dy
            + (self.kx_dx[:, 1:] + self.kx_dx[:, :-1]) / self.dx
            + (self.ky_dy[1:, :] + self.ky_dy[:-1, :]) / self.dy
        )
        return max(1, int(np.ceil(dt_s * float(out_rate.max()) / MAX_COURANT)))

    def advance(self, c: np.ndarray, u: np.ndarray, v: np.ndarray, dt_s: float) -> np.ndarray:
        """Transport ``c (P, ny, nx)`` by the winds ``u, v (ny, nx)`` over ``dt_s`` seconds."""
        n = self.substeps(u, v, dt_s)
        dt = dt_s / n
        up, um = np.maximum(u, 0) / self.dx, np.minimum(u, 0) / self.dx  # (ny, nx), s-1
        vp, vm = np.maximum(v, 0) / self.dy, np.minimum(v, 0) / self.dy
        pad = self._pad
        pad[...] = self.background  # ghost cells hold the inflow value
        c = c.copy()
        for _ in range(n):
            pad[:, 1:-1, 1:-1] = c
            dcx = np.diff(pad[:, 1:-1, :], axis=2)  # (P, ny, nx + 1): c[j] - c[j - 1] at x faces
            dcy = np.diff(pad[:, :, 1:-1], axis=1)  # (P, ny + 1, nx)
            advect = up * dcx[:, :, :-1] + um * dcx[:, :, 1:] + vp * dcy[:, :-1] + vm * dcy[:, 1:]
            diffuse = (
                np.diff(self.kx_dx * dcx, axis=2) / self.dx
                + np.diff(self.ky_dy * dcy, axis=1) / self.dy
            )
            c += dt * (diffuse - advect)
        return c


def relax(
    c: np.ndarray, source: np.ndarray, background: np.ndarray, lifetime_h: np.ndarray, dt_h: float
) -> np.ndarray:
    """Exact solution of ``dc/dt = S - (c - c_b)/tau`` over ``dt_h`` (all arrays broadcast)."""
    decay = np.exp(-dt_h / lifetime_h)
    return c * decay + (source + background / lifetime_h) * lifetime_h * (1.0 - decay)


def simulate_tracer(
    elevation_m: np.ndarray,
    *,
    dx_m: float,
    dy_m: float,
    wind_u: np.ndarray,
    wind_v: np.ndarray,
    source: np.ndarray,
    lifetime_h: float,
    hours: int,
    background: float = 0.0,
    blocking: bool = True,
    blocked_flow: str = "upslope",
) -> np.ndarray:
    """One passive tracer in the demo's transport model, for constructed cases (and tests).

    Args:
        elevation_m: ``(ny, nx)`` terrain, rows south to north.
        dx_m, dy_m: cell sizes.
        wind_u, wind_v: ``(ny, nx)`` steady free-stream wind (before terrain deflection).
        source: ``(ny, nx)`` emission tendency, concentration units per hour.
        lifetime_h: ``tau``.
        hours: hours to run from the background state.
        background: inflow and initial value.
        blocking: apply ``terrain_wind`` (and damped diffusion); False ignores the terrain.
        blocked_flow: the direction ``terrain_wind`` blocks.

    Returns:
        ``(hours, ny, nx)`` concentrations at the end of each hour.
    """
    h = np.asarray(elevation_m, dtype=np.float64)
    if blocking:
        gx, gy = terrain_gradient(h, dx_m=dx_m, dy_m=dy_m)
        u, v = terrain_wind(
            np.asarray(wind_u, float), np.asarray(wind_v, float), gx, gy, blocked_flow=blocked_flow
        )
        model = Transport(elevation_m=h, dx_m=dx_m, dy_m=dy_m, background=[background])
    else:
        u, v = np.asarray(wind_u, float), np.asarray(wind_v, float)
        model = Transport(
            elevation_m=np.zeros_like(h), dx_m=dx_m, dy_m=dy_m, background=[background]
        )
    src = np.asarray(source, dtype=np.float64)[None]  # (1, ny, nx)
    bg, tau = np.array(float(background)), np.array(float(lifetime_h))
    c = np.full((1, *h.shape), float(background))
    out = np.empty((hours, *h.shape))
    for k in range(hours):
        c = relax(c, src, bg, tau, 0.5)
        c = model.advance(c, u, v, 3600.0)
        c = relax(c, src, bg, tau, 0.5)
        out[k] = c[0]
    return out


def _red_noise(rng: np.random.Generator, n: int, *, std: float, memory_h: float) -> np.ndarray:
    """A stationary AR(1) (Ornstein-Uhlenbeck) series of ``n`` hourly values, ``(n,)``."""
    a = float(np.exp(-1.0 / memory_h))
    xi = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = std * xi[0]
    step = std * np.sqrt(1.0 - a * a)
    for k in range(1, n):
        out[k] = a * out[k - 1] + step * xi[k]
    return out


@dataclasses.dataclass(frozen=True)
class _Weather:
    """One year's weather: the synoptic phase and the wind-speed noise at each hour.

    Attributes:
        theta: ``(T,)`` synoptic phase in radians, ``theta_0 + 2 pi t / P + eps_theta(t)``.
        gust: ``(T,)`` relative wind-speed anomaly ``eps_S(t)``.
    """

    theta: np.ndarray
    gust: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, hours_h: np.ndarray) -> _Weather:
        """The weather at ``hours_h (T,)`` (hourly), from ``rng`` (seeded by seed and year)."""
        n = len(hours_h)
        theta0 = rng.uniform(0.0, 2.0 * np.pi)
        jitter = _red_noise(rng, n, std=PHASE_NOISE_RAD, memory_h=PHASE_MEMORY_H)
        gust = _red_noise(rng, n, std=SPEED_NOISE, memory_h=SPEED_MEMORY_H)
        return cls(theta=theta0 + 2.0 * np.pi * hours_h / SYNOPTIC_PERIOD_H + jitter, gust=gust)


def _saturation_hpa(temp_k: np.ndarray) -> np.ndarray:
    """Magnus formula: saturation vapour pressure over water, hPa."""
    tc = temp_k - 273.15
    return 6.112 * np.exp(17.67 * tc / (tc + 243.5))


def _gaussians(
    terrain: Terrain, centres: np.ndarray, sigma_km: np.ndarray, amplitude: np.ndarray
) -> np.ndarray:
    """Sum of Gaussian blobs at the cell indices ``centres (K, 2)`` -> ``(ny, nx)``."""
    ny, nx = terrain.shape
    y_km = np.arange(ny)[:, None] * terrain.dy_m / 1e3
    x_km = np.arange(nx)[None, :] * float(np.mean(terrain.dx_m)) / 1e3
    out = np.zeros((ny, nx))
    for (ci, cj), s, a in zip(centres, sigma_km, amplitude, strict=True):
        d2 = (y_km - y_km[ci, 0]) ** 2 + (x_km - x_km[0, cj]) ** 2
        out += a * np.exp(-0.5 * d2 / s**2)
    return out


def _pick_cells(
    rng: np.random.Generator, weight: np.ndarray, n: int, fallback: np.ndarray
) -> np.ndarray:
    """``n`` distinct cell indices ``(n, 2)`` drawn with probability proportional to ``weight``."""
    w = np.where(weight > 0, weight, 0.0).ravel()
    if np.count_nonzero(w) < n:
        w = np.where(fallback > 0, fallback, 0.0).ravel() + 1e-12
    flat = rng.choice(w.size, size=n, replace=False, p=w / w.sum())
    return np.stack(np.unravel_index(flat, weight.shape), axis=1)


@dataclasses.dataclass(frozen=True)
class _StaticFields:
    population: np.ndarray  # (ny, nx) people km-2
    traffic: np.ndarray  # (ny, nx) 0..1
    ports: np.ndarray  # (ny, nx) 0..1
    shipping: np.ndarray  # (ny, nx) 0..1
    dist_sea_km: np.ndarray
    dist_land_km: np.ndarray


def _static_fields(terrain: Terrain, seed: int) -> _StaticFields:
    rng = np.random.default_rng([seed, 0])
    h = terrain.elevation_m
    land = terrain.land
    d_sea = terrain.distance_to_sea_km()
    d_land = terrain.distance_to_land_km()
    lowland = np.exp(-h / 150.0)
    base = land * (20.0 + 60.0 * lowland + 200.0 * lowland * np.exp(-d_sea / 6.0))
    suitable = land * (h < 100.0) * (d_sea < 8.0) * base
    cities = _pick_cells(rng, suitable, 4, base)
    population = base + land * _gaussians(
        terrain, cities, rng.uniform(5.0, 10.0, 4), rng.uniform(1500.0, 4000.0, 4)
    )
    coastal = land * (h < 50.0) * (d_sea < 3.0) * population
    ports = _pick_cells(rng, coastal, 3, base)
    port_field = _gaussians(terrain, ports, np.full(3, 3.0), np.ones(3))
    shipping = (~land) * np.exp(-d_land / 8.0) * (d_land < 15.0)
    return _StaticFields(
        population=population,
        traffic=population / population.max(),
        ports=port_field / max(port_field.max(), 1e-12),
        shipping=shipping,
        dist_sea_km=d_sea,
        dist_land_km=d_land,
    )


def _meteorology(
    terrain: Terrain, hours_h: np.ndarray, weather: _Weather, *, blocked_flow: str
) -> dict[str, np.ndarray]:
    """Wind, temperature, pressure, humidity and helpers, each ``(T, ny, nx)``, at ``hours_h``."""
    t = hours_h[:, None, None]  # hours since 1 January 00 UTC (negative in the spin-up)
    ny, nx = terrain.shape
    h = terrain.elevation_m
    land = terrain.land
    gx, gy = terrain.gradient()
    local_hour = (t + terrain.lon[None, None, :] / 15.0) % 24.0  # (T, 1, nx)
    sun = np.clip(np.sin(np.pi * (local_hour - 6.0) / 12.0), 0.0, None)
    y_norm = (np.arange(ny) / max(ny - 1, 1))[None, :, None]
    theta = weather.theta[:, None, None]  # (T, 1, 1) synoptic phase
    phi = np.pi / 2 - theta + 0.3 * (y_norm - 0.5)  # toward north at theta = 0, then veering
    speed = (SPEED_MEAN + SPEED_AMP * np.cos(theta - np.pi / 4)) * np.clip(
        1.0 + weather.gust[:, None, None], 0.25, None
    )
    speed = speed * np.where(land, 1.0, 1.25)
    slope = np.hypot(gx, gy)
    diurnal = 2.0 * np.sin(2 * np.pi * (local_hour - 8.0) / 24.0) / (slope + 0.05)
    u = speed * np.cos(phi) + diurnal * gx
    v = speed * np.sin(phi) + diurnal * gy
    u, v = terrain_wind(u, v, gx, gy, blocked_flow=blocked_flow)

    lat0 = float(terrain.lat[0])
    t_sea = 277.0 + TEMP_AMP * np.cos(theta)
    t_sea = t_sea - 0.7 * (terrain.lat[None, :, None] - lat0)  # (T, ny, 1)
    diurnal_range = np.where(land, 4.0, 1.0)
    temp = t_sea + diurnal_range * np.cos(2 * np.pi * (local_hour - 15.0) / 24.0) - LAPSE_RATE * h

    p0 = P_STANDARD - PRESSURE_AMP * np.cos(theta - np.pi / 4)
    exponent = GRAVITY * MOLAR_MASS_AIR / (GAS_CONSTANT * LAPSE_RATE)
    psfc = p0 * (1.0 - LAPSE_RATE * h / T_STANDARD) ** exponent

    lift = np.clip((u * gx + v * gy) / 0.2, 0.0, 1.0)
    vapour = (
        0.85
        * _saturation_hpa(t_sea)
        * np.exp(-h / 2500.0)
        * (0.75 + 0.25 * np.exp(-terrain.distance_to_sea_km() / 30.0))
        * (1.0 + 0.3 * lift)
    )
    rh = np.clip(100.0 * vapour / _saturation_hpa(temp), 5.0, 100.0)
    mixing_h = np.where(land, 300.0 + 900.0 * sun, 500.0)
    full = (len(hours_h), ny, nx)
    return {
        "u": u,
        "v": v,
        "temp": np.broadcast_to(temp, full),
        "psfc": np.broadcast_to(psfc, full),
        "rh": np.broadcast_to(rh, full),
        "sun": np.broadcast_to(sun, full),
        "local_hour": np.broadcast_to(local_hour, full),
        "mixing_h": np.broadcast_to(mixing_h, full),
    }


def _daily_factor(rng: np.random.Generator, hours_h: np.ndarray) -> np.ndarray:
    """A smooth day-to-day emission factor ``exp(0.15 xi_d)`` interpolated to hours, ``(T,)``."""
    days = np.arange(np.floor(hours_h.min() / 24.0) - 1, np.ceil(hours_h.max() / 24.0) + 2)
    xi = rng.standard_normal(days.size)
    return np.exp(0.15 * np.interp(hours_h / 24.0, days, xi))


def simulate_year(
    terrain: Terrain, *, seed: int, year: int, hours: int, blocked_flow: str = DEMO_BLOCKED_FLOW
) -> dict[str, np.ndarray]:
    """All time-varying demo variables of one year, ``(hours, ny, nx)`` float32, rows S to N.

    ``blocked_flow``: the direction of steep-slope flow the terrain blocks (:func:`terrain_wind`).
    """
    if hours < 1:
        raise ValueError(f"demo hours must be >= 1, got {hours}")
    rng = np.random.default_rng([seed, year])
    hours_h = np.arange(-SPINUP_H, hours, dtype=np.float64)
    weather = _Weather.draw(rng, hours_h)
    met = _meteorology(terrain, hours_h, weather, blocked_flow=blocked_flow)
    static = _static_fields(terrain, seed)
    daily = _daily_factor(rng, hours_h)

    p_index = {p: i for i, p in enumerate(POLLUTANTS)}
    ny, nx = terrain.shape
    o3_bg = BACKGROUND["o3"] + O3_PER_KM * terrain.elevation_m / 1e3
    c = np.stack([np.full((ny, nx), BACKGROUND[p]) for p in POLLUTANTS])  # initial state
    c[p_index["o3"]] = o3_bg
    model = Transport(  # inflow through the boundaries: the mean background of each species
        elevation_m=terrain.elevation_m,
        dx_m=terrain.dx_m,
        dy_m=terrain.dy_m,
        background=c.mean(axis=(1, 2)),
    )
    out = np.empty((hours, len(POLLUTANTS), ny, nx), dtype=np.float32)
    tr, ports, ship = static.traffic, static.ports, static.shipping
    land = terrain.land

    def chemistry(c: np.ndarray, k: int, dt_h: float) -> np.ndarray:
        hour = met["local_hour"][k]
        sun = met["sun"][k]
        temp = met["temp"][k]
        dilution = 600.0 / met["mixing_h"][k]
        rush = 0.4 + np.exp(-(((hour - 8.0) / 1.5) ** 2)) + np.exp(-(((hour - 18.0) / 2.0) ** 2))
        heating = np.clip((288.0 - temp) / 10.0, 0.0, 2.0) * (
            0.6 + 0.6 * np.exp(-(((hour - 20.0) / 3.0) ** 2))
        )
        wind2 = met["u"][k] ** 2 + met["v"][k] ** 2
        dry = np.clip((70.0 - met["rh"][k]) / 40.0, 0.0, 1.0)
        f = daily[k] * dilution
        so2 = c[p_index["so2"]]
        e = EMISSION
        src = {
            "pm25": f * tr * (e["pm25_heating"] * heating + e["pm25_traffic"] * rush)
            + SULFATE_YIELD * so2 / LIFETIME_H["so2"],
            "pm10": f
            * tr
            * (e["pm25_heating"] * heating + (e["pm25_traffic"] + e["pm10_dust"] * dry) * rush)
            + dilution * (~land) * e["pm10_sea_salt"] * wind2,
            "so2": f * (e["so2_ports"] * ports + e["so2_ships"] * ship),
            "no2": f * (e["no2_traffic"] * tr * rush + e["no2_ships"] * ship),
            "co": f * tr * (e["co_traffic"] * rush + e["co_heating"] * heating),
        }
        new = np.empty_like(c)
        for name in ("pm25", "pm10", "so2", "co"):
            i = p_index[name]
            tau = np.array(LIFETIME_H[name])
            new[i] = relax(c[i], src[name], np.array(BACKGROUND[name]), tau, dt_h)
        i = p_index["no2"]
        tau_no2 = NO2_LIFETIME_NIGHT_H + (NO2_LIFETIME_DAY_H - NO2_LIFETIME_NIGHT_H) * sun
        new[i] = relax(c[i], src["no2"], np.array(BACKGROUND["no2"]), tau_no2, dt_h)
        i = p_index["o3"]
        no2 = 0.5 * (c[p_index["no2"]] + new[p_index["no2"]])
        new[i] = (c[i] + dt_h * (o3_bg / O3_RELAX_H + O3_PRODUCTION * sun)) / (
            1.0 + dt_h * (1.0 / O3_RELAX_H + O3_TITRATION * no2)
        )
        return new

    for k in range(len(hours_h)):
        if k >= SPINUP_H:
            out[k - SPINUP_H] = c
        c = chemistry(c, k, 0.5)
        c = model.advance(c, met["u"][k], met["v"][k], 3600.0)
        c = chemistry(c, k, 0.5)

    result = {name: out[:, i] for i, name in enumerate(POLLUTANTS)}
    for name in ("u", "v", "temp", "rh", "psfc"):
        result[name] = np.asarray(met[name][SPINUP_H:], dtype=np.float32)
    return result


def demo_dataset(
    terrain: Terrain, *, seed: int, year: int, hours: int, blocked_flow: str = DEMO_BLOCKED_FLOW
) -> xr.Dataset:
    """One demo year as an ``xarray.Dataset`` in the input layout (rows north to south)."""
    fields = simulate_year(terrain, seed=seed, year=year, hours=hours, blocked_flow=blocked_flow)
    static = _static_fields(terrain, seed)
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

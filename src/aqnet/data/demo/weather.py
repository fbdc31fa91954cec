"""The demo meteorology: the synoptic cycle, its noise, wind, temperature, pressure, humidity."""

from __future__ import annotations

import dataclasses

import numpy as np

from aqnet.data.demo.terrain import Terrain, terrain_wind

GRAVITY = 9.80665  # m s-2
MOLAR_MASS_AIR = 0.0289644  # kg mol-1
GAS_CONSTANT = 8.31446  # J mol-1 K-1
LAPSE_RATE = 0.0065  # K m-1
T_STANDARD = 288.15  # K
P_STANDARD = 101325.0  # Pa
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


def red_noise(rng: np.random.Generator, n: int, *, std: float, memory_h: float) -> np.ndarray:
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
class Weather:
    """One year's weather: the synoptic phase and the wind-speed noise at each hour.

    Attributes:
        theta: ``(T,)`` synoptic phase in radians, ``theta_0 + 2 pi t / P + eps_theta(t)``.
        gust: ``(T,)`` relative wind-speed anomaly ``eps_S(t)``.
    """

    theta: np.ndarray
    gust: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, hours_h: np.ndarray) -> Weather:
        """The weather at ``hours_h (T,)`` (hourly), from ``rng`` (seeded by seed and year)."""
        n = len(hours_h)
        theta0 = rng.uniform(0.0, 2.0 * np.pi)
        jitter = red_noise(rng, n, std=PHASE_NOISE_RAD, memory_h=PHASE_MEMORY_H)
        gust = red_noise(rng, n, std=SPEED_NOISE, memory_h=SPEED_MEMORY_H)
        return cls(theta=theta0 + 2.0 * np.pi * hours_h / SYNOPTIC_PERIOD_H + jitter, gust=gust)


def _saturation_hpa(temp_k: np.ndarray) -> np.ndarray:
    """Magnus formula: saturation vapour pressure over water, hPa."""
    tc = temp_k - 273.15
    return 6.112 * np.exp(17.67 * tc / (tc + 243.5))


def meteorology(
    terrain: Terrain, hours_h: np.ndarray, weather: Weather, *, blocked_flow: str
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

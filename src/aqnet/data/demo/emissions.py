"""The demo emissions: population, traffic, ports, shipping and the day-to-day factor."""

from __future__ import annotations

import dataclasses

import numpy as np

from aqnet.data.demo.terrain import Terrain

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
class StaticFields:
    population: np.ndarray  # (ny, nx) people km-2
    traffic: np.ndarray  # (ny, nx) 0..1
    ports: np.ndarray  # (ny, nx) 0..1
    shipping: np.ndarray  # (ny, nx) 0..1
    dist_sea_km: np.ndarray
    dist_land_km: np.ndarray


def static_fields(terrain: Terrain, seed: int) -> StaticFields:
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
    return StaticFields(
        population=population,
        traffic=population / population.max(),
        ports=port_field / max(port_field.max(), 1e-12),
        shipping=shipping,
        dist_sea_km=d_sea,
        dist_land_km=d_land,
    )


def daily_factor(rng: np.random.Generator, hours_h: np.ndarray) -> np.ndarray:
    """A smooth day-to-day emission factor ``exp(0.15 xi_d)`` interpolated to hours, ``(T,)``."""
    days = np.arange(np.floor(hours_h.min() / 24.0) - 1, np.ceil(hours_h.max() / 24.0) + 2)
    xi = rng.standard_normal(days.size)
    return np.exp(0.15 * np.interp(hours_h / 24.0, days, xi))

"""One demo year: the weather, the emissions, the chemistry and the transport, hour by hour."""

from __future__ import annotations

import numpy as np

from aqnet.config import POLLUTANTS
from aqnet.data.demo.emissions import EMISSION, daily_factor, static_fields
from aqnet.data.demo.terrain import DEMO_BLOCKED_FLOW, Terrain
from aqnet.data.demo.transport import Transport, relax
from aqnet.data.demo.weather import Weather, meteorology

SPINUP_H = 48

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
    weather = Weather.draw(rng, hours_h)
    met = meteorology(terrain, hours_h, weather, blocked_flow=blocked_flow)
    static = static_fields(terrain, seed)
    daily = daily_factor(rng, hours_h)

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

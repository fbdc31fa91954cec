"""The demo transport model: upwind advection, terrain-damped diffusion, exact decay."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aqnet.data.demo.terrain import BLOCKING_SLOPE, terrain_gradient, terrain_wind

DIFFUSIVITY_M2_S = 1500.0  # K: horizontal eddy diffusivity
MAX_COURANT = 0.9


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

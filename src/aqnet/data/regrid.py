"""Linear interpolation from an input grid (2-D latitude/longitude) onto the regular target grid.

The target grid is regular in latitude and longitude with rows from south to north
(:func:`target_grid`); an input whose rows run north to south is therefore flipped by the
interpolation itself. Two cases:

* **rectilinear** input (``lat2d`` constant along rows, ``lon2d`` along columns, either order):
  separable bilinear interpolation, ``out = Wy @ field @ Wx.T`` with dense ``(H, ny)`` and
  ``(W, nx)`` weight matrices -- two small matrix products per time chunk;
* **curvilinear** input: piecewise-linear (barycentric) interpolation on a Delaunay triangulation
  of the input points, as a sparse ``(H * W, ny * nx)`` matrix; target points outside the input's
  hull take the nearest input point (counted in :attr:`Regridder.n_extrapolated`).

The weights are built once and applied chunk by chunk (``Regridder.__call__``), so the memory of
one call is that of one time chunk.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.spatial import Delaunay, cKDTree


def linear_weights(src: np.ndarray, dst: np.ndarray, *, name: str = "coordinate") -> np.ndarray:
    """``(len(dst), len(src))`` weights of 1-D linear interpolation from ``src`` to ``dst``.

    ``src`` must be strictly monotonic (ascending or descending); ``dst`` must lie within its
    range (to 1e-6 of the range; values just outside are clamped).

    Raises:
        ValueError: ``src`` not monotonic, or ``dst`` outside the range of ``src``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    order = np.argsort(src, kind="stable")
    s = src[order]
    if s.size < 2 or np.any(np.diff(s) <= 0):
        raise ValueError(f"input {name} values are not strictly monotonic ({s.size} values)")
    tol = 1e-6 * (s[-1] - s[0])
    if dst.min() < s[0] - tol or dst.max() > s[-1] + tol:
        raise ValueError(
            f"target {name} range [{dst.min():.4f}, {dst.max():.4f}] exceeds the input range "
            f"[{s[0]:.4f}, {s[-1]:.4f}]"
        )
    d = np.clip(dst, s[0], s[-1])
    hi = np.clip(np.searchsorted(s, d, side="right"), 1, s.size - 1)
    lo = hi - 1
    frac = (d - s[lo]) / (s[hi] - s[lo])
    w = np.zeros((dst.size, src.size))
    rows = np.arange(dst.size)
    np.add.at(w, (rows, order[lo]), 1.0 - frac)
    np.add.at(w, (rows, order[hi]), frac)
    return w


def target_grid(
    src_lat2d: np.ndarray,
    src_lon2d: np.ndarray,
    *,
    ny: int,
    nx: int,
    lat_range: tuple[float, float] | list[float] | None = None,
    lon_range: tuple[float, float] | list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The target cell centres ``lat (ny,)`` south to north and ``lon (nx,)`` west to east.

    ``None`` ranges take the input's extent, so the target's edge cells sit on the input's.
    """
    lat0, lat1 = sorted(lat_range) if lat_range is not None else _extent(src_lat2d)
    lon0, lon1 = sorted(lon_range) if lon_range is not None else _extent(src_lon2d)
    return np.linspace(lat0, lat1, ny), np.linspace(lon0, lon1, nx)


def _extent(a: np.ndarray) -> tuple[float, float]:
    return float(np.nanmin(a)), float(np.nanmax(a))


def _is_rectilinear(lat2d: np.ndarray, lon2d: np.ndarray) -> bool:
    lat_tol = 1e-6 * max(np.ptp(lat2d), 1e-9)
    lon_tol = 1e-6 * max(np.ptp(lon2d), 1e-9)
    return bool(
        np.all(np.abs(lat2d - lat2d[:, :1]) <= lat_tol)
        and np.all(np.abs(lon2d - lon2d[:1, :]) <= lon_tol)
    )


class Regridder:
    """Interpolate fields ``(..., ny, nx)`` on the input grid onto ``(..., H, W)``.

    Args:
        src_lat2d, src_lon2d: ``(ny, nx)`` input cell centres, degrees.
        dst_lat: ``(H,)`` target latitudes, ascending (south to north).
        dst_lon: ``(W,)`` target longitudes, ascending.

    Raises:
        ValueError: mismatched coordinate shapes, non-finite coordinates, or (rectilinear input)
            a target range outside the input's.
    """

    def __init__(
        self,
        *,
        src_lat2d: np.ndarray,
        src_lon2d: np.ndarray,
        dst_lat: np.ndarray,
        dst_lon: np.ndarray,
    ) -> None:
        lat2d = np.asarray(src_lat2d, dtype=np.float64)
        lon2d = np.asarray(src_lon2d, dtype=np.float64)
        if lat2d.ndim != 2 or lat2d.shape != lon2d.shape:
            raise ValueError(
                f"latitude {lat2d.shape} and longitude {lon2d.shape} must be 2-D of one shape"
            )
        if not (np.isfinite(lat2d).all() and np.isfinite(lon2d).all()):
            raise ValueError("latitude/longitude coordinates contain NaN or inf")
        self.src_shape: tuple[int, int] = lat2d.shape  # type: ignore[assignment]
        self.dst_lat = np.asarray(dst_lat, dtype=np.float64)
        self.dst_lon = np.asarray(dst_lon, dtype=np.float64)
        self.dst_shape = (self.dst_lat.size, self.dst_lon.size)
        self.n_extrapolated = 0
        self._wy: np.ndarray | None = None
        self._wx: np.ndarray | None = None
        self._w: sparse.csr_matrix | None = None
        if _is_rectilinear(lat2d, lon2d):
            self.mode = "rectilinear"
            self._wy = linear_weights(lat2d[:, 0], self.dst_lat, name="latitude")  # (H, ny)
            self._wx = linear_weights(lon2d[0, :], self.dst_lon, name="longitude")  # (W, nx)
        elif _is_rectilinear(lat2d.T, lon2d.T):
            raise ValueError(
                "latitude varies along columns and longitude along rows: transpose the input so "
                "that dimensions are (time, y=latitude, x=longitude)"
            )
        else:
            self.mode = "curvilinear"
            self._w = self._barycentric(lat2d, lon2d)

    def _barycentric(self, lat2d: np.ndarray, lon2d: np.ndarray) -> sparse.csr_matrix:
        src = np.column_stack([lon2d.ravel(), lat2d.ravel()])
        dst_lat, dst_lon = np.meshgrid(self.dst_lat, self.dst_lon, indexing="ij")
        dst = np.column_stack([dst_lon.ravel(), dst_lat.ravel()])
        tri = Delaunay(src)
        simplex = tri.find_simplex(dst)
        inside = simplex >= 0
        trans = tri.transform[simplex[inside]]  # (n, 3, 2)
        bary2 = np.einsum("nij,nj->ni", trans[:, :2], dst[inside] - trans[:, 2])
        bary = np.column_stack([bary2, 1.0 - bary2.sum(axis=1)])  # (n, 3)
        rows_in = np.flatnonzero(inside)
        rows = [np.repeat(rows_in, 3)]
        cols = [tri.simplices[simplex[inside]].ravel()]
        vals = [bary.ravel()]
        outside = np.flatnonzero(~inside)
        self.n_extrapolated = int(outside.size)
        if outside.size:
            _, nearest = cKDTree(src).query(dst[outside])
            rows.append(outside)
            cols.append(np.asarray(nearest))
            vals.append(np.ones(outside.size))
        return sparse.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(dst.shape[0], src.shape[0]),
        )

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """``field (..., ny, nx)`` -> ``(..., H, W)`` float32 (computed in float64)."""
        field = np.asarray(field)
        if field.shape[-2:] != self.src_shape:
            raise ValueError(
                f"regrid: field of shape {field.shape} does not end with the input grid "
                f"{self.src_shape}"
            )
        lead = field.shape[:-2]
        x = field.astype(np.float64, copy=False)
        if self._wy is not None and self._wx is not None:
            out = np.matmul(np.matmul(self._wy, x), self._wx.T)  # (..., H, ny)(..) -> (..., H, W)
        else:
            assert self._w is not None
            flat = x.reshape(-1, self.src_shape[0] * self.src_shape[1])  # (B, ny * nx)
            out = (self._w @ flat.T).T.reshape(*lead, *self.dst_shape)  # (B, H * W) -> (..., H, W)
        return np.ascontiguousarray(out, dtype=np.float32)

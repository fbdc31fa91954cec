"""Wind scan orders: how they are built, their canonical digest, and their file format.

Conventions (shared by the model, the cache and the ``verify_wind_order`` gate):

* Grid arrays are ``(..., H, W)`` with row 0 the southernmost latitude and column 0 the
  westernmost longitude. Patches form an ``(Hp, Wp)`` grid; patch ``n = r * Wp + c`` (raster order).
* A wind sector is the direction the wind blows **toward**: ``theta = atan2(v, u)`` counted
  counter-clockwise from east, ``sector = round(theta / 22.5 deg) mod 16``. So east (u > 0, v = 0)
  is sector 0, north 4, west 8, south 12.
* The scan order of sector ``k`` sorts patches by their projection ``c * cos(theta_k) + r *
  sin(theta_k)`` on the direction the wind blows toward, ascending: **upwind first, downwind
  last**; ties are broken by the raster index (a stable sort), so orders are unique.
* Global mode: one order per sector over all ``N = Hp * Wp`` patches, ``global[k]`` of shape
  ``(N,)``. Regional mode: the patch grid is cut into regions of ``region_patches = (rh, rw)``
  patches, numbered in raster order; ``regional[k, r]`` lists region ``r``'s patch indices sorted
  for sector ``k``. A sample whose region ``r`` has sector ``s[r]`` is scanned region by region:
  ``concat_r regional[s[r], r]`` -- a permutation of ``range(N)``.

The digest is SHA-256 over the grid parameters (as canonical JSON) and the int64 little-endian
bytes of each order array; it does not depend on how a file was written (compression, chunking,
attribute order), only on the orders themselves.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

N_SECTORS = 16
SECTOR_DEG = 360.0 / N_SECTORS
FORMAT_VERSION = 1


def sector_of(u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """Wind sector (0..15) of the direction the wind blows toward; 0 = east, 4 = north."""
    theta = np.degrees(np.arctan2(np.asarray(v, dtype=np.float64), np.asarray(u, dtype=np.float64)))
    return (np.floor(theta / SECTOR_DEG + 0.5).astype(np.int64)) % N_SECTORS


def _sector_order(rows: np.ndarray, cols: np.ndarray, sector: int) -> np.ndarray:
    """Positions of ``(rows, cols)`` sorted upwind -> downwind for ``sector`` (stable)."""
    angle = np.radians(sector * SECTOR_DEG)
    proj = np.round(cols * np.cos(angle) + rows * np.sin(angle), 9)  # round: ties are exact ties
    return np.argsort(proj, kind="stable")


def build_orders(
    grid_patches: tuple[int, int], *, region_patches: tuple[int, int] = (2, 4)
) -> dict[str, np.ndarray]:
    """Scan orders for every sector, in both modes.

    Args:
        grid_patches: ``(Hp, Wp)``, the patch grid.
        region_patches: ``(rh, rw)``, the region size in patches for the regional mode; must
            divide ``(Hp, Wp)``.

    Returns:
        ``{"global": (16, N) int64, "regional": (16, R, rh * rw) int64}`` of patch indices.
    """
    hp, wp = (int(x) for x in grid_patches)
    rh, rw = (int(x) for x in region_patches)
    if hp % rh or wp % rw:
        raise ValueError(
            f"region_patches {rh}x{rw} must divide the patch grid {hp}x{wp} "
            "(choose a region size that tiles the grid)"
        )
    n = hp * wp
    rows, cols = np.divmod(np.arange(n), wp)
    glob = np.stack([_sector_order(rows, cols, k) for k in range(N_SECTORS)]).astype(np.int64)

    # Region r = (ri, ci) in raster order; its patches in raster order.
    lr, lc = np.divmod(np.arange(rh * rw), rw)
    region_members = np.stack(
        [(ri * rh + lr) * wp + (ci * rw + lc) for ri in range(hp // rh) for ci in range(wp // rw)]
    )  # (R, P) global patch indices
    local = np.stack([_sector_order(lr, lc, k) for k in range(N_SECTORS)])  # (16, P)
    regional = np.take_along_axis(
        region_members[None, :, :], local[:, None, :].repeat(len(region_members), axis=1), axis=2
    ).astype(np.int64)  # (16, R, P)
    return {"global": glob, "regional": regional}


def grid_params(
    *, img_size: tuple[int, int], patch_size: int, region_patches: tuple[int, int]
) -> dict[str, Any]:
    """The parameters that define a set of orders (stored with them and hashed with them)."""
    return {
        "ny": int(img_size[0]),
        "nx": int(img_size[1]),
        "patch_size": int(patch_size),
        "region_patches": [int(region_patches[0]), int(region_patches[1])],
        "n_sectors": N_SECTORS,
        "sector_convention": "toward; 0=east, counter-clockwise, 22.5 deg",
        "format_version": FORMAT_VERSION,
    }


def orders_digest(orders: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> str:
    """Canonical SHA-256 of a set of orders and their grid parameters (file bytes play no part)."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(params), sort_keys=True, separators=(",", ":")).encode())
    for mode in sorted(orders):
        arr = np.ascontiguousarray(np.asarray(orders[mode]), dtype="<i8")
        h.update(f"|{mode}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_orders(
    path: str | Path,
    orders: Mapping[str, np.ndarray],
    params: Mapping[str, Any],
    *,
    compress: bool = True,
) -> str:
    """Write orders to an ``.npz`` (no pickle) with their params and digest; return the digest."""
    from aqnet.atomic import atomic_save

    digest = orders_digest(orders, params)
    arrays = {f"order_{mode}": np.asarray(arr, dtype=np.int64) for mode, arr in orders.items()}
    arrays["params_json"] = np.array(json.dumps(dict(params), sort_keys=True))
    arrays["digest"] = np.array(digest)

    def _write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)

    atomic_save(_write, path)
    return digest


class OrdersFileError(ValueError):
    """An orders file that is missing, unreadable or inconsistent."""


def load_orders(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """Read an orders file; returns ``(orders, params, stored_digest)``.

    Raises:
        OrdersFileError: file missing, not an ``.npz``, pickled content, or fields missing.
    """
    path = Path(path)
    if not path.is_file():
        raise OrdersFileError(f"wind orders file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            orders = {k[len("order_") :]: npz[k] for k in npz.files if k.startswith("order_")}
            params = json.loads(str(npz["params_json"]))
            digest = str(npz["digest"])
    except (zipfile.BadZipFile, OSError, EOFError, io.UnsupportedOperation) as exc:
        raise OrdersFileError(f"wind orders file {path} is unreadable: {exc}") from exc
    except KeyError as exc:
        raise OrdersFileError(f"wind orders file {path} lacks the field {exc}") from exc
    except ValueError as exc:  # pickled object arrays are refused by allow_pickle=False
        raise OrdersFileError(f"wind orders file {path} is not a plain array file: {exc}") from exc
    if not orders:
        raise OrdersFileError(f"wind orders file {path} holds no order arrays")
    return orders, params, digest

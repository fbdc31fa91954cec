"""Writers of the training cache's files, called in turn by :func:`aqnet.data.cache.build_cache`.

:func:`write_year` streams one year, time chunk by time chunk, into a memory-mapped
``year_<year>.npy`` in physical units, folding the training years' chunks into
:class:`RunningStats`; :func:`normalise_in_place` then normalises it, chunk by chunk;
:func:`write_static` writes ``static.npz`` and :func:`write_orders` ``wind_orders.npz``;
:func:`replace_dir` moves the finished folder into place. The layout: :mod:`aqnet.data.cache`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import xarray as xr

from aqnet.atomic import current_umask
from aqnet.config import INPUT_VARIABLES, MODEL_VARIABLES
from aqnet.data.io import YearInfo, fill_nans
from aqnet.data.reference import loss_mask
from aqnet.data.regrid import Regridder
from aqnet.orders import build_orders, grid_params, save_orders

if TYPE_CHECKING:
    from aqnet.model.presets import ModelConfig

__all__ = [
    "RunningStats",
    "normalise_in_place",
    "replace_dir",
    "write_orders",
    "write_static",
    "write_year",
]


class RunningStats:
    """Per-channel mean and variance over streamed chunks (Chan et al. merge, float64)."""

    def __init__(self, n_channels: int) -> None:
        self.count = np.zeros(n_channels)
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def update(self, chunk: np.ndarray) -> None:
        """``chunk (t, V, H, W)``: fold its values in, channel by channel."""
        x = chunk.astype(np.float64, copy=False)
        n_b = x.shape[0] * x.shape[2] * x.shape[3]
        mean_b = x.mean(axis=(0, 2, 3))
        m2_b = ((x - mean_b[None, :, None, None]) ** 2).sum(axis=(0, 2, 3))
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def result(self, names: tuple[str, ...]) -> tuple[dict[str, dict[str, float]], list[str]]:
        """``({var: {"mean", "std"}}, constant channels)``; a constant channel gets std 1."""
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        constant = [
            n
            for n, s, m in zip(names, std, self.mean, strict=True)
            if s <= 1e-12 * max(1.0, abs(m))
        ]
        stats = {
            n: {"mean": float(m), "std": float(s) if n not in constant else 1.0}
            for n, m, s in zip(names, self.mean, std, strict=True)
        }
        return stats, constant


def _time_chunk(
    ds: xr.Dataset, info: YearInfo, n_cells_src: int, n_cells_dst: int, chunk_mb: int
) -> int:
    """Time steps per chunk: within ``chunk_mb`` and a multiple of the file's own time chunks."""
    per_step = len(MODEL_VARIABLES) * (n_cells_src * 8 + n_cells_dst * 12)  # read, fill, regrid
    steps = max(1, (chunk_mb * 2**20) // per_step)
    native = None
    for name in INPUT_VARIABLES:
        chunks = ds[name].chunks
        if info.time_varying[name] and chunks:
            native = int(chunks[0][0])
            break
    if native and steps >= native:
        steps = (steps // native) * native
    return int(min(steps, info.n_times))


def write_year(
    ds: xr.Dataset,
    info: YearInfo,
    regridder: Regridder,
    path: Path,
    *,
    chunk_mb: int,
    lat: np.ndarray,
    lon: np.ndarray,
    stats: RunningStats | None,
) -> dict[str, int]:
    """Read, fill, regrid and write one year (physical units); returns NaNs filled per variable."""
    h, w = regridder.dst_shape
    n_v = len(MODEL_VARIABLES)
    arr = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(info.n_times, n_v, h, w)
    )
    static: dict[str, np.ndarray] = {}
    filled = dict.fromkeys(INPUT_VARIABLES, 0)
    for name in INPUT_VARIABLES:
        if not info.time_varying[name]:
            values, n = fill_nans(np.asarray(ds[name].values, dtype=np.float32))
            static[name] = regridder(values)
            filled[name] = n
    i_lat, i_lon = MODEL_VARIABLES.index("lat"), MODEL_VARIABLES.index("lon")
    step = _time_chunk(ds, info, regridder.src_shape[0] * regridder.src_shape[1], h * w, chunk_mb)
    dynamic = [n for n in INPUT_VARIABLES if info.time_varying[n]]
    for t0 in range(0, info.n_times, step):
        sl = slice(t0, min(info.n_times, t0 + step))
        chunk = np.empty((sl.stop - sl.start, n_v, h, w), dtype=np.float32)
        values = dask.compute(*[ds[name].isel(time=sl).data for name in dynamic])
        for name, block in zip(dynamic, values, strict=True):
            block, n = fill_nans(np.asarray(block, dtype=np.float32))
            filled[name] += n
            chunk[:, MODEL_VARIABLES.index(name)] = regridder(block)  # (t, ny, nx) -> (t, H, W)
        for name, field in static.items():
            chunk[:, MODEL_VARIABLES.index(name)] = field
        chunk[:, i_lat] = lat[:, None]
        chunk[:, i_lon] = lon[None, :]
        arr[sl] = chunk
        if stats is not None:
            stats.update(chunk)
    arr.flush()
    del arr
    return filled


def normalise_in_place(path: Path, mean: np.ndarray, std: np.ndarray, *, chunk_mb: int) -> None:
    """``(x - mean) / std`` per channel over the ``.npy`` at ``path``, in place, chunk by chunk."""
    arr = np.load(path, mmap_mode="r+")
    per_step = arr[0].nbytes * 3
    step = max(1, (chunk_mb * 2**20) // per_step)
    m = mean.astype(np.float32)[None, :, None, None]
    s = std.astype(np.float32)[None, :, None, None]
    for t0 in range(0, arr.shape[0], step):
        arr[t0 : t0 + step] = (arr[t0 : t0 + step] - m) / s
    arr.flush()
    del arr


def _open_permissions(folder: Path) -> None:
    """Give the folder and its files the usual umask modes (temp files are created private)."""
    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``, replacing what was there."""
    _open_permissions(tmp)
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.replace(out_dir, old / "cache")
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def write_static(
    path: Path,
    ds: xr.Dataset,
    info: YearInfo,
    regridder: Regridder,
    lat: np.ndarray,
    lon: np.ndarray,
    cfg: Mapping[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """``static.npz``: elevation in metres (not normalised), the loss mask (``data.mask``: the
    data's domain, or the baseline's mask within it), the coordinates."""
    elev = ds["elevation"].isel(time=0) if info.time_varying["elevation"] else ds["elevation"]
    elev_values, _ = fill_nans(np.asarray(elev.values, dtype=np.float32))
    elevation_m = regridder(elev_values)
    mask, record = loss_mask(cfg, regridder(info.mask.astype(np.float32)) >= 0.5)
    with path.open("wb") as fh:
        np.savez(fh, elevation_m=elevation_m, mask=mask, lat=lat, lon=lon)
    return mask, record


def write_orders(
    path: Path, mcfg: ModelConfig, region: tuple[int, int]
) -> tuple[str, dict[str, Any]]:
    """Scan orders of the model's patch grid; prints and returns the digest and the params."""
    orders = build_orders(mcfg.grid_patches, region_patches=region)
    params = grid_params(img_size=mcfg.img_size, patch_size=mcfg.patch_size, region_patches=region)
    digest = save_orders(path, orders, params)
    hp, wp = mcfg.grid_patches
    print(
        f"build_cache: wind orders digest {digest} (patch grid {hp}x{wp}, "
        f"regions {region[0]}x{region[1]})",
        flush=True,
    )
    return digest, params

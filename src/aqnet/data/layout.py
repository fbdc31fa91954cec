"""File names of the cache folder and its light readers (numpy and json only, no xarray).

The layout is documented in :mod:`aqnet.data.cache` and docs/ARCHITECTURE.md; the Dataset and
the other stages read a cache through these functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CACHE_FORMAT_VERSION = 1
META_FILE = "meta.json"
STATS_FILE = "stats.json"
STATIC_FILE = "static.npz"
ORDERS_FILE = "wind_orders.npz"
SPLITS: tuple[str, ...] = ("train", "val", "test")


def year_file(year: int) -> str:
    """File name of one year's array in the cache."""
    return f"year_{int(year)}.npy"


def read_meta(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``meta.json``.

    Raises:
        FileNotFoundError: no (complete) cache in ``cache_dir``.
    """
    path = Path(cache_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {cache_dir} is not a complete cache (run build-cache)"
        )
    with path.open() as fh:
        return json.load(fh)


def load_stats(cache_dir: str | Path) -> dict[str, dict[str, float]]:
    """``{var: {"mean": float, "std": float}}`` (training years only)."""
    path = Path(cache_dir) / STATS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {cache_dir} is not a complete cache")
    with path.open() as fh:
        return json.load(fh)


def load_static(cache_dir: str | Path) -> dict[str, np.ndarray]:
    """``{"elevation_m": (H, W) float32, "mask": (H, W) bool, "lat": (H,), "lon": (W,)}``."""
    path = Path(cache_dir) / STATIC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {cache_dir} is not a complete cache")
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}

"""aqnet.data: the demo data set, reading and validating input files, the training cache and the
Dataset/DataLoader that reads it (see docs/ARCHITECTURE.md).

Modules: :mod:`~aqnet.data.demo` (the demo generator and its transport model),
:mod:`~aqnet.data.io` (open yearly files), :mod:`~aqnet.data.validate` (validate them),
:mod:`~aqnet.data.regrid` (interpolation onto the target grid), :mod:`~aqnet.data.cache`
(``build_cache``), :mod:`~aqnet.data.cache_write` (the writers of the cache's files),
:mod:`~aqnet.data.layout` (the cache's files and their readers),
:mod:`~aqnet.data.dataset` (``CacheDataset``, ``make_loader``, and the one validation subset of
every validation pass: ``validation_indices``, ``make_validation_loader``), :mod:`~aqnet.data.cli`
(the ``make-demo-data`` and ``build-cache`` commands).

The names below are imported lazily, so ``import aqnet.data`` does not import torch or xarray
until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqnet.data.cache import build_cache
    from aqnet.data.dataset import (
        CacheDataset,
        make_loader,
        make_validation_loader,
        validation_indices,
        validation_samples,
    )
    from aqnet.data.demo import make_demo_data
    from aqnet.data.io import DataValidationError, open_year
    from aqnet.data.layout import load_static, load_stats, read_meta
    from aqnet.data.validate import validate_year

_EXPORTS: dict[str, str] = {
    "make_demo_data": "aqnet.data.demo",
    "open_year": "aqnet.data.io",
    "validate_year": "aqnet.data.validate",
    "DataValidationError": "aqnet.data.io",
    "build_cache": "aqnet.data.cache",
    "load_stats": "aqnet.data.layout",
    "load_static": "aqnet.data.layout",
    "read_meta": "aqnet.data.layout",
    "CacheDataset": "aqnet.data.dataset",
    "make_loader": "aqnet.data.dataset",
    "make_validation_loader": "aqnet.data.dataset",
    "validation_indices": "aqnet.data.dataset",
    "validation_samples": "aqnet.data.dataset",
}

__all__ = [
    "CacheDataset",
    "DataValidationError",
    "build_cache",
    "load_static",
    "load_stats",
    "make_demo_data",
    "make_loader",
    "make_validation_loader",
    "open_year",
    "read_meta",
    "validate_year",
    "validation_indices",
    "validation_samples",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aqnet.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

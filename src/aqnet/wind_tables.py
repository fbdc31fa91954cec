"""Wind scan tables from either side, in one form: aqnet's orders files and the researchers' cache.

The researchers' training code writes its scan tables with ``pickle.dump`` to
``wind_scanner_cache.pkl`` (``AmmarKheder/TopoFlow`` commit a962ae0, ``src/wind_scanning_cached.py``
``CachedWindScanning``: ``__init__`` 20-47, ``_precompute_all_orders`` 130-151,
``_precompute_regional_orders_32x32`` 153-193, read back by ``_load_cache_from_disk`` 101-128). The
file is a dict:

* ``grid_h``, ``grid_w`` - the patch grid (64 x 128 at the paper grid); ``num_sectors`` (16);
  ``regions_h``, ``regions_w`` (32); ``sector_angles`` - ``2 pi k / 16`` radians;
* ``cached_orders`` - ``{sector: LongTensor(grid_h * grid_w)}``: patch indices, the global orders;
* ``regional_cached_orders`` - ``{region: {sector: LongTensor(8)}}``: **local** indices
  ``0..7`` inside a region of 2 x 4 patches (local patch ``l`` at ``divmod(l, 4)``).

A pickle can name any importable callable and have it called while loading, so it is read with
:class:`RestrictedUnpickler`: builtin containers, numbers and strings, ``collections.OrderedDict``
and torch's tensor rebuild only; any other global is refused, naming it, before anything is called.
``pickle.dump`` of a CPU tensor references ``torch._utils._rebuild_tensor_v2`` and
``torch.storage._load_from_bytes`` (the storage as a legacy ``torch.save`` blob, which torch would
read with ``weights_only=False``); the blob is read here with ``torch.load(weights_only=True)``
instead, and protocol 2 encodes ``bytes`` through ``_codecs.encode(text, "latin1")``, admitted for
that one encoding.

:func:`read_tables` gives both kinds of file as :class:`WindTables`: the grid at the patch level,
``global`` ``(S, N)`` patch indices and ``regional`` ``(S, R, P)`` local indices, so that two files
are compared by content, never by bytes.
"""

from __future__ import annotations

import builtins
import codecs
import dataclasses
import hashlib
import io
import json
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqnet.orders import OrdersFileError, load_orders

PICKLE_NAME = "wind_scanner_cache.pkl"
"""The researchers' file name."""


class UnsafePickleError(OrdersFileError):
    """A pickle that asks for a global outside the allowed set (nothing of it was run)."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``; only the latin-1 encoding."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(
            f"the pickle calls _codecs.encode with {type(text).__name__}, {encoding!r}; only "
            "(str, 'latin1') - protocol 2's encoding of bytes - is allowed"
        )
    return text.encode("latin-1")


def _storage_from_bytes(blob: bytes) -> Any:
    """A tensor storage from the legacy ``torch.save`` blob that ``pickle.dump`` embeds, read with
    torch's restricted loader (``weights_only=True``) rather than ``torch.storage._load_from_bytes``
    (which does not restrict it)."""
    if not isinstance(blob, bytes | bytearray):
        raise UnsafePickleError(f"a tensor storage is given as {type(blob).__name__}, not bytes")
    try:
        return torch.load(io.BytesIO(bytes(blob)), weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"a tensor storage inside the pickle is refused: {exc}") from exc


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
             "bytes", "bytearray", "bool")  # fmt: skip

_ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", name): getattr(builtins, name) for name in _BUILTINS},
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of ``_ALLOWED`` (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"refused the global {module}.{name}: a wind scan cache holds only containers, "
                "numbers, strings and tensors (nothing of the file was run)"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused a persistent id {pid!r} (not a plain pickle.dump file)")


def load_pickle(path: str | Path) -> Any:
    """Read a pickle with :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: a global outside the allowed set (named).
        OrdersFileError: missing, truncated or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise OrdersFileError(f"wind scan cache not found: {path}")
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, RuntimeError) as exc:
        raise OrdersFileError(f"wind scan cache {path} is unreadable: {exc}") from exc


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindTables:
    """Scan tables of one file, in the form both sides share.

    Attributes:
        path: the file read.
        kind: ``"aqnet"`` (an ``aqnet.orders`` ``.npz``) or ``"pickle"`` (the researchers' cache).
        grid: ``grid_h``, ``grid_w`` (patches), ``num_sectors``, ``regions_h``, ``regions_w``.
        sector_angles: ``(S,)`` radians of the sectors.
        tables: ``{"global": (S, N) patch indices, "regional": (S, R, P) local indices}``, int64.
        params: the ``aqnet`` file's grid parameters (``{}`` for a pickle).
        stored_digest: the ``aqnet`` file's stored digest (``""`` for a pickle).
    """

    path: Path
    kind: str
    grid: dict[str, int]
    sector_angles: np.ndarray
    tables: dict[str, np.ndarray]
    params: dict[str, Any]
    stored_digest: str

    def content_digest(self) -> str:
        """SHA-256 over the grid and the int64 tables: equal for equal content, whatever file."""
        h = hashlib.sha256(json.dumps(self.grid, sort_keys=True).encode())
        for mode in sorted(self.tables):
            arr = np.ascontiguousarray(self.tables[mode], dtype="<i8")
            h.update(f"|{mode}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def is_pickle(path: Path) -> bool:
    """A pickle by its first byte (protocol >= 2) or its suffix; a zip (``.npz``) never is."""
    if not path.is_file() or zipfile.is_zipfile(path):
        return False
    with path.open("rb") as fh:
        first = fh.read(1)
    return first == b"\x80" or path.suffix in (".pkl", ".pickle")


def _int_tensor_1d(value: Any, where: str, length: int) -> np.ndarray:
    if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.dtype.is_floating_point:
        raise OrdersFileError(f"{where} is not a 1-D integer tensor ({type(value).__name__})")
    if value.numel() != length:
        raise OrdersFileError(f"{where} has {value.numel()} entries, the grid needs {length}")
    return value.to(torch.int64).numpy()


def tables_from_pickle(data: Any, path: Path) -> WindTables:
    """The researchers' cache dict as :class:`WindTables` (structure checked, keys named)."""
    where = f"wind scan cache {path}"
    if not isinstance(data, dict):
        raise OrdersFileError(f"{where} holds a {type(data).__name__}, not the cache dict")
    keys = ("grid_h", "grid_w", "num_sectors", "regions_h", "regions_w", "sector_angles")
    missing = [k for k in (*keys, "cached_orders", "regional_cached_orders") if k not in data]
    if missing:
        raise OrdersFileError(f"{where} lacks the key(s) {missing}")
    try:
        grid = {k: int(data[k]) for k in keys[:5]}
    except (TypeError, ValueError) as exc:
        raise OrdersFileError(f"{where}: a grid entry is not an integer: {exc}") from exc
    s, gh, gw = grid["num_sectors"], grid["grid_h"], grid["grid_w"]
    rh, rw = grid["regions_h"], grid["regions_w"]
    if min(grid.values()) < 1 or gh % rh or gw % rw:
        raise OrdersFileError(f"{where}: {rh}x{rw} regions do not tile the {gh}x{gw} patch grid")
    n_local = (gh // rh) * (gw // rw)
    glob, regional = data["cached_orders"], data["regional_cached_orders"]
    if not isinstance(glob, dict) or sorted(glob) != list(range(s)):
        raise OrdersFileError(f"{where}: cached_orders must map the sectors 0..{s - 1}")
    if not isinstance(regional, dict) or sorted(regional) != list(range(rh * rw)):
        raise OrdersFileError(
            f"{where}: regional_cached_orders must map the regions 0..{rh * rw - 1}"
        )
    g = np.stack(
        [_int_tensor_1d(glob[k], f"{where}: cached_orders[{k}]", gh * gw) for k in range(s)]
    )  # (S, N)
    rows = []
    for r in range(rh * rw):
        if not isinstance(regional[r], dict) or sorted(regional[r]) != list(range(s)):
            raise OrdersFileError(
                f"{where}: regional_cached_orders[{r}] must map the sectors 0..{s - 1}"
            )
        rows.append(
            [
                _int_tensor_1d(
                    regional[r][k], f"{where}: regional_cached_orders[{r}][{k}]", n_local
                )
                for k in range(s)
            ]
        )
    reg = np.asarray(rows, dtype=np.int64).transpose(1, 0, 2)  # (R, S, P) -> (S, R, P)
    try:
        angles = np.asarray([float(a) for a in data["sector_angles"]], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OrdersFileError(f"{where}: sector_angles are not numbers: {exc}") from exc
    return WindTables(
        path=path, kind="pickle", grid=grid, sector_angles=angles,
        tables={"global": g, "regional": reg}, params={}, stored_digest="",
    )  # fmt: skip


def tables_from_orders(
    orders: dict[str, np.ndarray], params: dict[str, Any], stored: str, path: Path
) -> WindTables:
    """An ``aqnet.orders`` file as :class:`WindTables`: regional patch indices become local ones
    (the raster position inside the region's block, the researchers' local index)."""
    try:
        p = int(params["patch_size"])
        gh, gw = int(params["ny"]) // p, int(params["nx"]) // p
        rph, rpw = (int(x) for x in params["region_patches"])
        s = int(params["n_sectors"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OrdersFileError(
            f"wind orders file {path}: grid parameters incomplete: {exc}"
        ) from exc
    grid = {"grid_h": gh, "grid_w": gw, "num_sectors": s,
            "regions_h": gh // rph, "regions_w": gw // rpw}  # fmt: skip
    regional = np.asarray(orders.get("regional", np.zeros((s, 0, rph * rpw), np.int64)))
    rows, cols = np.divmod(regional, gw)  # patch -> (row, col) on the whole grid
    local = (rows % rph) * rpw + cols % rpw  # (S, R, P) raster position inside the block
    return WindTables(
        path=path, kind="aqnet", grid=grid,
        sector_angles=2 * math.pi * np.arange(s) / s,
        tables={"global": np.asarray(orders["global"], dtype=np.int64),
                "regional": local.astype(np.int64)},
        params=dict(params), stored_digest=stored,
    )  # fmt: skip


def read_tables(path: str | Path) -> WindTables:
    """Read an aqnet orders file (``.npz``), an aqnet cache folder, or the researchers' pickle.

    Raises:
        UnsafePickleError, OrdersFileError: with the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "wind_orders.npz"
    if is_pickle(path):
        return tables_from_pickle(load_pickle(path), path)
    orders, params, stored = load_orders(path)
    return tables_from_orders(orders, params, stored, path)

"""The ``verify_wind_order`` checks of two aqnet orders files (``.npz``, :mod:`aqnet.orders`).

Each file's stored digest must match the orders it holds; each order must be valid for the grid
parameters (global: each sector's row a permutation of ``range(N)``; regional: each region's row
exactly that region's patches); the grid parameters must be equal, and then every sector's order.
The pieces that the comparison with the researchers' pickle (:mod:`aqnet.gates.wind_pickle`)
shares are here too: the files' MD5s, the per-sector :func:`order_differences`, the short lists of
a message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aqnet.orders import OrdersFileError, load_orders, orders_digest
from aqnet.stage import StageFailure

_SHOW = 5  # positions / sectors listed in a message


def md5(path: Path) -> str:
    """The MD5 of the file's bytes (hex)."""
    h = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path, role: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Load one orders file; returns ``(orders, params, description for the report)``."""
    try:
        orders, params, stored = load_orders(path)
    except OrdersFileError as exc:
        raise StageFailure(f"the {role} wind orders cannot be used: {exc}") from exc
    digest = orders_digest(orders, params)
    info = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "md5": md5(path),
        "stored_digest": stored,
        "digest": digest,
        "digest_matches_stored": digest == stored,
        "params": params,
        "modes": {mode: list(arr.shape) for mode, arr in sorted(orders.items())},
    }
    return orders, params, info


def expected_shapes(params: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes of the ``global`` and ``regional`` orders that ``params`` define."""
    try:
        ny, nx, p = int(params["ny"]), int(params["nx"]), int(params["patch_size"])
        rh, rw = (int(s) for s in params["region_patches"])
        sectors = int(params["n_sectors"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StageFailure(
            f"wind orders grid parameters are incomplete: {exc} in {params}"
        ) from exc
    hp, wp = ny // p, nx // p
    return {
        "global": (sectors, hp * wp),
        "regional": (sectors, (hp // rh) * (wp // rw), rh * rw),
    }


def _region_members(params: Mapping[str, Any]) -> np.ndarray:
    """``(R, P)`` patch indices of each region, sorted (regions in raster order)."""
    p = int(params["patch_size"])
    hp, wp = int(params["ny"]) // p, int(params["nx"]) // p
    rh, rw = (int(s) for s in params["region_patches"])
    lr, lc = np.divmod(np.arange(rh * rw), rw)
    members = [
        np.sort((ri * rh + lr) * wp + (ci * rw + lc))
        for ri in range(hp // rh)
        for ci in range(wp // rw)
    ]
    return np.stack(members)


def validity_problems(
    orders: Mapping[str, np.ndarray], params: Mapping[str, Any], role: str
) -> list[str]:
    """Why ``orders`` are not valid scan orders for ``params`` (empty when they are)."""
    problems: list[str] = []
    shapes = expected_shapes(params)
    for mode in sorted(set(shapes) - set(orders)):
        problems.append(f"the {role} orders lack the {mode} mode")
    for mode in sorted(set(orders) - set(shapes)):
        problems.append(f"the {role} orders hold an unknown mode {mode!r}")
    for mode in sorted(set(orders) & set(shapes)):
        arr = np.asarray(orders[mode])
        if tuple(arr.shape) != shapes[mode]:
            problems.append(
                f"the {role} {mode} orders have shape {tuple(arr.shape)}, the grid parameters "
                f"need {shapes[mode]}"
            )
            continue
        if not np.issubdtype(arr.dtype, np.integer):
            problems.append(f"the {role} {mode} orders are {arr.dtype}, not integers")
            continue
        n = shapes["global"][1]
        if mode == "global":
            ok = np.sort(arr, axis=1) == np.arange(n)[None, :]  # (S, N)
            bad = np.flatnonzero(~ok.all(axis=1))
            what = f"a permutation of range({n})"
        else:
            ok = np.sort(arr, axis=2) == _region_members(params)[None]  # (S, R, P)
            bad = np.flatnonzero(~ok.all(axis=(1, 2)))
            what = "each region's own patches, each once"
        if bad.size:
            problems.append(
                f"the {role} {mode} orders of sector(s) {ints(bad)} are not {what} "
                "(a corrupted or hand-edited orders file)"
            )
    return problems


def ints(values: Any, n: int = _SHOW) -> str:
    """The first ``n`` integers, comma-separated, and how many more there are."""
    values = [int(v) for v in values]
    shown = ", ".join(map(str, values[:n]))
    return shown + (f" ... ({len(values) - n} more)" if len(values) > n else "")


def order_differences(
    cache: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Per mode and sector, the positions where two valid sets of orders of one grid differ.

    Returns:
        ``[{"mode", "sector", "n_positions", "first": [{"position", "cache", "reference"}, ...]}]``;
        for the regional mode a position is ``[region, slot]``.
    """
    out: list[dict[str, Any]] = []
    for mode in sorted(set(cache) & set(reference)):
        a, b = np.asarray(cache[mode]), np.asarray(reference[mode])
        for sector in range(a.shape[0]):
            diff = np.argwhere(a[sector] != b[sector])  # (n, ndim - 1)
            if not len(diff):
                continue
            first = [
                {
                    "position": [int(i) for i in pos] if len(pos) > 1 else int(pos[0]),
                    "cache": int(a[sector][tuple(pos)]),
                    "reference": int(b[sector][tuple(pos)]),
                }
                for pos in diff[:_SHOW]
            ]
            out.append({"mode": mode, "sector": sector, "n_positions": len(diff), "first": first})
    return out


def _describe_differences(diffs: list[dict[str, Any]]) -> str:
    parts = []
    for mode in sorted({d["mode"] for d in diffs}):
        rows = [d for d in diffs if d["mode"] == mode]
        total = sum(d["n_positions"] for d in rows)
        first = rows[0]
        where = "region/slot" if mode == "regional" else "position"
        examples = ", ".join(
            f"{where} {f['position']}: patch {f['cache']} (cache) vs {f['reference']} (reference)"
            for f in first["first"][:3]
        )
        parts.append(
            f"{mode} mode: sector(s) {ints([d['sector'] for d in rows])} differ in {total} "
            f"position(s) (first, sector {first['sector']}, {first['n_positions']} position(s): "
            f"{examples})"
        )
    return "; ".join(parts)


def verify_aqnet_files(cache_path: Path, ref_path: Path, report: dict[str, Any]) -> list[str]:
    """The comparison of two aqnet orders files; returns the problems (sets the reason)."""
    cache_orders, cache_params, cache_info = _read(cache_path, "cache")
    report["cache"] = cache_info
    ref_orders, ref_params, ref_info = _read(ref_path, "reference")
    report["reference"] = ref_info
    report["bytes_differ"] = cache_info["md5"] != ref_info["md5"]
    report["digests_equal"] = cache_info["digest"] == ref_info["digest"]

    problems: list[str] = []
    for role, info in (("cache", cache_info), ("reference", ref_info)):
        if not info["digest_matches_stored"]:
            problems.append(
                f"the {role} file {info['path']} was modified after it was written: its stored "
                f"digest {info['stored_digest'][:12]} does not match its orders "
                f"({info['digest'][:12]})"
            )
    problems += validity_problems(cache_orders, cache_params, "cache")
    problems += validity_problems(ref_orders, ref_params, "reference")

    grid_problem = grid_differences(cache_params, ref_params, report)
    if grid_problem is not None:
        problems.append(grid_problem)
    elif not problems:
        diffs = order_differences(cache_orders, ref_orders)
        report["differences"] = diffs
        report["differing_sectors"] = {
            mode: [d["sector"] for d in diffs if d["mode"] == mode] for mode in sorted(cache_orders)
        }
        if diffs:
            report["table_difference"] = (
                "the wind scan orders differ from the ones the baseline was trained with: "
                + _describe_differences(diffs)
            )
            problems.append(report["table_difference"])
    if problems:
        return problems

    n_sectors, n_patches = expected_shapes(cache_params)["global"]
    if report["bytes_differ"]:
        how = bytes_differ(cache_info["md5"], ref_info["md5"])
    else:
        how = "the files are byte-identical"
    report["reason"] = (
        f"{n_sectors} sectors x {', '.join(sorted(cache_orders))} orders over {n_patches} patches "
        f"match the reference (digest {cache_info['digest'][:12]}); {how}"
    )
    return []


def grid_differences(
    cache_grid: Mapping[str, Any], ref_grid: Mapping[str, Any], report: dict[str, Any]
) -> str | None:
    """The grid keys whose values differ between the two files, into
    ``report["grid_differences"]``; the problem they make, else None."""
    diffs = {
        key: {"cache": cache_grid.get(key), "reference": ref_grid.get(key)}
        for key in sorted(set(cache_grid) | set(ref_grid))
        if cache_grid.get(key) != ref_grid.get(key)
    }
    report["grid_differences"] = diffs
    if not diffs:
        return None
    return "the grid differs from the reference's: " + ", ".join(
        f"{k} {v['cache']} (cache) vs {v['reference']} (reference)" for k, v in diffs.items()
    )


def bytes_differ(md5_a: str, md5_b: str) -> str:
    """The reason's words for two files whose bytes differ but whose orders are identical."""
    return (
        f"bytes differ, orders identical (MD5 {md5_a[:8]} vs {md5_b[:8]}: the files' bytes "
        "differ but the orders are identical)"
    )

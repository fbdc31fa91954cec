"""The ``verify_wind_order`` checks when either side is the researchers' pickle cache.

Both files are read as :class:`aqnet.wind_tables.WindTables` (``wind_scanner_cache.pkl`` with a
restricted unpickler, :func:`aqnet.wind_tables.read_tables`) and compared in the form both share -
the patch grid, the sectors' angles, the global orders and each region's local orders - by
content; a difference names the sector (and the region).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aqnet.gates.wind_npz import bytes_differ, grid_differences, ints, md5, order_differences
from aqnet.orders import OrdersFileError, load_orders, orders_digest
from aqnet.stage import StageFailure
from aqnet.wind_tables import WindTables, read_tables


def _read_tables(path: Path, role: str) -> tuple[WindTables, dict[str, Any]]:
    try:
        tables = read_tables(path)
    except OrdersFileError as exc:
        raise StageFailure(f"the {role} wind orders cannot be used: {exc}") from exc
    info = {
        "path": str(tables.path),
        "kind": tables.kind,
        "bytes": tables.path.stat().st_size,
        "md5": md5(tables.path),
        "grid": tables.grid,
        "content_digest": tables.content_digest(),
        "tables": {mode: list(arr.shape) for mode, arr in sorted(tables.tables.items())},
    }
    if tables.kind == "aqnet":
        digest = orders_digest(*load_orders(tables.path)[:2])
        info.update(stored_digest=tables.stored_digest, digest=digest)
        info["digest_matches_stored"] = digest == tables.stored_digest
    return tables, info


def _table_problems(t: WindTables, role: str) -> list[str]:
    """Why the tables are not valid orders: global rows permutations of range(N), regional rows
    permutations of range(P)."""
    problems: list[str] = []
    g = t.grid
    n = g["grid_h"] * g["grid_w"]
    n_regions = g["regions_h"] * g["regions_w"]
    n_local = n // max(n_regions, 1)
    want = {
        "global": (g["num_sectors"], n),
        "regional": (g["num_sectors"], n_regions, n_local),
    }
    for mode, shape in want.items():
        arr = t.tables.get(mode)
        if arr is None or tuple(arr.shape) != shape:
            got = None if arr is None else tuple(arr.shape)
            problems.append(f"the {role} {mode} table has shape {got}, the grid needs {shape}")
            continue
        ok = np.sort(arr, axis=-1) == np.arange(shape[-1])
        bad = np.flatnonzero(~ok.reshape(shape[0], -1).all(axis=1))
        if bad.size:
            what = "patch indices" if mode == "global" else "local indices of a region"
            problems.append(
                f"the {role} {mode} orders of sector(s) {ints(bad)} are not permutations of the "
                f"{what} (a corrupted or hand-edited file)"
            )
    return problems


def _describe_table_differences(diffs: list[dict[str, Any]]) -> str:
    parts = []
    for mode in sorted({d["mode"] for d in diffs}):
        rows = [d for d in diffs if d["mode"] == mode]
        first = rows[0]
        if mode == "regional":
            regions = sorted({f["position"][0] for d in rows for f in d["first"]})
            f0 = first["first"][0]
            parts.append(
                f"regional orders: sector(s) {ints([d['sector'] for d in rows])} differ in "
                f"{sum(d['n_positions'] for d in rows)} position(s), region(s) {ints(regions)} "
                f"(first: sector {first['sector']} region {f0['position'][0]} slot "
                f"{f0['position'][1]}: local index {f0['cache']} (cache) vs {f0['reference']} "
                "(reference))"
            )
        else:
            f0 = first["first"][0]
            parts.append(
                f"global orders: sector(s) {ints([d['sector'] for d in rows])} differ in "
                f"{sum(d['n_positions'] for d in rows)} position(s) (first: sector "
                f"{first['sector']} position {f0['position']}: patch {f0['cache']} (cache) vs "
                f"{f0['reference']} (reference))"
            )
    return "; ".join(parts)


def verify_tables(cache_path: Path, ref_path: Path, report: dict[str, Any]) -> list[str]:
    """Compare two files by content when one of them is the researchers' pickle; the problems."""
    cache, cache_info = _read_tables(cache_path, "cache")
    report["cache"] = cache_info
    ref, ref_info = _read_tables(ref_path, "reference")
    report["reference"] = ref_info
    report["bytes_differ"] = cache_info["md5"] != ref_info["md5"]
    report["digests_equal"] = cache_info["content_digest"] == ref_info["content_digest"]
    problems: list[str] = []
    for role, info in (("cache", cache_info), ("reference", ref_info)):
        if info.get("digest_matches_stored") is False:
            problems.append(
                f"the {role} file {info['path']} was modified after it was written: its stored "
                f"digest {info['stored_digest'][:12]} does not match its orders "
                f"({info['digest'][:12]})"
            )
    grid_problem = grid_differences(cache.grid, ref.grid, report)
    if grid_problem is not None:
        problems.append(grid_problem)
        return problems
    problems += _table_problems(cache, "cache") + _table_problems(ref, "reference")
    if not np.allclose(cache.sector_angles, ref.sector_angles, rtol=0, atol=1e-12):
        problems.append(
            f"the sector angles differ: {np.round(cache.sector_angles, 6).tolist()} (cache) vs "
            f"{np.round(ref.sector_angles, 6).tolist()} (reference)"
        )
    if problems:
        return problems
    diffs = order_differences(cache.tables, ref.tables)
    report["differences"] = diffs
    report["differing_sectors"] = {
        mode: [d["sector"] for d in diffs if d["mode"] == mode] for mode in sorted(cache.tables)
    }
    if diffs:
        report["table_difference"] = (
            "the wind scan orders differ from the reference's: "
            + _describe_table_differences(diffs)
        )
        return [report["table_difference"]]
    g = cache.grid
    how = (
        bytes_differ(cache_info["md5"], ref_info["md5"])
        if report["bytes_differ"]
        else "the files are byte-identical"
    )
    report["reason"] = (
        f"{g['num_sectors']} sectors x global, regional orders over {g['grid_h'] * g['grid_w']} "
        f"patches ({g['regions_h'] * g['regions_w']} regions) match the reference by content "
        f"({cache.kind} vs {ref.kind}, content digest {cache_info['content_digest'][:12]}); {how}"
    )
    return []

"""Gate ``verify_wind_order``: the cache's scan orders are the ones the baseline was trained with.

What counts is the orders and the grid parameters, never the file bytes: two ``.npz`` files written
with different compression or a re-write have different MD5 sums but identical orders, and pass
(both MD5s and both canonical digests are reported, with whether the bytes differ). The gate fails
when

* a file is missing or unreadable, or its stored digest does not match the orders it holds
  (modified after it was written);
* an order is not a permutation (global: each sector's row is a permutation of ``range(N)``;
  regional: each region's row holds exactly that region's patches);
* the grid parameters differ (patch size, grid, region size, sector convention, format version);
* any sector's order differs, naming the mode, the sectors, the number of differing positions and
  the first few of them.

See :mod:`aqnet.orders` for the conventions and the digest.

Either side may also be the researchers' pickle cache (``wind_scanner_cache.pkl``, read with a
restricted unpickler, :mod:`aqnet.wind_tables`): the two files are then compared in the form both
share - the patch grid, the sectors' angles, the global orders and each region's local orders - by
content, and a difference names the sector (and the region).

With the config (``cfg``), the gate also checks **what will run**. In ``wind_scan: reference``
mode the applied order is recomputed from each sample's wind (:mod:`aqnet.model.reference_scan`)
and no table is read, so the gate recomputes it for the validation subset with the model's batched
scan and compares it with the reference rule computed the way the reference code does; it reports
that the tables are not used (and how often they would agree with the applied order), and table
differences no longer fail the gate. In ``global`` / ``regional`` mode the tables are what runs
(:mod:`aqnet.gates.applied_orders`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aqnet.gates.applied_orders import check_applied_orders
from aqnet.orders import OrdersFileError, load_orders, orders_digest
from aqnet.stage import StageFailure
from aqnet.wind_tables import WindTables, is_pickle, read_tables

ORDERS_FILE = "wind_orders.npz"
"""Name of the orders file inside a cache folder."""

_SHOW = 5  # positions / sectors listed in a message


def _md5(path: Path) -> str:
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
        "md5": _md5(path),
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
                f"the {role} {mode} orders of sector(s) {_ints(bad)} are not {what} "
                "(a corrupted or hand-edited orders file)"
            )
    return problems


def _ints(values: Any, n: int = _SHOW) -> str:
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
            f"{mode} mode: sector(s) {_ints([d['sector'] for d in rows])} differ in {total} "
            f"position(s) (first, sector {first['sector']}, {first['n_positions']} position(s): "
            f"{examples})"
        )
    return "; ".join(parts)


def verify_wind_order(
    cache_dir: str | Path,
    reference: str | Path,
    *,
    cfg: Mapping[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check that the cache's wind orders are valid and identical to the reference orders.

    Args:
        cache_dir: a cache folder holding ``wind_orders.npz``, an orders file, or the researchers'
            pickle cache.
        reference: the orders the baseline was trained with: the same three kinds.
        cfg: the resolved config; when given, the orders that will run are checked too
            (:func:`aqnet.gates.applied_orders.check_applied_orders`; ``cache_dir`` must then
            be the cache folder).
        report: a dict to fill (``aqnet.stage.run_stage`` passes its report); a new one if None.

    Returns:
        The report: ``cache`` and ``reference`` (path, bytes, md5, stored and recomputed digest,
        params, modes), ``bytes_differ``, ``digests_equal``, ``differences``, ``reason``.

    Raises:
        StageFailure: with the reason (the report is filled as far as the check got).
    """
    report = {} if report is None else report
    cache_path = _orders_path(Path(cache_dir))
    ref_path = _orders_path(Path(reference))
    report.update(cache_file=str(cache_path), reference_file=str(ref_path))
    mode = None if cfg is None else str(cfg["model"]["wind_scan"])
    if is_pickle(cache_path) or is_pickle(ref_path):
        problems = _verify_tables(cache_path, ref_path, report)
    else:
        problems = _verify_aqnet_files(cache_path, ref_path, report)
    only_tables = bool(problems) and problems == [report.get("table_difference")]
    if mode == "reference" and only_tables:
        # The tables are not what runs in this mode: their difference is reported, not fatal.
        report["problems"] = []
        report["reason"] = f"the tables differ but are not used ({problems[0]})"
    elif problems:
        report["problems"] = problems
        raise StageFailure("; ".join(problems))
    report["problems"] = []
    if cfg is not None:
        report["applied_orders"] = check_applied_orders(cfg, Path(cache_dir), ref_path)
        report["reason"] += "; " + report["applied_orders"]["summary"]
    return report


def _verify_aqnet_files(cache_path: Path, ref_path: Path, report: dict[str, Any]) -> list[str]:
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

    grid_diffs = {
        key: {"cache": cache_params.get(key), "reference": ref_params.get(key)}
        for key in sorted(set(cache_params) | set(ref_params))
        if cache_params.get(key) != ref_params.get(key)
    }
    report["grid_differences"] = grid_diffs
    if grid_diffs:
        problems.append(
            "the grid differs from the reference's: "
            + ", ".join(
                f"{k} {v['cache']} (cache) vs {v['reference']} (reference)"
                for k, v in grid_diffs.items()
            )
        )
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
        how = _bytes_differ(cache_info["md5"], ref_info["md5"])
    else:
        how = "the files are byte-identical"
    report["reason"] = (
        f"{n_sectors} sectors x {', '.join(sorted(cache_orders))} orders over {n_patches} patches "
        f"match the reference (digest {cache_info['digest'][:12]}); {how}"
    )
    return []


def _bytes_differ(md5_a: str, md5_b: str) -> str:
    return (
        f"bytes differ, orders identical (MD5 {md5_a[:8]} vs {md5_b[:8]}: the files' bytes "
        "differ but the orders are identical)"
    )


def _orders_path(path: Path) -> Path:
    return path / ORDERS_FILE if path.is_dir() else path


def _read_tables(path: Path, role: str) -> tuple[WindTables, dict[str, Any]]:
    try:
        tables = read_tables(path)
    except OrdersFileError as exc:
        raise StageFailure(f"the {role} wind orders cannot be used: {exc}") from exc
    info = {
        "path": str(tables.path),
        "kind": tables.kind,
        "bytes": tables.path.stat().st_size,
        "md5": _md5(tables.path),
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
                f"the {role} {mode} orders of sector(s) {_ints(bad)} are not permutations of the "
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
                f"regional orders: sector(s) {_ints([d['sector'] for d in rows])} differ in "
                f"{sum(d['n_positions'] for d in rows)} position(s), region(s) {_ints(regions)} "
                f"(first: sector {first['sector']} region {f0['position'][0]} slot "
                f"{f0['position'][1]}: local index {f0['cache']} (cache) vs {f0['reference']} "
                "(reference))"
            )
        else:
            f0 = first["first"][0]
            parts.append(
                f"global orders: sector(s) {_ints([d['sector'] for d in rows])} differ in "
                f"{sum(d['n_positions'] for d in rows)} position(s) (first: sector "
                f"{first['sector']} position {f0['position']}: patch {f0['cache']} (cache) vs "
                f"{f0['reference']} (reference))"
            )
    return "; ".join(parts)


def _verify_tables(cache_path: Path, ref_path: Path, report: dict[str, Any]) -> list[str]:
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
    grid_diffs = {
        k: {"cache": cache.grid.get(k), "reference": ref.grid.get(k)}
        for k in sorted(set(cache.grid) | set(ref.grid))
        if cache.grid.get(k) != ref.grid.get(k)
    }
    report["grid_differences"] = grid_diffs
    if grid_diffs:
        problems.append(
            "the grid differs from the reference's: "
            + ", ".join(
                f"{k} {v['cache']} (cache) vs {v['reference']} (reference)"
                for k, v in grid_diffs.items()
            )  # fmt: skip
        )
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
        _bytes_differ(cache_info["md5"], ref_info["md5"])
        if report["bytes_differ"]
        else "the files are byte-identical"
    )
    report["reason"] = (
        f"{g['num_sectors']} sectors x global, regional orders over {g['grid_h'] * g['grid_w']} "
        f"patches ({g['regions_h'] * g['regions_w']} regions) match the reference by content "
        f"({cache.kind} vs {ref.kind}, content digest {cache_info['content_digest'][:12]}); {how}"
    )
    return []

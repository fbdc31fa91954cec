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

The checks of each format are in :mod:`aqnet.gates.wind_npz` (aqnet's ``.npz`` files) and
:mod:`aqnet.gates.wind_pickle` (the researchers' pickle); :func:`verify_wind_order` dispatches.

With the config (``cfg``), the gate also checks **what will run**. In ``wind_scan: reference``
mode the applied order is recomputed from each sample's wind (:mod:`aqnet.model.reference_scan`)
and no table is read, so the gate recomputes it for the validation subset with the model's batched
scan and compares it with the reference rule computed the way the reference code does; it reports
that the tables are not used (and how often they would agree with the applied order), and table
differences no longer fail the gate. In ``global`` / ``regional`` mode the tables are what runs
(:mod:`aqnet.gates.applied_orders`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aqnet.gates.applied_orders import check_applied_orders
from aqnet.gates.wind_npz import verify_aqnet_files
from aqnet.gates.wind_pickle import verify_tables
from aqnet.stage import StageFailure
from aqnet.wind_tables import is_pickle

ORDERS_FILE = "wind_orders.npz"
"""Name of the orders file inside a cache folder."""


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
        problems = verify_tables(cache_path, ref_path, report)
    else:
        problems = verify_aqnet_files(cache_path, ref_path, report)
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


def _orders_path(path: Path) -> Path:
    return path / ORDERS_FILE if path.is_dir() else path

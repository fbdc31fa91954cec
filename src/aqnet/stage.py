"""What every stage shares: JSON reports written on every outcome, the one-line verdict, and the
exception type that turns a failed check into a readable message (the atomic writes under them
are :mod:`aqnet.atomic`).

A stage's CLI looks like::

    def run_my_gate(args) -> int:
        return run_stage("my_gate", lambda rep: check(args, rep), args.report, args.report_copy)

``check`` fills ``report`` (a dict) and returns the one-line reason of a pass; it raises
:class:`StageFailure` (or ``ValueError``/``FileNotFoundError`` with a readable message) on failure.
The report is written to every path given, on success and on failure, and the verdict line
``<stage>: PASS|FAIL - <reason>`` is printed, followed by where the report lies.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("aqnet")


class StageFailure(Exception):
    """A check failed; the message is the one-line reason shown to the user."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN/inf; keep them readable
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _jsonable(obj.item())  # numpy / torch scalars
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON (NaN/inf as strings, numpy/torch scalars as numbers)."""
    from aqnet.atomic import atomic_write_bytes  # aqnet.atomic builds on StageFailure

    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with Path(path).open() as fh:
        return json.load(fh)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain timestamped lines on stderr (Snakemake redirects them to the rule's log)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )


def run_stage(
    name: str,
    check: Callable[[dict[str, Any]], str],
    *report_paths: str | Path | None,
) -> int:
    """Run ``check(report)``, write the report to every path in ``report_paths``, print the verdict.

    Returns the process exit code: 0 on pass, 1 on a failed check or any error.
    """
    setup_logging()
    report: dict[str, Any] = {"stage": name, "started": _now()}
    try:
        reason = check(report)
        passed = True
    except (StageFailure, ValueError, FileNotFoundError, OSError, RuntimeError, KeyError) as exc:
        reason = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        passed = False
        if not isinstance(exc, StageFailure):
            report["error_type"] = type(exc).__name__
            report["traceback"] = traceback.format_exc()
    report.update(passed=passed, verdict="PASS" if passed else "FAIL", reason=reason)
    report["finished"] = _now()
    paths = [Path(p) for p in report_paths if p]
    for path in paths:
        write_json(path, report)
    print(f"{name}: {report['verdict']} - {reason}", flush=True)
    for path in paths:
        print(f"{name}: report written to {path}", flush=True)
    if not passed and len(paths) > 1:
        # Snakemake removes a failed job's declared output (the first path); the copy stays.
        print(f"{name} failed: report kept at {paths[-1]}", flush=True)
    return 0 if passed else 1


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def add_report_arguments(parser: Any, *, required: bool = True) -> None:
    """``--report`` (the stage's declared output) and ``--report-copy`` (kept on failure)."""
    parser.add_argument("--report", required=required, type=Path, help="JSON report path")
    parser.add_argument(
        "--report-copy",
        type=Path,
        default=None,
        help="second copy of the report, e.g. beside the log, which Snakemake keeps on failure",
    )


def first_items(items: Iterable[Any], n: int = 5) -> list[Any]:
    """The first ``n`` items of ``items`` (for short, readable failure messages)."""
    out = []
    for i, item in enumerate(items):
        if i >= n:
            break
        out.append(item)
    return out

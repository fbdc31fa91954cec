"""What every stage shares: atomic writes, JSON reports written on every outcome, the one-line
verdict, and the exception type that turns a failed check into a readable message.

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
import errno
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("aqnet")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


class StageFailure(Exception):
    """A check failed; the message is the one-line reason shown to the user."""


class WriteFailure(StageFailure, OSError):
    """An atomic write failed (full disk, lost write, quota); ``path`` is left as it was.

    The message names the file, the error, the free space of its folder and whether an earlier
    version of the file is still there.
    """

    def __init__(self, message: str, *, path: Path, errno_code: int | None) -> None:
        StageFailure.__init__(self, message)
        self.path = path
        self.errno_code = errno_code

    def __str__(self) -> str:
        return str(self.args[0])


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def describe_write_failure(path: Path, exc: BaseException, *, written_bytes: int | None) -> str:
    """One readable line for a failed write of ``path``: the error, the bytes written before it,
    the free space of the folder, and what is left at ``path``."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    reason = f"{os.strerror(code)} ({name})" if name else f"{type(exc).__name__}: {exc}"
    try:
        usage = shutil.disk_usage(path.parent)
        space = f"{_size(usage.free)} free of {_size(usage.total)} on {path.parent}"
    except OSError as du_exc:
        space = f"free space of {path.parent} unknown ({du_exc.strerror or du_exc})"
    done = f" after {_size(written_bytes)} written" if written_bytes else ""
    if path.exists():
        stamp = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.UTC)
        kept = f"the previous {path.name} (written {stamp.isoformat(timespec='seconds')}) is intact"
    else:
        kept = f"no earlier {path.name} exists"
    return f"could not write {path}: {reason}{done}; {space}; {kept}"


def fsync_dir(folder: str | Path) -> None:
    """Flush ``folder``'s entries (a rename inside it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file itself is synced
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file is fsynced before the rename and the folder after it, so after a crash ``path``
    holds either the old bytes or the new ones.
    """
    atomic_save(lambda tmp: tmp.write_bytes(data), path)


def atomic_save(save_fn: Callable[[Path], None], path: str | Path) -> None:
    """Call ``save_fn(tmp_path)``, fsync it, rename it to ``path`` and fsync the folder.

    ``save_fn`` writes a temporary file in ``path``'s folder (e.g. ``torch.save``); whatever it
    raises leaves ``path`` as it was and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_fn(Path(tmp))
        fsync_file(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch.save to a path reports a short write as RuntimeError ("unexpected pos")
        written = Path(tmp).stat().st_size if Path(tmp).exists() else None
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, WriteFailure):
            raise
        message = describe_write_failure(path, exc, written_bytes=written)
        raise WriteFailure(message, path=path, errno_code=getattr(exc, "errno", None)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to disk (``save_fn`` may have closed it without syncing)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

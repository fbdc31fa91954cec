"""Atomic file writes: a temporary file in the target's folder, fsynced, renamed over the target,
then the folder fsynced, so after a crash the target holds either its old bytes or the new ones.

A write that fails (full disk, quota, a short write) leaves the target as it was, removes the
temporary file and raises :class:`WriteFailure`, whose message names the file, the error, the
free space of its folder and whether an earlier version of the file is still there.

Every aqnet writer of a stage output or a resume state goes through :func:`atomic_save`
(``torch.save``, ``to_netcdf``, ``np.savez``) or :func:`atomic_write_bytes` (JSON, CSV, HTML).
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from aqnet.stage import StageFailure

__all__ = [
    "WriteFailure",
    "atomic_save",
    "atomic_write_bytes",
    "current_umask",
    "describe_write_failure",
    "fsync_dir",
    "fsync_file",
]


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~current_umask()  # what open() would give; mkstemp alone gives 0600


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


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to disk (``save_fn`` may have closed it without syncing)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def atomic_save(save_fn: Callable[[Path], None], path: str | Path) -> None:
    """Call ``save_fn(tmp_path)``, fsync it, rename it to ``path`` and fsync the folder.

    ``save_fn`` writes a temporary file in ``path``'s folder (e.g. ``torch.save``); whatever it
    raises leaves ``path`` as it was and removes the temporary file. The file gets the mode
    ``open()`` would give it under the current umask.

    Raises:
        WriteFailure: ``save_fn``, the fsync or the rename failed with an ``OSError`` or a
            ``RuntimeError`` (``torch.save`` reports a short write as one).
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_save`)."""
    atomic_save(lambda tmp: tmp.write_bytes(data), path)

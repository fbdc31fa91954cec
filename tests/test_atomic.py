"""Atomic writes (:mod:`aqnet.atomic`): fsync of the file and its folder, the mode ``open()``
would give, and a failed write that names the file and leaves nothing behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from aqnet.atomic import WriteFailure, atomic_save, atomic_write_bytes, current_umask
from aqnet.stage import StageFailure


def test_atomic_writes_fsync_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert synced == ["file", "dir"]
    synced.clear()
    atomic_save(lambda tmp: torch.save({"x": torch.ones(2)}, tmp), tmp_path / "b.pt")
    assert synced == ["file", "dir"]
    assert torch.equal(torch.load(tmp_path / "b.pt")["x"], torch.ones(2))


def test_a_short_write_reported_by_torch_becomes_a_readable_failure(tmp_path: Path) -> None:
    target = tmp_path / "final.ckpt"

    def short_write(tmp: Path) -> None:
        tmp.write_bytes(b"z" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(WriteFailure) as err:
        atomic_save(short_write, target)
    msg = str(err.value)
    assert msg.startswith(f"could not write {target}: RuntimeError: [enforce fail")
    assert "after 100 B written" in msg and "no earlier final.ckpt exists" in msg
    assert isinstance(err.value, OSError) and list(tmp_path.iterdir()) == []


def test_a_written_file_gets_the_umask_mode_not_the_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_bytes(target, b"{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~current_umask()
    assert target.read_bytes() == b"{}"


def test_a_failed_write_keeps_the_previous_file_and_is_a_stage_failure(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def full_disk(tmp: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteFailure) as err:
        atomic_save(full_disk, target)
    msg = str(err.value)
    assert msg.startswith(f"could not write {target}: No space left on device (ENOSPC)")
    assert "free of" in msg and "the previous last.pt (written " in msg and "is intact" in msg
    assert isinstance(err.value, StageFailure) and err.value.errno_code == 28
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]

"""Requeue on Slurm's warning signal.

Slurm's ``--signal=USR1@<seconds>`` sends ``SIGUSR1`` before the time limit. While a training run
is inside :func:`usr1_flag`, the signal only sets an event; every rank finishes its step, the state
is saved and the run stops with :class:`RequeueRequested`. The CLI then exits with
:data:`REQUEUE_EXIT_CODE` (75, ``EX_TEMPFAIL`` of ``sysexits.h``: "try again").
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["REQUEUE_EXIT_CODE", "RequeueRequested", "usr1_flag"]

REQUEUE_EXIT_CODE = 75
"""Exit code after ``SIGUSR1``: the state is saved, requeue the job (``EX_TEMPFAIL``)."""


class RequeueRequested(Exception):  # noqa: N818 - a request, not an error
    """``SIGUSR1`` arrived: the state was saved at ``step``; requeue the job to continue."""

    def __init__(self, message: str, *, step: int, state_path: Path) -> None:
        super().__init__(message)
        self.step = step
        self.state_path = state_path


@contextlib.contextmanager
def usr1_flag() -> Iterator[threading.Event]:
    """An event set by ``SIGUSR1`` while the block runs (main thread only; else never set)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        event.set()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGUSR1, previous)

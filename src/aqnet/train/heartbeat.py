"""Name a dead or a stuck rank within minutes instead of the collective timeout.

Configured by ``<stage>.watchdog`` (``heartbeat_s``, ``peer_timeout_s``, ``stall_timeout_s``). A
collective waiting on a rank that died or hangs fails only after ``dist_timeout_s`` (30 min on
LUMI, where the RCCL set-up over 400 ranks needs minutes).
A daemon thread on every rank writes a counter and the rank's progress (optimizer steps and
validation batches) into the rendezvous store every ``heartbeat_s`` seconds. Rank 0 reads all
ranks' entries; every other rank reads rank 0's. A rank whose counter has not changed for
``peer_timeout_s`` is dead (its process or node is gone); once every rank has finished a step,
no progress on any rank for ``stall_timeout_s`` means a stuck rank (the one with the least
progress is named). The rank that finds it writes the verdict to the store, so every rank
prints the same message naming the rank and its host, and exits with
:data:`PEER_LOST_EXIT_CODE`. When a collective fails first (gloo notices a closed connection at
once), the training waits up to ``peer_timeout_s`` for the heartbeat's verdict and raises
:class:`PeerLost` with it.

With ``heartbeat_s = 10``, ``peer_timeout_s = 120`` and ``stall_timeout_s = 240`` (config/lumi.yaml)
a dead rank ends the job in about 2 minutes and a stuck one in about 4, well inside 5.

The step-time watchdog, which stops a degraded run, is :mod:`aqnet.train.watchdog`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aqnet.train.distributed import DistContext

log = logging.getLogger("aqnet.train")

__all__ = [
    "PEER_LOST_EXIT_CODE",
    "Heartbeat",
    "PeerLost",
    "PeerMonitor",
    "name_lost_peer",
    "start_heartbeat",
]

PEER_LOST_EXIT_CODE = 70
"""Exit code when a rank died or is stuck (the heartbeat named it)."""


class PeerLost(Exception):  # noqa: N818 - a stop, like RunTooSlow, with its own exit code
    """A rank died or is stuck; the message names it."""


class PeerMonitor:
    """Which watched rank stopped beating, or whether the whole run stopped progressing.

    Pure bookkeeping (no thread, no store), fed by :class:`Heartbeat`. ``observe`` records each
    rank's ``(beats, progress)``; a value that changed resets that rank's clock.

    Args:
        watched: the ranks to watch (rank 0: all others; every other rank: rank 0).
        hosts: host of each rank (index = rank), for the messages.
        peer_timeout_s: a rank whose beat counter has not changed for this long is dead.
        stall_timeout_s: with every rank past its first step, no rank's progress changing for
            this long is a stall (``None``: not checked by this monitor).
        now: the monitor's start time (``time.monotonic`` seconds).
    """

    def __init__(
        self,
        *,
        watched: Sequence[int],
        hosts: Sequence[str],
        peer_timeout_s: float,
        stall_timeout_s: float | None,
        now: float,
    ) -> None:
        self.watched = list(watched)
        self.hosts = list(hosts)
        self.peer_timeout_s = float(peer_timeout_s)
        self.stall_timeout_s = None if stall_timeout_s is None else float(stall_timeout_s)
        self.start = now
        self.beats: dict[int, tuple[int, float]] = {r: (-1, now) for r in self.watched}
        self.progress: dict[int, tuple[int, float]] = {}
        self.last_progress_change = now

    def host(self, rank: int) -> str:
        return self.hosts[rank] if 0 <= rank < len(self.hosts) else "?"

    def observe(self, rank: int, beats: int, progress: int, now: float) -> None:
        if rank in self.beats and self.beats[rank][0] != beats:
            self.beats[rank] = (beats, now)
        old = self.progress.get(rank)
        if old is None or old[0] != progress:
            self.progress[rank] = (progress, now)
            self.last_progress_change = now

    def verdict(self, now: float) -> str | None:
        """The failure found at ``now``, or ``None``."""
        dead = [(r, now - t) for r, (b, t) in self.beats.items() if now - t > self.peer_timeout_s]
        if dead:
            shown = ", ".join(
                f"rank {r} (host {self.host(r)}, {'never seen' if self.beats[r][0] < 0 else 'last'}"
                f" {age:.0f} s ago)"
                for r, age in dead[:8]
            )
            more = f" and {len(dead) - 8} more" if len(dead) > 8 else ""
            return (
                f"{shown}{more}: no heartbeat for more than {self.peer_timeout_s:g} s "
                "(watchdog.peer_timeout_s): the process died or its node is down"
            )
        if self.stall_timeout_s is None or not self.progress:
            return None
        if min(p for p, _ in self.progress.values()) < 1:
            return None  # the first step (communicator set-up) is not timed
        idle = now - self.last_progress_change
        if idle > self.stall_timeout_s:
            least = min(p for p, _ in self.progress.values())
            behind = sorted(r for r, (p, _) in self.progress.items() if p == least)
            names = ", ".join(f"rank {r} (host {self.host(r)})" for r in behind[:8])
            detail = (
                f"the least progress ({least} ticks) is on {names}"
                if len(behind) < len(self.progress)
                else f"all ranks are at the same point ({least} ticks)"
            )
            return (
                f"no rank made progress for {idle:.0f} s (watchdog.stall_timeout_s = "
                f"{self.stall_timeout_s:g}): a rank is stuck; {detail}"
            )
        return None


def _default_on_failure(message: str) -> None:
    """Print the verdict and end the process: the main thread may be blocked in a collective."""
    log.error("%s", message)
    print(message, file=sys.stderr, flush=True)
    os._exit(PEER_LOST_EXIT_CODE)


class Heartbeat:
    """The heartbeat thread of one rank (see the module docstring).

    Args:
        store: the rendezvous store (``torch.distributed`` ``Store``); cloned when possible so the
            thread has its own connection.
        rank, world_size: this rank and the number of ranks.
        hosts: host of each rank (index = rank).
        interval_s: seconds between beats.
        peer_timeout_s, stall_timeout_s: see :class:`PeerMonitor` (the stall is checked on rank 0).
        on_failure: called with the message once a failure is found while the main thread is not
            handling one (default: print and ``os._exit(PEER_LOST_EXIT_CODE)``).
    """

    PREFIX = "aqnet_heartbeat"

    def __init__(
        self,
        *,
        store: Any,
        rank: int,
        world_size: int,
        hosts: Sequence[str],
        interval_s: float,
        peer_timeout_s: float,
        stall_timeout_s: float,
        on_failure: Callable[[str], None] = _default_on_failure,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        clone = getattr(store, "clone", None)
        try:
            self.store = clone() if callable(clone) else store
        except Exception:  # noqa: BLE001 - a store that cannot be cloned is shared (thread-safe)
            self.store = store
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.interval_s = float(interval_s)
        self.on_failure = on_failure
        self.clock = clock
        watched = [r for r in range(world_size) if r != rank] if rank == 0 else [0]
        self.monitor = PeerMonitor(
            watched=watched,
            hosts=hosts,
            peer_timeout_s=peer_timeout_s,
            stall_timeout_s=stall_timeout_s if rank == 0 else None,
            now=clock(),
        )
        self.progress = 0
        self.beats = 0
        self.failure: str | None = None
        self._found = threading.Event()
        self._stop = threading.Event()
        self._deferred = False
        self._all_present = False
        self._store_ok_at = clock()
        self._thread = threading.Thread(target=self._loop, name="aqnet-heartbeat", daemon=True)

    def _key(self, rank: int | str) -> str:
        return f"{self.PREFIX}/{rank}"

    def tick(self) -> None:
        """The main thread made progress (an optimizer step, a validation batch)."""
        self.progress += 1

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (before the process group is destroyed); idempotent."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.interval_s + 5)

    def wait_verdict(self, timeout_s: float) -> str | None:
        """The main thread met a failed collective: wait up to ``timeout_s`` for the verdict
        (without ending the process) and return it, or ``None``."""
        self._deferred = True
        self._found.wait(timeout=timeout_s)
        return self.failure

    # -- the thread ------------------------------------------------------------------------

    def _beat(self) -> None:
        self.beats += 1
        self.store.set(self._key(self.rank), f"{self.beats}:{self.progress}")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
                message = self._read()
                self._store_ok_at = self.clock()
            except Exception as exc:  # noqa: BLE001 - any store error counts as silence
                message = None
                silent = self.clock() - self._store_ok_at
                if silent > self.monitor.peer_timeout_s:
                    message = (
                        f"rank 0 (host {self.monitor.host(0)}) unreachable for {silent:.0f} s: "
                        f"the rendezvous store it hosts does not answer ({_first_line(exc)}); "
                        "rank 0 died or its node is down"
                    )
            if message is None:
                message = self.monitor.verdict(self.clock())
                if message is not None and self.rank == 0:
                    # tell the other ranks, so that every log names the same rank
                    with contextlib.suppress(Exception):
                        self.store.set(self._key("verdict"), message)
            if message is not None and not self._stop.is_set():
                self._report(f"rank {self.rank}: {message}")
                return

    def _read(self) -> str | None:
        """Read the watched ranks' entries; a verdict posted by rank 0 is returned as is."""
        now = self.clock()
        if self.rank != 0 and self.store.check([self._key("verdict")]):
            return "rank 0 found: " + self.store.get(self._key("verdict")).decode()
        keys = [self._key(r) for r in self.monitor.watched]
        if self._all_present:
            present = keys
        else:  # until every rank has beaten once: a missing key would block get()
            present = [k for k in keys if self.store.check([k])]
            self._all_present = len(present) == len(keys)
        values = self.store.multi_get(present) if present else []
        for key, raw in zip(present, values, strict=True):
            beats, progress = (int(v) for v in raw.decode().split(":"))
            self.monitor.observe(int(key.rsplit("/", 1)[1]), beats, progress, now)
        self.monitor.observe(self.rank, self.beats, self.progress, now)
        return None

    def _report(self, message: str) -> None:
        self.failure = message
        self._found.set()
        if not self._deferred:
            self.on_failure(message)


# ---------------------------------------------------------------------------------------------
# Wiring into the training
# ---------------------------------------------------------------------------------------------


def start_heartbeat(ctx: DistContext, wcfg: Mapping[str, Any]) -> Heartbeat | None:
    """The started heartbeat of a multi-rank run (``None`` for a single process).

    Args:
        ctx: the run's process group (:func:`aqnet.train.distributed.init_distributed`).
        wcfg: ``<stage>.watchdog`` (``heartbeat_s``, ``peer_timeout_s``, ``stall_timeout_s``).
    """
    if not ctx.distributed:
        return None
    import torch.distributed as dist

    return Heartbeat(
        store=dist.distributed_c10d._get_default_store(),  # noqa: SLF001 - the rendezvous store
        rank=ctx.rank,
        world_size=ctx.world_size,
        hosts=[str(r["host"]) for r in ctx.ranks],
        interval_s=float(wcfg["heartbeat_s"]),
        peer_timeout_s=float(wcfg["peer_timeout_s"]),
        stall_timeout_s=float(wcfg["stall_timeout_s"]),
    ).start()


@contextlib.contextmanager
def name_lost_peer(heartbeat: Heartbeat | None) -> Iterator[None]:
    """A collective that failed because a peer is gone becomes :class:`PeerLost` naming it
    (after waiting up to ``peer_timeout_s`` for the heartbeat's verdict)."""
    try:
        yield
    except RuntimeError as exc:
        if heartbeat is None or not _is_comm_error(exc):
            raise
        wait_s = heartbeat.monitor.peer_timeout_s + 2 * heartbeat.interval_s
        verdict = heartbeat.wait_verdict(wait_s)
        if verdict is None:
            raise
        raise PeerLost(f"{verdict} (the collective failed: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_comm_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return any(w in text for w in ("gloo", "nccl", "connection", "timed out", "socket", "peer"))

"""The step-time watchdog: stop a degraded run before it burns its allocation.

Configured by ``<stage>.watchdog`` (``finetune.watchdog`` in the config). The fine-tune knows the
step time ``validate_short`` measured on one node with the same per-rank batch (its report's
``measured_step_time_s``, passed with ``--expected-step-time-from``). When the median step time
over the last ``window_steps`` steps exceeds ``max_slowdown`` x that figure - a degraded fabric,
a straggler node, a file system that stalls the loaders - every rank saves the state and the run
stops with :class:`RunTooSlow`, naming the measured and the expected times and the slowest rank;
the CLI exits with :data:`SLOW_EXIT_CODE`. A rerun resumes from the saved state. The first step
of a process (start-up, allocator warm-up) is not counted.

A dead or stuck rank is named by the heartbeat (:mod:`aqnet.train.heartbeat`); its names are
importable from here too.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from aqnet.train.heartbeat import (
    PEER_LOST_EXIT_CODE,
    Heartbeat,
    PeerLost,
    PeerMonitor,
    name_lost_peer,
    start_heartbeat,
)

__all__ = [
    "PEER_LOST_EXIT_CODE",
    "SLOW_EXIT_CODE",
    "Heartbeat",
    "PeerLost",
    "PeerMonitor",
    "RunTooSlow",
    "StepWatchdog",
    "armed_watchdog",
    "expected_step_time",
    "name_lost_peer",
    "start_heartbeat",
]

SLOW_EXIT_CODE = 69
"""Exit code after the step-time watchdog stopped the run (``EX_UNAVAILABLE``); state saved."""


class RunTooSlow(Exception):  # noqa: N818 - a stop request, like RequeueRequested
    """The median step time exceeded ``max_slowdown`` x the expected one; the state is saved."""

    def __init__(self, message: str, *, step: int, measured_s: float, expected_s: float) -> None:
        super().__init__(message)
        self.step = step
        self.measured_s = measured_s
        self.expected_s = expected_s


def expected_step_time(report: Mapping[str, Any]) -> float:
    """``measured_step_time_s`` of a ``validate_short`` report.

    Raises:
        ValueError: the report holds no positive step time (a failed or old gate report).
    """
    value = report.get("measured_step_time_s")
    if not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"the validate_short report records no step time (measured_step_time_s = {value!r}); "
            "rerun validate_short"
        )
    return float(value)


def armed_watchdog(
    settings: Mapping[str, Any], expected_step_time_s: float | None
) -> StepWatchdog | None:
    """The watchdog of ``settings`` (``<stage>.watchdog``), or ``None`` when it is off: no
    expected step time, or ``max_slowdown: null``."""
    if expected_step_time_s is None or settings["max_slowdown"] is None:
        return None
    return StepWatchdog(
        expected_step_time_s=float(expected_step_time_s),
        window_steps=int(settings["window_steps"]),
        max_slowdown=float(settings["max_slowdown"]),
    )


@dataclasses.dataclass(kw_only=True)
class StepWatchdog:
    """The median of the last ``window_steps`` step times against ``max_slowdown`` x expected.

    Attributes:
        expected_step_time_s: validate_short's measured step time (seconds per optimizer step).
        window_steps: steps in the median.
        max_slowdown: the factor over the expected time that stops the run.
    """

    expected_step_time_s: float
    window_steps: int
    max_slowdown: float
    _times: collections.deque[float] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.expected_step_time_s > 0:
            raise ValueError(f"expected step time must be > 0 s, got {self.expected_step_time_s}")
        if self.window_steps < 1 or not self.max_slowdown > 1:
            raise ValueError(
                f"watchdog needs window_steps >= 1 and max_slowdown > 1, got "
                f"{self.window_steps} and {self.max_slowdown}"
            )
        self._times = collections.deque(maxlen=self.window_steps)

    @property
    def limit_s(self) -> float:
        """The median step time above which the run stops."""
        return self.max_slowdown * self.expected_step_time_s

    def observe(self, step_time_s: float) -> None:
        self._times.append(float(step_time_s))

    def median_s(self) -> float | None:
        """The median over the window, ``None`` until the window is full."""
        if len(self._times) < self.window_steps:
            return None
        return statistics.median(self._times)

    def tripped(self) -> bool:
        median = self.median_s()
        return median is not None and median > self.limit_s

    def stop(
        self,
        *,
        medians_s: Sequence[float],
        hosts: Sequence[str],
        stage: str,
        step: int,
        state_path: Any,
    ) -> RunTooSlow:
        """The stop of every rank, naming the rank with the worst median.

        Args:
            medians_s: each rank's :meth:`median_s` (index = rank; 0 where not yet known).
            hosts: each rank's host (index = rank), for the message.
            stage, step, state_path: where the run stopped and its saved state.
        """
        worst = max(range(len(medians_s)), key=lambda r: medians_s[r])
        host = hosts[worst] if worst < len(hosts) else "?"
        slowest = f"slowest rank {worst} on {host}" if len(medians_s) > 1 else "a single process"
        median_s = float(medians_s[worst])
        return RunTooSlow(
            self.message(
                stage=stage, step=step, median_s=median_s, slowest=slowest, state_path=state_path
            ),
            step=step,
            measured_s=median_s,
            expected_s=self.expected_step_time_s,
        )

    def message(
        self, *, stage: str, step: int, median_s: float, slowest: str, state_path: Any
    ) -> str:
        return (
            f"{stage}: stopped by the step-time watchdog at step {step}: the median step time "
            f"over the last {self.window_steps} steps is {median_s:.3g} s ({slowest}), "
            f"{median_s / self.expected_step_time_s:.1f}x the {self.expected_step_time_s:.3g} s "
            f"validate_short measured (limit {self.max_slowdown:g}x = {self.limit_s:.3g} s, "
            f"watchdog.max_slowdown): a degraded interconnect, a straggler node or a stalling "
            f"file system. State saved in {state_path}; rerun to resume "
            f"(exit code {SLOW_EXIT_CODE})"
        )

"""What stops a training run on one rank, and the message it stops with.

:class:`RunGuard` holds the run's stop conditions: a non-finite loss or gradient norm
(:class:`~aqnet.train.divergence.TrainingDiverged`, its message naming the bad samples of the
step's batch), ``SIGUSR1`` (:class:`~aqnet.train.requeue.RequeueRequested`, after the state
save) and the step-time watchdog (:class:`~aqnet.train.watchdog.RunTooSlow`, the worst rank's
median named); and the heartbeat's tick, by which the other ranks see this one is alive
(:mod:`aqnet.train.heartbeat`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aqnet.train.distributed import DistContext
from aqnet.train.divergence import batch_diagnosis, divergence_message
from aqnet.train.requeue import REQUEUE_EXIT_CODE, RequeueRequested
from aqnet.train.watchdog import RunTooSlow, StepWatchdog

__all__ = ["RunGuard"]


@dataclasses.dataclass(kw_only=True)
class RunGuard:
    """The stop conditions of one run on one rank (see the module docstring)."""

    ctx: DistContext
    stage: str
    state_path: Path
    usr1: threading.Event
    tick: Callable[[], None]
    watchdog: StepWatchdog | None
    train_ds: Any
    steps_per_epoch: int
    per_rank_step: int
    seed: int
    slow: bool = False
    """This rank's watchdog tripped; all ranks stop at the next step."""
    steps_this_process: int = 0

    @property
    def after_batch(self) -> Callable[[], None] | None:
        """The tick a validation pass gives after each batch: the stall check is armed after the
        first step."""
        return self.tick if self.steps_this_process else None

    def watch(self, step_time_s: float) -> None:
        """Feed the watchdog (not the first step of a process: start-up and warm-up)."""
        self.tick()
        self.steps_this_process += 1
        if self.watchdog is None or self.steps_this_process == 1:
            return
        self.watchdog.observe(step_time_s)
        self.slow = self.slow or self.watchdog.tripped()

    def too_slow(self, step: int) -> RunTooSlow:
        """Every rank: the worst rank's median, named, in one message (after the state save)."""
        assert self.watchdog is not None  # only armed runs raise the flag
        return self.watchdog.stop(
            medians_s=self.ctx.all_gather_object(self.watchdog.median_s() or 0.0),
            hosts=[str(r["host"]) for r in self.ctx.ranks],
            stage=self.stage,
            step=step,
            state_path=self.state_path,
        )

    def requeue(self, step: int) -> RequeueRequested:
        """``SIGUSR1`` arrived and the state of ``step`` is saved."""
        return RequeueRequested(
            f"{self.stage}: SIGUSR1 received; state saved at step {step} in "
            f"{self.state_path}; requeue the job to continue "
            f"(exit code {REQUEUE_EXIT_CODE})",
            step=step,
            state_path=self.state_path,
        )

    def diverged(
        self, what: str, value: float, step: int, *, last_checkpoint_step: int | None
    ) -> str:
        """The message of :class:`~aqnet.train.divergence.TrainingDiverged`."""
        hint = ""
        if what != "validation loss":
            hint = batch_diagnosis(
                self.train_ds,
                step=step,
                steps_per_epoch=self.steps_per_epoch,
                per_rank_step=self.per_rank_step,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                seed=self.seed,
            )
        return divergence_message(
            stage=self.stage,
            what=what,
            value=value,
            step=step,
            steps_per_epoch=self.steps_per_epoch,
            state_path=self.state_path,
            last_checkpoint_step=last_checkpoint_step,
            hint=hint,
        )

"""Batch planning: how a stage's global batch is laid out over ranks and micro-batches.

The global batch ``train.batch_size`` is split over the ranks and ``train.grad_accum``
micro-batches, so one rank and N ranks train on the same global batches. ``validate_short``
keeps the full run's per-rank batch (``finetune.batch_size / (launch.nodes x tasks_per_node)``)
and schedule, so its measured step time is the full run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aqnet.train.length import run_length

__all__ = ["STAGES", "BatchPlan", "plan_batches", "train_section"]

STAGES = ("baseline", "validate_short", "finetune")


def train_section(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """The ``definitions/train`` settings of a stage: ``baseline.train`` or ``finetune``."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; one of {', '.join(STAGES)}")
    return dict(cfg["baseline"]["train"] if stage == "baseline" else cfg["finetune"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """How a stage's batches are laid out.

    Attributes:
        global_batch: samples per optimizer step over all ranks and micro-batches.
        micro_batch: samples per forward pass on one rank.
        grad_accum: micro-batches per optimizer step.
        world_size: ranks of this run.
        run_steps: optimizer steps this run performs.
        schedule_steps: length of the learning-rate schedule (the full run's for validate_short).
    """

    global_batch: int
    micro_batch: int
    grad_accum: int
    world_size: int
    run_steps: int
    schedule_steps: int

    @property
    def per_rank_step(self) -> int:
        """Samples one rank consumes per optimizer step."""
        return self.micro_batch * self.grad_accum


def plan_batches(
    cfg: Mapping[str, Any], stage: str, *, world_size: int, start_times: int | None = None
) -> BatchPlan:
    """The batch layout of ``stage`` on ``world_size`` ranks.

    ``start_times`` (forecast start times of the training split) lets ``epochs`` set the length
    (:func:`aqnet.train.length.run_length`); without it the length is ``steps``.

    Raises:
        ValueError: a global batch that does not split evenly over ranks and micro-batches.
    """
    tcfg = train_section(cfg, stage)
    batch, accum = int(tcfg["batch_size"]), int(tcfg["grad_accum"])
    if start_times is not None:
        tcfg["steps"] = run_length(tcfg, start_times=start_times)["steps"]
    section = "baseline.train" if stage == "baseline" else "finetune"
    if stage == "validate_short":
        launch = cfg["launch"]
        full_world = int(launch["nodes"]) * int(launch["tasks_per_node"])
        if batch % (full_world * accum):
            raise ValueError(
                f"finetune.batch_size {batch} does not split over the full run's {full_world} "
                f"ranks (launch.nodes x tasks_per_node) x {accum} accumulation steps"
            )
        micro = batch // (full_world * accum)
        return BatchPlan(
            global_batch=micro * accum * world_size,
            micro_batch=micro,
            grad_accum=accum,
            world_size=world_size,
            run_steps=int(cfg["gates"]["validate_short_steps"]),
            schedule_steps=int(tcfg["steps"]),
        )
    if batch % (world_size * accum):
        raise ValueError(
            f"{section}.batch_size {batch} does not split over {world_size} ranks x {accum} "
            f"accumulation steps ({section}.grad_accum); use a multiple of {world_size * accum}"
        )
    return BatchPlan(
        global_batch=batch,
        micro_batch=batch // (world_size * accum),
        grad_accum=accum,
        world_size=world_size,
        run_steps=int(tcfg["steps"]),
        schedule_steps=int(tcfg["steps"]),
    )

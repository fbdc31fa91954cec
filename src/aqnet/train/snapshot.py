"""A running trainer's resume state on every rank: the save they all agree on, and the restore.

The file and its contents are :mod:`aqnet.train.state`'s; this module is what the training loop
(:mod:`aqnet.train.loop`) does around them. Rank 0 writes ``last.pt`` with every rank's
generator states; a failed write (:class:`aqnet.atomic.WriteFailure`) stops every rank with
rank 0's message and the last good checkpoint. A restore loads the model, optimizer and
schedule, and each rank's generators (rank 0's for every rank when the number of ranks changed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.atomic import WriteFailure
from aqnet.stage import StageFailure
from aqnet.train.distributed import DistContext
from aqnet.train.state import capture_rng, restore_rng

log = logging.getLogger("aqnet.train")

__all__ = ["restore_training_state", "save_training_state"]


def save_training_state(
    ctx: DistContext,
    write: Callable[[list[Any]], None],
    *,
    stage: str,
    step: int,
    state_path: Path,
    last_checkpoint_step: int | None,
) -> None:
    """Rank 0 writes ``last.pt``; a failed write stops every rank with rank 0's message.

    Args:
        ctx: the process group (a collective: every rank calls it).
        write: rank 0's write, given every rank's generator states (:func:`capture_rng`).
        stage: the training stage, for the message.
        step: the step being saved, for the message.
        state_path: the state file, for the message.
        last_checkpoint_step: the step of the last good save (``None``: none yet).

    Raises:
        StageFailure: the write failed on rank 0.
    """
    rng = ctx.all_gather_object(capture_rng())
    failure: WriteFailure | None = None
    if ctx.is_main:
        try:
            write(rng)
        except WriteFailure as exc:
            failure = exc
    flag = torch.tensor([float(failure is not None)], device=ctx.device)
    if float(ctx.all_reduce_max(flag)[0]) > 0:
        if last_checkpoint_step is not None:
            last = f"step {last_checkpoint_step}, in {state_path}"
        else:
            last = "none yet"
        where = str(failure) if failure is not None else "rank 0 could not write it"
        raise StageFailure(
            f"{stage}: checkpoint at step {step} failed: {where}; last good "
            f"checkpoint: {last}. Free space (or fix the file system) and rerun to resume"
        )


def restore_training_state(
    state: Mapping[str, Any],
    *,
    ctx: DistContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Load ``state``'s model, optimizer, schedule and this rank's generator states."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if len(rng) != ctx.world_size and ctx.is_main:
        log.warning(
            "resume state saved by %d ranks, now %d: rank generators restarted from rank 0's",
            len(rng),
            ctx.world_size,
        )
    restore_rng(rng[ctx.rank] if len(rng) == ctx.world_size else rng[0])

"""One optimizer step on one rank: the training loop's update (:mod:`aqnet.train.loop`).

:func:`train_step` runs ``grad_accum`` micro-batches (DDP's ``no_sync`` on all but the last, so
the gradients are reduced once), sums their masked MSE (:func:`aqnet.losses.masked_mse`) and
reduces it over the ranks in one collective with the requeue and watchdog flags. A NaN/inf loss
or gradient norm stops the run before the update
(:class:`~aqnet.train.divergence.TrainingDiverged`); otherwise the gradients are clipped, AdamW
steps, every ``elevation_alpha`` is kept >= 0 (:func:`aqnet.model.alpha.project_alphas`) and the
schedule advances. :func:`autocast` is the bf16 context of every forward pass on a GPU (training
and validation alike).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from aqnet.data.dataset import batch_to_device
from aqnet.losses import masked_mse
from aqnet.model.alpha import project_alphas
from aqnet.train.distributed import DistContext
from aqnet.train.divergence import TrainingDiverged
from aqnet.train.optim import group_lrs

__all__ = ["StepResult", "autocast", "train_step"]


def autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on the GPU when ``enabled``, else a context that does nothing."""
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepResult:
    """What one optimizer step measured (the same on every rank but ``step_time_s``).

    Attributes:
        train_loss: the mean masked MSE over the global batch.
        grad_norm: the total gradient norm before clipping.
        lrs: each parameter group's learning rate of this update (:func:`group_lrs`).
        step_time_s: the step's wall time on this rank.
        requeue: some rank received ``SIGUSR1``.
        slow: some rank's step-time watchdog tripped.
    """

    train_loss: float
    grad_norm: float
    lrs: dict[str, float]
    step_time_s: float
    requeue: bool
    slow: bool


def train_step(
    net: nn.Module,
    model: nn.Module,
    *,
    next_batch: Callable[[], Any],
    ctx: DistContext,
    stage: str,
    grad_accum: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainable: Sequence[nn.Parameter],
    grad_clip: float,
    bf16: bool,
    requeue_requested: Callable[[], bool],
    slow: bool,
    diverged: Callable[[str, float], str],
) -> StepResult:
    """One update of ``model`` from ``grad_accum`` micro-batches of ``next_batch()``.

    Args:
        net: the module the forward pass runs through (``model`` or its DDP wrapper).
        model: the bare model (its ``elevation_alpha`` are projected after the update).
        next_batch: this rank's next micro-batch (5 items, as the data loader gives them).
        ctx: the process group (loss and flags are summed over its ranks).
        stage: the training stage (for :func:`batch_to_device`).
        grad_accum: micro-batches per step.
        optimizer: steps once, after the checks.
        scheduler: steps once after the optimizer.
        trainable: the parameters whose gradient norm is clipped to ``grad_clip``.
        grad_clip: the clipping norm; ``<= 0`` only measures it.
        bf16: run the forward passes under :func:`autocast`.
        requeue_requested: whether this rank received ``SIGUSR1`` (read after the micro-batches).
        slow: this rank's watchdog has tripped.
        diverged: the message for a non-finite ``(what, value)`` at this step.

    Raises:
        TrainingDiverged: a NaN/inf training loss or gradient norm (no update is made).
    """
    device = ctx.device
    net.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for j in range(grad_accum):
        x, y, lead, elev, mask = batch_to_device(
            next_batch(), device, stage=stage, non_blocking=True
        )
        sync = net.no_sync() if ctx.distributed and j < grad_accum - 1 else contextlib.nullcontext()
        with sync:
            with autocast(bf16):
                pred = net(x, lead, elev)  # (B, C, H, W)
            loss = masked_mse(pred.float(), y, mask)
            (loss / grad_accum).backward()
        loss_sum += loss.detach().double()
    # One collective for the loss, the requeue flag and the watchdog's flag.
    flags = torch.tensor(
        [float(requeue_requested()), float(slow)], dtype=torch.float64, device=device
    )
    packed = ctx.all_reduce_sum(torch.cat([(loss_sum / grad_accum).reshape(1), flags])).cpu()
    train_loss = float(packed[0]) / ctx.world_size
    if not math.isfinite(train_loss):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(diverged("training loss", train_loss))
    if grad_clip > 0:
        norm = nn.utils.clip_grad_norm_(trainable, grad_clip)
    else:
        norm = nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
    grad_norm = float(norm)
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(diverged("gradient norm", grad_norm))
    lrs = group_lrs(optimizer)  # the rates of this update
    optimizer.step()
    project_alphas(model)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return StepResult(
        train_loss=train_loss,
        grad_norm=grad_norm,
        lrs=lrs,
        step_time_s=time.perf_counter() - t0,
        requeue=float(packed[1]) > 0,
        slow=float(packed[2]) > 0,
    )

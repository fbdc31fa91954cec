"""Divergence diagnosis: the message of a run stopped by a NaN/inf loss or gradient norm.

A non-finite training loss or gradient norm stops the run before the update
(:class:`TrainingDiverged`). The message names the stage, the step and epoch, the last good
checkpoint and, for a training step, what went wrong: the samples of this rank's part of the
step's batch whose channels hold NaN/inf (the data is at fault), or that the data is finite (the
model diverged, with what to change).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aqnet.stage import StageFailure
from aqnet.train.sampling import ResumableDistributedSampler

__all__ = ["TrainingDiverged", "batch_diagnosis", "divergence_message", "finite_channels"]

_SHOWN = 5
"""Bad samples named in a message; the rest are counted."""


class TrainingDiverged(StageFailure):
    """A loss or gradient norm that is NaN or infinite; the run stopped before the update."""


def divergence_message(
    *,
    stage: str,
    what: str,
    value: float,
    step: int,
    steps_per_epoch: int,
    state_path: Path,
    last_checkpoint_step: int | None,
    hint: str = "",
) -> str:
    """The one-line reason of :class:`TrainingDiverged` (``hint`` from :func:`batch_diagnosis`)."""
    epoch = (step - 1) // steps_per_epoch
    if last_checkpoint_step is not None:
        last = f"the last good checkpoint is {state_path} (step {last_checkpoint_step})"
    else:
        last = f"no checkpoint was written yet ({state_path} does not exist)"
    return (
        f"{stage}: non-finite {what} ({value}) at step {step} (epoch {epoch}); the run "
        f"stopped before applying the update; {last}.{hint}"
    )


def finite_channels(t: torch.Tensor) -> list[bool]:
    """Per channel of ``t: (C, H, W)``: whether every value is finite."""
    return torch.isfinite(t).flatten(1).all(dim=1).tolist()


def batch_diagnosis(
    dataset: Any,
    *,
    step: int,
    steps_per_epoch: int,
    per_rank_step: int,
    rank: int,
    world_size: int,
    seed: int,
) -> str:
    """Which of this rank's samples of optimizer step ``step`` hold NaN/inf, as a sentence.

    The samples are found again from the sampler's order (the same seed, epoch and position as
    the run), so the diagnosis reads only the step's own ``per_rank_step`` items of ``dataset``
    (a :class:`aqnet.data.CacheDataset`).
    """
    epoch, pos = divmod(step - 1, steps_per_epoch)
    sampler = ResumableDistributedSampler(
        dataset, num_replicas=world_size, rank=rank, seed=int(seed)
    )
    sampler.set_position(epoch=epoch, start=0)
    indices = list(sampler)[pos * per_rank_step : (pos + 1) * per_rank_step]
    names = [f"x:{v}" for v in dataset.variables]
    names += [f"y:{v}" for v in dataset.out_variables]
    found = []
    for i in indices:
        x, y = dataset[i][:2]  # (V, H, W), (n_out, H, W)
        finite = finite_channels(x) + finite_channels(y)
        bad = [n for n, ok in zip(names, finite, strict=True) if not ok]
        if bad:
            year, t, lead, valid = dataset.sample_info(i)
            found.append(
                f"sample {i} (year {year}, time index {t}, lead {lead} h, valid {valid}): "
                + ", ".join(bad)
            )
    if found:
        shown = "; ".join(found[:_SHOWN]) + (
            f"; ... ({len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
        )
        return (
            f" Non-finite values in the data of rank {rank}'s part of the batch: "
            f"{shown} - fix the cache (build_cache's NaN handling) or the input file."
        )
    return (
        f" The data of rank {rank}'s part of the batch is finite: the model diverged; "
        "lower the learning rate (lr/lr_new), lengthen the warm-up or enable grad_clip."
    )

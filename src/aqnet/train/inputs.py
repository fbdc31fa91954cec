"""What a training run reads: the cache's splits, the batch plan over them, and their loaders.

:func:`open_training_data` opens the cache's ``train`` and ``val`` splits in the model's channel
order, plans the global batch over the ranks (:func:`aqnet.train.batches.plan_batches`; a length
given in epochs follows the training split) and sizes the pipeline's one validation subset
(:func:`aqnet.data.validation_samples`; the ``smoke_forward`` gate evaluates the same items).
:func:`make_loaders` gives each rank its micro-batches: the training split in a seeded, resumable
``DistributedSampler`` order (:mod:`aqnet.train.sampling`) and its share of the validation subset
(:func:`aqnet.data.make_validation_loader`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from aqnet.config import POLLUTANTS
from aqnet.model.presets import input_variables
from aqnet.train.batches import BatchPlan, plan_batches
from aqnet.train.distributed import DistContext
from aqnet.train.sampling import ResumableDistributedSampler

__all__ = ["TrainingData", "make_loaders", "open_training_data"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingData:
    """The splits of one training run and how they are batched.

    Attributes:
        train: the ``train`` split (an ``aqnet.data.CacheDataset``).
        val: the ``val`` split.
        plan: the global batch over ranks and micro-batches, and the run's length.
        n_val: the size of the validation subset.
        steps_per_epoch: optimizer steps per pass over the training split.
    """

    train: Dataset
    val: Dataset
    plan: BatchPlan
    n_val: int
    steps_per_epoch: int


def open_training_data(
    cfg: Mapping[str, Any], stage: str, cache_dir: Path, *, world_size: int
) -> TrainingData:
    """Open the cache's splits for ``stage`` on ``world_size`` ranks.

    Raises:
        ValueError: the training split holds fewer samples than one global batch.
    """
    from aqnet.data import CacheDataset, validation_samples

    data_args = {
        "lead_times_h": tuple(int(h) for h in cfg["lead_times_h"]),
        "out_variables": POLLUTANTS,
        "in_variables": input_variables(cfg),  # the model's channel order
    }
    train_ds = CacheDataset(cache_dir, "train", **data_args)
    val_ds = CacheDataset(cache_dir, "val", **data_args)
    # The length follows the training split when it is given in epochs.
    plan = plan_batches(cfg, stage, world_size=world_size, start_times=sum(train_ds.n_base))
    # The pipeline's validation subset (the smoke_forward gate evaluates the same items).
    n_val = validation_samples(cfg, len(val_ds))
    steps_per_epoch = len(train_ds) // plan.global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the train split of {cache_dir} has {len(train_ds)} samples, fewer than one "
            f"global batch of {plan.global_batch}; lower the batch size"
        )
    return TrainingData(
        train=train_ds, val=val_ds, plan=plan, n_val=n_val, steps_per_epoch=steps_per_epoch
    )


def make_loaders(
    data: TrainingData,
    *,
    ctx: DistContext,
    seed: int,
    num_workers: int,
    val_batch_size: int,
) -> tuple[ResumableDistributedSampler, DataLoader, DataLoader]:
    """This rank's ``(sampler, train_loader, val_loader)``; the sampler places a resume."""
    from aqnet.data import make_validation_loader

    pin_memory = ctx.device.type == "cuda"
    sampler = ResumableDistributedSampler(
        data.train, num_replicas=ctx.world_size, rank=ctx.rank, seed=seed
    )
    train_loader = DataLoader(
        data.train,
        batch_size=data.plan.micro_batch,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = make_validation_loader(
        data.val,
        n_samples=data.n_val,
        batch_size=val_batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return sampler, train_loader, val_loader

"""Parameter groups, AdamW and the warm-up + cosine learning-rate schedule.

Parameter groups (``train.param_groups``):

* ``all`` - every parameter trains: the pre-trained ones at ``lr``, the new TopoFlow ones
  (``model.new_parameter_names()``: ``elevation_alpha``, a relative-position bias) at ``lr_new``;
* ``new`` - only the new parameters train (everything else is frozen);
* ``new_and_blocks`` - the new parameters and every parameter of the blocks that hold them
  (``blocks.<i>.*`` for ``i`` in ``model.topoflow_blocks``); the rest is frozen.

Weight decay applies to the pre-trained weight matrices only: never to norms, biases, embeddings
added to tokens (position, variable) or the new TopoFlow scalars, whose decay would pull
``elevation_alpha`` back to 0 for no reason.

The schedule multiplies each group's peak rate by :func:`warmup_cosine` of the optimizer step:
a linear warm-up over ``warmup_steps`` updates, then a cosine decay to ``min_lr_ratio`` of the peak
at ``total_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "GROUP_NEW",
    "GROUP_OLD",
    "GROUP_OLD_NO_DECAY",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "build_training_optimizer",
    "group_lrs",
    "no_weight_decay",
    "warmup_cosine",
]

GROUP_OLD = "pretrained"
GROUP_OLD_NO_DECAY = "pretrained_no_decay"
GROUP_NEW = "new"

PARAM_GROUP_MODES = ("all", "new", "new_and_blocks")

# Substrings of parameter names that never take weight decay (besides 1-D tensors and biases).
_NO_DECAY_PATTERNS = ("norm", "pos_embed", "var_embed", "var_query", "lead_time_embed")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for norms, biases, 1-D parameters and token embeddings (position, variable)."""
    return param.ndim < 2 or name.endswith(".bias") or any(p in name for p in _NO_DECAY_PATTERNS)


def build_param_groups(
    model: nn.Module,
    *,
    mode: str,
    lr: float,
    lr_new: float,
    weight_decay: float,
    new_names: Iterable[str],
    topoflow_blocks: Iterable[int] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups, freezing what ``mode`` does not train.

    Args:
        model: the bare model (not a DDP wrapper), before it is wrapped.
        mode: ``all``, ``new`` or ``new_and_blocks``.
        lr: peak rate of the pre-trained parameters.
        lr_new: peak rate of the new parameters.
        weight_decay: AdamW decay of the pre-trained weight matrices.
        new_names: names of the new parameters (``model.new_parameter_names()``).
        topoflow_blocks: indices of the blocks that hold them (for ``new_and_blocks``).

    Returns:
        Non-empty groups, each ``{"name", "params", "lr", "weight_decay"}``; frozen parameters get
        ``requires_grad = False``.

    Raises:
        ValueError: an unknown mode, a new name that is not a parameter, or nothing to train.
    """
    if mode not in PARAM_GROUP_MODES:
        raise ValueError(f"train.param_groups must be one of {PARAM_GROUP_MODES}, got {mode!r}")
    params = dict(model.named_parameters())
    new = set(new_names)
    unknown = sorted(new - set(params))
    if unknown:
        raise ValueError(f"new parameter names {unknown} are not parameters of the model")
    prefixes = tuple(f"blocks.{int(i)}." for i in topoflow_blocks)

    def trains(name: str) -> bool:
        if mode == "all" or name in new:
            return True
        return mode == "new_and_blocks" and name.startswith(prefixes)

    buckets: dict[str, list[torch.Tensor]] = {GROUP_OLD: [], GROUP_OLD_NO_DECAY: [], GROUP_NEW: []}
    for name, p in params.items():
        if not trains(name):
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        if name in new:
            buckets[GROUP_NEW].append(p)
        elif no_weight_decay(name, p):
            buckets[GROUP_OLD_NO_DECAY].append(p)
        else:
            buckets[GROUP_OLD].append(p)
    settings = {
        GROUP_OLD: (lr, weight_decay),
        GROUP_OLD_NO_DECAY: (lr, 0.0),
        GROUP_NEW: (lr_new, 0.0),
    }
    groups = [
        {"name": g, "params": ps, "lr": settings[g][0], "weight_decay": settings[g][1]}
        for g, ps in buckets.items()
        if ps
    ]
    if not groups:
        raise ValueError(
            f"train.param_groups={mode!r} leaves nothing to train: the model has no new TopoFlow "
            "parameters (model.topoflow_blocks is empty?); use param_groups: all"
        )
    return groups


def build_optimizer(groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW over ``groups`` (betas 0.9/0.95, eps 1e-8, as ClimaX fine-tunes)."""
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate factor of optimizer update ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during the warm-up, then ``min_lr_ratio + (1 - min_lr_ratio) *
    (1 + cos(pi * t)) / 2`` with ``t`` running from 0 after the warm-up to 1 at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine` to every group's peak rate."""

    def factor(step: int) -> float:
        return warmup_cosine(
            step, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_training_optimizer(
    model: nn.Module,
    settings: Mapping[str, Any],
    *,
    topoflow_blocks: Sequence[int],
    schedule_steps: int,
) -> tuple[list[nn.Parameter], torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """The ``(trainable parameters, optimizer, schedule)`` of a training section ``settings``
    (``param_groups``, ``lr``, ``lr_new``, ``weight_decay``, ``warmup_steps``, ``min_lr_ratio``)."""
    groups = build_param_groups(
        model,
        mode=settings["param_groups"],
        lr=float(settings["lr"]),
        lr_new=float(settings["lr_new"]),
        weight_decay=float(settings["weight_decay"]),
        new_names=model.new_parameter_names(),
        topoflow_blocks=topoflow_blocks,
    )
    trainable = [p for g in groups for p in g["params"]]
    optimizer = build_optimizer(groups)
    scheduler = build_scheduler(
        optimizer,
        total_steps=schedule_steps,
        warmup_steps=int(settings["warmup_steps"]),
        min_lr_ratio=float(settings["min_lr_ratio"]),
    )
    return trainable, optimizer, scheduler


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr": rate of the pre-trained weights, "lr_new": of the new ones}`` (NaN if absent)."""
    out = {"lr": math.nan, "lr_new": math.nan}
    for g in optimizer.param_groups:
        key = "lr_new" if g.get("name") == GROUP_NEW else "lr"
        out[key] = float(g["lr"])
    return out

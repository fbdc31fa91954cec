"""The learnable strength ``elevation_alpha`` of each TopoFlow block, seen from training.

:class:`~aqnet.model.elevation_attention.TopoFlowAttention` owns the parameter (shape
``(1,)``, initialised to 0); the training loop finds it per block (:func:`alpha_parameters`),
records it in the metrics (:func:`alpha_values`) and keeps it non-negative after each update
(:func:`project_alphas`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["alpha_parameters", "alpha_values", "project_alphas"]


def alpha_parameters(model: nn.Module) -> dict[int, nn.Parameter]:
    """``{block index: elevation_alpha}`` of every TopoFlow block of a ``Forecaster``, in order.

    Raises:
        ValueError: a TopoFlow key that names no block, or that is not a parameter.
    """
    params = dict(model.named_parameters())
    out: dict[int, nn.Parameter] = {}
    for key in model.topoflow_keys():
        if not key.endswith("elevation_alpha"):
            continue
        parts = key.split(".")
        if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"cannot tell the block of the TopoFlow parameter {key!r}")
        if key not in params:
            raise ValueError(f"TopoFlow key {key!r} is not a parameter of the model")
        out[int(parts[1])] = params[key]
    return dict(sorted(out.items()))


def alpha_values(alphas: Mapping[int, nn.Parameter]) -> dict[str, float]:
    """``{"alpha_block<i>": value}`` of :func:`alpha_parameters`' result (the metrics columns)."""
    return {f"alpha_block{i}": float(p.detach().float().cpu()[0]) for i, p in alphas.items()}


@torch.no_grad()
def project_alphas(model: nn.Module) -> None:
    """Keep every ``elevation_alpha`` >= 0 after an update.

    The bias ``clamp(-alpha * relu(dz / H), -10, 0)`` is clamped at 0, so for alpha < 0 it is 0
    everywhere and alpha's gradient vanishes: one step below 0 would freeze TopoFlow for the rest
    of the run. At alpha = 0 the gradient still flows (the clamp passes it at its bound), so the
    projection keeps the prior alive without changing the start at the baseline.
    """
    for name, param in model.named_parameters():
        if name.endswith("elevation_alpha"):
            param.clamp_(min=0.0)

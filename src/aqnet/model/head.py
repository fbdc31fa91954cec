"""Prediction head: ``head_layers`` linear layers with GELU between them.

``head_layers = 3`` (the baseline) is Linear-GELU-Linear-GELU-Linear, state-dict keys
``head.0``, ``head.2``, ``head.4``; the last layer maps ``D`` to ``V * p * p`` values per token.
"""

from __future__ import annotations

import torch
from torch import nn

from aqnet.model.shapes import check_shape


class Head(nn.Sequential):
    """``(B, L, D) -> (B, L, out_dim)``."""

    def __init__(self, *, embed_dim: int, out_dim: int, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"the head needs at least one layer, got head_layers={num_layers}")
        layers: list[nn.Module] = []
        for _ in range(num_layers - 1):
            layers += [nn.Linear(embed_dim, embed_dim), nn.GELU()]
        layers.append(nn.Linear(embed_dim, out_dim))
        super().__init__(*layers)
        self.embed_dim = int(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D) -> (B, L, out_dim)."""
        check_shape(x, ("B", "L", ("D", self.embed_dim)), stage="head")
        return super().forward(x)

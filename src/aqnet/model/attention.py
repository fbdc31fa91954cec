"""Plain multi-head self-attention with ``scaled_dot_product_attention`` (the baseline's).

Parameter names ``qkv`` and ``proj`` are shared with
:class:`aqnet.model.elevation_attention.TopoFlowAttention`, so a baseline state dict loads into a
TopoFlow block unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aqnet.model.shapes import check_shape


class Attention(nn.Module):
    """``(B, N, C) -> (B, N, C)`` multi-head self-attention (fused SDPA kernel, no bias)."""

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool = True, name: str) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{name}: num_heads {num_heads} must divide the width {dim}")
        self.dim = int(dim)
        self.num_heads = int(num_heads)
        self.head_dim = dim // num_heads
        self.name = name
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _check_input(self, x: torch.Tensor) -> None:
        check_shape(x, ("B", "N", ("C", self.dim)), stage=self.name)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, N, C) -> q, k, v each (B, heads, N, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, hd)
        return q, k, v

    def _merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        """o: (B, heads, N, head_dim) -> (B, N, C) after the output projection."""
        b, _, n, _ = o.shape
        return self.proj(o.transpose(1, 2).reshape(b, n, self.dim))  # (B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        self._check_input(x)
        q, k, v = self._split_heads(x)
        return self._merge_heads(F.scaled_dot_product_attention(q, k, v))

"""Transformer blocks: the plain (baseline) block and the TopoFlow block.

Both are pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` with the parameter names of
timm's ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so
a baseline state dict loads into a TopoFlow block; the TopoFlow block only adds
``attn.elevation_alpha`` and ``attn.H_scale`` (and ``attn.rel_pos_bias`` when enabled).
"""

from __future__ import annotations

import torch
from torch import nn

from aqnet.model.attention import Attention
from aqnet.model.elevation_attention import TopoFlowAttention


class Mlp(nn.Module):
    """``(B, N, C) -> (B, N, C)``: Linear-GELU-Linear."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """The plain pre-norm transformer block (SDPA attention)."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        index: int,
        attn: Attention | None = None,
    ) -> None:
        """``attn`` replaces the plain attention (it must take ``(B, N, dim)``)."""
        super().__init__()
        self.index = int(index)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attn or Attention(dim=dim, num_heads=num_heads, name=f"block {index} attention")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden_dim=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TopoFlowBlock(Block):
    """A block whose attention carries the elevation bias; needs the tokens' elevations."""

    attn: TopoFlowAttention

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        index: int,
        h_scale_m: float = 1000.0,
        elevation_bias: bool = True,
        elevation_bias_direction: str = "uphill",
        rel_pos_bias: bool = False,
        grid_patches: tuple[int, int] | None = None,
        attention_impl: str = "auto",
    ) -> None:
        attn = TopoFlowAttention(
            dim=dim,
            num_heads=num_heads,
            name=f"block {index} attention",
            h_scale_m=h_scale_m,
            elevation_bias=elevation_bias,
            elevation_bias_direction=elevation_bias_direction,
            rel_pos_bias=rel_pos_bias,
            grid_patches=grid_patches,
            impl=attention_impl,
        )
        super().__init__(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, index=index, attn=attn)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        *,
        elevation_m: torch.Tensor,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, N, C), elevation_m: (B, N) metres, coords: (B, N, 2) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x), elevation_m=elevation_m, coords=coords)
        return x + self.mlp(self.norm2(x))

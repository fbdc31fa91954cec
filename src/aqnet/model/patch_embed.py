"""Per-variable patch embedding as one grouped convolution.

Each input variable has its own ``p x p`` patch projection to ``D`` channels (as ClimaX's list of
per-variable ``PatchEmbed`` modules); stacking them as a convolution with ``groups = V`` runs all
of them in one kernel. Group ``v`` owns the output channels ``[v * D, (v + 1) * D)``.
"""

from __future__ import annotations

import torch
from torch import nn

from aqnet.model.shapes import check_shape


class PatchEmbed(nn.Module):
    """``(B, V, H, W) -> (B, V, L, D)`` with ``L = (H / p) * (W / p)`` patches in raster order."""

    def __init__(
        self,
        *,
        img_size: tuple[int, int],
        patch_size: int,
        num_variables: int,
        embed_dim: int,
        norm: bool = False,
    ) -> None:
        """``norm``: a LayerNorm over ``D`` of every token (``patch_embed.norm``), as the published
        TopoFlow release has (AmmarKheder/TopoFlow topoflow/wind_embed.py, commit 1ab24d8,
        lines 39 and 68)."""
        super().__init__()
        h, w = img_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the grid {h}x{w}")
        self.img_size = (int(h), int(w))
        self.patch_size = int(patch_size)
        self.num_variables = int(num_variables)
        self.embed_dim = int(embed_dim)
        self.proj = nn.Conv2d(
            num_variables,
            num_variables * embed_dim,
            kernel_size=patch_size,
            stride=patch_size,
            groups=num_variables,
        )
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, H, W) -> (B, V, L, D)."""
        v, d = self.num_variables, self.embed_dim
        check_shape(x, ("B", ("V", v), ("H", self.img_size[0]), ("W", self.img_size[1])),
                    stage="patch embedding")  # fmt: skip
        y = self.proj(x)  # (B, V * D, Hp, Wp)
        b, _, hp, wp = y.shape
        tokens = y.reshape(b, v, d, hp * wp).transpose(2, 3)  # (B, V, D, L) -> (B, V, L, D)
        return tokens if self.norm is None else self.norm(tokens)

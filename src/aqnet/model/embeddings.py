"""Position, variable and lead-time embeddings.

* :func:`sincos_1d` / :func:`sincos_2d` - fixed sin-cos tables (MAE / ClimaX style). The 2-D table
  is indexed by **sequence slot** ``n = r * Wp + c``: the forecaster adds it after the wind scan has
  permuted the tokens, so with scanning on it encodes each token's rank along the wind (see
  :mod:`aqnet.model.wind_scan`).
* :class:`LeadTimeEmbedding` - a linear embedding of the lead time in hours (scaled by
  ``lead_time_scale_h``), added to every token.
"""

from __future__ import annotations

import torch
from torch import nn

from aqnet.model.shapes import check_shape


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1-D positions.

    Args:
        embed_dim: output width ``D`` (even).
        positions: ``(M,)`` positions (any real values).

    Returns:
        ``(M, D)`` float64: ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-2k/D)``.
    """
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got embed_dim={embed_dim}")
    omega = 1.0 / 10000.0 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (M, D)


def sincos_2d(embed_dim: int, grid_patches: tuple[int, int]) -> torch.Tensor:
    """2-D sin-cos position embedding of an ``(Hp, Wp)`` patch grid in raster order.

    The first half of the channels encodes the row, the second half the column.

    Returns:
        ``(Hp * Wp, D)`` float64; row ``n = r * Wp + c``.
    """
    if embed_dim % 4:
        raise ValueError(
            f"the 2-D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}"
        )
    hp, wp = grid_patches
    rows, cols = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")  # (Hp, Wp)
    emb_r = sincos_1d(embed_dim // 2, rows.reshape(-1))  # (N, D/2)
    emb_c = sincos_1d(embed_dim // 2, cols.reshape(-1))  # (N, D/2)
    return torch.cat([emb_r, emb_c], dim=1)  # (N, D)


class LeadTimeEmbedding(nn.Module):
    """``lead_time_h (B,) -> (B, D)``: a linear map of ``lead_time_h / lead_time_scale_h``."""

    def __init__(self, *, embed_dim: int, lead_time_scale_h: float) -> None:
        super().__init__()
        if lead_time_scale_h <= 0:
            raise ValueError(f"lead_time_scale_h must be > 0, got {lead_time_scale_h}")
        self.lead_time_scale_h = float(lead_time_scale_h)
        self.proj = nn.Linear(1, embed_dim)

    def forward(self, lead_time_h: torch.Tensor) -> torch.Tensor:
        """lead_time_h: (B,) hours -> (B, D)."""
        check_shape(lead_time_h, ("B",), stage="lead-time embedding")
        scaled = lead_time_h.to(self.proj.weight.dtype) / self.lead_time_scale_h  # (B,)
        return self.proj(scaled[:, None])  # (B, 1) -> (B, D)

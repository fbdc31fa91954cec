"""Variable aggregation: the ``V`` per-variable tokens of a patch become one token.

As in ClimaX, a learnable variable embedding is added to each variable's tokens, then one
learnable query attends over the ``V`` variables of each patch (cross-attention), giving
``(B, L, D)``.
"""

from __future__ import annotations

import torch
from torch import nn

from aqnet.model.embeddings import sincos_1d
from aqnet.model.shapes import check_shape


class VariableAggregation(nn.Module):
    """``(B, V, L, D) -> (B, L, D)`` by cross-attention of one query over the variables."""

    def __init__(self, *, num_variables: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_variables = int(num_variables)
        self.embed_dim = int(embed_dim)
        var_embed = sincos_1d(embed_dim, torch.arange(num_variables)).float()  # (V, D)
        self.var_embed = nn.Parameter(var_embed[None])  # (1, V, D)
        self.var_query = nn.Parameter(torch.zeros(1, 1, embed_dim))  # (1, 1, D)
        nn.init.trunc_normal_(self.var_query, std=0.02)
        self.var_agg = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, V, L, D) -> (B, L, D)."""
        v, d = self.num_variables, self.embed_dim
        check_shape(x, ("B", ("V", v), "L", ("D", d)), stage="variable aggregation")
        b, _, n, _ = x.shape
        x = x + self.var_embed[:, :, None, :]  # (B, V, L, D)
        x = x.permute(0, 2, 1, 3).reshape(b * n, v, d)  # (B * L, V, D)
        query = self.var_query.expand(b * n, -1, -1)  # (B * L, 1, D)
        out, _ = self.var_agg(query, x, x, need_weights=False)  # (B * L, 1, D)
        return out.reshape(b, n, d)  # (B, L, D)

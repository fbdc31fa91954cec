"""The forecaster: a ClimaX-style Vision Transformer with the TopoFlow additions.

Stages of :meth:`Forecaster.forward` (the keys of the ``shapes`` record):

1. ``patch_embed`` - per-variable patch embedding, ``(B, V, L, D)``;
2. ``aggregate`` - variable aggregation by cross-attention, ``(B, L, D)``;
3. ``elevation_tokens`` - each patch's mean elevation in metres, ``(B, L)``;
4. ``wind_scan`` - tokens, elevations and patch coordinates permuted upwind -> downwind,
   ``(B, L, D)`` (see :mod:`aqnet.model.wind_scan`);
5. ``embed`` - position embedding (fixed 2-D sin-cos, or learned: ``config.pos_embed``) added
   **by slot**, lead-time embedding added,
   ``(B, L, D)``;
6. ``blocks.<i>`` - transformer blocks (TopoFlow blocks receive the permuted elevations);
7. ``norm`` and ``head`` - ``(B, L, V * p * p)``;
8. ``unscan`` - the inverse permutation, back to raster patch order (not in the ``reference`` scan
   mode, whose baseline was trained without it: the prediction of slot ``s`` lands on patch ``s``);
9. ``unpatchify`` - ``(B, V, H, W)``;
10. ``output`` - the ``out_variables`` channels selected by name, ``(B, n_out, H, W)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aqnet.model.aggregation import VariableAggregation
from aqnet.model.blocks import Block, TopoFlowBlock
from aqnet.model.elevation_attention import TopoFlowAttention
from aqnet.model.embeddings import LeadTimeEmbedding, sincos_2d
from aqnet.model.head import Head
from aqnet.model.patch_embed import PatchEmbed
from aqnet.model.presets import ModelConfig
from aqnet.model.shapes import check_shape, record
from aqnet.model.wind_scan import WindScan
from aqnet.orders import grid_params


class Forecaster(nn.Module):
    """``(x, lead_time_h, elevation_m) -> (B, n_out, H, W)`` predictions of ``out_variables``."""

    def __init__(self, mcfg: ModelConfig) -> None:
        super().__init__()
        if not isinstance(mcfg, ModelConfig):
            raise TypeError(f"Forecaster needs a ModelConfig, got {type(mcfg).__name__}")
        self.config = mcfg
        v, d, p = len(mcfg.in_variables), mcfg.embed_dim, mcfg.patch_size
        hp, wp = mcfg.grid_patches
        self.patch_embed = PatchEmbed(
            img_size=mcfg.img_size,
            patch_size=p,
            num_variables=v,
            embed_dim=d,
            norm=mcfg.patch_embed_norm,
        )
        self.aggregate = VariableAggregation(num_variables=v, embed_dim=d, num_heads=mcfg.num_heads)
        self.lead_time_embed = LeadTimeEmbedding(
            embed_dim=d, lead_time_scale_h=mcfg.lead_time_scale_h
        )
        needs_wind = mcfg.wind_scan != "off"
        self.wind_scan = WindScan(
            mode=mcfg.wind_scan,
            img_size=mcfg.img_size,
            patch_size=p,
            region_patches=mcfg.region_patches,
            u_index=mcfg.in_variables.index("u") if needs_wind else -1,
            v_index=mcfg.in_variables.index("v") if needs_wind else -1,
            wind_norm=mcfg.wind_norm,
        )
        blocks: list[nn.Module] = []
        for i in range(mcfg.depth):
            if i in mcfg.topoflow_blocks:
                blocks.append(
                    TopoFlowBlock(
                        dim=d,
                        num_heads=mcfg.num_heads,
                        mlp_ratio=mcfg.mlp_ratio,
                        index=i,
                        h_scale_m=mcfg.h_scale_m,
                        elevation_bias=mcfg.elevation_bias,
                        elevation_bias_direction=mcfg.elevation_bias_direction,
                        rel_pos_bias=mcfg.rel_pos_bias,
                        grid_patches=(hp, wp),
                        attention_impl=mcfg.attention_impl,
                    )
                )
            else:
                blocks.append(
                    Block(dim=d, num_heads=mcfg.num_heads, mlp_ratio=mcfg.mlp_ratio, index=i)
                )
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d)
        self.head = Head(embed_dim=d, out_dim=v * p * p, num_layers=mcfg.head_layers)

        # Derived buffers: built here, moved with the module, never saved.
        pos = sincos_2d(d, (hp, wp)).float()[None]  # (1, L, D), indexed by sequence slot
        if mcfg.pos_embed == "learned":  # a weight of the checkpoint (ClimaX's pos_embed)
            self.pos_embed = nn.Parameter(pos)
        else:
            self.register_buffer("pos_embed", pos, persistent=False)
        rows, cols = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
        coords = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)  # (L, 2) (row, col)
        self.register_buffer("patch_coords", coords, persistent=False)
        out_index = torch.tensor([mcfg.in_variables.index(name) for name in mcfg.out_variables])
        self.register_buffer("out_index", out_index, persistent=False)  # (n_out,)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- contract helpers (docs/ARCHITECTURE.md) -------------------------------------------

    def _topoflow_attentions(self) -> list[tuple[int, TopoFlowAttention]]:
        return [
            (i, blk.attn) for i, blk in enumerate(self.blocks) if isinstance(blk, TopoFlowBlock)
        ]

    def topoflow_keys(self) -> list[str]:
        """State-dict keys a baseline checkpoint lacks, e.g. ``blocks.0.attn.elevation_alpha``."""
        return [
            f"blocks.{i}.attn.{key}"
            for i, attn in self._topoflow_attentions()
            for key in attn.new_state_keys()
        ]

    def new_parameter_names(self) -> list[str]:
        """Names of the new TopoFlow parameters (trained with ``lr_new``), a subset of
        :meth:`topoflow_keys` (``H_scale`` is a buffer)."""
        return [
            f"blocks.{i}.attn.{name}"
            for i, attn in self._topoflow_attentions()
            for name in attn.new_parameter_names()
        ]

    def wind_orders(self) -> dict[str, np.ndarray]:
        """The scan orders this model uses: ``{"global": (16, N), "regional": (16, R, P)}``."""
        return {
            "global": self.wind_scan.global_orders.cpu().numpy().copy(),
            "regional": self.wind_scan.regional_orders.cpu().numpy().copy(),
        }

    def orders_params(self) -> dict[str, object]:
        """``aqnet.orders.grid_params`` of this model's grid (for ``orders_digest``)."""
        c = self.config
        return grid_params(
            img_size=c.img_size, patch_size=c.patch_size, region_patches=c.region_patches
        )

    # -- forward ---------------------------------------------------------------------------

    def _check_inputs(
        self, x: torch.Tensor, lead_time_h: torch.Tensor, elevation_m: torch.Tensor
    ) -> torch.Tensor:
        """Validate the inputs; return elevation_m as (B, H, W) in x's dtype."""
        c = self.config
        h, w = c.img_size
        check_shape(x, ("B", ("V", len(c.in_variables)), ("H", h), ("W", w)),
                    stage="forecaster input x")  # fmt: skip
        b = x.shape[0]
        check_shape(lead_time_h, (("B", b),), stage="forecaster input lead_time_h")
        if elevation_m.ndim == 2:
            check_shape(elevation_m, (("H", h), ("W", w)), stage="forecaster input elevation_m")
            elevation_m = elevation_m.expand(b, h, w)  # (B, H, W)
        check_shape(elevation_m, (("B", b), ("H", h), ("W", w)),
                    stage="forecaster input elevation_m")  # fmt: skip
        return elevation_m.to(x.dtype)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, L, V * p * p) in raster patch order -> (B, V, H, W)."""
        c = self.config
        p, v = c.patch_size, len(c.in_variables)
        hp, wp = c.grid_patches
        check_shape(tokens, ("B", ("L", hp * wp), ("V*p*p", v * p * p)), stage="unpatchify")
        b = tokens.shape[0]
        x = tokens.reshape(b, hp, wp, p, p, v)  # (B, Hp, Wp, p, p, V)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (B, V, Hp, p, Wp, p)
        return x.reshape(b, v, hp * p, wp * p)  # (B, V, H, W)

    def forward(
        self,
        x: torch.Tensor,
        lead_time_h: torch.Tensor,
        elevation_m: torch.Tensor,
        *,
        shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> torch.Tensor:
        """Forecast the ``out_variables``.

        Args:
            x: (B, V, H, W) normalised inputs, channels in ``config.in_variables`` order.
            lead_time_h: (B,) lead times in hours.
            elevation_m: (B, H, W) or (H, W) elevation in metres (not normalised).
            shapes: when a dict, the shape after each stage is recorded in it.

        Returns:
            (B, n_out, H, W) predictions of ``config.out_variables`` (normalised units).
        """
        elevation_m = self._check_inputs(x, lead_time_h, elevation_m)  # (B, H, W)
        p = self.config.patch_size
        b = x.shape[0]

        tokens = self.patch_embed(x)  # (B, V, L, D)
        record(shapes, "patch_embed", tokens)
        tokens = self.aggregate(tokens)  # (B, L, D)
        record(shapes, "aggregate", tokens)
        elev_tokens = F.avg_pool2d(elevation_m[:, None], p).flatten(1)  # (B, 1, Hp, Wp) -> (B, L)
        record(shapes, "elevation_tokens", elev_tokens)

        # Wind scan: tokens and their true attributes move together; slots stay fixed.
        perm = self.wind_scan.permutation(x)  # (B, L) or None
        tokens = WindScan.scan(tokens, perm)  # (B, L, D)
        elev_tokens = WindScan.scan(elev_tokens, perm)  # (B, L)
        coords = WindScan.scan(self.patch_coords.expand(b, -1, -1), perm)  # (B, L, 2)
        record(shapes, "wind_scan", tokens)

        lead = self.lead_time_embed(lead_time_h)  # (B, D)
        tokens = tokens + self.pos_embed + lead[:, None, :]  # by slot: (B, L, D)
        record(shapes, "embed", tokens)

        for i, blk in enumerate(self.blocks):
            if isinstance(blk, TopoFlowBlock):
                tokens = blk(tokens, elevation_m=elev_tokens, coords=coords)
            else:
                tokens = blk(tokens)
            record(shapes, f"blocks.{i}", tokens)
        tokens = self.norm(tokens)
        record(shapes, "norm", tokens)
        tokens = self.head(tokens)  # (B, L, V * p * p)
        record(shapes, "head", tokens)
        if self.wind_scan.unscans:
            tokens = WindScan.unscan(tokens, perm)  # back to raster patch order
        record(shapes, "unscan", tokens)
        fields = self.unpatchify(tokens)  # (B, V, H, W)
        record(shapes, "unpatchify", fields)
        out = fields.index_select(1, self.out_index)  # (B, n_out, H, W)
        record(shapes, "output", out)
        return out


def count_parameters(mcfg: ModelConfig | None = None) -> dict[str, int]:
    """Parameter counts of a model (default: :func:`aqnet.model.presets.paper`).

    Built on the ``meta`` device, so even the paper model costs no memory.

    Returns:
        ``{"total", "trainable", "topoflow"}`` - all parameters, those with ``requires_grad``, and
        the new TopoFlow parameters.
    """
    from aqnet.model.presets import paper

    cfg = mcfg if mcfg is not None else paper()
    with torch.device("meta"):
        model = Forecaster(cfg)
    new = set(model.new_parameter_names())
    named = dict(model.named_parameters())
    return {
        "total": sum(t.numel() for t in named.values()),
        "trainable": sum(t.numel() for t in named.values() if t.requires_grad),
        "topoflow": sum(t.numel() for n, t in named.items() if n in new),
    }

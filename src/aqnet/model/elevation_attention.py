"""TopoFlow attention: self-attention with an elevation bias.

For query token ``i`` and key token ``j`` with patch-mean elevations ``elev_i``, ``elev_j``
(metres)::

    bias[i, j] = clamp(-alpha * relu((elev_j - elev_i) / H_scale), -10, 0)
    attn = softmax(q k^T / sqrt(d) + bias) v

so attending *uphill* (from a low query to a higher key) is penalised and downhill or flat is free:
pollution pools in valleys and mountains block its flow (``elevation_bias_direction: downhill``
reverses the sign of the elevation difference, :data:`DIRECTIONS`). ``alpha``
(``elevation_alpha``, shape ``[1]``) is learnable and initialised to **0**, so a fine-tune starts
exactly at the baseline; ``H_scale`` (metres) is a persistent buffer. These two are the only
state-dict keys a baseline checkpoint lacks (plus ``rel_pos_bias`` when the optional
relative-position bias is on). The bias is the same for every head, so it is formed at most as
``(B, 1, N, N)`` and broadcast over heads.

An optional learnable bucketed 2-D relative-position bias (``rel_pos_bias``, per head, initialised
to 0, off by default) adds ``table[h, bucket(dr), bucket(dc)]`` where ``dr``, ``dc`` are the row and
column offsets between the two tokens' **true** patch coordinates (which travel with the tokens
through the wind scan): offsets up to :data:`REL_EXACT` patches have their own bucket, longer ones
share :data:`REL_LOG` log-spaced buckets per sign.

Implementations (``impl``):

* ``flex`` - FlexAttention (compiled) with the bias computed inside ``score_mod``: nothing of size
  ``N x N`` is stored. CUDA only for training (FlexAttention has no CPU backward in this torch
  release); on CPU it runs forward-only, unfused.
* ``chunked`` - queries in chunks, the fused ``scaled_dot_product_attention`` kernel per chunk
  with that chunk's ``(B, 1, c, N)`` bias, recomputation in the backward: memory grows with
  ``c * N``, not ``N^2`` (:mod:`aqnet.model.chunked_attention`).
* ``sdpa`` - ``scaled_dot_product_attention`` with the full ``(B, 1, N, N)`` bias broadcast over
  heads. Fast and lean in inference; when the bias needs a gradient PyTorch falls back to its math
  kernel, which materialises the per-head scores.
* ``reference`` - plain ``softmax(q k^T * scale + bias) v`` with the ``(B, heads, N, N)`` scores;
  the ground truth for tests.
* ``auto`` - ``flex`` on CUDA, ``chunked`` elsewhere.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from aqnet.model.attention import Attention
from aqnet.model.chunked_attention import chunked_biased_attention
from aqnet.model.shapes import check_shape

BIAS_MIN = -10.0
"""Lower clamp of the elevation bias (the upper clamp is 0)."""

REL_EXACT = 4
"""Relative offsets (in patches) up to this distance each get their own bucket."""

REL_LOG = 4
"""Log-spaced buckets per sign for offsets beyond :data:`REL_EXACT`."""

REL_BUCKETS = 2 * (REL_EXACT + REL_LOG) + 1
"""Buckets per axis of the relative-position table."""

IMPLS: tuple[str, ...] = ("auto", "flex", "chunked", "sdpa", "reference")

DIRECTIONS: dict[str, float] = {"uphill": 1.0, "downhill": -1.0}
"""``elevation_bias_direction``: ``uphill`` penalises a query attending a higher key (the TopoFlow
formula above); ``downhill`` penalises a query attending a lower key, ``relu((elev_i - elev_j) /
H_scale)`` (the elevations enter negated): the reversed hypothesis, as an ablation. The published
formula is ``uphill`` (AmmarKheder/TopoFlow, README.md at 8a5eb9f, "TopoFlow Attention Block":
``bias = -alpha * ReLU((elevation[j] - elevation[i]) / scale)``), while the prose beside it speaks
of penalising attention "from high-elevation to low-elevation patches": the switch lets the run
test which sign the data support."""


def direction_sign(direction: str, *, who: str, key: str = "elevation_bias_direction") -> float:
    """The sign :data:`DIRECTIONS` gives ``direction``; otherwise ``ValueError`` naming ``who``
    and the setting ``key`` it came from."""
    if direction not in DIRECTIONS:
        raise ValueError(f"{who}: {key} must be one of {list(DIRECTIONS)}, got {direction!r}")
    return DIRECTIONS[direction]


def elevation_bias(
    elev_q: torch.Tensor, elev_k: torch.Tensor, alpha: torch.Tensor, h_scale: torch.Tensor
) -> torch.Tensor:
    """The TopoFlow bias.

    Args:
        elev_q: (B, Nq) query-token elevations in metres.
        elev_k: (B, Nk) key-token elevations in metres.
        alpha: (1,) strength (``elevation_alpha``).
        h_scale: () or (1,) elevation scale in metres (``H_scale``).

    Returns:
        (B, Nq, Nk): ``clamp(-alpha * relu((elev_k - elev_q) / h_scale), -10, 0)``.
    """
    return scaled_elevation_bias(elev_q / h_scale, elev_k / h_scale, alpha)


def scaled_elevation_bias(
    z_q: torch.Tensor, z_k: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """:func:`elevation_bias` of elevations already divided by ``H_scale``.

    Args:
        z_q: (B, Nq) and z_k: (B, Nk) elevations in units of ``H_scale``; alpha: (1,).

    Returns:
        (B, Nq, Nk): ``clamp(-alpha * relu(z_k - z_q), -10, 0)``.
    """
    uphill = z_k[:, None, :] - z_q[:, :, None]  # (B, Nq, Nk), > 0 uphill
    if torch.is_grad_enabled() and alpha.requires_grad:
        return torch.clamp(-alpha * torch.relu(uphill), BIAS_MIN, 0.0)
    # No graph to keep: one buffer, updated in place.
    return uphill.relu_().mul_(-alpha).clamp_(BIAS_MIN, 0.0)


def relative_position_buckets(
    max_distance: int, *, exact: int = REL_EXACT, num_log: int = REL_LOG
) -> torch.Tensor:
    """Bucket of every offset ``d`` in ``[-(max_distance - 1), max_distance - 1]``.

    Returns:
        ``(2 * max_distance - 1,)`` int64; entry ``d + max_distance - 1`` is the bucket of ``d``,
        in ``[0, 2 * (exact + num_log)]``; offset 0 maps to the middle bucket.
    """
    d = torch.arange(-(max_distance - 1), max_distance, dtype=torch.float64)
    mag = d.abs()
    far = max(float(max_distance - 1), exact + 1.0)
    log_part = exact + torch.ceil(
        num_log * torch.log(mag.clamp(min=1) / exact) / math.log(far / exact)
    )
    bucket_mag = torch.where(mag <= exact, mag, log_part.clamp(exact + 1, exact + num_log))
    return (torch.sign(d) * bucket_mag + exact + num_log).to(torch.int64)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_attention(device: torch.device) -> Callable[..., torch.Tensor]:
    if device.type == "cuda":
        return _compiled_flex_attention()
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention  # eager, unfused: forward-only checks on CPU


class TopoFlowAttention(Attention):
    """Self-attention with the TopoFlow elevation bias (and optional relative-position bias).

    Shares ``qkv`` and ``proj`` with :class:`aqnet.model.attention.Attention`; adds
    ``elevation_alpha`` (parameter, ``[1]``, init 0), ``H_scale`` (persistent buffer, metres) and,
    when ``rel_pos_bias``, the parameter ``rel_pos_bias`` of shape ``(heads, 17, 17)`` (init 0).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        name: str,
        h_scale_m: float = 1000.0,
        elevation_bias: bool = True,
        elevation_bias_direction: str = "uphill",
        rel_pos_bias: bool = False,
        grid_patches: tuple[int, int] | None = None,
        impl: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, name=name)
        if impl not in IMPLS:
            raise ValueError(f"{name}: attention impl must be one of {IMPLS}, got {impl!r}")
        if h_scale_m <= 0:
            raise ValueError(f"{name}: h_scale_m must be > 0 metres, got {h_scale_m}")
        self.use_elevation_bias = bool(elevation_bias)
        self.elevation_bias_direction = elevation_bias_direction
        # downhill: the elevations enter negated, so relu(z_k - z_q) becomes relu(e_q - e_k) / H
        self.direction_sign = direction_sign(elevation_bias_direction, who=name)
        self.impl = impl
        self.chunk_size = chunk_size
        self.elevation_alpha = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("H_scale", torch.tensor(float(h_scale_m)))
        self.rel_pos_bias: torch.nn.Parameter | None = None
        if rel_pos_bias:
            if grid_patches is None:
                raise ValueError(f"{name}: rel_pos_bias needs grid_patches (Hp, Wp)")
            hp, wp = grid_patches
            self.rel_pos_bias = torch.nn.Parameter(torch.zeros(num_heads, REL_BUCKETS, REL_BUCKETS))
            self.register_buffer("row_buckets", relative_position_buckets(hp), persistent=False)
            self.register_buffer("col_buckets", relative_position_buckets(wp), persistent=False)
            self.grid_patches = (int(hp), int(wp))

    def new_state_keys(self) -> list[str]:
        """State-dict keys (relative to this module) that a plain ``Attention`` lacks."""
        return ["elevation_alpha", "H_scale"] + (["rel_pos_bias"] * (self.rel_pos_bias is not None))

    def new_parameter_names(self) -> list[str]:
        """Parameter names (relative to this module) that a plain ``Attention`` lacks."""
        return ["elevation_alpha"] + (["rel_pos_bias"] * (self.rel_pos_bias is not None))

    def resolve_impl(self, device: torch.device) -> str:
        """The implementation ``auto`` stands for on ``device``."""
        if self.impl != "auto":
            return self.impl
        return "flex" if device.type == "cuda" else "chunked"

    # -- the bias --------------------------------------------------------------------------

    def _relative_bias(
        self, table: torch.Tensor, coords_q: torch.Tensor, coords_k: torch.Tensor
    ) -> torch.Tensor:
        """table: (h, nb, nb); coords_q: (B, c, 2); coords_k: (B, N, 2) -> (B, h, c, N)."""
        hp, wp = self.grid_patches
        dr = coords_k[:, None, :, 0] - coords_q[:, :, None, 0]  # (B, c, N)
        dc = coords_k[:, None, :, 1] - coords_q[:, :, None, 1]  # (B, c, N)
        rb = self.row_buckets[dr + (hp - 1)]  # (B, c, N)
        cb = self.col_buckets[dc + (wp - 1)]  # (B, c, N)
        return table[:, rb, cb].transpose(0, 1)  # (h, B, c, N) -> (B, h, c, N)

    def _bias_block(
        self,
        start: int,
        stop: int,
        z: torch.Tensor,
        alpha: torch.Tensor,
        table: torch.Tensor | None = None,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Bias of query rows ``[start, stop)``: (B, 1, c, N), (B, h, c, N) or None.

        ``z`` (B, N) is the tokens' elevation divided by ``H_scale`` (see :meth:`_bias_inputs`).
        """
        bias: torch.Tensor | None = None
        if self.use_elevation_bias:
            bias = scaled_elevation_bias(z[:, start:stop], z, alpha)[:, None]  # (B, 1, c, N)
        if table is not None and coords is not None:
            rel = self._relative_bias(table, coords[:, start:stop], coords)  # (B, h, c, N)
            bias = rel if bias is None else bias + rel
        return bias

    def _bias_inputs(
        self, elevation_m: torch.Tensor, coords: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """``(z, alpha[, table, coords])``: elevations in units of ``H_scale`` (divided once here,
        not once per chunk), the strength, and the relative-position inputs."""
        z = elevation_m / self.H_scale  # (B, N)
        if self.direction_sign < 0:
            z = -z  # downhill: relu(z_k - z_q) of -z penalises keys below the query
        inputs: tuple[torch.Tensor, ...] = (z, self.elevation_alpha)
        if self.rel_pos_bias is not None:
            if coords is None:
                raise ValueError(f"{self.name}: rel_pos_bias is on but no token coords were given")
            inputs += (self.rel_pos_bias, coords)
        return inputs

    # -- the implementations ---------------------------------------------------------------

    def _flex(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        if q.device.type != "cuda" and torch.is_grad_enabled() and q.requires_grad:
            raise ValueError(
                f"{self.name}: attention_impl='flex' has no backward on {q.device.type} in "
                f"torch {torch.__version__}; use 'auto' or 'chunked' there"
            )
        z, alpha = inputs[:2]
        table, coords = (inputs[2], inputs[3]) if len(inputs) == 4 else (None, None)
        use_elev = self.use_elevation_bias
        if table is not None:
            hp, wp = self.grid_patches
            row_b, col_b = self.row_buckets, self.col_buckets

        def score_mod(
            score: torch.Tensor,
            b: torch.Tensor,
            h: torch.Tensor,
            q_idx: torch.Tensor,
            kv_idx: torch.Tensor,
        ) -> torch.Tensor:
            if use_elev:
                uphill = z[b, kv_idx] - z[b, q_idx]
                score = score + torch.clamp(-alpha[0] * torch.relu(uphill), BIAS_MIN, 0.0)
            if table is not None and coords is not None:
                dr = coords[b, kv_idx, 0] - coords[b, q_idx, 0] + (hp - 1)
                dc = coords[b, kv_idx, 1] - coords[b, q_idx, 1] + (wp - 1)
                score = score + table[h, row_b[dr], col_b[dc]]
            return score

        return _flex_attention(q.device)(q, k, v, score_mod=score_mod)

    def forward(
        self,
        x: torch.Tensor,
        *,
        elevation_m: torch.Tensor,
        coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Biased self-attention.

        Args:
            x: (B, N, C) tokens.
            elevation_m: (B, N) each token's elevation in metres (in the tokens' current order).
            coords: (B, N, 2) int64 each token's true patch (row, col); needed with rel_pos_bias.

        Returns:
            (B, N, C).
        """
        self._check_input(x)
        b, n, _ = x.shape
        check_shape(elevation_m, (("B", b), ("N", n)), stage=f"{self.name} elevation_m")
        if coords is not None:
            check_shape(coords, (("B", b), ("N", n), 2), stage=f"{self.name} coords")
        q, k, v = self._split_heads(x)  # 3 x (B, h, N, hd)
        inputs = self._bias_inputs(elevation_m.to(q.dtype), coords)
        impl = self.resolve_impl(x.device)
        if not self.use_elevation_bias and self.rel_pos_bias is None:
            o = F.scaled_dot_product_attention(q, k, v)  # nothing to add
        elif impl == "flex":
            o = self._flex(q, k, v, inputs)
        elif impl == "chunked":
            o = chunked_biased_attention(
                q, k, v, self._bias_block, inputs, chunk_size=self.chunk_size
            )
        elif impl == "sdpa":
            bias = self._bias_block(0, n, *inputs)  # (B, 1|h, N, N)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:  # reference
            scores = torch.matmul(q, k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, h, N, N)
            bias = self._bias_block(0, n, *inputs)
            if bias is not None:
                scores = scores + bias
            o = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, h, N, hd)
        return self._merge_heads(o)  # (B, N, C)

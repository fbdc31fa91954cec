"""Memory-lean biased attention: query chunks, recomputation in the backward.

The ``chunked`` implementation of :class:`aqnet.model.elevation_attention.TopoFlowAttention`,
written for any bias that a function of the query rows can form: the forward runs the fused
``scaled_dot_product_attention`` kernel per chunk of query rows with that chunk's bias; the
backward recomputes each chunk's scores and forms the gradients FlashAttention-style, so no
``(B, heads, N, N)`` tensor is ever held and memory grows with ``c * N``, not ``N^2``. The bias's
gradient reaches its inputs (TopoFlow's ``alpha``, a relative-position table) by differentiating
the recomputed chunk bias.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["CHUNK_ACTIVATIONS", "MIN_CHUNK_ROWS", "BiasFn", "chunked_biased_attention"]

CHUNK_ACTIVATIONS = 2
"""Size of one chunk buffer of the chunked path, in units of the block's ``(B, N, C)`` token
activations: the backward reuses two ``(B, heads, c, N)`` score buffers with ``c = 2 * C / heads``
query rows, the forward one ``(B, 1, c, N)`` bias block with ``c = 2 * C`` rows. The extra memory
thus stays a fixed small fraction of what the block holds anyway, at every sequence length."""

MIN_CHUNK_ROWS = 32
"""Fewest query rows per chunk (fewer rows make the per-chunk kernels inefficient)."""

BiasFn = Callable[..., torch.Tensor | None]


class _ChunkedBiasedAttention(torch.autograd.Function):
    """Biased attention over query chunks with recomputation in the backward.

    ``bias_fn(start, stop, *bias_inputs)`` returns the bias of query rows ``[start, stop)``,
    broadcastable to ``(B, heads, stop - start, N)``, or ``None``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias_fn: BiasFn,
        chunks: tuple[int, int],
        *bias_inputs: torch.Tensor,
    ) -> torch.Tensor:
        """q, k, v: (B, heads, N, hd) -> (B, heads, N, hd); chunks: (forward, backward) rows."""
        n, hd = q.shape[2], q.shape[3]
        # q pre-scaled once (a contiguous copy): no per-chunk scaling, forward or backward.
        qs = torch.mul(q, hd**-0.5, out=torch.empty(q.shape, dtype=q.dtype, device=q.device))
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, h, N, hd)
        for start in range(0, n, chunks[0]):
            stop = min(n, start + chunks[0])
            bias = bias_fn(start, stop, *bias_inputs)  # (B, 1|h, c, N)
            mask = None if bias is None else bias.to(q.dtype)
            out[:, :, start:stop] = F.scaled_dot_product_attention(
                qs[:, :, start:stop], k, v, attn_mask=mask, scale=1.0
            )  # (B, h, c, hd)
        ctx.save_for_backward(qs, k, v, out, *bias_inputs)
        ctx.bias_fn = bias_fn  # type: ignore[attr-defined]
        ctx.chunk = chunks[1]  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        qs, k, v, out, *bias_inputs = ctx.saved_tensors
        bias_fn: BiasFn = ctx.bias_fn
        needs = ctx.needs_input_grad[5:]
        b, h, n, hd = qs.shape
        # Batch and heads flattened once: every per-chunk op is then a single bmm / in-place op.
        q3 = qs.flatten(0, 1)  # (B*h, N, hd), q * scale
        k3 = k.flatten(0, 1)  # (B*h, N, hd)
        k3_t = k3.transpose(1, 2)  # (B*h, hd, N)
        v3_t = v.flatten(0, 1).transpose(1, 2)  # (B*h, hd, N)
        do3 = grad_out.contiguous().flatten(0, 1)  # (B*h, N, hd)
        delta3 = (do3 * out.flatten(0, 1)).sum(dim=-1, keepdim=True)  # (B*h, N, 1)
        dq3 = torch.empty_like(q3)
        dk3 = torch.zeros_like(q3)
        dv3 = torch.zeros_like(q3)
        # Leaves of the bias graph: gradients of every chunk accumulate into their .grad.
        leaves = [
            t.detach().requires_grad_(need) for t, need in zip(bias_inputs, needs, strict=True)
        ]
        # Two score-sized buffers reused by every chunk (no per-chunk allocation): A holds the
        # scores, then dP and dS; B holds the probabilities.
        buf_a = torch.empty(b * h * ctx.chunk * n, dtype=qs.dtype, device=qs.device)
        buf_b = torch.empty_like(buf_a)
        for start in range(0, n, ctx.chunk):
            stop = min(n, start + ctx.chunk)
            c = stop - start
            with torch.set_grad_enabled(any(needs)):
                bias = bias_fn(start, stop, *leaves)  # (B, 1|h, c, N) or None
            scores = buf_a[: b * h * c * n].view(b * h, c, n)  # contiguous for any c
            torch.bmm(q3[:, start:stop], k3_t, out=scores)  # S = q k^T * scale: (B*h, c, N)
            if bias is not None:
                scores.view(b, h, c, n).add_(bias.detach().to(qs.dtype))
            p = torch.softmax(scores, dim=-1, out=buf_b[: b * h * c * n].view(b * h, c, n))
            do_c = do3[:, start:stop]  # (B*h, c, hd)
            dv3.baddbmm_(p.transpose(1, 2), do_c)  # dV += P^T dO: (B*h, N, hd)
            ds = torch.bmm(do_c, v3_t, out=scores)  # dP: (B*h, c, N), in buffer A
            ds.sub_(delta3[:, start:stop]).mul_(p)  # dS = P * (dP - delta)
            # (no out= here: bmm into a non-contiguous slice takes a ~30x slower path)
            dq3[:, start:stop] = torch.bmm(ds, k3)  # dQ / scale = dS K: (B*h, c, hd)
            dk3.baddbmm_(ds.transpose(1, 2), q3[:, start:stop])  # dK += dS^T (Q * scale)
            if bias is not None and bias.requires_grad:
                dbias = ds.view(b, h, c, n).sum_to_size(bias.shape)  # (B, 1|h, c, N)
                torch.autograd.backward(bias, dbias.to(bias.dtype))
        bias_grads = [leaf.grad if need else None for leaf, need in zip(leaves, needs, strict=True)]
        dq3.mul_(hd**-0.5)
        dq, dk, dv = (t.view(b, h, n, hd) for t in (dq3, dk3, dv3))
        return (dq, dk, dv, None, None, *bias_grads)


def chunked_biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_fn: BiasFn,
    bias_inputs: tuple[torch.Tensor, ...],
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Memory-lean biased attention (see the module docstring, ``chunked``).

    Args:
        q, k, v: (B, heads, N, hd).
        bias_fn: ``bias_fn(start, stop, *bias_inputs)`` -> bias of query rows ``[start, stop)``,
            broadcastable to ``(B, heads, stop - start, N)``, or ``None``.
        bias_inputs: the tensors the bias depends on (their gradients are returned).
        chunk_size: query rows per chunk (forward and backward); by default see
            :data:`CHUNK_ACTIVATIONS`, at least :data:`MIN_CHUNK_ROWS` rows.

    Returns:
        (B, heads, N, hd).
    """
    _, h, n, hd = q.shape
    if chunk_size:
        chunks = (min(chunk_size, n), min(chunk_size, n))
    else:
        backward_rows = max(MIN_CHUNK_ROWS, CHUNK_ACTIVATIONS * hd)  # B*h*c*N = 2 * B*N*C
        forward_rows = max(MIN_CHUNK_ROWS, CHUNK_ACTIVATIONS * h * hd)  # B*c*N = 2 * B*N*C
        chunks = (min(forward_rows, n), min(backward_rows, n))
    # Contiguous once here, not once per chunk inside every kernel call (q: in the Function).
    k, v = k.contiguous(), v.contiguous()
    return _ChunkedBiasedAttention.apply(q, k, v, bias_fn, chunks, *bias_inputs)

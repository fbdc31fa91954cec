"""Losses over the model's domain mask (never a hard-coded box), NaN targets masked dynamically.

Every loss here is a mean squared error in normalised units over the grid cells where the mask is
set *and the target is finite*, with the mask broadcast over channels::

    w[b,c,h,w] = m[b,h,w] * isfinite(target[b,c,h,w])
    loss = sum_{b,c,h,w} w * (pred - target) ** 2 / sum_{b,c,h,w} w

``mask`` is the per-sample domain mask the data loader yields, ``(B, H, W)``, or one static mask
``(H, W)`` for the whole batch; it may be boolean or a 0/1 (or fractional weight) float tensor.
A target that is NaN (a missing observation) is left out of the sum and of the weight, so it
never enters the loss or its gradient; with finite targets this is the plain masked MSE. The sums
are accumulated in float32 (float64 inputs stay float64) so bf16 predictions do not lose
precision in the reduction.

:func:`masked_error_sums` returns the un-normalised pieces (per sample and channel), so a
validation pass can sum them over batches and ranks and divide once: the result is then the same
for any batch size and any number of ranks (:mod:`aqnet.evaluation`).
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_error_sums",
    "masked_mse",
    "masked_mse_per_channel",
]


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate shapes and return the mask as a ``(B, 1, H, W)`` float tensor."""
    if pred.ndim != 4:
        raise ValueError(f"masked loss: pred must be (B, C, H, W), got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"masked loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
            "differ in shape"
        )
    b, _, h, w = pred.shape
    if mask.ndim == 2:
        mask = mask.unsqueeze(0).expand(b, h, w) if mask.shape == (h, w) else mask
    if mask.shape != (b, h, w):
        raise ValueError(
            f"masked loss: mask must be (B, H, W) = {(b, h, w)} or (H, W) = {(h, w)}, "
            f"got {tuple(mask.shape)}"
        )
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return mask.to(device=pred.device, dtype=dtype).unsqueeze(1)  # (B, 1, H, W)


def masked_error_sums(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked squared-error sums and weights per sample and channel, NaN targets left out.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``; NaN where there is no observation.
        mask: ``(B, H, W)`` or ``(H, W)``, boolean or float weights.

    Returns:
        ``(sq_err (B, C), weight (B, C))``: ``sq_err[b, c] = sum_hw w * (pred - target) ** 2``
        and ``weight[b, c] = sum_hw w`` with ``w = m * isfinite(target)``. The masked MSE of any
        subset is ``sq_err.sum() / weight.sum()`` over it. The gradient in ``pred`` is zero
        where the target is NaN (never NaN itself).
    """
    m = _check(pred, target, mask)  # (B, 1, H, W)
    finite = torch.isfinite(target)  # (B, C, H, W)
    t = torch.where(finite, target, torch.zeros((), dtype=target.dtype, device=target.device))
    diff = pred.to(m.dtype) - t.to(m.dtype)  # (B, C, H, W), finite where the target is
    w = m * finite.to(m.dtype)  # (B, C, H, W)
    sq_err = (diff.square() * w).sum(dim=(2, 3))  # (B, C)
    weight = w.sum(dim=(2, 3))  # (B, C)
    return sq_err, weight


def masked_mse_per_channel(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Masked MSE of each channel over the batch (NaN targets left out).

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` or ``(H, W)``.

    Returns:
        ``(C,)``; with finite targets its mean is :func:`masked_mse`.

    Raises:
        ValueError: on mismatched shapes, or a channel with no finite target in the mask.
    """
    sq_err, weight = masked_error_sums(pred, target, mask)
    total = weight.sum(dim=0)  # (C,)
    if not bool((total > 0).all()):
        empty = [int(c) for c in torch.nonzero(total <= 0).flatten()]
        raise ValueError(
            f"masked loss: channel(s) {empty} have no finite target inside the mask (mask shape "
            f"{tuple(mask.shape)}); check the domain mask in the cache's static.npz"
        )
    return sq_err.sum(dim=0) / total  # (C,)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error over batch, channels and the masked cells with a finite target.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``; NaN targets are left out.
        mask: ``(B, H, W)`` or ``(H, W)``, boolean or float weights.

    Returns:
        A scalar tensor (float32, or float64 for float64 inputs), differentiable in ``pred``.

    Raises:
        ValueError: on mismatched shapes, or a mask with no cell set (or no finite target).
    """
    sq_err, weight = masked_error_sums(pred, target, mask)
    total = weight.sum()
    if not bool(total > 0):
        raise ValueError(
            f"masked loss: the mask selects no grid cell with a finite target (mask shape "
            f"{tuple(mask.shape)}); check the domain mask in the cache's static.npz"
        )
    return sq_err.sum() / total

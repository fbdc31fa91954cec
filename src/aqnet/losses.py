"""Losses over the model's domain mask (never a hard-coded box).

Every loss here is a mean squared error in normalised units over the grid cells where the mask is
set, with the mask broadcast over channels::

    loss = sum_{b,c,h,w} m[b,h,w] * (pred - target)[b,c,h,w] ** 2 / (C * sum_{b,h,w} m[b,h,w])

``mask`` is the per-sample domain mask the data loader yields, ``(B, H, W)``, or one static mask
``(H, W)`` for the whole batch; it may be boolean or a 0/1 (or fractional weight) float tensor.
The sums are accumulated in float32 (float64 inputs stay float64) so bf16 predictions do not lose
precision in the reduction.

:func:`masked_sq_err_sums` returns the un-normalised pieces (per sample and channel), so a
validation pass can sum them over batches and ranks and divide once: the result is then the same
for any batch size and any number of ranks.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_mse",
    "masked_mse_per_channel",
    "masked_sq_err_sums",
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


def masked_sq_err_sums(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked squared-error sums per sample and channel, and the mask weight per sample.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` or ``(H, W)``, boolean or float weights.

    Returns:
        ``(sq_err (B, C), weight (B,))``: ``sq_err[b, c] = sum_hw m * (pred - target) ** 2`` and
        ``weight[b] = sum_hw m``. The masked MSE of any subset is ``sq_err.sum() / (C *
        weight.sum())`` over it.
    """
    m = _check(pred, target, mask)  # (B, 1, H, W)
    diff = pred.to(m.dtype) - target.to(m.dtype)  # (B, C, H, W)
    sq_err = (diff.square() * m).sum(dim=(2, 3))  # (B, C)
    weight = m.sum(dim=(1, 2, 3))  # (B,)
    return sq_err, weight


def masked_mse_per_channel(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Masked MSE of each channel over the batch.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` or ``(H, W)``.

    Returns:
        ``(C,)``; the mean of it is :func:`masked_mse`.

    Raises:
        ValueError: on mismatched shapes, or a mask with no cell set.
    """
    sq_err, weight = masked_sq_err_sums(pred, target, mask)
    total = weight.sum()
    if not bool(total > 0):
        raise ValueError(
            f"masked loss: the mask selects no grid cell (mask shape {tuple(mask.shape)}); "
            "check the domain mask in the cache's static.npz"
        )
    return sq_err.sum(dim=0) / total  # (C,)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean squared error over batch, channels and the masked grid cells.

    Args:
        pred: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` or ``(H, W)``, boolean or float weights.

    Returns:
        A scalar tensor (float32, or float64 for float64 inputs), differentiable in ``pred``.

    Raises:
        ValueError: on mismatched shapes, or a mask with no cell set.
    """
    return masked_mse_per_channel(pred, target, mask).mean()

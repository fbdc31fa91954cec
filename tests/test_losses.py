"""Masked losses (:mod:`aqnet.losses`): the mean over masked cells only, sums that add up over
batches, gradients and shape errors."""

from __future__ import annotations

import pytest
import torch

from aqnet.losses import masked_error_sums, masked_mse, masked_mse_per_channel


def test_masked_mse_equals_the_mean_over_masked_cells_only() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=gen) > 0.4
    expected = ((pred - target) ** 2)[:, :, mask].mean()
    assert torch.allclose(masked_mse(pred, target, mask), expected, rtol=1e-12)
    # A per-sample (B, H, W) float mask gives the same; cells outside it do not matter.
    target_out = target.clone()
    target_out[:, :, ~mask] = 1e6
    per_sample = mask.expand(3, 4, 5).double()
    assert torch.allclose(masked_mse(pred, target_out, per_sample), expected, rtol=1e-12)
    per_channel = masked_mse_per_channel(pred, target, mask)
    assert per_channel.shape == (6,)
    assert torch.allclose(per_channel.mean(), expected, rtol=1e-12)
    assert torch.allclose(per_channel[2], ((pred - target)[:, 2][:, mask] ** 2).mean())


def test_masked_sums_add_up_over_batches() -> None:
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    mask = torch.ones(3, 3)
    sq_a, w_a = masked_error_sums(pred[:1], target[:1], mask)
    sq_b, w_b = masked_error_sums(pred[1:], target[1:], mask)
    assert sq_a.shape == (1, 2) and w_b.shape == (3, 2)
    whole = (sq_a.sum() + sq_b.sum()) / (w_a.sum() + w_b.sum())
    assert torch.allclose(whole, masked_mse(pred, target, mask), rtol=1e-6)


def test_masked_mse_gradient_and_errors() -> None:
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    masked_mse(pred, target, mask).backward()
    assert pred.grad is not None
    assert pred.grad[0, 0].tolist() == [[-2.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match=r"mask must be \(B, H, W\) = \(1, 2, 2\)"):
        masked_mse(pred, target, torch.ones(3, 3))
    with pytest.raises(ValueError, match="pred must be"):
        masked_mse(pred[0], target[0], mask)
    with pytest.raises(ValueError, match="selects no grid cell"):
        masked_mse(pred, target, torch.zeros(2, 2))

"""The one evaluation pass: sums by lead time and pollutant, NaN targets masked dynamically."""

from __future__ import annotations

import math

import pytest
import torch

from aqnet.evaluation import ErrorSums, sample_mse
from aqnet.losses import masked_error_sums, masked_mse

POLL = ("a", "b", "c")


def _batch(seed: int, b: int = 4):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randn(b, 3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(b, 4, 5, generator=g) > 0.3
    lead = torch.tensor([12, 24, 12, 96][:b])
    return pred, target, mask, lead


def test_nan_targets_are_excluded_from_the_loss_and_its_gradient():
    pred, target, mask, _ = _batch(0)
    clean = masked_mse(pred, target, mask)
    holed = target.clone()
    holed[0, 1, 0, :] = math.nan  # a missing row of observations of one pollutant
    holed[2, 0, mask[2]] = math.nan  # one pollutant missing everywhere in one sample
    keep = mask[:, None].expand_as(target) & torch.isfinite(holed)
    expected = ((pred - holed)[keep] ** 2).mean()
    p = pred.clone().requires_grad_(True)
    loss = masked_mse(p, holed, mask)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(float(expected), rel=1e-12)
    assert loss.item() != pytest.approx(float(clean), rel=1e-6)
    loss.backward()
    assert torch.isfinite(p.grad).all()
    assert (p.grad[0, 1, 0, :] == 0).all() and (p.grad[2, 0][mask[2]] == 0).all()
    sq, w = masked_error_sums(pred, holed, mask)
    assert w[2, 0] == 0 and w[2, 1] == mask[2].sum()
    per = sample_mse(sq, w)
    assert math.isnan(per[2, 0]) and torch.isfinite(per[2, 1:]).all()
    with pytest.raises(ValueError, match="no grid cell with a finite target"):
        masked_mse(pred, torch.full_like(target, math.nan), mask)


def test_sums_by_lead_and_pollutant_match_the_masked_mse():
    sums = ErrorSums(lead_times_h=[12, 24, 96], pollutants=POLL)
    batches = [_batch(1), _batch(2)]
    for pred, target, mask, lead in batches:
        sums.add(pred, target, mask, lead)
    pred = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    mask = torch.cat([b[2] for b in batches])
    lead = torch.cat([b[3] for b in batches])
    m = sums.metrics("val_loss")
    assert m["val_loss"] == pytest.approx(float(masked_mse(pred, target, mask)), rel=1e-12)
    sel = lead == 12
    assert m["val_loss_12h"] == pytest.approx(
        float(masked_mse(pred[sel], target[sel], mask[sel])), rel=1e-12
    )
    keep = mask[:, None].expand_as(target)[:, 1]
    assert m["val_loss_b"] == pytest.approx(
        float(((pred - target)[:, 1][keep] ** 2).mean()), rel=1e-12
    )
    # a lead time without a sample reports NaN, not 0
    part = ErrorSums(lead_times_h=[12, 48], pollutants=POLL)
    part.add(pred[sel], target[sel], mask[sel], lead[sel])
    assert math.isnan(part.metrics()["val_loss_48h"])
    # the batch split does not matter: one batch at a time gives the same tables
    one = ErrorSums(lead_times_h=[12, 24, 96], pollutants=POLL)
    for i in range(pred.shape[0]):
        one.add(pred[i : i + 1], target[i : i + 1], mask[i : i + 1], lead[i : i + 1])
    torch.testing.assert_close(one.sq, sums.sq)
    torch.testing.assert_close(one.weight, sums.weight)


def test_unknown_lead_and_empty_pass_are_named():
    sums = ErrorSums(lead_times_h=[12, 24], pollutants=POLL)
    pred, target, mask, lead = _batch(3)
    with pytest.raises(ValueError, match=r"lead times \[12, 24, 96\] not among lead_times_h"):
        sums.add(pred, target, mask, lead)
    with pytest.raises(ValueError, match="selected no grid cell with a finite target"):
        sums.metrics()
    with pytest.raises(ValueError, match="the prediction has 2 channels, expected 3"):
        sums.add(pred[:, :2], target[:, :2], mask, lead)

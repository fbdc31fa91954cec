"""The loss of fixed weights at fixed elevation_alpha: the diagnostic behind the demo's
known-answer numbers (docs/known_answer.md)."""

from __future__ import annotations

import pytest
import torch

from aqnet.model import Forecaster
from aqnet.model.presets import tiny
from aqnet.report.alpha_scan import loss_at_alphas


def _batch(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 15, 16, 32, generator=g)
    y = torch.randn(2, 6, 16, 32, generator=g)
    lead = torch.tensor([12.0, 96.0])
    ramp = torch.linspace(0.0, 2000.0, 32)  # terrain rising to the east, metres
    elev = ramp.expand(2, 16, 32).clone()
    mask = torch.ones(2, 16, 32)
    return [x, y, lead, elev, mask]


def _trained_like(model: Forecaster) -> Forecaster:
    """Zero-initialised weights (residual branches start silent) drawn at random instead."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("elevation_alpha") and not p.any():
                p.normal_(0.0, 0.2)
    return model


def test_the_scan_finds_the_alpha_that_made_the_targets():
    """Targets are the model's own forecast at alpha = 1: the scan's best alpha is 1, with zero
    loss there, and the gradient at 0 points toward it."""
    torch.manual_seed(0)
    model = _trained_like(Forecaster(tiny(img_size=(16, 32))))
    batch = _batch()
    x, _, lead, elev, _ = batch
    with torch.no_grad():
        model.blocks[0].attn.elevation_alpha.fill_(1.0)
        batch[1] = model(x, lead, elev)  # (B, C, H, W): the known answer
        model.blocks[0].attn.elevation_alpha.fill_(0.3)
    out = loss_at_alphas(model, batch, [0.0, 1.0, 4.0])
    assert out["loss"][0] == pytest.approx(out["loss_at_zero"], rel=1e-6)
    assert out["best_alpha"] == 1.0 and 0.0 <= out["loss"][1] < 1e-3 * out["loss"][0]
    assert out["best_gain_pct"] == pytest.approx(100.0)
    assert out["grad_at_zero"] < 0.0  # raising alpha from 0 lowers the loss
    assert float(model.blocks[0].attn.elevation_alpha.detach()) == pytest.approx(0.3)  # restored
    assert model.blocks[0].attn.elevation_alpha.grad is None


def test_the_scan_is_flat_with_the_bias_switched_off():
    torch.manual_seed(0)
    model = _trained_like(Forecaster(tiny(img_size=(16, 32), elevation_bias=False)))
    out = loss_at_alphas(model, _batch(), [0.0, 2.0, 8.0])
    assert out["loss"] == pytest.approx([out["loss_at_zero"]] * 3, rel=1e-7)
    assert out["grad_at_zero"] == 0.0 and out["best_gain_pct"] == pytest.approx(0.0, abs=1e-9)


def test_a_model_without_topoflow_is_refused():
    model = Forecaster(tiny(img_size=(16, 32), topoflow_blocks=()))
    with pytest.raises(ValueError, match="no TopoFlow block"):
        loss_at_alphas(model, _batch(), [0.0, 1.0])

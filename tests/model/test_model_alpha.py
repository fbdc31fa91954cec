"""The training view of ``elevation_alpha`` (:mod:`aqnet.model.alpha`)."""

from __future__ import annotations

import torch

from aqnet.model import Forecaster, tiny
from aqnet.model.alpha import alpha_parameters, alpha_values, project_alphas


def test_alpha_projected_back_to_zero_and_gradient_alive_at_zero():
    torch.manual_seed(0)
    model = Forecaster(tiny(img_size=(16, 32)))
    alpha = dict(model.named_parameters())["blocks.0.attn.elevation_alpha"]
    with torch.no_grad():
        alpha.fill_(-0.02)
    project_alphas(model)
    assert float(alpha.detach()) == 0.0
    x = torch.randn(2, len(model.config.in_variables), 16, 32)
    elev = torch.linspace(0, 3000, 16 * 32).reshape(16, 32)
    model(x, torch.tensor([12.0, 24.0]), elev).square().mean().backward()
    assert alpha.grad is not None and float(alpha.grad.abs()) > 0


def test_alpha_parameters_by_block_and_their_metric_names() -> None:
    model = Forecaster(tiny(img_size=(16, 32), depth=3, topoflow_blocks=(0, 2)))
    alphas = alpha_parameters(model)
    named = dict(model.named_parameters())
    assert list(alphas) == [0, 2]
    assert alphas[2] is named["blocks.2.attn.elevation_alpha"]
    with torch.no_grad():
        alphas[2].fill_(0.25)
    assert alpha_values(alphas) == {"alpha_block0": 0.0, "alpha_block2": 0.25}
    assert alpha_parameters(Forecaster(tiny(img_size=(16, 32), topoflow_blocks=()))) == {}

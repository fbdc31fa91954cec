"""``elevation_bias_direction``: the reversed TopoFlow hypothesis as an ablation switch."""

import pytest
import torch

from aqnet.model.elevation_attention import TopoFlowAttention, elevation_bias
from aqnet.model.presets import ModelConfig

N, DIM, HEADS = 12, 16, 2


def _pair(impl: str) -> tuple[TopoFlowAttention, TopoFlowAttention]:
    torch.manual_seed(0)
    up = TopoFlowAttention(dim=DIM, num_heads=HEADS, name="up", impl=impl).double()
    down = TopoFlowAttention(
        dim=DIM, num_heads=HEADS, name="down", impl=impl, elevation_bias_direction="downhill"
    ).double()
    down.load_state_dict(up.state_dict())  # same keys: checkpoints load either way
    with torch.no_grad():
        up.elevation_alpha.fill_(2.0)
        down.elevation_alpha.fill_(2.0)
    return up, down


@pytest.mark.parametrize("impl", ["reference", "chunked", "sdpa"])
def test_downhill_equals_uphill_on_negated_terrain(impl):
    up, down = _pair(impl)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, DIM, generator=g, dtype=torch.float64)
    elev = torch.rand(2, N, generator=g, dtype=torch.float64) * 2000.0
    torch.testing.assert_close(down(x, elevation_m=elev), up(x, elevation_m=-elev))
    assert (down(x, elevation_m=elev) - up(x, elevation_m=elev)).abs().max() > 1e-3


def test_downhill_penalises_a_lower_key_only():
    # the bias the reversed block adds: relu of (query - key) elevations, through the formula
    elev_q = torch.tensor([[1000.0]])
    elev_k = torch.tensor([[0.0, 1000.0, 2000.0]])
    up = elevation_bias(elev_q, elev_k, torch.tensor([1.0]), h_scale=1000.0)
    down = elevation_bias(-elev_q, -elev_k, torch.tensor([1.0]), h_scale=1000.0)
    assert up.tolist() == [[[0.0, 0.0, -1.0]]]  # uphill: the higher key is penalised
    assert down.tolist() == [[[-1.0, 0.0, 0.0]]]  # downhill: the lower key is penalised


def test_unknown_direction_is_named():
    with pytest.raises(ValueError, match="elevation_bias_direction must be one of"):
        TopoFlowAttention(dim=DIM, num_heads=HEADS, name="t", elevation_bias_direction="up")
    cfg = ModelConfig(img_size=(8, 16), patch_size=2, embed_dim=16, depth=1, num_heads=2)
    assert cfg.elevation_bias_direction == "uphill"
    rev = ModelConfig.from_dict({**cfg.to_dict(), "elevation_bias_direction": "downhill"})
    assert rev.elevation_bias_direction == "downhill"

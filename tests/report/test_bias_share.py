"""How much of the TopoFlow bias a baseline's attention can already express
(aqnet.report.bias_share): the terrain's bilinear share and the bias a trained head's logits
already carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aqnet.model import Forecaster
from aqnet.model.elevation_attention import TopoFlowAttention
from aqnet.model.presets import tiny
from aqnet.report.bias_share import learned_alpha, terrain_share, token_elevations


def _brute_force(z: np.ndarray, sign: float) -> tuple[float, float]:
    """``(bilinear, per_query)`` by least squares over the whole N x N row-centred matrix."""
    b = np.maximum(sign * (z[None, :] - z[:, None]), 0.0)
    bc = b - b.mean(axis=1, keepdims=True)
    zc = z - z.mean()
    total = float((bc * bc).sum())
    bil = np.stack([np.outer(np.ones_like(z), zc).ravel(), np.outer(z, zc).ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(bil, bc.ravel(), rcond=None)
    bilinear = 1.0 - float(((bil @ coef - bc.ravel()) ** 2).sum()) / total
    slopes = bc @ zc / (zc @ zc)
    per_query = 1.0 - float(((bc - slopes[:, None] * zc[None, :]) ** 2).sum()) / total
    return bilinear, per_query


@pytest.mark.parametrize("direction", ["uphill", "downhill"])
def test_a_two_level_terrain_is_all_bilinear(direction):
    """On two levels 0 and 1, relu(z_j - z_i) = z_j (1 - z_i): a bilinear form, nothing new."""
    z = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    share = terrain_share(z, direction=direction)
    assert share["bilinear"] == pytest.approx(1.0, abs=1e-12)
    assert share["per_query"] == pytest.approx(1.0, abs=1e-12)
    assert share["new"] == pytest.approx(0.0, abs=1e-12) and share["n_tokens"] == 7
    assert share["new"] >= 0.0 and 0.0 < share["key_only"] < share["bilinear"]


@pytest.mark.parametrize("direction,sign", [("uphill", 1.0), ("downhill", -1.0)])
def test_the_chunked_shares_equal_the_full_least_squares(direction, sign):
    z = np.random.default_rng(3).gamma(0.7, 0.6, size=150)  # skewed, like lowlands and mountains
    bilinear, per_query = _brute_force(z, sign)
    for chunk in (7, 64, 1024):
        share = terrain_share(z, direction=direction, chunk=chunk)
        assert share["bilinear"] == pytest.approx(bilinear, rel=1e-10)
        assert share["per_query"] == pytest.approx(per_query, rel=1e-10)
    # a continuum of heights has a kink no bilinear form follows, and a free slope per query
    # is at least as good as one linear in the query's height
    assert 0.5 < bilinear < 0.999 and per_query >= bilinear


def test_a_flat_terrain_and_a_wrong_direction_are_refused():
    with pytest.raises(ValueError, match="terrain is flat"):
        terrain_share(np.full(10, 0.3))
    with pytest.raises(ValueError, match=r"^bias_share: direction must be one of"):
        terrain_share(np.arange(4.0), direction="up")


def test_token_elevations_are_the_forecasters_patch_means():
    e = np.arange(4 * 6, dtype=float).reshape(4, 6)
    assert token_elevations(e, 2).tolist() == [3.5, 5.5, 7.5, 15.5, 17.5, 19.5]
    with pytest.raises(ValueError, match="whole 4 x 4 patches"):
        token_elevations(e, 4)


class _OneBlock(nn.Module):
    """A TopoFlow attention called as a forecaster is: ``(tokens, lead, elevation)``."""

    def __init__(self, attn: TopoFlowAttention) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x, _lead, elevation_m):
        return self.attn(x, elevation_m=elevation_m)


@pytest.mark.parametrize("direction", ["uphill", "downhill"])
@pytest.mark.parametrize("gain", [0.7, -0.4])
def test_learned_alpha_recovers_a_head_that_applies_the_bias(gain, direction):
    """Head 0's logits are built to be gain times the bias pattern on a two-level terrain
    (exactly bilinear there: uphill -(1 - z_i) z_j, downhill -z_i (1 - z_j)); head 1 is silent:
    gamma = gain with r2 1, and 0."""
    attn = TopoFlowAttention(
        dim=8, num_heads=2, name="blocks.0.attn", h_scale_m=1000.0,
        elevation_bias_direction=direction,
    )  # fmt: skip
    hd = attn.head_dim
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        # token channels: 0 = the query-side factor, 1 = the key-side factor
        a = abs(gain) ** 0.5 * hd**0.25  # q . k * hd^-0.5 = gain * -(query factor)(key factor)
        attn.qkv.weight[0, 0] = a  # q, head 0, dim 0
        attn.qkv.weight[8, 1] = -a if gain > 0 else a  # k, head 0, dim 0
    z = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    x = torch.zeros(2, 6, 8)
    if direction == "uphill":
        x[..., 0], x[..., 1] = 1.0 - z, z
    else:
        x[..., 0], x[..., 1] = z, 1.0 - z
    out = learned_alpha(_OneBlock(attn), [x, None, None, z * 1000.0, None])
    assert [b["block"] for b in out] == ["attn"] and out[0]["direction"] == direction
    head0, head1 = out[0]["heads"]
    assert head0["gamma"] == pytest.approx(gain, rel=1e-5)
    assert head0["r2"] == pytest.approx(1.0, rel=1e-5)
    assert head1 == {"gamma": 0.0, "r2": 0.0}


def test_learned_alpha_on_a_forecaster_reports_every_topoflow_head():
    torch.manual_seed(0)
    model = Forecaster(tiny(img_size=(16, 32), topoflow_blocks=(0, 1))).train()
    x = torch.randn(2, 15, 16, 32)
    elev = torch.linspace(0.0, 2000.0, 32).expand(2, 16, 32).clone()
    out = learned_alpha(model, [x, None, torch.tensor([12.0, 96.0]), elev, None])
    assert [b["block"] for b in out] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(len(b["heads"]) == 4 and b["alpha"] == 0.0 for b in out)
    assert all(0.0 <= h["r2"] <= 1.0 for b in out for h in b["heads"])
    assert model.training  # measured in eval mode, then put back
    chunked = learned_alpha(model, [x, None, torch.tensor([12.0, 96.0]), elev, None], chunk=5)
    for whole, parts in zip(out, chunked, strict=True):
        for h_whole, h_parts in zip(whole["heads"], parts["heads"], strict=True):
            assert h_parts["gamma"] == pytest.approx(h_whole["gamma"], rel=1e-6, abs=1e-12)
            assert h_parts["r2"] == pytest.approx(h_whole["r2"], rel=1e-6, abs=1e-15)


def test_learned_alpha_follows_the_tokens_through_the_wind_scan():
    """With no position embedding, the regional wind scan only permutes block 0's tokens and
    their elevations together: every head's gamma and r2 are those of the unscanned model."""
    torch.manual_seed(0)
    scanned = Forecaster(tiny(img_size=(16, 32), wind_scan="regional"))
    plain = Forecaster(tiny(img_size=(16, 32), wind_scan="off"))
    missing, unexpected = plain.load_state_dict(scanned.state_dict(), strict=False)
    assert not missing
    with torch.no_grad():
        for p in scanned.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)  # zero-initialised weights drawn, as a trained model has
        plain.load_state_dict(scanned.state_dict(), strict=False)
        scanned.pos_embed.zero_()
        plain.pos_embed.zero_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 15, 16, 32, generator=g)
    elev = torch.rand(2, 16, 32, generator=g) * 2000.0
    batch = [x, None, torch.tensor([12.0, 96.0]), elev, None]
    assert scanned.wind_scan.permutation(x) is not None  # the scan does reorder the tokens
    out_s, out_p = learned_alpha(scanned, batch), learned_alpha(plain, batch)
    for h_s, h_p in zip(out_s[0]["heads"], out_p[0]["heads"], strict=True):
        assert h_s["gamma"] == pytest.approx(h_p["gamma"], rel=1e-5, abs=1e-9)
        assert h_s["r2"] == pytest.approx(h_p["r2"], rel=1e-5, abs=1e-12)
    assert any(abs(h["gamma"]) > 1e-4 for h in out_s[0]["heads"])


def test_a_model_without_topoflow_is_refused():
    model = Forecaster(tiny(img_size=(16, 32), topoflow_blocks=()))
    with pytest.raises(ValueError, match="no TopoFlow block"):
        learned_alpha(model, [torch.randn(1, 15, 16, 32), None, torch.tensor([12.0]),
                              torch.zeros(1, 16, 32), None])  # fmt: skip


def test_the_summary_sentence_quotes_the_shares():
    from aqnet.report.page import bias_share_text

    share = {"direction": "uphill", "h_scale_m": 1000.0, "n_tokens": 128, "bilinear": 0.9624,
             "key_only": 0.7949, "per_query": 0.9662, "new": 0.0376, "lowest_tied": 0.1484,
             "lowest_m": 0.0}  # fmt: skip
    text = bias_share_text(share)
    assert "(uphill, H_scale 1000 m, 128 tokens;" in text
    assert "reproduces 96.2 % of the row-centred bias" in text
    assert "79.5 % with no query elevation at all" in text and "3.8 % (the relu's kink)" in text
    tie = "14.8 % of the tokens are tied at the lowest height (0 m; on a coast, the sea)"
    assert tie in text and "each of them is penalised for attending every token above it" in text
    reversed_text = bias_share_text({**share, "direction": "downhill"})
    assert tie in reversed_text
    assert "every token above them is penalised for attending them" in reversed_text
    # an inland floor is named by its height, not as the sea
    inland = bias_share_text({**share, "lowest_m": 612.0})
    assert "14.8 % of the tokens are tied at the lowest height (612 m):" in inland
    # a tie of a few tokens (an inland terrain's single lowest valley) is not worth a sentence
    assert "lowest height" not in bias_share_text({**share, "lowest_tied": 1 / 128})


def test_the_lowest_tie_counts_the_tokens_at_the_lowest_height():
    sea = np.array([0.0, 0.0, 0.4, 0.0, 1.2, 0.3, 0.0, 0.9, 2.0, 0.0])  # half the tokens at 0
    assert terrain_share(sea)["lowest_tied"] == pytest.approx(0.5)
    assert terrain_share(sea, direction="downhill")["lowest_tied"] == pytest.approx(0.5)
    inland = np.linspace(150.0, 900.0, 8) / 1000.0  # one lowest token, in H_scale units
    assert terrain_share(inland)["lowest_tied"] == pytest.approx(1 / 8)
    # float noise far below the terrain's range still counts as the same height
    noisy = sea + np.where(sea == 0, 1e-13 * np.arange(sea.size), 0.0)
    assert terrain_share(noisy)["lowest_tied"] == pytest.approx(0.5)
    # a tolerance in the units of z: 1 m at H_scale 1000 m joins a coast's 0.5 m token to the sea
    coast = np.where(np.arange(sea.size) == 2, 0.0005, sea)
    assert terrain_share(coast)["lowest_tied"] == pytest.approx(0.5)
    assert terrain_share(coast, tie=0.001)["lowest_tied"] == pytest.approx(0.6)
    # sea depths below 0: the lowest is the deepest token, not the coast
    depths = np.array([-0.2, -0.05, 0.0, 0.3, 0.8])
    assert terrain_share(depths)["lowest_tied"] == pytest.approx(0.2)
    # everything but one token at the lowest height
    assert terrain_share(np.r_[np.zeros(9), 1.0])["lowest_tied"] == pytest.approx(0.9)

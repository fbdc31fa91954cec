"""TopoFlow attention: the bias, its gradients, the implementations, the blocks' state dicts."""

import pytest
import torch

from aqnet.model.attention import Attention
from aqnet.model.blocks import Block, TopoFlowBlock
from aqnet.model.elevation_attention import (
    BIAS_MIN,
    REL_BUCKETS,
    TopoFlowAttention,
    elevation_bias,
    relative_position_buckets,
)

GRID_PATCHES = (4, 8)
N = 32
DIM, HEADS = 32, 4


def _coords(perm: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(8), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)[perm]  # (B, N, 2)


def _inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N, DIM, generator=g, dtype=torch.float64)
    elev = torch.rand(batch, N, generator=g, dtype=torch.float64) * 3000.0  # metres
    perm = torch.stack([torch.randperm(N, generator=g) for _ in range(batch)])
    return x, elev, _coords(perm)


# -- the bias ---------------------------------------------------------------------------------


def test_bias_is_non_positive_zero_downhill_and_more_negative_uphill():
    elev_q = torch.tensor([[500.0]])  # one query at 500 m
    elev_k = torch.tensor([[0.0, 250.0, 500.0, 750.0, 1500.0, 3000.0, 1e6]])
    bias = elevation_bias(elev_q, elev_k, torch.tensor([2.0]), torch.tensor(1000.0))[0, 0]
    assert bias.shape == (7,)
    assert (bias <= 0).all()
    assert bias[:3].tolist() == [0.0, 0.0, 0.0]  # downhill and flat: free
    torch.testing.assert_close(bias[3:5], torch.tensor([-0.5, -2.0]))  # -alpha * dh / H
    assert (bias[3:].diff() <= 0).all() and bias[4] < bias[3]  # more negative uphill
    assert bias[-1] == BIAS_MIN  # clamped at -10


def test_bias_is_zero_at_alpha_zero_and_scales_with_h_scale():
    e = torch.rand(2, 16) * 2000
    zero = elevation_bias(e, e, torch.zeros(1), torch.tensor(1000.0))
    assert zero.shape == (2, 16, 16) and torch.equal(zero, torch.zeros_like(zero))
    b1 = elevation_bias(e, e, torch.tensor([1.0]), torch.tensor(1000.0))
    b2 = elevation_bias(e, e, torch.tensor([1.0]), torch.tensor(500.0))
    torch.testing.assert_close(b2.clamp(min=BIAS_MIN), (2 * b1).clamp(min=BIAS_MIN))


def test_relative_position_buckets():
    b = relative_position_buckets(64)
    assert b.shape == (127,)
    assert b[63] == (REL_BUCKETS - 1) // 2  # offset 0 is the middle bucket
    assert b.min() == 0 and b.max() == REL_BUCKETS - 1
    assert (b.diff() >= 0).all()  # monotone in the offset
    assert b[63 + 3] - b[63] == 3 and b[63 - 4] - b[63] == -4  # exact buckets near 0
    small = relative_position_buckets(4)  # a grid shorter than the exact range
    assert small.tolist() == [5, 6, 7, 8, 9, 10, 11]


# -- the module -------------------------------------------------------------------------------


def test_new_state_dict_keys_and_their_initial_values():
    plain = Block(dim=DIM, num_heads=HEADS, mlp_ratio=4.0, index=0)
    topo = TopoFlowBlock(dim=DIM, num_heads=HEADS, mlp_ratio=4.0, index=0, h_scale_m=750.0)
    sd = topo.state_dict()
    assert set(sd) - set(plain.state_dict()) == {"attn.elevation_alpha", "attn.H_scale"}
    assert sd["attn.elevation_alpha"].shape == (1,) and sd["attn.elevation_alpha"].item() == 0.0
    assert sd["attn.H_scale"].item() == 750.0 and "attn.H_scale" not in dict(
        topo.named_parameters()
    )
    missing, unexpected = topo.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["attn.H_scale", "attn.elevation_alpha"] and unexpected == []
    rel = TopoFlowAttention(
        dim=DIM, num_heads=HEADS, name="a", rel_pos_bias=True, grid_patches=GRID_PATCHES
    )
    assert rel.new_state_keys() == ["elevation_alpha", "H_scale", "rel_pos_bias"]
    assert rel.new_parameter_names() == ["elevation_alpha", "rel_pos_bias"]
    assert rel.rel_pos_bias.shape == (HEADS, REL_BUCKETS, REL_BUCKETS)
    assert set(rel.state_dict()) == {
        "qkv.weight", "qkv.bias", "proj.weight", "proj.bias",
        "elevation_alpha", "H_scale", "rel_pos_bias",
    }  # fmt: skip


@pytest.mark.parametrize("impl", ["chunked", "sdpa", "reference"])
def test_alpha_zero_block_equals_plain_block(impl):
    torch.manual_seed(0)
    plain = Block(dim=DIM, num_heads=HEADS, mlp_ratio=4.0, index=0).double()
    topo = TopoFlowBlock(
        dim=DIM, num_heads=HEADS, mlp_ratio=4.0, index=0, attention_impl=impl
    ).double()
    topo.load_state_dict(plain.state_dict(), strict=False)
    x, elev, _ = _inputs()
    torch.testing.assert_close(topo(x, elevation_m=elev), plain(x), rtol=0, atol=1e-12)
    with torch.no_grad():
        topo.attn.elevation_alpha.fill_(1.0)
    assert (topo(x, elevation_m=elev) - plain(x)).abs().max() > 1e-3  # the bias does act


def test_elevation_bias_switch_keeps_the_block_plain():
    torch.manual_seed(0)
    plain = Attention(dim=DIM, num_heads=HEADS, name="p").double()
    off = TopoFlowAttention(dim=DIM, num_heads=HEADS, name="t", elevation_bias=False).double()
    off.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        off.elevation_alpha.fill_(3.0)
    x, elev, _ = _inputs()
    torch.testing.assert_close(off(x, elevation_m=elev), plain(x), rtol=0, atol=1e-12)


def _run(attn: TopoFlowAttention, impl: str, x, elev, coords):
    attn.impl = impl
    attn.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    out = attn(xx, elevation_m=elev, coords=coords)
    weights = torch.linspace(-1.0, 1.0, DIM, dtype=out.dtype)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
    return out.detach(), xx.grad, grads


@pytest.mark.parametrize("rel_pos", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_fast_paths_agree_with_reference_values_and_grads(rel_pos, alpha):
    torch.manual_seed(1)
    attn = TopoFlowAttention(
        dim=DIM, num_heads=HEADS, name="t", rel_pos_bias=rel_pos, grid_patches=GRID_PATCHES
    ).double()
    attn.chunk_size = 5  # uneven chunks: 5 + 5 + ... + 2
    with torch.no_grad():
        attn.elevation_alpha.fill_(alpha)
        if rel_pos:
            attn.rel_pos_bias.normal_()
    x, elev, coords = _inputs()
    ref_out, ref_dx, ref_grads = _run(attn, "reference", x, elev, coords)
    assert ref_grads["elevation_alpha"].abs().item() > 1e-6  # grads reach alpha, even at 0
    if rel_pos:
        assert ref_grads["rel_pos_bias"].abs().sum() > 0
    for impl in ("chunked", "sdpa"):
        out, dx, grads = _run(attn, impl, x, elev, coords)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12, msg=impl)
        torch.testing.assert_close(dx, ref_dx, rtol=0, atol=1e-12, msg=impl)
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_chunked_path_in_float32_matches_reference():
    torch.manual_seed(2)
    attn = TopoFlowAttention(dim=DIM, num_heads=HEADS, name="t")
    with torch.no_grad():
        attn.elevation_alpha.fill_(0.5)
    x, elev, coords = (t.float() if t.is_floating_point() else t for t in _inputs())
    ref = _run(attn, "reference", x, elev, coords)
    fast = _run(attn, "chunked", x, elev, coords)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        fast[2]["elevation_alpha"], ref[2]["elevation_alpha"], rtol=1e-4, atol=1e-6
    )


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("rel_pos", [False, True])
def test_flex_score_mod_matches_reference_forward(rel_pos):
    """The FlexAttention score_mod (run eagerly, forward only, on CPU) is the same bias."""
    torch.manual_seed(3)
    attn = TopoFlowAttention(
        dim=DIM, num_heads=HEADS, name="t", rel_pos_bias=rel_pos, grid_patches=GRID_PATCHES
    ).double()
    with torch.no_grad():
        attn.elevation_alpha.fill_(0.9)
        if rel_pos:
            attn.rel_pos_bias.normal_()
    x, elev, coords = _inputs()
    with torch.no_grad():
        attn.impl = "reference"
        ref = attn(x, elevation_m=elev, coords=coords)
        attn.impl = "flex"
        flex = attn(x, elevation_m=elev, coords=coords)
    torch.testing.assert_close(flex, ref, rtol=0, atol=1e-12)


def test_flex_training_on_cpu_is_refused_with_a_clear_message():
    attn = TopoFlowAttention(dim=DIM, num_heads=HEADS, name="block 0 attention", impl="flex")
    x, elev, _ = _inputs()
    with pytest.raises(
        ValueError, match=r"block 0 attention: attention_impl='flex' has no backward"
    ):
        attn(x.float(), elevation_m=elev.float())


def test_auto_selects_flex_on_cuda_and_chunked_on_cpu():
    attn = TopoFlowAttention(dim=DIM, num_heads=HEADS, name="t")
    assert attn.resolve_impl(torch.device("cuda")) == "flex"
    assert attn.resolve_impl(torch.device("cpu")) == "chunked"
    attn.impl = "sdpa"
    assert attn.resolve_impl(torch.device("cuda")) == "sdpa"


def test_four_d_input_names_the_stage_and_both_shapes():
    attn = TopoFlowAttention(dim=64, num_heads=4, name="block 0 attention")
    with pytest.raises(ValueError) as err:
        attn(torch.randn(2, 4, 32, 64), elevation_m=torch.zeros(2, 128))
    assert str(err.value) == (
        "block 0 attention expects (B, N, C=64), got a 4-D tensor of shape (2, 4, 32, 64)"
    )
    with pytest.raises(ValueError, match=r"block 0 attention elevation_m expects \(B=2, N=128\)"):
        attn(torch.randn(2, 128, 64), elevation_m=torch.zeros(2, 8, 16))
    plain = Attention(dim=64, num_heads=4, name="block 1 attention")
    with pytest.raises(ValueError, match=r"block 1 attention expects \(B, N, C=64\), got a 3-D"):
        plain(torch.randn(2, 128, 32))


def test_rel_pos_bias_needs_coords():
    attn = TopoFlowAttention(
        dim=DIM, num_heads=HEADS, name="block 0 attention", rel_pos_bias=True,
        grid_patches=GRID_PATCHES,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"rel_pos_bias is on but no token coords"):
        attn(torch.randn(1, N, DIM), elevation_m=torch.zeros(1, N))

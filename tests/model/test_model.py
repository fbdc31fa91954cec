"""The forecaster end to end: shapes, baseline equivalence, wind-scan semantics, contracts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aqnet import orders
from aqnet.config import POLLUTANTS
from aqnet.model import Forecaster, baseline_of, tiny
from aqnet.model.head import Head
from aqnet.model.patch_embed import PatchEmbed

H, W = 16, 32


@pytest.fixture(scope="module")
def terrain_m() -> torch.Tensor:
    """Real terrain (matplotlib's sample DEM, ~240-1080 m) block-averaged to (H, W), float64."""
    from matplotlib import cbook

    with cbook.get_sample_data("jacksboro_fault_dem.npz") as dem:
        elev = torch.from_numpy(np.asarray(dem["elevation"], dtype=np.float64))  # (344, 403)
    return F.adaptive_avg_pool2d(elev[None, None], (H, W))[0, 0]


def make_model(seed: int = 0, **overrides) -> Forecaster:
    torch.manual_seed(seed)
    return Forecaster(tiny(img_size=(H, W), **overrides)).double().eval()


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 15, H, W, generator=g, dtype=torch.float64)
    # a different, non-trivial mean wind per sample so the scan orders differ
    x[:, 0] += torch.tensor([1.5, -0.7])[:batch, None, None]
    x[:, 1] += torch.tensor([0.4, 1.2])[:batch, None, None]
    lead = torch.tensor([12.0, 48.0], dtype=torch.float64)[:batch]
    return x, lead


def set_alpha(model: Forecaster, value: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("elevation_alpha"):
                p.fill_(value)


def test_output_shape_and_stage_shapes(terrain_m):
    model = make_model()
    x, lead = inputs()
    shapes: dict[str, tuple[int, ...]] = {}
    out = model(x, lead, terrain_m, shapes=shapes)
    assert out.shape == (2, len(POLLUTANTS), H, W)
    assert shapes == {
        "patch_embed": (2, 15, 128, 64),
        "aggregate": (2, 128, 64),
        "elevation_tokens": (2, 128),
        "wind_scan": (2, 128, 64),
        "embed": (2, 128, 64),
        "blocks.0": (2, 128, 64),
        "blocks.1": (2, 128, 64),
        "norm": (2, 128, 64),
        "head": (2, 128, 15 * 2 * 2),
        "unscan": (2, 128, 60),
        "unpatchify": (2, 15, H, W),
        "output": (2, 6, H, W),
    }
    # (H, W) elevation is the same as the (B, H, W) one
    batched = model(x, lead, terrain_m.expand(2, H, W))
    torch.testing.assert_close(out, batched, rtol=0, atol=0)
    # lead time reaches the output
    assert not torch.allclose(out, model(x, lead + 24.0, terrain_m))


@pytest.mark.parametrize("wind_scan", ["off", "global", "regional", "reference"])
def test_alpha_zero_topoflow_equals_baseline(terrain_m, wind_scan):
    base = make_model(seed=0, wind_scan=wind_scan, topoflow_blocks=())
    topo = make_model(seed=1, wind_scan=wind_scan, topoflow_blocks=(0,))
    missing, unexpected = topo.load_state_dict(base.state_dict(), strict=False)
    assert sorted(missing) == sorted(topo.topoflow_keys()) and unexpected == []
    x, lead = inputs()
    torch.testing.assert_close(
        topo(x, lead, terrain_m), base(x, lead, terrain_m), rtol=0, atol=1e-12
    )
    set_alpha(topo, 2.0)
    assert (topo(x, lead, terrain_m) - base(x, lead, terrain_m)).abs().max() > 1e-8  # acts


@pytest.mark.parametrize("mode", ["global", "regional"])
@pytest.mark.parametrize("rel_pos_bias", [False, True])
def test_scan_matters_only_through_the_slot_position_embedding(terrain_m, mode, rel_pos_bias):
    """Scanning changes the output; with the position embedding zeroed it cannot, because every
    token's elevation and coordinates travel with it and the inverse permutation restores the
    pixels - a consistent permutation leaves a bidirectional transformer equivariant."""
    off = make_model(wind_scan="off", rel_pos_bias=rel_pos_bias, topoflow_blocks=(0, 1))
    on = make_model(wind_scan=mode, rel_pos_bias=rel_pos_bias, topoflow_blocks=(0, 1))
    on.load_state_dict(off.state_dict())
    for model in (off, on):
        set_alpha(model, 1.5)  # the elevation bias acts, so misplaced elevations would show
        if rel_pos_bias:
            with torch.no_grad():
                torch.manual_seed(5)
                model.blocks[0].attn.rel_pos_bias.normal_()
                model.blocks[1].attn.rel_pos_bias.copy_(model.blocks[0].attn.rel_pos_bias)
    x, lead = inputs()
    assert not torch.equal(on.wind_scan.permutation(x)[0], torch.arange(128))
    assert (on(x, lead, terrain_m) - off(x, lead, terrain_m)).abs().max() > 1e-4
    for model in (off, on):
        model.pos_embed.zero_()
    torch.testing.assert_close(on(x, lead, terrain_m), off(x, lead, terrain_m), rtol=0, atol=1e-12)


def test_identity_scan_order_equals_no_scan(terrain_m):
    off = make_model(wind_scan="off")
    ident = make_model(wind_scan="global")
    ident.load_state_dict(off.state_dict())
    ident.wind_scan.global_orders.copy_(torch.arange(128).expand(16, 128))
    set_alpha(off, 1.0)
    set_alpha(ident, 1.0)
    x, lead = inputs()
    torch.testing.assert_close(ident(x, lead, terrain_m), off(x, lead, terrain_m), rtol=0, atol=0)


def test_patch_embedding_equals_a_per_variable_loop():
    torch.manual_seed(0)
    emb = PatchEmbed(img_size=(H, W), patch_size=2, num_variables=15, embed_dim=8)
    x = torch.randn(3, 15, H, W)
    out = emb(x)  # (B, V, L, D)
    d = 8
    for v in range(15):
        w = emb.proj.weight[v * d : (v + 1) * d]  # (D, 1, p, p)
        b = emb.proj.bias[v * d : (v + 1) * d]
        ref = F.conv2d(x[:, v : v + 1], w, b, stride=2).flatten(2).transpose(1, 2)  # (B, L, D)
        torch.testing.assert_close(out[:, v], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("layers", "keys"), [(3, ["0", "2", "4"]), (1, ["0"])])
def test_head_layers(layers, keys):
    head = Head(embed_dim=8, out_dim=12, num_layers=layers)
    assert sorted({k.split(".")[0] for k in head.state_dict()}) == keys
    kinds = [type(m).__name__ for m in head]
    assert kinds == (["Linear", "GELU", "Linear", "GELU", "Linear"] if layers == 3 else ["Linear"])
    assert head(torch.randn(2, 5, 8)).shape == (2, 5, 12)


def test_topoflow_keys_and_new_parameter_names():
    model = Forecaster(tiny(img_size=(H, W), topoflow_blocks=(0, 1)))
    assert model.topoflow_keys() == [
        "blocks.0.attn.elevation_alpha",
        "blocks.0.attn.H_scale",
        "blocks.1.attn.elevation_alpha",
        "blocks.1.attn.H_scale",
    ]
    assert model.new_parameter_names() == [
        "blocks.0.attn.elevation_alpha",
        "blocks.1.attn.elevation_alpha",
    ]
    base = Forecaster(baseline_of(model.config))
    assert set(model.state_dict()) - set(base.state_dict()) == set(model.topoflow_keys())
    rel = Forecaster(tiny(img_size=(H, W), rel_pos_bias=True))
    assert rel.topoflow_keys()[-1] == "blocks.0.attn.rel_pos_bias"
    assert rel.new_parameter_names() == [
        "blocks.0.attn.elevation_alpha",
        "blocks.0.attn.rel_pos_bias",
    ]
    # derived buffers are not saved
    assert not {"pos_embed", "patch_coords", "out_index"} & set(model.state_dict())
    assert not any("orders" in k for k in model.state_dict())


def test_grads_reach_alpha_through_the_model(terrain_m):
    model = make_model().train()
    x, lead = inputs()
    model(x, lead, terrain_m).square().mean().backward()
    grad = model.blocks[0].attn.elevation_alpha.grad
    assert grad is not None and grad.abs().item() > 0


def test_wind_orders_and_params_match_the_shared_definition():
    model = Forecaster(tiny(img_size=(H, W)))
    ref = orders.build_orders((8, 16), region_patches=(2, 4))
    got = model.wind_orders()
    assert got.keys() == ref.keys()
    for mode in ref:
        np.testing.assert_array_equal(got[mode], ref[mode])
    params = orders.grid_params(img_size=(H, W), patch_size=2, region_patches=(2, 4))
    assert model.orders_params() == params
    assert orders.orders_digest(got, model.orders_params()) == orders.orders_digest(ref, params)


def test_model_orders_digest_equals_the_caches(tiny_config, tiny_cache):
    from aqnet.data import load_stats
    from aqnet.model.presets import from_pipeline_config

    model = Forecaster(from_pipeline_config(tiny_config, stats=load_stats(tiny_cache)))
    _, _, stored = orders.load_orders(tiny_cache / "wind_orders.npz")
    assert orders.orders_digest(model.wind_orders(), model.orders_params()) == stored


def test_a_real_cache_batch_runs(tiny_config, tiny_cache):
    from aqnet.data import CacheDataset, load_stats
    from aqnet.model.presets import from_pipeline_config

    ds = CacheDataset(tiny_cache, "val", lead_times_h=tiny_config["lead_times_h"])
    model = Forecaster(from_pipeline_config(tiny_config, stats=load_stats(tiny_cache)))
    x, y, lead, elev, _ = (torch.stack(t) for t in zip(*(ds[i] for i in range(2)), strict=True))
    with torch.no_grad():
        out = model(x, lead, elev)
    assert out.shape == y.shape and torch.isfinite(out).all()


def test_wrong_input_shapes_are_named(terrain_m):
    model = make_model()
    x, lead = inputs()
    with pytest.raises(
        ValueError,
        match=r"forecaster input x expects \(B, V=15, H=16, W=32\), "
        r"got a 4-D tensor of shape \(2, 14, 16, 32\)",
    ):
        model(x[:, :14], lead, terrain_m)
    with pytest.raises(ValueError, match=r"forecaster input elevation_m expects \(H=16, W=32\)"):
        model(x, lead, terrain_m[:8])
    with pytest.raises(
        ValueError, match=r"forecaster input elevation_m expects \(B=2, H=16, W=32\)"
    ):
        model(x, lead, terrain_m.expand(3, H, W))
    with pytest.raises(ValueError, match=r"forecaster input lead_time_h expects \(B=2,\)"):
        model(x, lead[:1], terrain_m)
    with pytest.raises(ValueError, match=r"block 1 attention expects \(B, N, C=64\), got a 4-D"):
        model.blocks[1](torch.randn(2, 4, 32, 64, dtype=torch.float64))

"""Key adapters: the researchers' checkpoint layouts load into aqnet's model, by variable name.

Checkpoints come from ``checkpoint_fixtures`` (random weights, Lightning's top-level entries,
every key and shape of the layout). Tiny sizes run forward passes; the paper key set is checked
on the ``meta`` device (shapes and counts only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import checkpoint_fixtures as fx
from aqnet.checkpoint import (
    CheckpointContents,
    CheckpointError,
    adapt,
    compare_state_dicts,
    detect_adapter,
    load_weights,
)
from aqnet.config import MODEL_VARIABLES
from aqnet.model import Forecaster, baseline_of, paper, tiny

H, W = fx.TINY["img_size"]


def reference_config(*, release: bool = False, order=fx.AQNET_REFERENCE_ORDER, **overrides):
    """aqnet's model of the researchers' baseline at the fixtures' tiny size."""
    settings = {
        **fx.TINY,
        "in_variables": order,
        "pos_embed": "learned",
        "lead_time_scale_h": 1.0,
        "wind_scan": "off",
        "patch_embed_norm": release,
    }
    return tiny(**{**settings, **overrides})


def training_checkpoint(tmp_path: Path, *, seed: int = 0, **kwargs) -> Path:
    sd = fx.tensors(fx.training_code_shapes(), seed=seed)
    return fx.write(tmp_path / "train.ckpt", fx.lightning_checkpoint(sd, **kwargs))


def release_checkpoint(tmp_path: Path, *, topoflow: bool = True, alpha: float = 0.75) -> Path:
    sd = fx.tensors(fx.release_shapes(topoflow=topoflow), seed=1)
    if topoflow:
        sd["model.blocks.0.attn.alpha"] = torch.tensor(alpha)  # 0-d, as their checkpoints store it
    return fx.write(tmp_path / "release.ckpt", fx.lightning_checkpoint(sd))


def model_of(cfg) -> Forecaster:
    torch.manual_seed(123)
    return Forecaster(cfg).double().eval()


def inputs(order, seed: int = 0):
    """(x in ``order``, lead_time_h, elevation_m); x built per variable name so any order of
    the same names holds the same fields."""
    g = torch.Generator().manual_seed(seed)
    fields = {
        name: torch.randn(2, H, W, generator=g, dtype=torch.float64) for name in sorted(order)
    }
    x = torch.stack([fields[name] for name in order], dim=1)
    elevation_m = torch.rand(H, W, generator=g, dtype=torch.float64) * 3000.0
    return x, torch.tensor([12.0, 96.0], dtype=torch.float64), elevation_m


@pytest.mark.parametrize(
    ("layout", "adapter"), [("training", "training-code"), ("release", "release")]
)
def test_each_layout_is_recognised_and_audits_clean(tmp_path, layout, adapter):
    if layout == "training":
        path, cfg = training_checkpoint(tmp_path), reference_config()
    else:
        path, cfg = release_checkpoint(tmp_path, topoflow=False), reference_config(release=True)
    model = model_of(cfg)
    report = load_weights(model, path)
    assert report.adapter == adapter
    assert sorted(report.missing) == sorted(model.topoflow_keys())  # only the TopoFlow keys
    assert report.unexpected == [] and report.shape_mismatched == []
    assert report.val_loss == pytest.approx(0.3557)
    assert report.to_dict()["adaptation"]["adapter"] == adapter
    if layout == "training":
        buffers = report.adaptation["buffers"]
        assert buffers["china_mask"]["shape"] == [H, W]
        assert buffers["model.target_indices"]["shape"] == [6]
        assert report.adaptation["target_variables"] == list(fx.REFERENCE_TARGETS)
        assert report.adaptation["variables_source"] == "hyper_parameters config.data.variables"


def test_the_release_topoflow_keys_load_into_aqnets(tmp_path):
    model = model_of(reference_config(release=True))
    report = load_weights(model, release_checkpoint(tmp_path, alpha=0.75))
    assert report.adapter == "release"
    alpha = model.blocks[0].attn.elevation_alpha
    assert alpha.shape == (1,) and alpha.item() == pytest.approx(0.75)  # 0-d -> [1]
    assert report.topoflow_loaded == ["blocks.0.attn.elevation_alpha"]
    assert report.missing == ["blocks.0.attn.H_scale"]  # a TopoFlow key: the only one missing
    dropped = report.adaptation["dropped"]
    assert list(dropped) == ["blocks.0.attn.rel_pos_bias.bias_table"]
    assert "no counterpart" in dropped["blocks.0.attn.rel_pos_bias.bias_table"]


def test_paper_key_set_counts_and_audits_on_the_meta_device():
    shapes = fx.training_code_shapes(fx.PAPER)
    assert fx.parameter_count(shapes) == 52_481_340
    assert len(shapes) == 93
    sd = fx.tensors(shapes, device="meta")
    contents = CheckpointContents(
        state_dict=sd,
        hyper_parameters=fx.lightning_checkpoint({})["hyper_parameters"],
        val_loss=0.3557,
        layout="lightning",
    )
    cfg = paper(in_variables=fx.AQNET_REFERENCE_ORDER, pos_embed="learned", wind_scan="off")
    with torch.device("meta"):
        model = Forecaster(cfg)
    report = compare_state_dicts(model, contents)
    assert report.ok, report.problems
    assert report.adapter == "training-code"
    assert sorted(report.missing) == sorted(model.topoflow_keys())
    assert report.loaded_parameters == 52_481_340
    for layout_shapes in (fx.release_shapes(fx.PAPER, topoflow=False),):
        assert detect_adapter(list(layout_shapes)).name == "release"


def by_hand(sd: dict[str, torch.Tensor], order) -> dict[str, torch.Tensor]:
    """The training code's tensors placed into aqnet's keys one variable at a time."""
    ref = list(fx.AQNET_REFERENCE_ORDER)
    src = {k.removeprefix("model.climax."): v for k, v in sd.items() if "climax." in k}
    out: dict[str, torch.Tensor] = {}
    w = torch.cat([src["token_embeds.proj_weights"][ref.index(n)] for n in order])
    out["patch_embed.proj.weight"] = w  # (V * D, 1, p, p)
    out["patch_embed.proj.bias"] = torch.cat(
        [src["token_embeds.proj_biases"][ref.index(n)] for n in order]
    )
    out["aggregate.var_embed"] = torch.stack([src["var_embed"][0, ref.index(n)] for n in order])[
        None
    ]
    out["aggregate.var_query"] = src["var_query"]
    for part in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
        out[f"aggregate.var_agg.{part}"] = src[f"var_agg.{part}"]
    out["pos_embed"] = src["pos_embed"]
    out["lead_time_embed.proj.weight"] = src["lead_time_embed.weight"]
    out["lead_time_embed.proj.bias"] = src["lead_time_embed.bias"]
    for key, value in src.items():
        if key.startswith(("blocks.", "norm.", "head.0.", "head.2.")):
            out[key] = value
    v = len(order)
    for part in ("weight", "bias"):
        rows = src[f"head.4.{part}"]
        by_slot = [rows[k * v + ref.index(n)] for k in range(rows.shape[0] // v) for n in order]
        out[f"head.4.{part}"] = torch.stack(by_slot)
    return out


def test_adapter_equals_placing_the_tensors_by_hand(tmp_path):
    path = training_checkpoint(tmp_path)
    raw = torch.load(path, weights_only=True)["state_dict"]
    model = model_of(reference_config(order=MODEL_VARIABLES))  # aqnet's order: a real permutation
    load_weights(model, path)
    expected = by_hand(raw, MODEL_VARIABLES)
    got = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value.double(), rtol=0, atol=0, msg=key)
    assert set(expected) == set(got) - set(model.topoflow_keys())


def test_forward_in_reference_order_equals_aqnet_order_after_the_permutation(tmp_path):
    path = training_checkpoint(tmp_path)
    ref_model = model_of(reference_config())
    aq_model = model_of(reference_config(order=MODEL_VARIABLES))
    ref_report = load_weights(ref_model, path)
    aq_report = load_weights(aq_model, path)
    assert not any("permuted the 15" in r for r in ref_report.prefix_rules)
    assert any("permuted the 15 variables" in r for r in aq_report.prefix_rules)
    x_ref, lead, elev = inputs(fx.AQNET_REFERENCE_ORDER)
    x_aq, _, _ = inputs(MODEL_VARIABLES)
    out_ref = ref_model(x_ref, lead, elev)
    out_aq = aq_model(x_aq, lead, elev)
    assert out_ref.shape == (2, 6, H, W)
    torch.testing.assert_close(out_aq, out_ref, rtol=1e-10, atol=1e-10)
    # the permutation matters: the reference-order input into aqnet's order differs
    assert (aq_model(x_ref, lead, elev) - out_ref).abs().max() > 1e-6


def test_learned_position_embedding_alpha_zero_equals_the_baseline(tmp_path):
    path = training_checkpoint(tmp_path)
    cfg = reference_config(topoflow_blocks=(0,))
    topo, base = model_of(cfg), model_of(baseline_of(cfg))
    load_weights(topo, path)
    load_weights(base, path)
    assert "pos_embed" in dict(topo.named_parameters())  # a weight, loaded from the checkpoint
    x, lead, elev = inputs(fx.AQNET_REFERENCE_ORDER)
    torch.testing.assert_close(topo(x, lead, elev), base(x, lead, elev), rtol=0, atol=1e-12)
    with torch.no_grad():
        topo.blocks[0].attn.elevation_alpha.fill_(2.0)
    assert (topo(x, lead, elev) - base(x, lead, elev)).abs().max() > 1e-8


def test_variable_order_from_the_config_when_the_checkpoint_has_none(tmp_path):
    with_hp = model_of(reference_config(order=MODEL_VARIABLES))
    load_weights(with_hp, training_checkpoint(tmp_path))
    (tmp_path / "bare").mkdir()
    bare = training_checkpoint(tmp_path / "bare", variables=None)
    from_cfg = model_of(reference_config(order=MODEL_VARIABLES))
    report = load_weights(from_cfg, bare, checkpoint_variables=fx.REFERENCE_VARIABLES)
    assert report.adaptation["variables_source"] == "the config's baseline.variables"
    for key, value in with_hp.state_dict().items():
        torch.testing.assert_close(from_cfg.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(
        CheckpointError,
        match=r"only in the checkpoint \['x1', 'x2'\], only in the model \['lat', 'lon'\]",
    ):
        load_weights(
            model_of(reference_config()),
            bare,
            checkpoint_variables=[v for v in MODEL_VARIABLES if v not in ("lat", "lon")]
            + ["x1", "x2"],
        )


# -- failure modes, in every layout -----------------------------------------------------------


def _layout(tmp_path: Path, layout: str, mutate=None, **cfg_overrides):
    if layout == "training":
        sd = fx.tensors(fx.training_code_shapes())
        root, cfg = "model.climax.", reference_config(**cfg_overrides)
    elif layout == "release":
        sd = fx.tensors(fx.release_shapes(topoflow=False))
        root, cfg = "model.", reference_config(release=True, **cfg_overrides)
    else:
        src = model_of(reference_config(**cfg_overrides, topoflow_blocks=()))
        sd = {f"model.{k}": v for k, v in src.state_dict().items()}
        root, cfg = "model.", reference_config(**cfg_overrides)
    if mutate is not None:
        mutate(sd, root)
    path = fx.write(tmp_path / f"{layout}.ckpt", fx.lightning_checkpoint(sd))
    return path, model_of(cfg)


LAYOUTS = ["training", "release", "aqnet"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_key_without_the_prefix_is_named(tmp_path, layout):
    def drop_prefix(sd, root):
        sd["blocks.1.norm1.weight"] = sd.pop(f"{root}blocks.1.norm1.weight")

    path, model = _layout(tmp_path, layout, drop_prefix)
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert "'blocks.1.norm1.weight' does not" in msg  # the key that lacks the prefix, named
    assert "prefix was not removed" in msg or "not part of the" in msg  # and why
    if layout != "aqnet":  # outside the layout: never loaded, though its name is the model's
        assert "blocks.1.norm1.weight" in err.value.report.missing


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_one_layer_head_is_caught(tmp_path, layout):
    path, model = _layout(tmp_path, layout)
    model = model_of(model.config.replace(head_layers=1))
    with pytest.raises(
        CheckpointError, match="head has 3 linear layer\\(s\\) but the model's has 1"
    ):
        load_weights(model, path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_shape_mismatch_is_caught(tmp_path, layout):
    def bigger_mlp(sd, root):
        sd[f"{root}blocks.1.mlp.fc1.weight"] = torch.zeros(256, fx.TINY["embed_dim"])

    path, model = _layout(tmp_path, layout, bigger_mlp)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight \(256, 32\) in the ch"):
        load_weights(model, path)


@pytest.mark.parametrize("layout", ["training", "release"])
def test_wrong_number_of_variables_is_named(tmp_path, layout):
    def fourteen(sd, root):
        patch = "token_embeds" if layout == "training" else "patch_embed"
        sd[f"{root}{patch}.proj_weights"] = sd[f"{root}{patch}.proj_weights"][:14]

    path, model = _layout(tmp_path, layout, fourteen)
    with pytest.raises(CheckpointError, match=r"proj_weights has shape \(14, 32, 1, 2, 2\)"):
        load_weights(model, path)


def test_other_targets_are_caught(tmp_path):
    sd = fx.tensors(fx.training_code_shapes(), targets=("pm10", "pm25", "so2", "no2", "co", "o3"))
    path = fx.write(tmp_path / "t.ckpt", fx.lightning_checkpoint(sd))
    with pytest.raises(CheckpointError, match=r"the checkpoint predicts \['pm10', 'pm25'"):
        load_weights(model_of(reference_config()), path)


def test_a_learned_position_embedding_needs_the_model_option(tmp_path):
    path = training_checkpoint(tmp_path)
    model = model_of(reference_config(pos_embed="sincos"))
    with pytest.raises(CheckpointError, match="set model.pos_embed: learned"):
        load_weights(model, path)


def test_adapt_reports_the_rules(tmp_path):
    from aqnet.checkpoint import read_checkpoint

    contents = read_checkpoint(training_checkpoint(tmp_path))
    adapted = adapt(model_of(reference_config()), contents)
    assert adapted.adapter == "training-code"
    assert any("took china_mask, model.target_indices as data" in r for r in adapted.rules)
    assert "china_mask" in adapted.buffers

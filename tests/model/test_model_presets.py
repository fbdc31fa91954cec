"""Model presets and ModelConfig: the pipeline mapping, round trips, validation, parameter count."""

import copy
import json

import pytest
import yaml

from aqnet.config import MODEL_VARIABLES, POLLUTANTS
from aqnet.model import Forecaster, ModelConfig, baseline_of, count_parameters, paper, tiny
from aqnet.model.presets import from_pipeline_config


def test_tiny_preset_fits_demo_and_test_grids():
    demo = tiny()
    assert demo.img_size == (32, 64) and demo.grid_patches == (16, 32)
    test = tiny(img_size=(16, 32))
    assert test.grid_patches == (8, 16) and test.num_patches == 128
    for mcfg in (demo, test):
        assert (mcfg.patch_size, mcfg.embed_dim, mcfg.depth, mcfg.num_heads) == (2, 64, 2, 4)
        assert mcfg.head_layers == 3 and mcfg.topoflow_blocks == (0,)
        assert mcfg.in_variables == MODEL_VARIABLES and mcfg.out_variables == POLLUTANTS


def test_paper_preset_is_the_published_architecture():
    mcfg = paper()
    assert mcfg.img_size == (128, 256) and mcfg.patch_size == 2
    assert len(mcfg.in_variables) == 15 and len(mcfg.out_variables) == 6
    assert (mcfg.embed_dim, mcfg.depth, mcfg.num_heads, mcfg.head_layers) == (768, 6, 8, 3)
    assert mcfg.grid_patches == (64, 128)  # 32 x 32 regions of 2 x 4 patches
    assert (64 // mcfg.region_patches[0]) * (128 // mcfg.region_patches[1]) == 32 * 32


def test_paper_parameter_count_matches_the_architecture():
    """A golden count derived layer by layer (printed for the README)."""
    v, d, p, depth, hidden = 15, 768, 2, 6, 4 * 768
    patch_embed = v * d * p * p + v * d
    aggregate = v * d + d + (3 * d * d + 3 * d) + (d * d + d)  # var_embed, query, in/out proj
    lead_time = d + d
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    head = 2 * (d * d + d) + d * v * p * p + v * p * p
    baseline = patch_embed + aggregate + lead_time + depth * block + 2 * d + head
    counts = count_parameters(paper())
    print(f"paper() parameters: {counts['total']:,} (TopoFlow adds {counts['topoflow']})")
    assert counts == {"total": baseline + 1, "trainable": baseline + 1, "topoflow": 1}
    assert count_parameters(baseline_of(paper()))["total"] == baseline == 46_189_884


def test_from_pipeline_config_maps_model_section_grid_and_stats(tiny_config):
    stats = {"u": {"mean": 1.5, "std": 2.0}, "v": {"mean": -0.5, "std": 3.0}}
    mcfg = from_pipeline_config(tiny_config, stats=stats)
    assert mcfg.img_size == (16, 32) and mcfg.grid_patches == (8, 16)
    assert mcfg.wind_norm == (1.5, 2.0, -0.5, 3.0)
    assert mcfg.topoflow_blocks == (0,) and mcfg.h_scale_m == 1000.0
    assert mcfg.wind_scan == "regional" and mcfg.region_patches == (2, 4)
    assert mcfg.in_variables == MODEL_VARIABLES and mcfg.out_variables == POLLUTANTS
    assert from_pipeline_config(tiny_config).wind_norm == (0.0, 1.0, 0.0, 1.0)

    cfg = copy.deepcopy(tiny_config)
    cfg["model"].update(
        {
            "embed_dim": 32,
            "topoflow_blocks": [0, 1],
            "h_scale_m": 500.0,
            "elevation_bias": False,
            "wind_scan": "global",
            "rel_pos_bias": True,
            "attention_impl": "reference",
        }
    )
    mcfg = from_pipeline_config(cfg)
    assert (mcfg.embed_dim, mcfg.topoflow_blocks, mcfg.h_scale_m) == (32, (0, 1), 500.0)
    assert (mcfg.elevation_bias, mcfg.wind_scan, mcfg.rel_pos_bias) == (False, "global", True)
    assert mcfg.attention_impl == "reference"


def test_from_pipeline_config_names_missing_wind_statistics(tiny_config):
    with pytest.raises(ValueError, match=r"statistics lack 'v'"):
        from_pipeline_config(tiny_config, stats={"u": {"mean": 0.0, "std": 1.0}})


def test_from_pipeline_config_with_the_cache_statistics(tiny_config, tiny_cache):
    from aqnet.data import load_stats

    stats = load_stats(tiny_cache)
    mcfg = from_pipeline_config(tiny_config, stats=stats)
    assert mcfg.wind_norm == pytest.approx(
        (stats["u"]["mean"], stats["u"]["std"], stats["v"]["mean"], stats["v"]["std"])
    )


def test_baseline_of_switches_topoflow_off_only():
    mcfg = tiny(topoflow_blocks=(0, 1), h_scale_m=700.0)
    base = baseline_of(mcfg)
    assert base.topoflow_blocks == ()
    assert base.replace(topoflow_blocks=(0, 1)) == mcfg
    assert Forecaster(base).topoflow_keys() == []


def test_to_dict_round_trips_through_yaml_and_json():
    mcfg = tiny(img_size=(16, 32), rel_pos_bias=True, wind_norm=(1.0, 2.0, 3.0, 4.0))
    d = mcfg.to_dict()
    assert all(not isinstance(v, tuple) for v in d.values())
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == mcfg
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == mcfg
    with pytest.raises(ValueError, match=r"unknown keys \['embed'\]"):
        ModelConfig.from_dict({**d, "embed": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"img_size": (15, 32)}, r"patch_size 2 must divide the grid img_size 15x32"),
        ({"region_patches": (3, 4)}, r"region_patches 3x4 must divide the patch grid 8x16"),
        ({"num_heads": 3}, r"num_heads 3 must divide embed_dim 64"),
        ({"topoflow_blocks": (2,)}, r"topoflow_blocks \[2\] must be distinct block indices"),
        ({"wind_scan": "diagonal"}, r"wind_scan must be one of"),
        ({"attention_impl": "magic"}, r"attention_impl must be one of"),
        ({"out_variables": ("pm25", "nox")}, r"out_variables \['nox'\] are not among"),
        (
            {"in_variables": ("temp", "pm25"), "out_variables": ("pm25",)},
            r"needs the input variables \['u', 'v'\]",
        ),
        ({"wind_norm": (0.0, 0.0, 0.0, 1.0)}, r"wind_norm must be .* stds > 0"),
        ({"h_scale_m": 0.0}, r"h_scale_m must be > 0"),
    ],
)
def test_invalid_configs_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(img_size=overrides.pop("img_size", (16, 32)), **overrides)

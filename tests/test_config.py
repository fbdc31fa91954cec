"""The configuration schema: defaults, unknown keys, variants."""

from pathlib import Path

import pytest
import yaml

from aqnet.config import ConfigError, load_config, validate_config, variant_config, with_control_arm

REPO = Path(__file__).resolve().parents[1]


def test_defaults_filled_from_empty_config():
    cfg = validate_config({})
    assert cfg["model"]["topoflow_blocks"] == [0]
    assert cfg["model"]["h_scale_m"] == 1000.0
    assert cfg["lead_times_h"] == [12, 24, 48, 96]
    assert cfg["baseline"]["train"]["steps"] == 150
    assert cfg["baseline"]["train"]["batch_size"] == 8  # inner default under a partial default
    assert cfg["variants"] == {"default": {}}


def test_misspelt_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'h_scale' in model"):
        validate_config({"model": {"h_scale": 500}})
    with pytest.raises(ConfigError, match=r"unknown key 'modle'"):
        validate_config({"modle": {}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"finetune.steps"):
        validate_config({"finetune": {"steps": "many"}})


def test_variant_overrides_merge_and_validate():
    cfg = validate_config({"variants": {"h500": {"model": {"h_scale_m": 500}}, "default": {}}})
    v = variant_config(cfg, "h500")
    assert v["model"]["h_scale_m"] == 500 and v["variant"] == "h500"
    assert v["model"]["topoflow_blocks"] == [0]
    with pytest.raises(ConfigError, match=r"variants.bad.model.*h_scal"):
        validate_config({"variants": {"bad": {"model": {"h_scal": 1}}}})
    with pytest.raises(ConfigError, match="unknown variant 'nope'"):
        variant_config(cfg, "nope")


def test_a_variant_that_would_train_nothing_is_refused_before_any_stage():
    # param_groups new trains only the TopoFlow parameters; the control arm's bias is off
    cfg = validate_config({"finetune": {"param_groups": "new"}, "report": {"control": "ctl"}})
    with pytest.raises(ConfigError) as err:
        with_control_arm(cfg)
    message = str(err.value)
    assert "variant 'ctl'" in message and "param_groups is 'new'" in message
    assert "model.elevation_bias is false" in message and "new_and_blocks" in message
    # a user's own variant meets the same check when the config is validated
    with pytest.raises(ConfigError, match=r"variant 'flat'.*topoflow_blocks is empty"):
        validate_config(
            {
                "finetune": {"param_groups": "new"},
                "variants": {"flat": {"model": {"topoflow_blocks": []}}},
            }
        )
    # what does train: the bias on, a relative-position bias, or the TopoFlow blocks training too
    assert variant_config(validate_config({"finetune": {"param_groups": "new"}}), "default")
    rel = {"model": {"rel_pos_bias": True}, "finetune": {"param_groups": "new"}}
    assert (
        "ctl"
        in with_control_arm(validate_config({**rel, "report": {"control": "ctl"}}))["variants"]
    )
    blocks = {"finetune": {"param_groups": "new_and_blocks"}, "report": {"control": "ctl"}}
    assert "ctl" in with_control_arm(validate_config(blocks))["variants"]


def test_the_shared_stages_config_is_not_held_to_the_fine_tune_check():
    # blocks set per variant, none at the top level: only the fine-tuned variants are checked
    from aqnet.plan import Plan

    raw = {
        "model": {"topoflow_blocks": []},
        "finetune": {"param_groups": "new"},
        "variants": {"default": {"model": {"topoflow_blocks": [0]}}},
        "report": {"control": "ctl"},
    }
    cfg = validate_config(
        {
            **raw,
            "variants": {
                **raw["variants"],
                "ctl": {
                    "model": {"topoflow_blocks": [0], "rel_pos_bias": True, "elevation_bias": False}
                },
            },
        }
    )
    plan = Plan(with_control_arm(cfg))
    assert plan.shared_config("report")["model"]["topoflow_blocks"] == []
    with pytest.raises(ConfigError, match=r"variant 'ctl'.*topoflow_blocks is empty"):
        with_control_arm(
            validate_config(raw)
        )  # the added control inherits the empty top-level blocks


def test_load_config_file(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"grid": {"ny": 16, "nx": 32}}))
    assert load_config(p)["grid"]["ny"] == 16
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_a_gate_report_survives_changes_its_findings_do_not_depend_on() -> None:
    """gate_digest: the budget, the report's settings, the results folder and the seeds list do
    not make validate_short's measurement stale; the batch size or the model do."""
    import copy

    from aqnet.config import load_config, variant_config, with_seeds
    from aqnet.provenance import gate_digest, report_config_mismatch

    base = variant_config(load_config(REPO / "config.yaml"), "default")
    report = {"config_digest": gate_digest(base)}
    for dotted, value in [
        ("launch.max_gpu_hours", 500.0),
        ("report.split", "val"),
        ("results_dir", "elsewhere"),
        ("finetune.seeds", [0, 1, 2, 3]),
    ]:
        changed = copy.deepcopy(base)
        *parents, key = dotted.split(".")
        section = changed
        for part in parents:
            section = section[part]
        section[key] = value
        assert report_config_mismatch(report, changed, what="r") is None, dotted
    for dotted, value in [("finetune.batch_size", 3), ("model.h_scale_m", 123.0)]:
        changed = copy.deepcopy(base)
        section, key = changed[dotted.split(".")[0]], dotted.split(".")[1]
        section[key] = value
        why = report_config_mismatch(report, changed, what="r")
        assert why is not None and f"was made under config {report['config_digest']}" in why
    # the seed of the run itself counts: another seed's run is another measurement
    seeded = with_seeds(
        {**load_config(REPO / "config.yaml"), "finetune": {**base["finetune"], "seeds": [0, 1]}}
    )
    assert gate_digest(variant_config(seeded, "default")) != gate_digest(
        variant_config(seeded, "default-seed1")
    )

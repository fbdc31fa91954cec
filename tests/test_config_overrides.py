"""``--config`` overrides of every schema type: Snakemake hands nested values over as strings,
:func:`aqnet.config.coerce_overrides` gives them the schema's types before validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aqnet.config import ConfigError, coerce_overrides, validate_config
from workflow_helpers import job_counts, run_snakemake, workflow_config, write_config


def test_numbers_booleans_nulls_lists_and_nested_maps_get_their_types() -> None:
    raw = {  # as Snakemake's parser leaves them (YAML BaseLoader: every scalar a string)
        "finetune": {"steps": "5", "lr": "1e-4", "bf16": "true", "grad_clip": "0.5"},
        "model": {"topoflow_blocks": ["0", "1"], "h_scale_m": "500", "region_patches": ["2", "4"]},
        "baseline": {"val_loss": "null", "checkpoint": "/x/base.ckpt"},
        "lead_times_h": ["12", "24"],
        "data": {"files": {"2013": "/d/2013.zarr"}},
        "variants": {"h500": {"model": {"h_scale_m": "500"}, "finetune": {"steps": "7"}}},
        "results_dir": "123",  # a string key keeps its string, even when it looks like a number
    }
    got = coerce_overrides(raw)
    assert got["finetune"] == {"steps": 5, "lr": 1e-4, "bf16": True, "grad_clip": 0.5}
    assert isinstance(got["finetune"]["steps"], int)
    assert got["model"] == {"topoflow_blocks": [0, 1], "h_scale_m": 500, "region_patches": [2, 4]}
    assert got["baseline"] == {"val_loss": None, "checkpoint": "/x/base.ckpt"}
    assert got["lead_times_h"] == [12, 24]
    assert got["data"]["files"] == {"2013": "/d/2013.zarr"}
    assert got["variants"]["h500"] == {"model": {"h_scale_m": 500}, "finetune": {"steps": 7}}
    assert got["results_dir"] == "123"
    cfg = validate_config(got)
    assert cfg["finetune"]["steps"] == 5 and cfg["model"]["topoflow_blocks"] == [0, 1]
    assert raw["finetune"]["steps"] == "5"  # the input is not modified


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"finetune": {"steps": "five"}}, r"finetune\.steps: 'five' is not of type 'integer'"),
        ({"finetune": {"bf16": "maybe"}}, r"finetune\.bf16: 'maybe' is not of type 'boolean'"),
        ({"finetune": {"steps": "5.5"}}, r"finetune\.steps: '5\.5' is not of type 'integer'"),
        ({"model": {"topoflow_blocks": ["0", "x"]}}, r"model\.topoflow_blocks\.1: 'x'"),
    ],
)
def test_a_wrong_type_still_fails_naming_the_key(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(coerce_overrides(override), source="--config")


@pytest.mark.slow
def test_snakemake_config_override_of_a_number(tmp_path: Path, tiny_config: dict[str, Any]) -> None:
    cfg_path = write_config(tmp_path, workflow_config(tiny_config))
    ok = run_snakemake(
        tmp_path, cfg_path, "-n", "-p", "--config", "finetune={steps: 5, bf16: false}",
        "--until", "resolve_config",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout
    assert job_counts(ok.stdout).get("resolve_config") == 1
    bad = run_snakemake(tmp_path, cfg_path, "-n", "--config", "finetune={steps: five}")
    assert bad.returncode != 0
    assert "invalid configuration" in bad.stdout and "finetune.steps: 'five'" in bad.stdout

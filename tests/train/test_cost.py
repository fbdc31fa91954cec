"""The run's cost in one place (``aqnet.train.cost``): length in epochs, the derived wall time,
every GPU stage's projection against ``launch.max_gpu_hours``, and the workflow's use of them
(the dry run's figures, the budget refusal, the GPU nodes in flight)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aqnet.config import validate_config
from aqnet.provenance import gate_digest
from aqnet.stage import StageFailure
from aqnet.train.budget import BudgetExceeded, budget_gate, check_budget
from aqnet.train.cost import (
    finetune_projection,
    format_projection,
    requested_minutes,
    run_projection,
)
from aqnet.train.length import estimated_start_times, run_length, start_times_in_cache
from aqnet.train.loop import plan_batches
from aqnet.train.measured import ignored_measurement, measured_from_report
from workflow_helpers import run_snakemake, workflow_config, write_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lumi_cfg() -> dict[str, Any]:
    """config/lumi.yaml merged over config.yaml, as Snakemake merges them."""
    with (REPO / "config.yaml").open() as fh:
        cfg = yaml.safe_load(fh)
    with (REPO / "config/lumi.yaml").open() as fh:
        for key, value in yaml.safe_load(fh).items():
            cfg[key] = value
    return validate_config(cfg, source="config/lumi.yaml")


# -- length -----------------------------------------------------------------------------------


def test_lumi_start_times_are_the_four_training_years_less_the_longest_lead(lumi_cfg) -> None:
    # 2013-2015: 8760 h, 2016 (leap): 8784 h; each year loses its last 96 h (the longest lead).
    assert estimated_start_times(lumi_cfg) == 3 * 8760 + 8784 - 4 * 96 == 34_680


def test_one_epoch_is_the_studys_270_steps_at_its_batch_and_44_at_lumis(lumi_cfg) -> None:
    start_times = estimated_start_times(lumi_cfg)
    study = run_length({"steps": 0, "epochs": 1, "batch_size": 128}, start_times=start_times)
    assert study["steps"] == 271  # ceil(34,680 / 128): the study's "1 epoch = 270 steps"
    lumi = run_length(lumi_cfg["finetune"], start_times=start_times)
    assert lumi["derived_from"] == "epochs"
    assert lumi["steps"] == 44 == -(-34_680 // 800)
    assert lumi["samples_seen"] == 44 * 800
    assert lumi["epochs"] == pytest.approx(35_200 / 34_680)
    # What config/lumi.yaml asked before: 270 steps at 800 = 6.2 epochs.
    old = run_length({"steps": 270, "epochs": None, "batch_size": 800}, start_times=start_times)
    assert old["derived_from"] == "steps" and old["epochs"] == pytest.approx(6.228, abs=1e-3)
    with pytest.raises(ValueError, match="0 forecast start times"):
        run_length(lumi_cfg["finetune"], start_times=0)


def test_start_times_counted_in_the_cache_meta() -> None:
    meta = {
        "lead_times_h": [12, 24, 48, 96],
        "time_step_h": 3.0,
        "split": {"train": [2013, 2014], "val": [2015], "test": []},
        "per_year": {"2013": {"n_times": 100}, "2014": {"n_times": 50}, "2015": {"n_times": 70}},
    }
    # 96 h = 32 steps of 3 h
    assert start_times_in_cache(meta) == (100 - 32) + (50 - 32)
    assert start_times_in_cache(meta, split="val") == 70 - 32


def test_training_plan_takes_its_length_from_the_epochs(tiny_config) -> None:
    cfg = copy.deepcopy(tiny_config)
    cfg["finetune"].update(epochs=2.5, steps=7, batch_size=4, grad_accum=1)
    plan = plan_batches(cfg, "finetune", world_size=2, start_times=10)
    assert plan.run_steps == plan.schedule_steps == 7  # ceil(2.5 x 10 / 4)
    cfg["finetune"].update(epochs=1)
    assert plan_batches(cfg, "finetune", world_size=2, start_times=10).run_steps == 3
    # validate_short: its own steps, on the schedule of the full run's derived length
    short = plan_batches(cfg, "validate_short", world_size=1, start_times=10)
    assert short.run_steps == cfg["gates"]["validate_short_steps"] and short.schedule_steps == 3
    cfg["finetune"].update(epochs=None)
    assert plan_batches(cfg, "finetune", world_size=2, start_times=10).run_steps == 7


# -- wall time --------------------------------------------------------------------------------


def test_requested_wall_time_is_projection_times_margin_plus_startup_rounded_up() -> None:
    req = requested_minutes({"wall_time_s": 1000.0}, margin=1.5, startup_min=20, limit_min=2880)
    assert req["minutes"] == 45 and not req["capped"]  # 1500 s = 25 min, + 20
    req = requested_minutes({"wall_time_s": 1001.0}, margin=1.5, startup_min=20, limit_min=2880)
    assert req["minutes"] == 46  # 25.025 min rounds up
    long = requested_minutes({"wall_time_s": 3 * 86400}, margin=1.5, startup_min=20, limit_min=2880)
    assert long["minutes"] == 2880 and long["capped"] and long["uncapped_minutes"] == 6500
    with pytest.raises(ValueError, match="margin"):
        requested_minutes({"wall_time_s": 1.0}, margin=0.5, startup_min=0, limit_min=10)


def test_finetune_projection_from_the_estimate_then_from_the_measurement(lumi_cfg) -> None:
    est = finetune_projection(lumi_cfg, start_times=34_680, measured=None)
    assert est["source"] == "estimate" and est["steps"] == 44
    # 44 steps x 2 s = 88 s on 50 nodes at 4 GPU-h per node-hour
    assert est["gpu_hours"] == pytest.approx(88 / 3600 * 50 * 4)
    assert est["request"]["minutes"] == 23  # ceil(88 x 1.5 / 60 + 20) = ceil(22.2)
    measured = {"step_time_s": 30.0, "val_time_s": 40.0, "world_size": 8}
    got = finetune_projection(lumi_cfg, start_times=34_680, measured=measured)
    # validation over 400 ranks instead of 8: 40 x 8 / 400 = 0.8 s per pass; passes at steps
    # 0, 25 and 44
    wall = 44 * 30.0 + 3 * 0.8
    assert got["source"] == "measured" and got["wall_time_s"] == pytest.approx(wall)
    assert got["request"]["minutes"] == -(-(wall * 1.5 / 60 + 20) // 1)


# -- budget -----------------------------------------------------------------------------------


def _two_variants(lumi_cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"default": lumi_cfg, "no_elevation_bias": lumi_cfg}


def test_projection_lists_every_gpu_stage_and_refuses_over_budget(lumi_cfg) -> None:
    cfg = copy.deepcopy(lumi_cfg)
    cfg["launch"]["max_gpu_hours"] = 5.0
    proj = run_projection(
        _two_variants(cfg),
        start_times=34_680,
        start_times_source="estimate",
        measured={},
        max_gpu_hours=5.0,
    )
    stages = [(s["stage"], s["variant"]) for s in proj["stages"]]
    assert stages == [
        ("check_network", "shared"),
        ("validate_short", "default"),
        ("finetune", "default"),
        ("validate_short", "no_elevation_bias"),
        ("finetune", "no_elevation_bias"),
    ]
    short = 10 * 2.0 / 3600 * 1 * 4  # 10 steps x 2 s on one node
    full = 88 / 3600 * 50 * 4
    network = 2 * 15 / 60 * 4  # its whole request: 2 nodes x 15 min
    assert proj["stages"][0]["gpu_hours"] == pytest.approx(network)
    assert proj["total_gpu_hours"] == pytest.approx(network + 2 * (short + full))
    assert proj["over_budget"]
    lines = format_projection(proj)
    assert len(lines) == 6 and "1.01 epoch(s), 35200 samples seen" in lines[2]
    assert "wall time requested 23 min" in lines[2]
    assert lines[0].startswith("check_network   shared") and "2.00 GPU-h" in lines[0]
    assert "2 node(s) x 15 min requested (an upper bound" in lines[0]
    assert "budget of 5 GPU-h" in lines[-1]
    with pytest.raises(BudgetExceeded) as err:
        check_budget(proj)
    total = f"{proj['total_gpu_hours']:.4g}"
    assert f"projected {total} GPU-hours exceed the budget of 5 GPU-hours" in str(err.value)
    proj["over_budget"] = False
    check_budget(proj)  # within budget: no error


def test_budget_gate_uses_the_measured_step_times(lumi_cfg) -> None:
    cfg = copy.deepcopy(lumi_cfg)
    cfg["launch"]["max_gpu_hours"] = 20.0
    meta = {
        "lead_times_h": [12, 24, 48, 96],
        "time_step_h": 1.0,
        "split": {"train": [2013]},
        "per_year": {"2013": {"n_times": 8000 + 96}},
    }  # 8000 start times: 10 steps at 800
    fast = {
        "passed": True,
        "measured_step_time_s": 30.0,
        "measured_val_time_s": 0.0,
        "config_digest": gate_digest(cfg),
    }
    reports = {"default": {**fast, "world_size": 8}}
    report: dict[str, Any] = {}
    reason = budget_gate({"default": cfg}, reports=reports, meta=meta, report=report)
    # 10 steps x 30 s = 300 s on 50 nodes = 16.7 GPU-h, + validate_short's 0.02 + the network
    # check's 2
    assert "within the budget of 20 GPU-hours" in reason
    assert report["projection"]["stages"][2]["cost"]["source"] == "measured"
    slow = {"default": {**fast, "measured_step_time_s": 60.0, "world_size": 8}}
    with pytest.raises(
        BudgetExceeded, match=r"projected 35\.\d+ GPU-hours exceed the budget of 20"
    ):
        budget_gate({"default": cfg}, reports=slow, meta=meta, report={})
    # A failed validate_short measured nothing: the estimate (2 s/step) stands in.
    failed = {"default": {**fast, "passed": False}}
    report = {}
    budget_gate({"default": cfg}, reports=failed, meta=meta, report=report)
    assert report["projection"]["stages"][2]["cost"]["source"] == "estimate"
    # A passed report made under another config: the gate refuses rather than fall back.
    other = {"default": {**fast, "world_size": 8, "config_digest": "0" * 16}}
    with pytest.raises(StageFailure, match="variant 'default': validate_short's measurement was"):
        budget_gate({"default": cfg}, reports=other, meta=meta, report={})


def test_a_measurement_made_under_another_config_is_not_quoted(lumi_cfg) -> None:
    """The demo's validate_short (another config, another results folder) or one from before a
    config change is not this run's step time: the estimate stands in, and the line says why."""
    cfg = copy.deepcopy(lumi_cfg)
    demo_cfg = copy.deepcopy(cfg)
    demo_cfg["launch"]["nodes"] = 1
    measured = {
        "passed": True,
        "measured_step_time_s": 0.05,
        "measured_val_time_s": 0.0,
        "world_size": 1,
        "config_digest": gate_digest(demo_cfg),
    }
    assert measured_from_report(measured) is not None  # no config to compare: used as it is
    assert measured_from_report(measured, demo_cfg) is not None
    assert measured_from_report(measured, cfg) is None
    note = ignored_measurement(measured, cfg)
    assert note is not None and f"made under config {gate_digest(demo_cfg)}" in note
    proj = run_projection(
        {"default": cfg},
        start_times=8000,
        start_times_source="counted in the cache",
        measured={"default": measured_from_report(measured, cfg)},
        notes={"default": note},
        max_gpu_hours=None,
    )
    finetune = proj["stages"][2]["cost"]
    assert finetune["source"] == "estimate"
    assert finetune["step_time_s"] == cfg["launch"]["step_time_estimate_s"] != 0.05
    line = format_projection(proj)[2]
    assert f"made under config {gate_digest(demo_cfg)}" in line and "not used" in line
    assert "0.05 s" not in line
    assert ignored_measurement({**measured, "passed": False}, cfg) is None  # nothing measured


# -- the workflow -----------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_refuses_a_run_over_budget_naming_both_figures(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    cfg = workflow_config(tiny_config)
    cfg["finetune"].update(steps=720)
    cfg["launch"].update(nodes=2, step_time_estimate_s=5.0, max_gpu_hours=3.0)
    cfg_path = write_config(tmp_path, cfg)
    result = run_snakemake(tmp_path, cfg_path, "--dry-run")
    assert result.returncode != 0, result.stdout
    # 720 x 5 s on 2 nodes = 8 GPU-h, + validate_short 2 x 5 s on 1 node, + the network check's
    # request, 2 nodes x 15 min = 2 GPU-h
    assert "projected 10.01 GPU-hours exceed the budget of 3 GPU-hours" in result.stdout
    assert re.search(r"projected cost: check_network +shared +2\.00 GPU-h", result.stdout)
    assert re.search(r"projected cost: finetune +default +8\.00 GPU-h", result.stdout)
    assert "wall time requested" in result.stdout
    # Stopping before the fine-tunes measures the step time without meeting the budget.
    result = run_snakemake(tmp_path, cfg_path, "--dry-run", "--until", "validate_short")
    assert result.returncode == 0, result.stdout
    cfg["launch"].update(max_gpu_hours=12.0)
    result = run_snakemake(tmp_path, write_config(tmp_path, cfg), "--dry-run")
    assert result.returncode == 0, result.stdout
    assert "check_budget" in result.stdout and "budget of 12 GPU-h" in result.stdout


@pytest.mark.slow
def test_gpu_nodes_in_flight_cap_and_the_derived_wall_time_in_the_dry_run(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    cfg = workflow_config(tiny_config)
    cfg["finetune"].update(steps=720)
    cfg["launch"].update(nodes=2, step_time_estimate_s=5.0)
    cfg_path = write_config(tmp_path, cfg)
    result = run_snakemake(tmp_path, cfg_path, "--dry-run", "--resources", "gpu_nodes=1")
    assert result.returncode != 0
    assert "launch.nodes 2 exceeds the GPU nodes allowed in flight (--resources gpu_nodes=1)" in (
        result.stdout
    )
    result = run_snakemake(tmp_path, cfg_path, "--dry-run", "--resources", "gpu_nodes=2")
    assert result.returncode == 0, result.stdout
    # 720 x 5 s = 3600 s x 1.5 = 90 min + 15 min start-up (the schema's defaults)
    finetune = result.stdout[result.stdout.index("rule finetune:") :]
    resources = re.search(r"resources: (.*)", finetune).group(1)
    assert "runtime=105" in resources and "gpu_nodes=2" in resources, resources


def test_check_budget_report_is_json_with_the_projection(tmp_path: Path, lumi_cfg) -> None:
    """The gate's report holds every stage, so the report can show the projection later."""
    meta = {
        "lead_times_h": [96],
        "time_step_h": 1.0,
        "split": {"train": [2013]},
        "per_year": {"2013": {"n_times": 896}},
    }
    report: dict[str, Any] = {}
    budget_gate({"default": lumi_cfg}, reports={}, meta=meta, report=report)
    text = json.dumps(report)  # plain types only
    assert json.loads(text)["projection"]["start_times"] == 800


def test_project_cost_numbers() -> None:
    import math

    from aqnet.train.cost import project_cost, validation_passes

    cost = project_cost(2.0, steps=270, nodes=50, gpu_hours_per_node_hour=4.0)
    assert cost["wall_time_s"] == 540.0
    assert cost["node_hours"] == pytest.approx(7.5)
    assert cost["gpu_hours"] == pytest.approx(30.0)
    with_val = project_cost(
        2.0, steps=270, nodes=50, gpu_hours_per_node_hour=4.0, val_time_s=36.0, val_passes=13
    )
    assert with_val["wall_time_s"] == pytest.approx(540.0 + 13 * 36.0)
    assert validation_passes(270, 25) == 1 + 10 + 1
    assert validation_passes(250, 25) == 1 + 10
    with pytest.raises(ValueError, match="nodes"):
        project_cost(1.0, steps=1, nodes=0, gpu_hours_per_node_hour=4.0)
    with pytest.raises(ValueError, match="step_time_s"):
        project_cost(math.nan, steps=1, nodes=1, gpu_hours_per_node_hour=4.0)

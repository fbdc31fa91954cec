"""aqnet.plan: what the workflow's rules read, write and run, without Snakemake."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from aqnet.config import load_config, validate_config, with_control_arm, with_seeds
from aqnet.plan import (
    SHARED_SCOPES,
    Plan,
    PlanError,
)
from aqnet.provenance import config_digest, gate_digest

REPO = Path(__file__).resolve().parents[1]


def _plan(raw: dict[str, Any]) -> Plan:
    return Plan(with_seeds(with_control_arm(validate_config(raw))))


@pytest.fixture
def demo(tmp_path: Path) -> dict[str, Any]:
    raw = copy.deepcopy(load_config(REPO / "config.yaml"))
    raw["results_dir"] = str(tmp_path / "results")
    return raw


def test_paths_follow_the_results_folder_and_the_split(demo: dict[str, Any]) -> None:
    plan = _plan(demo)
    years = plan.split_years()
    assert years == sorted(set(years)) and len(years) >= 3
    assert plan.input_files() == [f"{demo['results_dir']}/demo_data/demo_{y}.nc" for y in years]
    assert plan.baseline_checkpoint() == f"{demo['results_dir']}/baseline/baseline.ckpt"
    assert plan.reference_orders() == f"{demo['results_dir']}/baseline/wind_orders.npz"
    assert plan.mask_files() == []
    assert "no_elevation_bias" in plan.variants  # the control arm is always planned


def test_planning_errors_name_the_keys(demo: dict[str, Any], tmp_path: Path) -> None:
    bad = copy.deepcopy(demo)
    bad["data"]["demo"]["years"] = bad["data"]["demo"]["years"][:1]
    with pytest.raises(PlanError, match=r"data.split uses years \[.*\] that data.demo.years"):
        _plan(bad).input_files()

    files = copy.deepcopy(demo)
    files["data"]["source"] = "files"
    files["data"]["files"] = {"2013": "a.zarr"}
    with pytest.raises(PlanError, match=r"data.files has no file for the split's years"):
        _plan(files).input_files()

    given = copy.deepcopy(demo)
    given["baseline"]["checkpoint"] = str(tmp_path / "theirs" / "last.ckpt")
    with pytest.raises(PlanError, match="baseline.wind_orders is null and there is no"):
        _plan(given).reference_orders()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "wind_orders.npz").touch()
    assert _plan(given).reference_orders() == str(tmp_path / "theirs" / "wind_orders.npz")

    mask = copy.deepcopy(demo)
    mask["data"]["mask"] = {"source": "checkpoint"}
    with pytest.raises(PlanError, match="data.mask.source is 'checkpoint' but baseline.checkpoint"):
        _plan(mask).mask_files()


def test_a_shared_stage_reruns_only_for_its_own_keys(demo: dict[str, Any]) -> None:
    plan = _plan(demo)
    changed = copy.deepcopy(demo)
    changed["finetune"]["lr"] = float(demo["finetune"]["lr"]) * 2
    other = _plan(changed)
    assert set(SHARED_SCOPES) >= {"data", "baseline", "wind_order", "report"}
    for scope in ("data", "baseline", "wind_order", "network"):
        assert config_digest(plan.shared_config(scope)) == config_digest(other.shared_config(scope))
    assert config_digest(plan.shared_config("report")) != config_digest(
        other.shared_config("report")
    )
    # every variant's config and resume state change with it
    for variant in plan.variants:
        assert plan.state_dir("finetune", variant) != other.state_dir("finetune", variant)
        assert plan.resolved_config(variant)["variants"] == {variant: plan.cfg["variants"][variant]}
    assert plan.state_dir("baseline") == other.state_dir("baseline")


def test_the_run_config_leaves_out_seeds_budget_and_report(
    demo: dict[str, Any], tmp_path: Path
) -> None:
    """What a variant's gates and fine-tune read: the same run as the full config (same loaded
    model, finetune and gate digest), unchanged by seeds, budget and report settings, changed by
    anything they measure or train under; the resume state follows it."""
    from aqnet.config import dump_config, load_resolved

    plan = _plan(demo)
    run, full = plan.run_config("default"), plan.resolved_config("default")
    assert "report" not in run and "max_gpu_hours" not in run["launch"]
    assert run["variants"] == {"default": {}} and run["variant"] == "default"
    dump_config(run, tmp_path / "run.yaml")
    dump_config(full, tmp_path / "config.yaml")
    loaded, loaded_full = (
        load_resolved(tmp_path / "run.yaml"),
        load_resolved(tmp_path / "config.yaml"),
    )
    assert gate_digest(loaded) == gate_digest(loaded_full) == gate_digest(full)
    for section in ("model", "data", "grid", "validation", "gates"):
        assert loaded[section] == loaded_full[section], section
    assert loaded["launch"]["nodes"] == loaded_full["launch"]["nodes"]

    later = copy.deepcopy(demo)
    later["finetune"]["seeds"] = [demo["finetune"].get("seed", 0), 5]
    later["launch"]["max_gpu_hours"] = 1.0
    later["launch"]["walltime_margin"] = 2.0
    later["report"]["min_gain_pct"] = 9.0
    changed = _plan(later)
    assert changed.run_config("default") == run
    assert changed.state_dir("finetune", "default") == plan.state_dir("finetune", "default")
    assert changed.resolved_config("default") != full
    assert "default-seed5" in changed.variants

    steps = copy.deepcopy(demo)
    steps["finetune"]["steps"] += 1
    assert _plan(steps).run_config("default") != run
    assert _plan(steps).state_dir("finetune", "default") != plan.state_dir("finetune", "default")


def test_gpu_nodes_in_flight_must_fit_one_fine_tune(demo: dict[str, Any]) -> None:
    demo["launch"]["nodes"] = 4
    plan = _plan(demo)
    assert plan.gpu_nodes_refusal(None) is None and plan.gpu_nodes_refusal(4) is None
    why = plan.gpu_nodes_refusal(3)
    assert why is not None and "launch.nodes 4 exceeds" in why and "gpu_nodes=3" in why


def test_the_projection_quotes_only_a_measurement_of_this_config(demo: dict[str, Any]) -> None:
    plan = _plan(demo)
    assert plan.train_start_times()[1].startswith("estimated from the config")
    stages = plan.cost_projection()["stages"]
    assert {s["cost"]["source"] for s in stages if s["stage"] == "finetune"} == {"estimate"}

    report = {
        "passed": True,
        "measured_step_time_s": 0.25,
        "measured_val_time_s": 0.0,
        "world_size": 1,
        "config_digest": gate_digest(plan.resolved_config("default")),
    }
    path = Path(plan.result("variants/default/validate_short.json"))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(report))
    by_variant = {
        s["variant"]: s["cost"]
        for s in plan.cost_projection()["stages"]
        if s["stage"] == "finetune"
    }
    assert by_variant["default"]["source"] == "measured"
    assert by_variant["default"]["step_time_s"] == 0.25
    assert plan.finetune_minutes("default") == by_variant["default"]["request"]["minutes"]

    path.write_text(json.dumps({**report, "config_digest": "0" * 16}))
    cost = next(
        s["cost"] for s in plan.cost_projection()["stages"]
        if s["stage"] == "finetune" and s["variant"] == "default"
    )  # fmt: skip
    assert cost["source"] == "estimate" and "made under config 0000000000000000" in cost["note"]
    with pytest.raises(PlanError, match="no fine-tune projection for variant nope"):
        plan.finetune_minutes("nope")

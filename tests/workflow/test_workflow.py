"""The Snakemake workflow's DAG, checked with dry runs and the cheap config rules: the jobs of the
demo and of a two-variant config, which config each variant's audit reads and the keys it expects,
a misspelt key rejected by name, the launcher of the multi-rank rules, the projected cost, and
the resolved configs rewritten only when they change.

The helpers (``tests/workflow_helpers.py``: a tiny config, a run of the repository's ``Snakefile``
in a temporary working directory with ``--configfile``, the job counts of its output) are shared
with ``test_workflow_e2e.py``, which runs the pipeline for real. The embedded ``config.yaml`` is not
read in these runs: Snakemake looks it up in the working directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from workflow_helpers import (
    REPO,
    TWO_VARIANTS,
    expected_counts,
    job_counts,
    run_snakemake,
    workflow_config,
    write_config,
)

# Every test here runs Snakemake (dry runs and the cheap config rules).
pytestmark = pytest.mark.slow

# ---------------------------------------------------------------------------------------------
# Tests


def test_demo_dag_has_every_stage_once(tmp_path: Path) -> None:
    """The embedded demo (config.yaml): default, the reversed direction and the control arm, each
    stage once per variant, rule all by default."""
    result = run_snakemake(tmp_path, REPO / "config.yaml", "--dry-run")
    assert result.returncode == 0, result.stdout
    assert job_counts(result.stdout) == expected_counts(3)
    # The report rule's outputs are the package's list (aqnet.report.build.OUTPUTS)
    from aqnet.report.build import OUTPUTS

    outputs = re.search(r"rule report:\n(?:.*\n)*?\s+output: (.*)", result.stdout)
    assert outputs, result.stdout[-3000:]
    assert outputs.group(1).split(", ") == [f"results/report/{n}" for n in OUTPUTS.values()]
    assert "results/variants/no_elevation_bias/evaluation.nc" in result.stdout


def test_two_variant_dag_and_each_audit_expects_its_keys(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    """Shared stages once, each variant its own chain, the control arm report.control added as a
    third; the audit keys follow topoflow_blocks."""
    from aqnet.config import load_resolved
    from aqnet.gates.audit import build_model, expected_missing_keys

    cfg = workflow_config(tiny_config, variants=TWO_VARIANTS)
    cfg["report"]["control"] = "no_elevation_bias"
    cfg_path = write_config(tmp_path, cfg)
    result = run_snakemake(tmp_path, cfg_path, "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stdout
    assert job_counts(result.stdout) == expected_counts(3)
    # Locally no launcher: one process, world size 1 (behind the fine-tune's requeue script).
    assert re.search(
        r"Shell command: .*; bash \S+/workflow/scripts/requeue_on_tempfail\.sh "
        r"logs/finetune/default\.log -- aqnet finetune .* --world-size 1 ",
        result.stdout,
    )
    assert "srun" not in result.stdout
    for variant in TWO_VARIANTS:
        # the gates and the fine-tune read the run config, evaluate the full one
        run, full = (f"results/variants/{variant}/{f}.yaml" for f in ("run", "config"))
        assert f"aqnet audit-checkpoint --config {run} " in result.stdout
        assert f"aqnet finetune --config {run} " in result.stdout
        assert f"aqnet evaluate --config {full} " in result.stdout
        assert f"--report results/variants/{variant}/audit_checkpoint.json" in result.stdout

    # The resolve_config rules for real (cheap): what each audit will read and expect.
    targets = [
        f"results/variants/{v}/{f}.yaml"
        for v in [*TWO_VARIANTS, "no_elevation_bias"]
        for f in ("config", "run")
    ]
    result = run_snakemake(tmp_path, cfg_path, *targets)
    assert result.returncode == 0, result.stdout
    expected = {
        "default": ["blocks.0.attn.elevation_alpha", "blocks.0.attn.H_scale"],
        "blocks01": [
            "blocks.0.attn.elevation_alpha",
            "blocks.0.attn.H_scale",
            "blocks.1.attn.elevation_alpha",
            "blocks.1.attn.H_scale",
        ],
    }
    for variant, keys in expected.items():
        for name in ("config", "run"):
            path = tmp_path / f"results/variants/{variant}/{name}.yaml"
            raw = yaml.safe_load(path.read_text())
            assert raw["variant"] == variant
            assert list(raw["variants"]) == [variant]  # another variant's change leaves it alone
            cfg = load_resolved(path)
            assert cfg["variant"] == variant
            assert sorted(expected_missing_keys(cfg, build_model(cfg, None))) == sorted(keys)
        # the run config: the same run, without the settings no gate or fine-tune depends on
        assert "report" in yaml.safe_load((path.parent / "config.yaml").read_text())
        assert "report" not in raw and "max_gpu_hours" not in raw["launch"]
        assert cfg["model"] == load_resolved(path.parent / "config.yaml")["model"]
    control = load_resolved(tmp_path / "results/variants/no_elevation_bias/config.yaml")
    assert control["model"]["elevation_bias"] is False  # the control: the bias off, all else same
    assert control["finetune"] == load_resolved(path)["finetune"]
    assert control["model"]["topoflow_blocks"] == [0]


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        (
            "model",
            {"h_scale": 500.0},
            r"unknown key 'h_scale' in model \(allowed keys: .*h_scale_m",
        ),
        ("modle", {}, r"unknown key 'modle' in <top level>"),
        (
            "variants",
            {"default": {}, "bad": {"model": {"topoflow_block": [0, 1]}}},
            r"unknown key 'topoflow_block' in variants\.bad\.model",
        ),
    ],
)
def test_misspelt_key_stops_the_run_by_name(
    tmp_path: Path, tiny_config: dict[str, Any], section: str, value: Any, message: str
) -> None:
    cfg_path = write_config(tmp_path, workflow_config(tiny_config, **{section: value}))
    result = run_snakemake(tmp_path, cfg_path, "--dry-run")
    assert result.returncode != 0
    assert re.search(f"invalid configuration: .*{message}", result.stdout), result.stdout
    assert not (tmp_path / "results").exists()


def test_until_validate_short_stops_before_the_expensive_stages(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    cfg_path = write_config(tmp_path, workflow_config(tiny_config, variants=TWO_VARIANTS))
    result = run_snakemake(tmp_path, cfg_path, "--dry-run", "--until", "validate_short")
    assert result.returncode == 0, result.stdout
    counts = job_counts(result.stdout)
    assert counts["validate_short"] == 2 and counts["smoke_forward"] == 2
    assert not {"finetune", "evaluate", "report", "all"} & set(counts)
    # data, wind_order, network and baseline, not the report's
    assert counts["resolve_shared_config"] == 4
    assert counts["check_network"] == 1


def test_given_baseline_checkpoint_skips_train_baseline(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    (tmp_path / "given").mkdir()
    ckpt, orders = tmp_path / "given/baseline.ckpt", tmp_path / "given/wind_orders.npz"
    ckpt.write_bytes(b"stand-in: a dry run does not read it")
    orders.write_bytes(b"stand-in")
    cfg = workflow_config(tiny_config)
    cfg["baseline"].update(checkpoint=str(ckpt), wind_orders=None)
    result = run_snakemake(tmp_path, write_config(tmp_path, cfg), "--dry-run", "--printshellcmds")
    assert result.returncode == 0, result.stdout
    assert job_counts(result.stdout) == expected_counts(1, train_baseline=False)
    # wind_orders null: the orders saved beside the checkpoint are the reference
    assert f"--reference {orders}" in result.stdout
    assert f"--checkpoint {ckpt}" in result.stdout

    orders.unlink()
    result = run_snakemake(tmp_path, write_config(tmp_path, cfg), "--dry-run")
    assert result.returncode != 0
    assert "set baseline.wind_orders" in result.stdout


def test_launcher_passes_the_task_geometry_explicitly(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    """With resources.mpi (as the LUMI profile sets) an explicit srun geometry and world size."""
    cfg_path = write_config(tmp_path, workflow_config(tiny_config))
    slurm = run_snakemake(
        tmp_path, cfg_path, "--dry-run", "--printshellcmds",
        "--set-resources",
        "finetune:mpi=srun", "finetune:nodes=2", "finetune:tasks_per_node=3",
        "finetune:cpus_per_task=7",
        "validate_short:mpi=srun", "validate_short:tasks_per_node=4",
        "smoke_forward:rank_wrapper='env.sh --'", "finetune:rank_wrapper='env.sh --'",
    )  # fmt: skip
    assert slurm.returncode == 0, slurm.stdout
    # srun starts the ranks, each behind the profile's wrapper (container, environment)
    assert re.search(
        r"srun --nodes=2 --ntasks-per-node=3 --cpus-per-task=7 --kill-on-bad-exit=1 "
        r"env\.sh -- aqnet finetune .* --world-size 6 ",
        slurm.stdout,
    ), slurm.stdout
    # validate_short: one node of 4 ranks; without cpus_per_task the rule's threads (2)
    assert re.search(
        r"srun --nodes=1 --ntasks-per-node=4 --cpus-per-task=2 --kill-on-bad-exit=1 "
        r"aqnet validate-short .* --world-size 4 ",
        slurm.stdout,
    ), slurm.stdout
    # a single-process stage: the wrapper only
    assert "Shell command: env.sh -- aqnet smoke-forward " in slurm.stdout


def test_projected_cost_printed_from_config_then_from_validate_short(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    cfg = workflow_config(tiny_config, variants=TWO_VARIANTS)
    cfg["finetune"]["steps"] = 720
    cfg["launch"].update(nodes=2, step_time_estimate_s=5.0, gpu_hours_per_node_hour=4.0)
    cfg_path = write_config(tmp_path, cfg)
    result = run_snakemake(tmp_path, cfg_path, "--dry-run")
    assert result.returncode == 0, result.stdout
    # 720 steps x 5 s = 1 h on 2 nodes = 2 node-hours = 8 GPU-hours per variant; each
    # validate_short: 2 steps x 5 s on 1 node = 0.011 GPU-hours; the network check, once: its
    # request of 2 nodes x 15 min = 2 GPU-hours.
    assert re.search(
        r"projected cost: finetune +default +8\.00 GPU-h +720 steps x 5 s", result.stdout
    )
    assert "step time estimated: launch.step_time_estimate_s" in result.stdout
    assert re.search(r"projected cost: total +18\.02 GPU-h", result.stdout), result.stdout

    # validate_short's report, made under blocks01's resolved config (its digest)
    resolved = tmp_path / "results/variants/blocks01/config.yaml"
    assert run_snakemake(tmp_path, cfg_path, str(resolved.relative_to(tmp_path))).returncode == 0
    from aqnet.config import load_resolved
    from aqnet.provenance import gate_digest

    measured = {"passed": True, "measured_step_time_s": 2.5, "measured_val_time_s": 0.0}
    measured |= {"world_size": 1, "config_digest": gate_digest(load_resolved(resolved))}
    (resolved.parent / "validate_short.json").write_text(json.dumps(measured))
    result = run_snakemake(tmp_path, cfg_path, "--dry-run")
    assert result.returncode == 0, result.stdout
    # 720 x 2.5 s = 0.5 h on 2 nodes: 4 GPU-hours
    line = re.search(r"projected cost: finetune +blocks01 .*", result.stdout)
    assert line and "4.00 GPU-h" in line.group(0) and "measured by validate_short" in line.group(0)
    assert re.search(r"projected cost: total +14\.02 GPU-h", result.stdout), result.stdout


def test_resolved_config_rewritten_only_when_it_changes(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    cfg = workflow_config(tiny_config)
    target = "results/variants/default/config.yaml"
    cfg_path = write_config(tmp_path, cfg)
    assert run_snakemake(tmp_path, cfg_path, target).returncode == 0
    path = tmp_path / target
    mtime = path.stat().st_mtime_ns

    again = run_snakemake(tmp_path, cfg_path, target)
    assert again.returncode == 0 and job_counts(again.stdout) == {}, again.stdout
    assert path.stat().st_mtime_ns == mtime

    cfg["finetune"]["steps"] = 7
    run_target = "results/variants/default/run.yaml"
    changed = run_snakemake(tmp_path, write_config(tmp_path, cfg), target, run_target)
    assert changed.returncode == 0
    assert job_counts(changed.stdout) == {"resolve_config": 1, "resolve_run_config": 1}
    assert yaml.safe_load(path.read_text())["finetune"]["steps"] == 7
    run_path = tmp_path / run_target
    assert yaml.safe_load(run_path.read_text())["finetune"]["steps"] == 7

    # Seeds, budget and report settings: only the full config; the run config (the gates' and
    # the fine-tune's) stays as it is, so nothing that spent GPU time is out of date.
    run_mtime = run_path.stat().st_mtime_ns
    cfg["finetune"]["seeds"] = [cfg["finetune"]["seed"], 11]
    cfg["launch"]["max_gpu_hours"] = 12345.0
    cfg["report"]["min_gain_pct"] = 3.5
    changed = run_snakemake(tmp_path, write_config(tmp_path, cfg), target, run_target)
    assert changed.returncode == 0
    assert job_counts(changed.stdout) == {"resolve_config": 1}, changed.stdout
    assert yaml.safe_load(path.read_text())["report"]["min_gain_pct"] == 3.5
    assert run_path.stat().st_mtime_ns == run_mtime

    # A finetune setting leaves the configs of the cache and the baseline alone.
    shared = [f"results/config/{scope}.yaml" for scope in ("data", "baseline")]
    assert run_snakemake(tmp_path, cfg_path, *shared).returncode == 0
    before = [(tmp_path / f).stat().st_mtime_ns for f in shared]
    cfg["finetune"]["steps"] = 8
    dry = run_snakemake(tmp_path, write_config(tmp_path, cfg), "--dry-run", *shared)
    assert dry.returncode == 0 and job_counts(dry.stdout) == {}, dry.stdout
    assert [(tmp_path / f).stat().st_mtime_ns for f in shared] == before


def test_a_failed_network_check_stops_before_validate_short(
    tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    """check_network is a gate of every validate_short (so of every fine-tune); a failure prints
    its one-line reason and where the report is kept."""
    cfg = workflow_config(tiny_config)
    cfg_path = write_config(tmp_path, cfg)
    plan = run_snakemake(tmp_path, cfg_path, "--dry-run", "--until", "validate_short")
    assert plan.returncode == 0, plan.stdout
    short = re.search(r"rule validate_short:\n\s+input: ([^\n]+)", plan.stdout)
    assert short and "results/gates/check_network.json" in short.group(1), plan.stdout

    # nccl asked for on a CPU-only machine: the check refuses before anything is measured.
    cfg["finetune"]["backend"] = "nccl"
    cfg_path = write_config(tmp_path, cfg)
    result = run_snakemake(tmp_path, cfg_path, "check_network")
    assert result.returncode != 0
    assert (
        "check_network: FAIL - train.backend is 'nccl' but this rank runs on the CPU"
        in result.stdout
    ), result.stdout
    assert "check_network failed: report kept at logs/check_network.json" in result.stdout
    report = json.loads((tmp_path / "logs" / "check_network.json").read_text())
    assert report["passed"] is False and "nccl" in report["reason"]
    assert not (tmp_path / "results" / "gates" / "check_network.json").exists()

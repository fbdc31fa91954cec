"""The workflow run for real on a tiny two-variant config: end to end, then rerunning stages by
name, and a failed gate (a baseline checkpoint with a 1-layer head) that stops the run before
validate_short with its reason printed and the earlier results untouched.

One pipeline run is shared by the module; tests that change results work on a copy of it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from aqnet.report.attribution import VERDICTS
from workflow_helpers import (
    TWO_VARIANTS,
    expected_counts,
    job_counts,
    run_snakemake,
    workflow_config,
    write_config,
)

pytestmark = pytest.mark.slow

# Outputs of the stages before validate_short, which a later failed gate must leave untouched.
EARLY_OUTPUTS = (
    "results/cache/meta.json",
    "results/cache/stats.json",
    "results/baseline/baseline.ckpt",
    "results/baseline/wind_orders.npz",
    "results/gates/verify_wind_order.json",
)


def _mtimes(workdir: Path, paths: list[str] | tuple[str, ...]) -> dict[str, int]:
    return {p: (workdir / p).stat().st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def pipeline(
    tiny_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, str]:
    """(working directory, config file, run output) of a complete two-variant run."""
    workdir = tmp_path_factory.mktemp("workflow")
    cfg_path = write_config(workdir, workflow_config(tiny_config, variants=TWO_VARIANTS))
    result = run_snakemake(workdir, cfg_path)
    assert result.returncode == 0, result.stdout[-6000:]
    return workdir, cfg_path, result.stdout


@pytest.fixture
def pipeline_copy(pipeline: tuple[Path, Path, str], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run (results, logs, Snakemake's metadata; mtimes kept)."""
    workdir, cfg_path, _ = pipeline
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy, copy / cfg_path.name


def test_two_variants_end_to_end(pipeline: tuple[Path, Path, str]) -> None:
    workdir, cfg_path, output = pipeline
    assert job_counts(output) == expected_counts(2)
    for variant in TWO_VARIANTS:
        folder = workdir / "results/variants" / variant
        for name in ("finetune/final.ckpt", "finetune/metrics.csv", "evaluation.nc"):
            assert (folder / name).is_file(), f"{variant}: {name} missing"
        for gate in ("audit_checkpoint", "smoke_forward", "validate_short"):
            report = json.loads((folder / f"{gate}.json").read_text())
            assert report["passed"] is True, (variant, gate, report.get("reason"))
            # the copy beside the log is the same report
            copy = json.loads((workdir / f"logs/{gate}/{variant}.json").read_text())
            assert copy["reason"] == report["reason"]
    # Every validation pass evaluates the same samples: each variant's smoke gate, short run and
    # fine-tune start (alpha = 0) at the trained baseline's recorded val_loss, to float error.
    from aqnet.checkpoint import read_checkpoint

    recorded = read_checkpoint(workdir / "results/baseline/baseline.ckpt").val_loss
    assert recorded is not None
    for variant in TWO_VARIANTS:
        folder = workdir / "results/variants" / variant
        smoke = json.loads((folder / "smoke_forward.json").read_text())
        assert smoke["baseline_val_loss"] == recorded and smoke["validation_samples"] == 8
        assert abs(smoke["val_loss_rel_diff"]) < 1e-4, (variant, smoke["val_loss"], recorded)
        short = json.loads((folder / "validate_short.json").read_text())
        assert short["baseline_val_loss"] == recorded and short["validation_samples"] == 8
        assert short["step0_rel_diff"] < 1e-4, (variant, short["step0_val_loss"], recorded)
        summary = json.loads((folder / "finetune/summary.json").read_text())
        assert summary["validation_samples"] == 8
        assert summary["step0_val_loss"] == pytest.approx(recorded, rel=1e-4)
    # Each variant's audit expected exactly its own new keys.
    audits = {
        v: json.loads((workdir / f"results/variants/{v}/audit_checkpoint.json").read_text())
        for v in TWO_VARIANTS
    }
    assert sorted(audits["default"]["expected_missing"]) == [
        "blocks.0.attn.H_scale",
        "blocks.0.attn.elevation_alpha",
    ]
    assert sorted(audits["blocks01"]["expected_missing"]) == [
        "blocks.0.attn.H_scale",
        "blocks.0.attn.elevation_alpha",
        "blocks.1.attn.H_scale",
        "blocks.1.attn.elevation_alpha",
    ]
    verdict = json.loads((workdir / "results/report/verdict.json").read_text())
    assert verdict["verdict"] in VERDICTS
    for figure in ("val_loss.png", "variants.png", "gates.png"):
        assert (workdir / "results/report" / figure).stat().st_size > 0

    again = run_snakemake(workdir, cfg_path, "--dry-run")
    assert again.returncode == 0 and job_counts(again.stdout) == {}, again.stdout


def test_rerun_stages_by_name(pipeline: tuple[Path, Path, str]) -> None:
    """A shared stage by name, --forcerun and --until plan only what they must (dry runs)."""
    workdir, cfg_path, _ = pipeline
    by_name = run_snakemake(workdir, cfg_path, "--dry-run", "verify_wind_order")
    assert by_name.returncode == 0 and job_counts(by_name.stdout) == {}, by_name.stdout

    forced = run_snakemake(workdir, cfg_path, "--dry-run", "--forcerun", "smoke_forward")
    assert forced.returncode == 0, forced.stdout
    downstream = ("smoke_forward", "validate_short", "finetune", "evaluate")
    assert job_counts(forced.stdout) == {
        **dict.fromkeys(downstream, 2),
        "rehearse_report": 1,
        "check_budget": 1,
        "report": 1,
        "all": 1,
    }

    until = run_snakemake(
        workdir, cfg_path, "--dry-run", "--forcerun", "smoke_forward", "--until", "validate_short"
    )
    assert until.returncode == 0, until.stdout
    assert job_counts(until.stdout) == {"smoke_forward": 2, "validate_short": 2}


def test_a_new_variant_reruns_the_rehearsal_but_no_finished_fine_tune(
    pipeline_copy: tuple[Path, Path], tiny_config: dict[str, Any]
) -> None:
    """rehearse_report covers every variant, so a new one reruns it; the fine-tunes already
    done stay done (finetune reads the rehearsal as ancient: its order, not its date)."""
    workdir, _ = pipeline_copy
    variants = {**TWO_VARIANTS, "h500": {"model": {"h_scale_m": 500.0}}}
    cfg = write_config(workdir, workflow_config(tiny_config, variants=variants), "three.yaml")
    result = run_snakemake(workdir, cfg, "--dry-run")
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    assert counts["rehearse_report"] == 1 and counts["validate_short"] == 1, counts
    assert counts["finetune"] == 1 and counts["evaluate"] == 1, counts


def test_new_seeds_budget_or_report_settings_rerun_no_finished_fine_tune(
    pipeline: tuple[Path, Path, str], tiny_config: dict[str, Any]
) -> None:
    """Seeds, the budget and the report's settings are no part of what a gate measured or a
    fine-tune trained under (its run config, ``run.yaml``): changing them plans evaluate, the
    budget gate and the report again, and the new seeds' own chains, but no finished gate or
    fine-tune (dry run)."""
    workdir, _, _ = pipeline
    cfg = workflow_config(tiny_config, variants=TWO_VARIANTS)
    cfg["finetune"]["seeds"] = [cfg["finetune"]["seed"], 11]
    cfg["launch"]["max_gpu_hours"] = 999.0
    cfg["report"]["min_gain_pct"] = 4.0
    result = run_snakemake(workdir, write_config(workdir, cfg, "seeds.yaml"), "--dry-run")
    assert result.returncode == 0, result.stdout[-4000:]
    counts = job_counts(result.stdout)
    new_runs = len(TWO_VARIANTS)  # <variant>-seed11 of each
    for rule in ("resolve_run_config", "audit_checkpoint", "smoke_forward"):
        assert counts[rule] == new_runs, (rule, counts)
    assert counts["validate_short"] == new_runs and counts["finetune"] == new_runs, counts
    # every full config changed (its seeds and settings): each variant is evaluated again
    assert counts["resolve_config"] == 2 * new_runs and counts["evaluate"] == 2 * new_runs
    assert counts["check_budget"] == 1 and counts["report"] == 1, counts
    planned = re.findall(
        r"rule finetune:\n(?:\s+\S.*\n)*?\s+wildcards: variant=(\S+)", result.stdout
    )
    assert sorted(planned) == sorted(f"{v}-seed11" for v in TWO_VARIANTS), planned


def test_forcerun_one_gate_runs_only_that_gate(pipeline_copy: tuple[Path, Path]) -> None:
    workdir, cfg_path = pipeline_copy
    later = [
        f"results/variants/{v}/{gate}.json"
        for v in TWO_VARIANTS
        for gate in ("smoke_forward", "validate_short")
    ]
    before = _mtimes(workdir, [*EARLY_OUTPUTS, *later])
    audits = [f"results/variants/{v}/audit_checkpoint.json" for v in TWO_VARIANTS]
    audit_before = _mtimes(workdir, audits)

    result = run_snakemake(
        workdir, cfg_path, "--forcerun", "audit_checkpoint", "--until", "audit_checkpoint"
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert job_counts(result.stdout) == {"audit_checkpoint": 2}
    assert _mtimes(workdir, [*EARLY_OUTPUTS, *later]) == before
    assert all(_mtimes(workdir, audits)[a] > audit_before[a] for a in audits)


def _one_layer_head_checkpoint(workdir: Path, out: Path) -> None:
    """A baseline checkpoint of the right model except for a 1-layer head (the real one has 3)."""
    from aqnet.checkpoint import save_lightning_checkpoint
    from aqnet.config import load_resolved
    from aqnet.data import load_stats
    from aqnet.model import Forecaster
    from aqnet.model.presets import baseline_of, from_pipeline_config

    cfg = load_resolved(workdir / "results/variants/default/config.yaml")
    mcfg = baseline_of(from_pipeline_config(cfg, stats=load_stats(workdir / "results/cache")))
    assert mcfg.head_layers == 3
    save_lightning_checkpoint(out, Forecaster(mcfg.replace(head_layers=1)), val_loss=1.0)


def test_failed_gate_stops_before_validate_short(
    pipeline_copy: tuple[Path, Path], tiny_config: dict[str, Any]
) -> None:
    workdir, _ = pipeline_copy
    bad = workdir / "bad_head.ckpt"
    _one_layer_head_checkpoint(workdir, bad)
    later = [
        f"results/variants/{v}/{s}.json"
        for v in TWO_VARIANTS
        for s in ("smoke_forward", "validate_short")
    ]
    before = _mtimes(workdir, [*EARLY_OUTPUTS, *later])

    cfg = workflow_config(tiny_config, variants=TWO_VARIANTS)
    cfg["baseline"].update(checkpoint=str(bad), wind_orders="results/baseline/wind_orders.npz")
    result = run_snakemake(workdir, write_config(workdir, cfg, "bad_head.yaml"))

    assert result.returncode != 0
    assert "audit_checkpoint: FAIL" in result.stdout
    # Each failed audit says where its report is kept (beside its log; Snakemake deleted the
    # declared output); it names the checkpoint and the mismatching head.
    kept = re.findall(r"report kept at (logs/audit_checkpoint/([\w-]+)\.json)", result.stdout)
    assert kept, result.stdout[-4000:]
    for path, variant in kept:
        report = json.loads((workdir / path).read_text())
        assert report["passed"] is False
        assert report["checkpoint"] == str(bad)
        assert "head" in report["reason"], report["reason"]
        assert not (workdir / f"results/variants/{variant}/audit_checkpoint.json").exists()
    # Nothing downstream started; earlier results (cache, the trained baseline, the wind-order
    # gate) and the later reports of the previous run are untouched.
    for rule in ("smoke_forward", "validate_short", "finetune", "evaluate"):
        assert f"rule {rule}:" not in _started(result.stdout), rule
    assert _mtimes(workdir, [*EARLY_OUTPUTS, *later]) == before


def _started(output: str) -> str:
    """The part of a run's output after its job plan: the jobs that were started."""
    marker = "Select jobs to execute..."
    return output[output.index(marker) :] if marker in output else output


def test_a_lumi_dry_run_where_the_demo_ran_plans_everything_and_quotes_none_of_it(
    pipeline_copy: tuple[Path, Path],
) -> None:
    """Demo and LUMI results never mix: in the clone where the demo ran, the LUMI profile's dry
    run plans the whole chain in its own folder (results_lumi) and projects from the estimate.
    A validate_short report copied in from the demo is refused by its config digest."""
    import os
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[2]
    workdir, _ = pipeline_copy
    demo_report = json.loads((workdir / "results/variants/default/validate_short.json").read_text())
    demo_step = demo_report["measured_step_time_s"]
    with (repo / "config/lumi.yaml").open() as fh:
        lumi = yaml.safe_load(fh)
    assert lumi["results_dir"] != "results"
    stand = workdir / "stand_ins"
    stand.mkdir()
    files = {year: str(stand / f"aq_{year}.zarr") for year in lumi["data"]["files"]}
    for path in [*files.values(), stand / "baseline.ckpt", stand / "wind_orders.npz"]:
        Path(path).touch()  # a dry run only needs the inputs to exist
    overlay = write_config(
        workdir,
        {
            "data": {"files": files},
            "baseline": {
                "checkpoint": str(stand / "baseline.ckpt"),
                "wind_orders": str(stand / "wind_orders.npz"),
            },
        },
        "stand_ins.yaml",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    configs = [repo / "config.yaml", repo / "config/reference.yaml", repo / "config/lumi.yaml"]

    def dry_run() -> str:
        proc = subprocess.run(
            [
                sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
                "--directory", str(workdir), "--profile", str(repo / "profiles/lumi"),
                "--configfile", *map(str, configs), str(overlay), "-n",
            ],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        return out

    out = dry_run()
    counts = job_counts(out)
    n_runs = len(lumi["variants"]) + 1  # the variants and the control arm...
    n_runs *= len(lumi["finetune"]["seeds"])  # ...each once per seed
    for rule in ("build_cache", "verify_wind_order", "rehearse_report", "check_budget", "report"):
        assert counts.get(rule) == 1, (rule, counts)
    for rule in ("audit_checkpoint", "smoke_forward", "validate_short", "finetune", "evaluate"):
        assert counts.get(rule) == n_runs, (rule, counts)
    lines = [ln for ln in out.splitlines() if ln.startswith("aqnet: projected cost: finetune")]
    assert len(lines) == n_runs
    assert all("until validate_short runs" in ln for ln in lines), lines
    assert "measured by validate_short" not in out
    assert f"x {demo_step:.3g} s" not in out

    # The demo's report put where LUMI's would be: made under another config, not quoted.
    target = workdir / lumi["results_dir"] / "variants/default/validate_short.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(demo_report))
    out = dry_run()
    line = next(ln for ln in out.splitlines() if re.search(r"finetune\s+default\s", ln))
    assert f"made under config {demo_report['config_digest']}" in line, line
    assert "not used" in line and f"x {demo_step:.3g} s" not in line

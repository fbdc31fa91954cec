"""GPU-hours used per GPU stage (``aqnet.report.usage``): from Snakemake's benchmark files
locally, from sacct (every allocation of a requeued job) on Slurm, beside the projection."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from aqnet.report.usage import benchmark_seconds, stage_usage, usage_rows

LAUNCH = {"nodes": 50, "tasks_per_node": 8, "gpu_hours_per_node_hour": 4.0}


def _benchmark(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:00\t100.0\n")


def _fake_sacct(bin_dir: Path, lines: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``sacct`` on PATH that logs its arguments and prints ``lines``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "sacct"
    script.write_text(f'#!/bin/sh\necho "$@" > {bin_dir}/args\nprintf "{lines}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "args"


def test_benchmark_file_gives_the_used_gpu_hours_locally(tmp_path: Path) -> None:
    _benchmark(tmp_path / "finetune/default.tsv", 900.0)
    assert benchmark_seconds(tmp_path / "finetune/default.tsv") == 900.0
    assert benchmark_seconds(tmp_path / "missing.tsv") is None
    used = stage_usage(
        "finetune", "default", benchmarks_dir=tmp_path, nodes=50, gpu_hours_per_node_hour=4.0
    )
    # 900 s = 0.25 h x 50 nodes x 4
    assert used == {"used_gpu_hours": pytest.approx(50.0), "used_from": "benchmark file"}


def test_sacct_counts_every_allocation_of_a_requeued_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Job 42 ran 600 s, was requeued and ran 1200 s more; both on 50 nodes.
    args = _fake_sacct(tmp_path / "bin", "42|600|50\\n42|1200|50\\n", monkeypatch)
    bench = tmp_path / "benchmarks"
    _benchmark(bench / "finetune/default.tsv", 1200.0)  # the last allocation only
    (bench / "finetune/default.slurm_jobs").write_text("42\n42\n")
    used = stage_usage(
        "finetune", "default", benchmarks_dir=bench, nodes=50, gpu_hours_per_node_hour=4.0
    )
    assert used["used_from"] == "sacct"
    assert used["used_gpu_hours"] == pytest.approx(1800 / 3600 * 50 * 4)
    called = args.read_text()
    assert "-j 42 " in called and "--duplicates" in called


def test_usage_rows_put_the_projection_beside_the_use(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    _benchmark(bench / "validate_short/default.tsv", 36.0)
    _benchmark(bench / "check_network/shared.tsv", 90.0)
    budget = tmp_path / "check_budget.json"
    budget.write_text(
        json.dumps(
            {
                "projection": {
                    "stages": [
                        {"stage": "check_network", "variant": "shared", "gpu_hours": 2.0},
                        {"stage": "validate_short", "variant": "default", "gpu_hours": 0.05},
                        {"stage": "finetune", "variant": "default", "gpu_hours": 12.5},
                    ]
                }
            }
        )
    )
    rows = usage_rows(LAUNCH, ["default"], benchmarks_dir=bench, budget_report=budget)
    assert [(r["stage"], r["variant"], r["nodes"]) for r in rows] == [
        ("check_network", "shared", 2),
        ("validate_short", "default", 1),
        ("finetune", "default", 50),
    ]
    network, short, full = rows
    assert network["projected_gpu_hours"] == 2.0
    assert network["used_gpu_hours"] == pytest.approx(90 / 3600 * 2 * 4)  # 2 nodes held
    assert short["projected_gpu_hours"] == 0.05
    assert short["used_gpu_hours"] == pytest.approx(36 / 3600 * 1 * 4)
    assert full["projected_gpu_hours"] == 12.5
    assert math.isnan(full["used_gpu_hours"]) and full["used_from"] == "not recorded"
    none = usage_rows(LAUNCH, ["default"], benchmarks_dir=None, budget_report=None)
    assert all(math.isnan(r["projected_gpu_hours"]) for r in none)

"""GPU-hours each GPU stage actually used, beside what ``check_budget`` projected for it.

Per stage (``check_network`` once, as variant ``shared``; ``validate_short`` and ``finetune`` per
variant), in this order of preference:

* **Slurm** (``sacct``): the job ids the stage recorded in
  ``<benchmarks>/<stage>/<variant>.slurm_jobs`` (one line per allocation; a requeued job appears
  once per start), every allocation of each (``--duplicates``): elapsed seconds x nodes;
* **local**: Snakemake's benchmark file ``<benchmarks>/<stage>/<variant>.tsv`` (column ``s``, the
  wall seconds of the rule's command) x the stage's nodes.

Node-seconds / 3600 x ``launch.gpu_hours_per_node_hour`` are the GPU-hours. The projection comes
from ``gates/check_budget.json`` (:func:`aqnet.train.budget.budget_gate`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aqnet.train.cost import NETWORK_CHECK_NODES, SHARED_VARIANT

__all__ = [
    "GPU_STAGES",
    "SHARED_GPU_STAGES",
    "benchmark_seconds",
    "sacct_node_seconds",
    "stage_usage",
    "usage_rows",
]

GPU_STAGES: tuple[str, ...] = ("validate_short", "finetune")
"""The stages of each variant that hold whole GPU nodes."""

SHARED_GPU_STAGES: dict[str, int] = {"check_network": NETWORK_CHECK_NODES}
"""The stages that hold whole GPU nodes once per run, and their nodes."""


def benchmark_seconds(path: str | Path) -> float | None:
    """Wall seconds in a Snakemake benchmark file (the sum of its ``s`` column), if readable."""
    try:
        with Path(path).open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError:
        return None
    values = [float(r["s"]) for r in rows if r.get("s") not in (None, "", "NA")]
    return sum(values) if values else None


def _job_ids(path: Path) -> list[str]:
    try:
        lines = path.read_text().split()
    except OSError:
        return []
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def sacct_node_seconds(job_ids: Sequence[str]) -> float | None:
    """Node-seconds of Slurm jobs over all their allocations (requeues included), by ``sacct``.

    ``None`` when ``sacct`` is not available or knows none of the jobs.
    """
    if not job_ids or shutil.which("sacct") is None:
        return None
    try:
        proc = subprocess.run(
            [
                "sacct",
                "-j",
                ",".join(job_ids),
                "-X",
                "--duplicates",
                "-n",
                "--parsable2",
                "-o",
                "JobIDRaw,ElapsedRaw,NNodes",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    total, found = 0.0, False
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        total += float(parts[1]) * int(parts[2])
        found = True
    return total if found else None


def stage_usage(
    stage: str,
    variant: str,
    *,
    benchmarks_dir: str | Path,
    nodes: int,
    gpu_hours_per_node_hour: float,
) -> dict[str, Any]:
    """GPU-hours one stage of one variant used (module docstring).

    Returns:
        ``{"used_gpu_hours": float | None, "used_from": str}``.
    """
    base = Path(benchmarks_dir) / stage
    node_s = sacct_node_seconds(_job_ids(base / f"{variant}.slurm_jobs"))
    source = "sacct"
    if node_s is None:
        seconds = benchmark_seconds(base / f"{variant}.tsv")
        node_s = None if seconds is None else seconds * nodes
        source = "benchmark file"
    if node_s is None:
        return {"used_gpu_hours": None, "used_from": "not recorded"}
    return {
        "used_gpu_hours": node_s / 3600.0 * gpu_hours_per_node_hour,
        "used_from": source,
    }


def usage_rows(
    launch: Mapping[str, Any],
    variants: Sequence[str],
    *,
    benchmarks_dir: str | Path | None,
    budget_report: str | Path | None,
) -> list[dict[str, Any]]:
    """One row per GPU stage and variant (the network check first, once): projected and used
    GPU-hours, and where each is from.

    Args:
        launch: the ``launch`` section (``nodes``, ``gpu_hours_per_node_hour``).
        variants: the variants, in order.
        benchmarks_dir: the pipeline's ``benchmarks`` folder (``None``: nothing measured).
        budget_report: ``gates/check_budget.json`` (``None`` or missing: no projection).
    """
    projected: dict[tuple[str, str], float] = {}
    if budget_report is not None and Path(budget_report).is_file():
        report = json.loads(Path(budget_report).read_text())
        for s in (report.get("projection") or {}).get("stages", []):
            projected[(s["stage"], s["variant"])] = float(s["gpu_hours"])
    runs = [(stage, SHARED_VARIANT, nodes) for stage, nodes in SHARED_GPU_STAGES.items()]
    for variant in variants:
        for stage in GPU_STAGES:
            runs.append((stage, variant, int(launch["nodes"]) if stage == "finetune" else 1))
    rows = []
    for stage, variant, nodes in runs:
        used = (
            stage_usage(
                stage,
                variant,
                benchmarks_dir=benchmarks_dir,
                nodes=nodes,
                gpu_hours_per_node_hour=float(launch["gpu_hours_per_node_hour"]),
            )
            if benchmarks_dir is not None
            else {"used_gpu_hours": None, "used_from": "not recorded"}
        )
        proj = projected.get((stage, variant))
        rows.append(
            {
                "stage": stage,
                "variant": variant,
                "nodes": nodes,
                "projected_gpu_hours": math.nan if proj is None else proj,
                "used_gpu_hours": (
                    math.nan if used["used_gpu_hours"] is None else used["used_gpu_hours"]
                ),
                "used_from": used["used_from"],
            }
        )
    return rows

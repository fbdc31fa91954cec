"""Helpers of the tests that run the workflow with Snakemake (``tests/workflow/``, and the tests
of the config and the cost that dry-run it): a fast pipeline config from the session's
``tiny_config``, a run of the repository's ``Snakefile`` in a temporary working directory with
``--configfile`` and the local profile, and the job counts of its output.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]  # tests/ is one level below the repository
SNAKEFILE = REPO / "Snakefile"
LOCAL_PROFILE = REPO / "profiles" / "local"

SHARED_RULES = ("make_demo_data", "build_cache", "train_baseline", "verify_wind_order")
VARIANT_RULES = (
    "resolve_config",
    "resolve_run_config",
    "audit_checkpoint",
    "smoke_forward",
    "validate_short",
    "finetune",
    "evaluate",
)


def workflow_config(tiny_config: dict[str, Any], **sections: Any) -> dict[str, Any]:
    """A fast pipeline config from the session's ``tiny_config``; ``sections`` replace keys.

    Tiny training runs (20 baseline steps, 2 short-validation steps, 6 fine-tune steps) and small
    validation and evaluation sets. The gates keep their default ``gates.val_loss_rtol``: every
    validation pass evaluates the same 8 samples, so the smoke and short-run losses reproduce the
    baseline's recorded one to float error. No control arm (``report.control: null``) unless a
    test asks for one, so the runs stay short.
    """
    cfg = copy.deepcopy(tiny_config)
    train = {"batch_size": 4, "val_every": 10, "checkpoint_every": 10}
    cfg["baseline"]["train"].update(train, steps=20, lr=0.002)
    cfg["finetune"].update(train, steps=6, val_every=3, checkpoint_every=3)
    cfg["validation"].update(samples=8, batch_size=4)
    cfg["gates"].update(validate_short_steps=2)
    cfg["report"].update(eval_batches=2, bootstrap_samples=200, control=None)
    cfg["launch"].update(step_time_estimate_s=0.5)
    cfg.pop("variant", None)
    cfg.update(copy.deepcopy(sections))
    return cfg


def write_config(workdir: Path, cfg: dict[str, Any], name: str = "test_config.yaml") -> Path:
    """Write ``cfg`` into ``workdir`` and return its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_snakemake(
    workdir: Path, configfile: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the workflow in ``workdir`` with ``configfile``; stdout and stderr merged."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    env.pop("SNAKEMAKE_PROFILE", None)
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(SNAKEFILE),
        "--profile", str(LOCAL_PROFILE),  # what `make demo` runs with
        "--directory", str(workdir),
        "--configfile", str(configfile),
        "--cores", "2",
        *args,
    ]  # fmt: skip
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


_STATS_ROW = re.compile(r"^(\w+)\s+(\d+)$")


def job_counts(output: str) -> dict[str, int]:
    """The first 'Job stats' table of a Snakemake run or dry run: rule -> jobs (no 'total').

    Empty when there is nothing to be done.
    """
    lines = output.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        return {}
    counts: dict[str, int] = {}
    for line in lines[start + 3 :]:
        match = _STATS_ROW.match(line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def expected_counts(variants: int, *, train_baseline: bool = True) -> dict[str, int]:
    """The full DAG's jobs for ``variants`` variants, from scratch."""
    counts = {rule: 1 for rule in SHARED_RULES}
    if not train_baseline:
        del counts["train_baseline"]
    counts.update({rule: variants for rule in VARIANT_RULES})
    # data, wind_order, network, baseline and report scopes; baseline only when it is trained
    counts.update(resolve_shared_config=5 if train_baseline else 4, report=1, all=1)
    counts["check_network"] = 1  # one network gate before every validate_short
    counts["rehearse_report"] = 1  # one gate over every variant, before any fine-tune
    counts["check_budget"] = 1  # one budget gate before all the fine-tunes
    return counts


TWO_VARIANTS = {"default": {}, "blocks01": {"model": {"topoflow_blocks": [0, 1]}}}

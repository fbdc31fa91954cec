"""Gate ``check_budget``: the run's projected GPU-hours, with the measured step times, against
``launch.max_gpu_hours`` (:func:`aqnet.train.budget.budget_gate`); every fine-tune waits for it.

Writes the JSON report (``snakemake.output.report``) on every outcome and fails with one line
naming the projected total and the budget.
"""

import json
import sys
from pathlib import Path

from aqnet.config import load_resolved
from aqnet.stage import run_stage
from aqnet.train.budget import budget_gate


def _check(report: dict) -> str:
    configs = {Path(c).parent.name: load_resolved(c) for c in snakemake.input.configs}
    reports = {
        Path(r).parent.name: json.loads(Path(r).read_text()) for r in snakemake.input.validated
    }
    meta = json.loads(Path(snakemake.input.cache).read_text())
    return budget_gate(configs, reports=reports, meta=meta, report=report)


with open(snakemake.log.log, "w") as log:
    sys.stdout = log
    code = run_stage("check_budget", _check, snakemake.output.report, snakemake.log.report)
    sys.stdout = sys.__stdout__
if code:  # the output is removed with the failed job; the copy beside the log stays
    reason = json.loads(Path(snakemake.log.report).read_text())["reason"]
    sys.exit(f"check_budget: FAIL - {reason}")

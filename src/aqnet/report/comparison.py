"""The comparison across the variants: the checks that the arms can be compared, the table of
every variant (``variants.csv``), the RMSE change of each, and the best variant.

The *best* variant is chosen on the validation year (lowest final val_loss of the fine-tune's
monitoring, the control left out), never on the samples it is then judged on; its verdict is the
one of :mod:`aqnet.report.attribution` on the evaluated split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from aqnet.report import analysis
from aqnet.report.attribution import AttributedVerdict
from aqnet.report.calibrated import CalibratedTest
from aqnet.report.inputs import VariantResults, measured_gpu_hours, projected_gpu_hours


def check_arms(
    variants: Mapping[str, VariantResults],
    rcfg: Mapping[str, Any],
    *,
    primary: str,
    control: str | None,
) -> None:
    """Raise ``ValueError`` when the control is missing or is the primary, or when an evaluation
    is not of ``report.split``."""
    if control is not None and control not in variants:
        raise ValueError(
            f"report: report.control is {control!r}, but the variants given are "
            f"{list(variants)}: add the control to `variants` or set report.control: null"
        )
    if control is not None and primary == control:
        raise ValueError(f"report: the primary variant {primary!r} is the control arm")
    for name, v in variants.items():
        split = v.evaluation.attrs.get("split")
        if split != rcfg["split"]:
            raise ValueError(
                f"report: {v.files['evaluation']} (variant {name}) evaluates split {split!r}, "
                f"but report.split is {rcfg['split']!r}: re-run evaluate"
            )


def rmse_change(variants: Mapping[str, VariantResults]) -> pd.DataFrame:
    """RMSE change (%) vs the baseline per variant (rows) and pollutant (columns), all leads."""
    rows = {}
    for name, v in variants.items():
        t = analysis.rmse_table(v.evaluation)
        t = t[t["lead_time_h"] == "all"]
        rows[name] = dict(zip(t["pollutant"], t["change_pct"], strict=True))
    return pd.DataFrame.from_dict(rows, orient="index")


def comparison_table(
    variants: Mapping[str, VariantResults],
    verdicts: Mapping[str, AttributedVerdict],
    vs_baseline: Mapping[str, CalibratedTest],
    report_cfg: Mapping[str, Any],
    launch: Mapping[str, Any],
) -> pd.DataFrame:
    """One row per variant, as in ``variants.csv``: its settings, final val_loss, the evaluated
    loss with its block-bootstrap interval, the tests against the baseline and against the control
    (Holm-adjusted), its verdict, final alphas and GPU hours (measured and projected)."""
    rows = []
    for name, v in variants.items():
        _, ft, times = analysis.paired_samples(v.evaluation)
        mean, low, high = analysis.loss_ci(ft, times, report_cfg)
        test = verdicts[name].vs_baseline if name in verdicts else vs_baseline[name]
        ctrl = verdicts[name].vs_control if name in verdicts else None
        rows.append(
            {
                "variant": name,
                **{k: str(val) for k, val in v.settings().items()},
                "final_val_loss": v.final_val_loss,
                "final_step": v.final_step,
                "eval_loss": mean,
                "eval_loss_ci_low": low,
                "eval_loss_ci_high": high,
                "diff_vs_baseline": test.mean_diff,
                "diff_ci_low": test.ci_low,
                "diff_ci_high": test.ci_high,
                "p_value": test.p_value,
                "p_holm": _nan(test.p_adjusted),
                "testable": test.testable,
                "diff_vs_control": _nan(None if ctrl is None else ctrl.mean_diff),
                "control_ci_low": _nan(None if ctrl is None else ctrl.ci_low),
                "control_ci_high": _nan(None if ctrl is None else ctrl.ci_high),
                "p_vs_control": _nan(None if ctrl is None else ctrl.p_value),
                "p_vs_control_holm": _nan(None if ctrl is None else ctrl.p_adjusted),
                "testable_vs_control": None if ctrl is None else ctrl.testable,
                "n_samples": test.n_samples,
                "n_blocks": test.n_blocks,
                "block_days": test.block_days,
                "verdict": verdicts[name].verdict if name in verdicts else "CONTROL",
                **{f"alpha_block{b}": a for b, a in v.final_alphas().items()},
                "gpu_hours": _nan(measured_gpu_hours(v, launch)),
                "projected_gpu_hours": _nan(projected_gpu_hours(v)),
            }
        )
    return pd.DataFrame(rows)


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def best_variant(
    variants: Mapping[str, VariantResults],
    verdicts: Mapping[str, AttributedVerdict],
    *,
    control: str | None,
) -> dict[str, Any]:
    """The variant chosen on the validation year (lowest final val_loss of the fine-tune's
    monitoring, the control left out) and its verdict on the evaluated split."""
    candidates = [n for n in variants if n != control and n in verdicts]
    name = min(candidates, key=lambda n: variants[n].final_val_loss)
    return {
        "name": name,
        "final_val_loss": variants[name].final_val_loss,
        "criterion": "lowest final val_loss of the fine-tune on the validation year",
        "verdict": verdicts[name].verdict,
        "line": verdicts[name].line,
    }

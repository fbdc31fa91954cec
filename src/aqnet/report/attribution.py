"""The verdict on "did TopoFlow help?": a variant against its control arm, with the baseline as
context.

A fine-tune keeps training every baseline weight, so a gain over the baseline may be nothing but
more training. The *control arm* (``report.control``, by default the variant
``no_elevation_bias``) runs the same steps, recipe, seed and data with the elevation bias off; the
gain of a variant over the control, on the same samples, is what the variant's change itself adds.

Every comparison is a :func:`aqnet.report.calibrated.calibrated_test` on the test year. Holm's
correction applies within each family: the variants' tests against the control form one family,
their tests against the baseline another (:func:`judge_variants`).

The verdict of one variant, in order of precedence:

* ``REGRESSION`` - significantly worse than the control or than the baseline;
* ``NO IMPROVEMENT`` - its loss on the evaluated samples is not below the threshold, or not
  below the baseline's paired loss on the same samples;
* ``SUCCESS`` - below the threshold and better than the control, significantly and by at least
  ``report.min_gain_pct`` percent of the control's loss, and - with several fine-tune seeds per
  arm (``finetune.seeds``) - by more than the spread between seeds
  (:func:`aqnet.report.seeds.seed_test`);
* ``INCONCLUSIVE`` - lower loss, but the test that answers the question - against the control,
  or against the baseline when no control was run - could not be run: the evaluated days make
  fewer than 2 blocks of the calibrated test
  (:attr:`~aqnet.report.calibrated.CalibratedTest.testable`), so the data cannot answer; the
  reason gives the days a test would need (a gain over the baseline alone cannot be attributed
  either way then);
* ``NOT ATTRIBUTABLE`` - significantly better than the baseline but not (or only negligibly, below
  ``report.min_gain_pct``) than the control, or no control was run: the gain is real, but the
  variant's change is not shown to cause it;
* ``NOT SIGNIFICANT`` - lower loss, significant against neither (a test against the baseline
  that could not be run is said so in the reason; the control's decides).

Why a minimum gain: any extra parameter lets a fine-tune follow a slightly different path, so on
thousands of samples even a reversed or useless bias can come out a fraction of a percent better
than the control, "significantly" for a test that conditions on the trained models. The margin
separates such a difference from an effect (the known-answer test in
``tests/report/test_verdict.py``: the formula's direction gains about 75 % over the control there,
the reversed one under 1 %).

The threshold is ``report.success_threshold`` (absolute, normalised loss); when it is null the
baseline's paired mean loss on the same samples is used, so the two numbers always come from one
evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aqnet.report.calibrated import CalibratedTest
from aqnet.report.holm import holm_tests
from aqnet.report.seeds import SeedTest

VERDICTS: tuple[str, ...] = (
    "SUCCESS",
    "INCONCLUSIVE",
    "NOT ATTRIBUTABLE",
    "NOT SIGNIFICANT",
    "NO IMPROVEMENT",
    "REGRESSION",
)


@dataclass(frozen=True)
class AttributedVerdict:
    """The verdict of one variant, with the tests behind it."""

    variant: str
    verdict: str
    reason: str
    eval_loss: float
    baseline_eval_loss: float
    threshold: float
    threshold_source: str
    min_gain_pct: float
    vs_baseline: CalibratedTest
    vs_control: CalibratedTest | None
    control: str | None
    seeds: SeedTest | None = None

    @property
    def line(self) -> str:
        """The one-line human verdict."""
        return f"{self.verdict}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "verdict": self.verdict,
            "reason": self.reason,
            "line": self.line,
            "eval_loss": self.eval_loss,
            "baseline_eval_loss": self.baseline_eval_loss,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "below_threshold": self.eval_loss < self.threshold,
            "min_gain_pct": self.min_gain_pct,
            "gain_vs_control_pct": (
                None if self.vs_control is None else -100.0 * self.vs_control.rel_diff
            ),
            "control": self.control,
            "vs_baseline": self.vs_baseline.to_dict(),
            "vs_control": None if self.vs_control is None else self.vs_control.to_dict(),
            "seeds_vs_control": None if self.seeds is None else self.seeds.to_dict(),
        }


def attributed_verdict(
    variant: str,
    *,
    vs_baseline: CalibratedTest,
    vs_control: CalibratedTest | None,
    control: str | None,
    threshold: float | None,
    threshold_source: str = "report.success_threshold",
    min_gain_pct: float = 0.0,
    seeds: SeedTest | None = None,
) -> AttributedVerdict:
    """Decide the verdict of ``variant`` (module docstring).

    Args:
        variant: the variant's name.
        vs_baseline: its test against the baseline (``ref`` = baseline), Holm-adjusted or not.
        vs_control: its test against the control arm (``ref`` = control) on the same samples;
            ``None`` when no control was run.
        control: the control's name (``None`` when none).
        threshold: the absolute loss the variant must be below; ``None``: the baseline's paired
            mean loss on the same samples.
        threshold_source: where the threshold came from (stated in the reason).
        min_gain_pct: the smallest gain over the control, in percent of the control's loss,
            that counts as an effect.
        seeds: the per-seed comparison with the control (``None``: one seed per arm).

    Raises:
        ValueError: when the threshold or a loss is not finite.
    """
    loss = float(vs_baseline.mean_new)
    base = float(vs_baseline.mean_ref)
    if threshold is None:
        threshold, threshold_source = base, "the baseline's paired mean loss on the same samples"
    threshold = float(threshold)
    if not (math.isfinite(loss) and math.isfinite(base) and math.isfinite(threshold)):
        raise ValueError(
            f"verdict of {variant}: needs finite losses and threshold, got loss {loss}, "
            f"baseline {base}, threshold {threshold} ({threshold_source})"
        )
    below = loss < threshold
    gain_pct = math.nan if vs_control is None else -100.0 * vs_control.rel_diff
    effect = (
        vs_control is not None and vs_control.significant_improvement and gain_pct >= min_gain_pct
    )
    negligible = ""
    if vs_control is not None and vs_control.significant_improvement and not effect:
        negligible = (
            f" by more than a negligible {gain_pct:.2f} % (report.min_gain_pct {min_gain_pct:g} %)"
        )
    beyond_seeds = seeds is None or (seeds.mean_diff < 0 and seeds.p_value < vs_baseline.alpha)
    if effect and not beyond_seeds:
        effect = False
        negligible = f" beyond the spread between seeds ({seeds.describe()})"
    vs_t = (
        f"loss {loss:.4f} {'<' if below else '>='} threshold {threshold:.4f} ({threshold_source})"
    )
    base_txt = f"vs baseline: {vs_baseline.describe()}"
    ctrl_txt = "no control arm was run"
    seeds_txt = (
        "one fine-tune seed per arm: the spread between training runs is not measured"
        if seeds is None
        else f"seeds: {seeds.describe()}"
    )
    worse_than_control = vs_control is not None and vs_control.significant_regression
    decisive = vs_baseline if vs_control is None else vs_control  # the test that answers
    if vs_control is not None:
        ctrl_txt = f"vs control: {vs_control.describe()}; {seeds_txt}"
    if worse_than_control or vs_baseline.significant_regression:
        worse = "the control" if worse_than_control else ""
        if vs_baseline.significant_regression:
            worse = f"{worse} and the baseline" if worse else "the baseline"
        decision, reason = "REGRESSION", f"significantly worse than {worse}; {ctrl_txt}; {base_txt}"
    elif not below or vs_baseline.mean_diff >= 0:
        why = "the threshold is not reached" if not below else "no lower loss than the baseline"
        decision, reason = "NO IMPROVEMENT", f"{why}: {vs_t}; {ctrl_txt}; {base_txt}"
    elif vs_control is not None and effect:
        decision = "SUCCESS"
        reason = f"{vs_t} and significantly better than the control {control}: {ctrl_txt}; "
        reason += base_txt
    elif not decisive.testable:
        decision = "INCONCLUSIVE"
        against = "the baseline" if vs_control is None else f"the control {control}"
        reason = (
            f"lower loss, but the test against {against} could not be run on the evaluated days "
            f"(more evaluated days would decide it): {ctrl_txt}; {base_txt}; {vs_t}"
        )
    elif vs_baseline.significant_improvement:
        decision = "NOT ATTRIBUTABLE"
        reason = (
            f"significantly better than the baseline, but not than the control "
            f"{control or '(none run)'}{negligible}: the gain is not shown to come from the "
            f"variant's change; {ctrl_txt}; {base_txt}; {vs_t}"
        )
    else:
        decision = "NOT SIGNIFICANT"
        reason = (
            f"lower loss, significant against neither{negligible}: {ctrl_txt}; {base_txt}; {vs_t}"
        )
    return AttributedVerdict(
        variant=variant,
        verdict=decision,
        reason=reason,
        eval_loss=loss,
        baseline_eval_loss=base,
        threshold=threshold,
        threshold_source=threshold_source,
        min_gain_pct=float(min_gain_pct),
        vs_baseline=vs_baseline,
        vs_control=vs_control,
        control=control,
        seeds=seeds,
    )


def judge_variants(
    vs_baseline: Mapping[str, CalibratedTest],
    vs_control: Mapping[str, CalibratedTest],
    *,
    control: str | None,
    threshold: float | None,
    threshold_source: str = "report.success_threshold",
    min_gain_pct: float = 0.0,
    seeds: Mapping[str, SeedTest | None] | None = None,
) -> dict[str, AttributedVerdict]:
    """Verdicts of every variant but the control, Holm-adjusted within each family.

    Args:
        vs_baseline: ``{variant: test against the baseline}`` (the control's included: it joins
            the family, since its test against the baseline is made too).
        vs_control: ``{variant: test against the control}`` (the control itself absent).
        control: the control's name, ``None`` when no control was run.
        threshold: see :func:`attributed_verdict`.
        seeds: ``{variant: per-seed comparison with the control}`` (absent or ``None``: one
            seed).

    Returns:
        ``{variant: verdict}`` in the order of ``vs_baseline``, the control left out.
    """
    names_b = list(vs_baseline)
    adj_b = dict(zip(names_b, holm_tests([vs_baseline[n] for n in names_b]), strict=True))
    names_c = list(vs_control)
    adj_c = dict(zip(names_c, holm_tests([vs_control[n] for n in names_c]), strict=True))
    out: dict[str, AttributedVerdict] = {}
    for name in names_b:
        if name == control:
            continue
        out[name] = attributed_verdict(
            name,
            vs_baseline=adj_b[name],
            vs_control=adj_c.get(name),
            control=control,
            threshold=threshold,
            threshold_source=threshold_source,
            min_gain_pct=min_gain_pct,
            seeds=(seeds or {}).get(name),
        )
    return out

"""The calibrated paired test, Holm's correction and the verdict against a control arm."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from aqnet.report.attribution import VERDICTS, attributed_verdict, judge_variants
from aqnet.report.calibrated import (
    autocorrelation,
    batch_means_t,
    calibrated_test,
    daily_means,
    min_block_days_for,
    politis_white_block_length,
)
from aqnet.report.holm import holm, holm_where
from aqnet.report.page import CSS, summary_html
from aqnet.report.stats import paired_test

DAY0 = np.datetime64("2018-01-01T00", "ns")


def ar1(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """A stationary AR(1) series of unit variance."""
    e = rng.standard_normal(n) * math.sqrt(1.0 - rho**2)
    x = np.empty(n)
    x[0] = rng.standard_normal()
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    return x


def daily_times(n_days: int, per_day: int = 1) -> np.ndarray:
    """``n_days * per_day`` start times, ``per_day`` evenly spread per day."""
    hours = np.arange(n_days * per_day) * (24 // per_day)
    return DAY0 + hours * np.timedelta64(1, "h")


def rejection_rates(rho: float, *, shift: float, reps: int, seed: int) -> tuple[float, float]:
    """(rate of p < 0.05, rate of a significant improvement) over ``reps`` simulated years."""
    rng = np.random.default_rng(seed)
    n = 365
    times = daily_times(n)
    zero = np.zeros(n)
    rejected = improved = 0
    for _ in range(reps):
        d = ar1(rng, n, rho) - shift
        test = calibrated_test(zero, d, times, min_block_days=4)
        rejected += test.p_value < 0.05
        improved += test.significant_improvement
    return rejected / reps, improved / reps


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_false_positive_rate_under_correlated_nulls(rho):
    fpr, _ = rejection_rates(rho, shift=0.0, reps=300, seed=int(rho * 10))
    assert fpr <= 0.07, f"rho {rho}: false-positive rate {fpr:.3f} at nominal 0.05"


def test_one_day_blocks_are_not_calibrated():
    """What the calibrated test fixes: the daily-block Wilcoxon test rejects a true null far too
    often at rho = 0.8."""
    rng = np.random.default_rng(5)
    n, reps, rejected = 120, 150, 0
    times = daily_times(n)
    for _ in range(reps):
        d = ar1(rng, n, 0.8)
        test = paired_test(np.zeros(n), d, times, block_hours=24, n_boot=100)
        rejected += test.p_value < 0.05
    assert rejected / reps > 0.2


@pytest.mark.parametrize(("rho", "min_power"), [(0.5, 0.95), (0.8, 0.6)])
def test_power_finds_a_real_shift(rho, min_power):
    shift = 0.5  # half the standard deviation of the daily differences
    _, power = rejection_rates(rho, shift=shift, reps=150, seed=3)
    assert power >= min_power, f"rho {rho}: power {power:.2f} for a shift of {shift}"


def test_block_length_follows_the_autocorrelation():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(365)
    persistent = ar1(rng, 365, 0.8)
    assert politis_white_block_length(white) < 3.0
    assert politis_white_block_length(persistent) > 8.0
    times = daily_times(365)
    t_white = calibrated_test(np.zeros(365), white, times, min_block_days=4)
    t_pers = calibrated_test(np.zeros(365), persistent, times, min_block_days=4)
    assert t_white.block_days == 4  # the floor: the longest lead time (96 h)
    assert t_pers.block_days > 20 and t_pers.lag1_autocorrelation > 0.6
    assert t_pers.n_blocks == 365 // t_pers.block_days
    assert "Politis-White" in t_pers.block_choice()
    assert t_pers.autocorrelation[1] == pytest.approx(t_pers.lag1_autocorrelation)


def test_batch_means_t_matches_a_t_test_of_the_block_means():
    from scipy import stats

    x = np.arange(12.0) % 5 - 1.5
    means, t, p, df = batch_means_t(x, 3)
    np.testing.assert_allclose(means, [x[0:3].mean(), x[3:6].mean(), x[6:9].mean(), x[9:].mean()])
    ref = stats.ttest_1samp(means, 0.0)
    assert (t, p, df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 3)
    assert batch_means_t(x, 12)[2:] == (1.0, 0)  # one block: no test


def test_daily_means_and_ci_agree_with_the_test():
    times = daily_times(40, per_day=4)
    rng = np.random.default_rng(1)
    ref = rng.random(times.size)
    new = ref - 0.05 + 0.01 * rng.standard_normal(times.size)
    days, means = daily_means(new - ref, times)
    assert days.size == 40 and means.shape == (40,)
    test = calibrated_test(ref, new, times, min_block_days=4)
    assert test.n_days == 40 and test.mean_diff == pytest.approx(means.mean())
    assert test.significant_improvement and test.ci_high < 0 < -test.ci_low
    assert (test.ci_high < 0) == (test.p_value < test.alpha)


def test_calibrated_test_input_errors():
    times = daily_times(5)
    with pytest.raises(ValueError, match="three 1-D arrays of one length"):
        calibrated_test(np.ones(5), np.ones(4), times, min_block_days=4)
    with pytest.raises(ValueError, match="1 of 5 per-sample losses of fine-tuned are not finite"):
        calibrated_test(np.ones(5), np.r_[np.ones(4), np.nan], times, min_block_days=4)
    with pytest.raises(ValueError, match="min_block_days must be >= 1"):
        calibrated_test(np.ones(5), np.ones(5), times, min_block_days=0)
    assert min_block_days_for([12, 24, 48, 96], 24) == 4
    assert min_block_days_for([12, 24], 24) == 1
    assert min_block_days_for([12], 120) == 5


def test_autocorrelation_of_a_known_series():
    x = np.array([1.0, -1.0] * 10)
    r = autocorrelation(x, 2)
    assert r[0] == 1.0 and r[1] == pytest.approx(-19 / 20) and r[2] == pytest.approx(18 / 20)
    assert autocorrelation(np.ones(5), 2).tolist() == [1.0, 0.0, 0.0]


def test_holm_on_known_p_values():
    # sorted 0.01, 0.02, 0.03, 0.04 -> 4 x 0.01, 3 x 0.02, 2 x 0.03, 1 x 0.04, made monotone
    adj = holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(adj, [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(holm([0.9, 0.6]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
    with pytest.raises(ValueError, match=r"p-values must be in \[0, 1\]"):
        holm([1.5])
    # only the tested entries form the family (a family of 2 here, not 3); the others get 1
    np.testing.assert_allclose(holm_where([0.01, 1.0, 0.02], [True, False, True]), [0.02, 1, 0.02])
    np.testing.assert_allclose(holm_where([0.3, 0.4], [False, False]), [1.0, 1.0])


def _arm(ref: np.ndarray, gain: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ref - gain + 0.01 * rng.standard_normal(ref.size)


@pytest.fixture
def losses() -> dict[str, np.ndarray]:
    times = daily_times(60, per_day=2)
    rng = np.random.default_rng(0)
    base = 0.4 + 0.05 * rng.random(times.size)
    return {
        "times": times,
        "baseline": base,
        "control": _arm(base, 0.03, 1),  # more training alone: 0.03 better than the baseline
        "same_as_control": _arm(base, 0.03, 2),
        "topoflow": _arm(base, 0.06, 3),  # 0.03 better again than the control
        "worse": _arm(base, -0.02, 4),
    }


def _tests(losses, name):
    t = losses["times"]
    vs_b = calibrated_test(losses["baseline"], losses[name], t, min_block_days=4, new_name=name)
    vs_c = calibrated_test(
        losses["control"], losses[name], t, min_block_days=4, ref_name="control", new_name=name
    )
    return vs_b, vs_c


def test_gain_over_baseline_without_gain_over_control_is_not_attributable(losses):
    vs_b, vs_c = _tests(losses, "same_as_control")
    assert vs_b.significant_improvement and not vs_c.significant_improvement
    v = attributed_verdict(
        "same_as_control", vs_baseline=vs_b, vs_control=vs_c, control="control", threshold=None
    )
    assert v.verdict == "NOT ATTRIBUTABLE"
    assert "not than the control control" in v.reason
    # without a control arm nothing can be attributed either
    v = attributed_verdict("x", vs_baseline=vs_b, vs_control=None, control=None, threshold=None)
    assert v.verdict == "NOT ATTRIBUTABLE" and "no control arm was run" in v.reason


def test_gain_over_control_is_success_only_below_the_threshold(losses):
    vs_b, vs_c = _tests(losses, "topoflow")
    assert vs_c.significant_improvement
    v = attributed_verdict(
        "topoflow", vs_baseline=vs_b, vs_control=vs_c, control="control", threshold=0.5
    )
    assert v.verdict == "SUCCESS" and v.eval_loss == pytest.approx(losses["topoflow"].mean())
    v = attributed_verdict(
        "topoflow", vs_baseline=vs_b, vs_control=vs_c, control="control", threshold=0.34
    )
    assert v.verdict == "NO IMPROVEMENT" and "threshold is not reached" in v.reason
    assert v.threshold == 0.34


def test_a_negligible_gain_over_the_control_is_not_a_success(losses):
    t = losses["times"]
    tiny = losses["control"] * 0.995  # 0.5 % better than the control, on every sample
    vs_b = calibrated_test(losses["baseline"], tiny, t, min_block_days=4, new_name="tiny")
    vs_c = calibrated_test(losses["control"], tiny, t, min_block_days=4, ref_name="control")
    assert vs_c.significant_improvement
    v = attributed_verdict(
        "tiny", vs_baseline=vs_b, vs_control=vs_c, control="control", threshold=None,
        min_gain_pct=2.0,
    )  # fmt: skip
    assert v.verdict == "NOT ATTRIBUTABLE" and "negligible 0.50 %" in v.reason
    v = attributed_verdict(
        "tiny", vs_baseline=vs_b, vs_control=vs_c, control="control", threshold=None,
        min_gain_pct=0.2,
    )  # fmt: skip
    assert v.verdict == "SUCCESS"


def test_worse_than_control_is_a_regression(losses):
    vs_b, vs_c = _tests(losses, "worse")
    v = attributed_verdict("worse", vs_baseline=vs_b, vs_control=vs_c, control="c", threshold=None)
    assert v.verdict == "REGRESSION" and "the control and the baseline" in v.reason


def test_a_test_with_fewer_than_two_blocks_says_it_cannot_be_run():
    times = daily_times(7, per_day=2)  # 7 days, blocks of at least 4 days: 1 block
    rng = np.random.default_rng(5)
    ref = 0.5 + 0.05 * rng.random(times.size)
    short = calibrated_test(ref, ref - 0.1, times, min_block_days=4, new_name="new")
    assert (short.n_blocks, short.df, short.p_value, short.testable) == (1, 0, 1.0, False)
    text = short.describe()
    assert "NOT TESTABLE: the 7 days make fewer than 2 blocks of" in text
    assert "needs at least 2 (about" in text and "no evidence either way" in text
    assert "p = 1" not in text.replace("its p = 1", "")  # no bare p-value to be read as a result
    assert short.to_dict()["testable"] is False and not short.significant_improvement
    ref3 = np.tile(ref, 3)  # 21 days, independent daily differences
    new3 = ref3 - 0.1 + 0.01 * rng.standard_normal(ref3.size)
    long = calibrated_test(ref3, new3, daily_times(21, 2), min_block_days=4)
    assert long.testable and long.n_blocks >= 2 and "NOT TESTABLE" not in long.describe()
    assert long.untestable_reason() == ""


def test_an_untestable_comparison_is_inconclusive_not_insignificant(losses):
    t = losses["times"][:14]  # the first 7 days: one 4-day block at most
    few = {k: v[:14] for k, v in losses.items() if k != "times"}
    vs_b = calibrated_test(few["baseline"], few["topoflow"], t, min_block_days=4, new_name="tf")
    vs_c = calibrated_test(few["control"], few["topoflow"], t, min_block_days=4, ref_name="ctl")
    assert not vs_b.testable and not vs_c.testable
    v = attributed_verdict("tf", vs_baseline=vs_b, vs_control=vs_c, control="ctl", threshold=None)
    assert v.verdict == "INCONCLUSIVE"
    assert "the test against the control ctl could not be run" in v.reason
    assert "NOT TESTABLE: the 7 days make fewer than 2 blocks" in v.reason
    # no control run: the baseline's test is the one that answers
    v = attributed_verdict("tf", vs_baseline=vs_b, vs_control=None, control=None, threshold=None)
    assert v.verdict == "INCONCLUSIVE" and "against the baseline could not be run" in v.reason
    # a significant gain over the baseline with the control's test impossible: not attributable
    # either way, and the verdict says the control's test is what is missing
    long_b = calibrated_test(
        losses["baseline"], losses["topoflow"], losses["times"], min_block_days=4
    )
    assert long_b.significant_improvement
    v = attributed_verdict("tf", vs_baseline=long_b, vs_control=vs_c, control="ctl", threshold=None)
    assert v.verdict == "INCONCLUSIVE" and "control ctl could not be run" in v.reason
    # with every test run, lower loss without significance stays NOT SIGNIFICANT
    t, base, rng = losses["times"], losses["baseline"], np.random.default_rng(9)
    new = base - 1e-3 + 0.02 * rng.standard_normal(t.size)  # slightly lower, lost in the noise
    ctrl = new + 0.02 * rng.standard_normal(t.size)
    vs_b = calibrated_test(base, new, t, min_block_days=4)
    vs_c = calibrated_test(ctrl, new, t, min_block_days=4, ref_name="control")
    assert vs_b.testable and vs_c.testable
    assert vs_b.mean_diff < 0 and not vs_b.significant_improvement
    assert not vs_c.significant_improvement and not vs_c.significant_regression
    v = attributed_verdict("n", vs_baseline=vs_b, vs_control=vs_c, control="c", threshold=None)
    assert v.verdict == "NOT SIGNIFICANT" and "NOT TESTABLE" not in v.reason
    # the baseline's test impossible but the control's run: the control's answer stands
    v = attributed_verdict(
        "n",
        vs_baseline=_seven_days_vs_baseline(losses),
        vs_control=vs_c,
        control="c",
        threshold=None,
    )
    assert v.verdict == "NOT SIGNIFICANT" and "NOT TESTABLE" in v.reason


def _seven_days_vs_baseline(losses):
    """The variant ``topoflow`` against the baseline on 7 days: one block, not testable."""
    t = losses["times"][:14]
    return calibrated_test(losses["baseline"][:14], losses["topoflow"][:14], t, min_block_days=4)


def test_judge_variants_applies_holm_and_leaves_the_control_out(losses):
    names = ["control", "same_as_control", "topoflow"]
    vs_b = {n: _tests(losses, n)[0] for n in names}
    vs_c = {n: _tests(losses, n)[1] for n in names if n != "control"}
    out = judge_variants(vs_b, vs_c, control="control", threshold=None)
    assert list(out) == ["same_as_control", "topoflow"]
    assert {v.verdict for v in out.values()} <= set(VERDICTS)
    assert out["topoflow"].verdict == "SUCCESS"
    assert out["same_as_control"].verdict == "NOT ATTRIBUTABLE"
    raw = [vs_c["same_as_control"].p_value, vs_c["topoflow"].p_value]
    got = [out[n].vs_control.p_adjusted for n in ("same_as_control", "topoflow")]
    np.testing.assert_allclose(got, holm(raw))
    assert out["topoflow"].vs_baseline.p_adjusted == pytest.approx(
        holm([vs_b[n].p_value for n in names])[2]
    )
    assert "Holm-adjusted p" in out["topoflow"].vs_control.describe()


def test_an_untestable_variant_stays_out_of_the_family_across_variants(losses):
    """A variant whose test against the baseline cannot be run (7 days, one block) gets Holm
    p = 1 and leaves the others' adjustment as if it were not there."""
    names = ["control", "same_as_control", "topoflow"]
    vs_b = {n: _tests(losses, n)[0] for n in names}
    vs_c = {n: _tests(losses, n)[1] for n in names if n != "control"}
    vs_b["short"] = _seven_days_vs_baseline(losses)
    assert not vs_b["short"].testable
    out = judge_variants(vs_b, vs_c, control="control", threshold=None)
    assert out["short"].verdict == "INCONCLUSIVE"  # no control test, and no baseline test either
    assert out["short"].vs_baseline.p_adjusted == 1.0
    family = holm([vs_b[n].p_value for n in names])  # the three testable ones only
    assert out["topoflow"].vs_baseline.p_adjusted == pytest.approx(family[2])
    assert out["same_as_control"].vs_baseline.p_adjusted == pytest.approx(family[1])


def _evaluation(mse: np.ndarray, region_mse: np.ndarray | None = None) -> object:
    from aqnet.config import POLLUTANTS
    from aqnet.report.evaluation_file import evaluation_dataset

    n_s = mse.shape[1]
    init = daily_times(n_s)
    leads = [12, 24, 48, 96]
    valid = init[:, None] + np.array(leads) * np.timedelta64(1, "h")
    return evaluation_dataset(
        mse=mse,
        std=np.full(len(POLLUTANTS), 10.0),
        sq_err_map=np.ones((2, len(POLLUTANTS), 2, 2)),
        init_time=init,
        valid_time=valid,
        starts=[(2018, i) for i in range(n_s)],
        lead_times_h=leads,
        units=["ug m-3"] * len(POLLUTANTS),
        lat=np.arange(2.0),
        lon=np.arange(2.0),
        region_cells=[1, 1],
        attrs={"split": "test"},
        region_mse=region_mse,
    )


def test_breakdown_by_lead_and_pollutant_with_holm():
    from aqnet.config import POLLUTANTS
    from aqnet.report.breakdown import breakdown_tests

    rng = np.random.default_rng(0)
    n_s, n_c = 80, len(POLLUTANTS)
    base = 0.4 + 0.05 * rng.random((n_s, 4, n_c))
    ft = base * (1.0 + 0.01 * rng.standard_normal(base.shape))
    pm25 = POLLUTANTS.index("pm25")
    ft[:, :, pm25] *= 0.8  # only PM2.5 gains: 20 % lower MSE at every lead
    region = 0.4 + 0.05 * rng.random((n_s, 4, 4))
    region_ft = region * (1.0 + 0.01 * rng.standard_normal(region.shape))
    region_ft[:, :, 3] *= 0.7  # the mountains gain
    ev = _evaluation(np.stack([base, ft]), np.stack([region, region_ft]))
    cfg = {"significance": 0.05, "block_hours": 24}
    table = breakdown_tests(ev, cfg, ref_name="baseline", new_name="default")
    leads = table[table.family == "lead_time_h"]
    polls = table[table.family == "pollutant"].set_index("key")
    assert leads.key.tolist() == ["12", "24", "48", "96"] and len(polls) == n_c
    assert bool(polls.loc["pm25", "significant"]) and polls.loc["pm25", "change_pct"] < -15
    assert not polls.drop("pm25")["significant"].any()
    np.testing.assert_allclose(polls["p_holm"], holm(polls["p_value"].to_numpy()))
    assert polls.loc["pm25", "rmse_new"] == pytest.approx(
        10.0 * math.sqrt(float(np.mean(ft[:, :, pm25]))), rel=1e-9
    )  # sqrt(mean(mse)) x std, over every sample and lead
    assert polls.loc["pm25", "published_rmse"] == 9.71 and polls.loc["pm25", "units"] == "ug m-3"
    assert (leads.block_days >= 4).all() and (leads.ci_high < 0).all()
    regions = table[table.family == "region"].set_index("key")
    assert regions.index.tolist() == ["basin", "plateau", "plain", "mountain"]
    assert regions["significant"].tolist() == [False, False, False, True]
    assert (regions.ci_low <= regions.mean_diff).all()
    assert (regions.mean_diff <= regions.ci_high).all()
    assert table["testable"].all()
    # a week of starts: fewer than 2 blocks everywhere, no test, nothing significant
    week = breakdown_tests(
        _evaluation(np.stack([base, ft])[:, :7]), cfg, ref_name="b", new_name="d"
    )
    assert not week["testable"].any() and not week["significant"].any()
    assert (week["p_holm"] == 1.0).all() and np.isinf(week["ci_high"]).all()


@pytest.mark.parametrize("verdict", VERDICTS)
def test_each_verdict_gets_its_own_colour_on_the_summary_page(tmp_path, verdict):
    html = summary_html([("verdict", f"{verdict} (default)")], tmp_path)
    classes = re.search(r'<div class="verdict ([^"]+)">', html).group(1).split()
    assert classes == verdict.split()  # every word a class: NOT ATTRIBUTABLE is not NOT SIGNIFICANT
    selector = "." + ".".join(classes) + "{"
    assert selector in CSS, f"no colour for {verdict}"


def test_no_two_verdicts_share_a_colour():
    colours = {
        v: re.search(r"\." + r"\.".join(v.split()) + r"\{background:(#[0-9a-f]+)", CSS)
        for v in VERDICTS
    }
    assert all(colours.values()), colours
    assert len({m.group(1) for m in colours.values()}) == len(VERDICTS)

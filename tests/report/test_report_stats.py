"""The paired statistics and the verdict, on constructed per-sample losses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from aqnet.report.stats import (
    VERDICTS,
    block_bootstrap_mean_ci,
    block_ids,
    min_attainable_p,
    paired_test,
    verdict,
    wilcoxon_blocks,
)

T0 = np.datetime64("2014-01-01T00:00", "ns")


def hourly(n: int, start: np.datetime64 = T0) -> np.ndarray:
    return start + np.arange(n) * np.timedelta64(1, "h")


def daily_noise(n_days: int, seed: int, scale: float = 0.02) -> np.ndarray:
    """Per-sample noise that is constant within a day (strongly correlated neighbours)."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.normal(0.0, scale, n_days), 24)


@pytest.fixture
def baseline_loss() -> np.ndarray:
    rng = np.random.default_rng(0)
    return 0.3557 + daily_noise(20, seed=1) + rng.normal(0.0, 0.005, 480)


def test_block_ids_are_calendar_days_for_24_h():
    times = np.array(
        ["2014-01-01T00", "2014-01-01T23", "2014-01-02T00", "2014-01-03T05"], dtype="datetime64[h]"
    )
    assert block_ids(times, 24).tolist() == [0, 0, 1, 2]
    assert block_ids(times, 1).tolist() == [0, 1, 2, 3]
    # Epoch-aligned: 2014-01-01 is day 16071 (odd), so a 48-h block starts on 2014-01-02.
    assert block_ids(times, 48).tolist() == [0, 0, 1, 1]


def test_block_ids_reject_bad_input():
    with pytest.raises(ValueError, match="datetime64"):
        block_ids(np.arange(3), 24)
    with pytest.raises(ValueError, match="NaT"):
        block_ids(np.array(["2014-01-01", "NaT"], dtype="datetime64[h]"), 24)
    with pytest.raises(ValueError, match="block_hours must be >= 1"):
        block_ids(hourly(3), 0)


def test_block_bootstrap_is_deterministic_and_brackets_the_mean():
    rng = np.random.default_rng(3)
    values = rng.normal(1.0, 0.5, 400)
    blocks = np.arange(400) // 10
    a = block_bootstrap_mean_ci(values, blocks, n_boot=1000, confidence=0.95, seed=7)
    b = block_bootstrap_mean_ci(values, blocks, n_boot=1000, confidence=0.95, seed=7)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] < values.mean() < a[1]
    assert a[2].shape == (1000,)
    # Constant values: every resample has the same mean, the interval collapses onto it.
    low, high, _ = block_bootstrap_mean_ci(
        np.full(50, 0.25), np.arange(50) // 5, n_boot=200, confidence=0.9
    )
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_block_bootstrap_widens_for_correlated_samples():
    """Day-constant noise: resampling hours as if independent understates the uncertainty."""
    values = daily_noise(30, seed=5, scale=1.0)
    hours = np.arange(values.size)
    lo_h, hi_h, _ = block_bootstrap_mean_ci(values, hours, n_boot=2000, confidence=0.95)
    lo_d, hi_d, _ = block_bootstrap_mean_ci(values, hours // 24, n_boot=2000, confidence=0.95)
    assert (hi_d - lo_d) > 3.0 * (hi_h - lo_h)  # sqrt(24) ~ 4.9 in expectation


def test_block_bootstrap_keeps_block_weights():
    """A block of 9 samples weighs 9 times a block of 1: the mean is the sample mean."""
    values = np.array([1.0] * 9 + [10.0])
    blocks = np.array([0] * 9 + [1])
    _, _, boots = block_bootstrap_mean_ci(values, blocks, n_boot=4000, confidence=0.9, seed=1)
    possible = {1.0, 10.0, (9 * 1.0 + 10.0) / 10}  # blocks drawn: {0,0}, {1,1}, {0,1}
    assert set(np.round(boots, 12)) == {round(p, 12) for p in possible}  # never (1 + 10) / 2


def test_block_bootstrap_errors():
    with pytest.raises(ValueError, match="equal length"):
        block_bootstrap_mean_ci(np.ones(3), np.ones(4), n_boot=10, confidence=0.9)
    with pytest.raises(ValueError, match="non-finite"):
        block_bootstrap_mean_ci(np.array([1.0, np.nan]), np.arange(2), n_boot=10, confidence=0.9)
    with pytest.raises(ValueError, match="empty"):
        block_bootstrap_mean_ci(np.ones(0), np.ones(0), n_boot=10, confidence=0.9)


def test_wilcoxon_blocks_edge_cases():
    assert wilcoxon_blocks(np.zeros(8)) == (0.0, 1.0)  # identical models
    stat, p = wilcoxon_blocks(-np.arange(1.0, 11.0))
    assert stat == 0.0 and p == pytest.approx(2.0 / 2**10)  # exact two-sided, all negative
    assert min_attainable_p(5) == pytest.approx(0.0625)
    assert min_attainable_p(6) == pytest.approx(0.03125)


def test_clear_improvement_is_success(baseline_loss):
    finetuned = baseline_loss - 0.02 + np.random.default_rng(1).normal(0.0, 0.002, 480)
    test = paired_test(baseline_loss, finetuned, hourly(480), block_hours=24, n_boot=1000)
    assert test.n_samples == 480 and test.n_blocks == 20
    assert test.mean_diff == pytest.approx(-0.02, abs=0.002)
    assert test.ci_high < 0 and test.p_value < 1e-4 and test.significant_improvement
    v = verdict(test, final_val_loss=0.335, threshold=0.34)
    assert v.verdict == "SUCCESS"
    assert "0.3350 < threshold 0.3400" in v.reason
    assert "n = 480 samples" in v.reason and "20 blocks of 24 h" in v.reason
    assert v.to_dict()["below_threshold"] is True
    assert v.line.startswith("SUCCESS: ")


def test_no_improvement_identical_models(baseline_loss):
    test = paired_test(baseline_loss, baseline_loss.copy(), hourly(480), block_hours=24)
    assert test.mean_diff == 0.0 and test.p_value == 1.0
    assert test.ci_low == 0.0 and test.ci_high == 0.0
    v = verdict(test, final_val_loss=0.3557, threshold=0.3557)
    assert v.verdict == "NO IMPROVEMENT"
    assert "threshold is not reached" in v.reason and ">= threshold" in v.reason


def test_regression(baseline_loss):
    finetuned = baseline_loss + 0.03
    test = paired_test(baseline_loss, finetuned, hourly(480), block_hours=24)
    assert test.significant_regression and not test.significant_improvement
    v = verdict(test, final_val_loss=0.39, threshold=0.3557)
    assert v.verdict == "REGRESSION"
    assert "significantly worse" in v.reason and "+0.03" in v.reason
    # A regression on the paired samples wins over a val_loss below the threshold.
    assert verdict(test, final_val_loss=0.30, threshold=0.3557).verdict == "REGRESSION"


def test_improvement_too_small_to_be_significant(baseline_loss):
    """A tiny mean gain swamped by day-to-day noise: lower loss, but NOT SIGNIFICANT."""
    amplitude = 0.004 + 0.002 * np.arange(10)
    swings = np.repeat(np.stack([amplitude, -amplitude], axis=1).ravel(), 24)  # +a, -a days
    finetuned = baseline_loss - 0.0005 + swings
    test = paired_test(baseline_loss, finetuned, hourly(480), block_hours=24)
    assert test.mean_diff == pytest.approx(-0.0005, abs=1e-9)
    assert test.ci_low < 0 < test.ci_high
    assert test.p_value > 0.5
    v = verdict(test, final_val_loss=0.355, threshold=0.3557)
    assert v.verdict == "NOT SIGNIFICANT"
    assert "not significant at 0.05" in v.reason


def test_blocking_accounts_for_correlated_hours(baseline_loss):
    """Six of ten days better, four worse: every hour 'agrees' with its day, so a test on the
    hours would be overwhelming, but only ten independent days back it."""
    day_effect = np.array([-0.012] * 6 + [0.01] * 4)
    finetuned = baseline_loss[:240] + np.repeat(day_effect, 24)
    naive = sps.wilcoxon(finetuned - baseline_loss[:240]).pvalue
    test = paired_test(baseline_loss[:240], finetuned, hourly(240), block_hours=24)
    assert naive < 1e-6
    assert test.mean_diff == pytest.approx(-0.0032)
    assert test.n_blocks == 10 and test.p_value == pytest.approx(0.0898, abs=1e-3)
    assert verdict(test, final_val_loss=0.35, threshold=0.3557).verdict == "NOT SIGNIFICANT"


def test_significant_gain_but_threshold_missed_is_no_improvement(baseline_loss):
    finetuned = baseline_loss - 0.01
    test = paired_test(baseline_loss, finetuned, hourly(480), block_hours=24)
    assert test.significant_improvement
    v = verdict(test, final_val_loss=0.345, threshold=0.34, threshold_source="report.success_thr")
    assert v.verdict == "NO IMPROVEMENT"
    assert "the success threshold is not reached" in v.reason and "report.success_thr" in v.reason


def test_too_few_blocks_says_so():
    base = np.full(72, 0.5)
    test = paired_test(base, base - 0.1, hourly(72), block_hours=24)  # 3 days, all better
    assert test.n_blocks == 3 and test.p_value == pytest.approx(0.25)
    v = verdict(test, final_val_loss=0.4, threshold=0.5)
    assert v.verdict == "NOT SIGNIFICANT"
    assert "with 3 blocks the smallest attainable p is 0.25" in v.reason


def test_paired_test_input_errors():
    with pytest.raises(ValueError, match="one length"):
        paired_test(np.ones(4), np.ones(5), hourly(4), block_hours=24)
    with pytest.raises(ValueError, match="at least 2 samples"):
        paired_test(np.ones(1), np.ones(1), hourly(1), block_hours=24)
    with pytest.raises(ValueError, match="1 of 3 per-sample losses of fine-tuned"):
        paired_test(np.ones(3), np.array([1.0, np.inf, 1.0]), hourly(3), block_hours=24)
    test = paired_test(np.ones(3), np.ones(3), hourly(3), block_hours=24)
    with pytest.raises(ValueError, match="finite final val_loss"):
        verdict(test, final_val_loss=float("nan"), threshold=0.3)


def test_verdict_names_and_package_exports():
    import aqnet.report

    assert aqnet.report.verdict is verdict and aqnet.report.paired_test is paired_test
    assert VERDICTS == ("SUCCESS", "NOT SIGNIFICANT", "NO IMPROVEMENT", "REGRESSION")

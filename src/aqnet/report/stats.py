"""Paired statistics of two models on the same validation samples, and the verdict.

Neighbouring hours are strongly correlated (the same weather, overlapping inputs), so treating
every sample as independent would overstate significance. Both tests therefore work on *blocks* of
``block_hours`` consecutive hours of forecast start time (24 h = calendar days, UTC); every lead
time of one forecast shares its input and lands in the same block:

* a **block bootstrap** of the mean loss difference: whole blocks are resampled with replacement
  and the mean difference over the samples they hold is recomputed (percentile interval);
* a **Wilcoxon signed-rank test** (scipy) on the per-block mean differences, two-sided.

The improvement counts as significant only when both agree: the confidence interval lies entirely
below zero and the Wilcoxon p-value is below the significance level. With ``n`` blocks the exact
two-sided Wilcoxon p-value cannot fall below ``2 / 2**n`` (0.0625 for 5 blocks), which the verdict
states when too few blocks make significance unreachable.

The verdict, in order of precedence:

* ``REGRESSION`` - the fine-tune is significantly *worse* than the baseline (interval above zero
  and p below the level);
* ``NO IMPROVEMENT`` - the final val_loss is not below the success threshold, or the mean loss
  difference is not negative;
* ``NOT SIGNIFICANT`` - below the threshold with a lower mean loss, but the paired tests do not
  confirm it;
* ``SUCCESS`` - below the threshold and significantly better than the baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _sps

VERDICTS: tuple[str, ...] = ("SUCCESS", "NOT SIGNIFICANT", "NO IMPROVEMENT", "REGRESSION")

_HOUR = np.timedelta64(1, "h")


def block_ids(times: np.ndarray, block_hours: int) -> np.ndarray:
    """Block index of each time: ``floor(hours since 1970-01-01 / block_hours)``.

    Blocks are aligned to the epoch, so 24-hour blocks are calendar days (UTC).

    Args:
        times: ``(n,)`` ``datetime64`` values.
        block_hours: block length in hours (>= 1).

    Returns:
        ``(n,)`` int64 block indices, renumbered ``0..n_blocks-1`` in time order.
    """
    if block_hours < 1:
        raise ValueError(f"block_hours must be >= 1, got {block_hours}")
    times = np.asarray(times)
    if not np.issubdtype(times.dtype, np.datetime64):
        raise ValueError(f"block_ids needs datetime64 times, got dtype {times.dtype}")
    if np.isnat(times).any():
        raise ValueError(f"{int(np.isnat(times).sum())} of {times.size} sample times are NaT")
    hours = (times - np.datetime64(0, "h")) // _HOUR
    raw = np.floor_divide(hours.astype(np.int64), int(block_hours))
    _, ids = np.unique(raw, return_inverse=True)
    return ids.astype(np.int64).reshape(times.shape)


def block_bootstrap_mean_ci(
    values: np.ndarray,
    blocks: np.ndarray,
    *,
    n_boot: int,
    confidence: float,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Percentile interval of the mean of ``values`` under a (non-overlapping) block bootstrap.

    Each resample draws ``n_blocks`` whole blocks with replacement and takes the mean over all
    samples of the drawn blocks (blocks of unequal size keep their weight).

    Args:
        values: ``(n,)`` per-sample values (e.g. loss differences).
        blocks: ``(n,)`` integer block index of each sample.
        n_boot: number of resamples.
        confidence: e.g. 0.95 for a 95 % interval.
        seed: seed of the resampling (the interval is a deterministic function of it).

    Returns:
        ``(low, high, boot_means)`` with ``boot_means`` of shape ``(n_boot,)``.
    """
    values = np.asarray(values, dtype=np.float64)
    blocks = np.asarray(blocks)
    if values.shape != blocks.shape or values.ndim != 1:
        raise ValueError(
            f"values and blocks must be 1-D of equal length, got {values.shape} and {blocks.shape}"
        )
    if values.size == 0:
        raise ValueError("block bootstrap of an empty sample")
    if not np.isfinite(values).all():
        raise ValueError(f"{int((~np.isfinite(values)).sum())} non-finite values in the sample")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    _, inverse = np.unique(blocks, return_inverse=True)
    n_blocks = int(inverse.max()) + 1
    sums = np.bincount(inverse, weights=values, minlength=n_blocks)
    counts = np.bincount(inverse, minlength=n_blocks).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_blocks, size=(int(n_boot), n_blocks))  # (n_boot, n_blocks)
    boot_means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot_means, [tail, 1.0 - tail])
    return float(low), float(high), boot_means


def wilcoxon_blocks(block_means: np.ndarray) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of ``block_means`` against zero.

    Zero differences are dropped (Wilcoxon's convention). With no non-zero block the two models
    are indistinguishable and the p-value is 1.

    Returns:
        ``(statistic, p_value)``.
    """
    d = np.asarray(block_means, dtype=np.float64)
    nonzero = d[d != 0.0]
    if nonzero.size == 0:
        return 0.0, 1.0
    res = _sps.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def min_attainable_p(n_blocks: int) -> float:
    """Smallest two-sided p-value an exact Wilcoxon test can reach with ``n_blocks`` blocks."""
    return min(1.0, 2.0 / 2.0**n_blocks) if n_blocks > 0 else 1.0


@dataclass(frozen=True)
class PairedTest:
    """Model ``new`` against model ``ref`` on the same samples (difference = new - ref)."""

    ref_name: str
    new_name: str
    n_samples: int
    n_blocks: int
    block_hours: int
    mean_ref: float
    mean_new: float
    mean_diff: float
    rel_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int
    wilcoxon_statistic: float
    p_value: float
    alpha: float
    min_attainable_p: float

    @property
    def significant_improvement(self) -> bool:
        """``new`` has a lower loss and both tests say so at level ``alpha``."""
        return self.mean_diff < 0 and self.ci_high < 0 and self.p_value < self.alpha

    @property
    def significant_regression(self) -> bool:
        """``new`` has a higher loss and both tests say so at level ``alpha``."""
        return self.mean_diff > 0 and self.ci_low > 0 and self.p_value < self.alpha

    def describe(self) -> str:
        """One line with the numbers, e.g. for the summary and the verdict reason."""
        pct = 100.0 * self.confidence
        return (
            f"{self.new_name} - {self.ref_name} mean loss difference {self.mean_diff:+.4g} "
            f"({100 * self.rel_diff:+.2f} %), {pct:.0f} % block-bootstrap CI "
            f"[{self.ci_low:+.4g}, {self.ci_high:+.4g}], Wilcoxon signed-rank p = "
            f"{self.p_value:.3g} on {self.n_blocks} blocks of {self.block_hours} h "
            f"(n = {self.n_samples} samples)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["significant_improvement"] = self.significant_improvement
        d["significant_regression"] = self.significant_regression
        d["description"] = self.describe()
        return d


def paired_test(
    loss_ref: np.ndarray,
    loss_new: np.ndarray,
    times: np.ndarray,
    *,
    block_hours: int,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    ref_name: str = "baseline",
    new_name: str = "fine-tuned",
) -> PairedTest:
    """Paired comparison of two per-sample losses on the same samples.

    Args:
        loss_ref: ``(n,)`` per-sample loss of the reference model (e.g. the baseline).
        loss_new: ``(n,)`` per-sample loss of the new model, same samples in the same order.
        times: ``(n,)`` datetime64 forecast start times of the samples (for the blocks).
        block_hours: block length of the bootstrap and of the Wilcoxon block means.
        alpha: significance level; the interval has confidence ``1 - alpha``.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Raises:
        ValueError: for mismatched shapes, non-finite losses or fewer than 2 samples.
    """
    ref = np.asarray(loss_ref, dtype=np.float64)
    new = np.asarray(loss_new, dtype=np.float64)
    times = np.asarray(times)
    if not (ref.shape == new.shape == times.shape) or ref.ndim != 1:
        raise ValueError(
            f"paired test needs three 1-D arrays of one length: {ref_name} loss {ref.shape}, "
            f"{new_name} loss {new.shape}, times {times.shape}"
        )
    if ref.size < 2:
        raise ValueError(f"paired test needs at least 2 samples, got {ref.size}")
    for name, arr in ((ref_name, ref), (new_name, new)):
        bad = int((~np.isfinite(arr)).sum())
        if bad:
            raise ValueError(f"{bad} of {arr.size} per-sample losses of {name} are not finite")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    diff = new - ref
    blocks = block_ids(times, block_hours)
    n_blocks = int(blocks.max()) + 1
    low, high, _ = block_bootstrap_mean_ci(
        diff, blocks, n_boot=n_boot, confidence=1.0 - alpha, seed=seed
    )
    block_means = np.bincount(blocks, weights=diff) / np.bincount(blocks)
    stat, p = wilcoxon_blocks(block_means)
    mean_ref = float(ref.mean())
    mean_diff = float(diff.mean())
    return PairedTest(
        ref_name=ref_name,
        new_name=new_name,
        n_samples=int(ref.size),
        n_blocks=n_blocks,
        block_hours=int(block_hours),
        mean_ref=mean_ref,
        mean_new=float(new.mean()),
        mean_diff=mean_diff,
        rel_diff=mean_diff / mean_ref if mean_ref != 0 else math.nan,
        ci_low=low,
        ci_high=high,
        confidence=1.0 - alpha,
        n_boot=int(n_boot),
        wilcoxon_statistic=stat,
        p_value=p,
        alpha=float(alpha),
        min_attainable_p=min_attainable_p(n_blocks),
    )


@dataclass(frozen=True)
class Verdict:
    """The answer to "did the fine-tune improve the baseline?", with the numbers behind it."""

    verdict: str
    reason: str
    final_val_loss: float
    threshold: float
    threshold_source: str
    test: PairedTest

    @property
    def line(self) -> str:
        """The one-line human verdict."""
        return f"{self.verdict}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "line": self.line,
            "final_val_loss": self.final_val_loss,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "below_threshold": self.final_val_loss < self.threshold,
            "test": self.test.to_dict(),
        }


def verdict(
    test: PairedTest,
    *,
    final_val_loss: float,
    threshold: float,
    threshold_source: str = "report.success_threshold",
) -> Verdict:
    """Decide SUCCESS / NOT SIGNIFICANT / NO IMPROVEMENT / REGRESSION (module docstring).

    Args:
        test: the paired test of the fine-tune (``new``) against the baseline (``ref``).
        final_val_loss: the fine-tune's last validation loss.
        threshold: the success threshold the final val_loss must be below.
        threshold_source: where the threshold came from (stated in the reason).

    Raises:
        ValueError: when the final val_loss or the threshold is not a finite number.
    """
    if not (math.isfinite(final_val_loss) and math.isfinite(threshold)):
        raise ValueError(
            f"verdict needs a finite final val_loss and threshold, got {final_val_loss} and "
            f"{threshold} ({threshold_source})"
        )
    below = final_val_loss < threshold
    vs = (
        f"final val_loss {final_val_loss:.4f} {'<' if below else '>='} threshold "
        f"{threshold:.4f} ({threshold_source})"
    )
    tests = test.describe()
    if test.significant_regression:
        decision, reason = "REGRESSION", f"significantly worse than the baseline: {tests}; {vs}"
    elif not below or test.mean_diff >= 0:
        why = "the success threshold is not reached" if not below else "no lower loss"
        decision, reason = "NO IMPROVEMENT", f"{why}: {vs}; {tests}"
    elif not test.significant_improvement:
        hint = ""
        if test.min_attainable_p >= test.alpha:
            hint = (
                f"; with {test.n_blocks} blocks the smallest attainable p is "
                f"{test.min_attainable_p:.3g} - evaluate more samples (report.eval_batches) or "
                "use shorter blocks (report.block_hours)"
            )
        decision = "NOT SIGNIFICANT"
        reason = f"lower loss but not significant at {test.alpha:g}: {tests}; {vs}{hint}"
    else:
        decision = "SUCCESS"
        reason = f"{vs} and significantly better than the baseline: {tests}"
    return Verdict(
        verdict=decision,
        reason=reason,
        final_val_loss=float(final_val_loss),
        threshold=float(threshold),
        threshold_source=threshold_source,
        test=test,
    )

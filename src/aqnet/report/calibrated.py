"""A paired test of two models that stays calibrated when the daily loss differences persist.

Why a new test: the per-day blocks of :func:`aqnet.report.stats.paired_test` treat neighbouring
days as independent. They are not: a 96 h target overlaps four forecast start days, and the
weather that makes one model better persists for days. Simulated with a day-to-day correlation
``rho`` of the daily differences, one-day blocks reject a true null in 20 % (``rho = 0.5``) to
46 % (``rho = 0.8``) of the cases at a nominal 5 %.

The test here, step by step (every choice is reported in :class:`CalibratedTest`):

1. **Daily differences.** The per-sample loss difference ``new - ref`` is averaged per calendar
   day (UTC) of the forecast start time, giving ``d_1 .. d_n`` (days in time order).
2. **Block length.** ``block_days = max(min_block_days, ceil(inflation * b_PW))`` where ``b_PW``
   is the automatic block length of Politis & White (2004, with the correction of Patton,
   Politis & White 2009) for the circular block bootstrap, computed from the autocorrelation of
   ``d`` (flat-top lag window, the lag cut-off found where the autocorrelation becomes
   insignificant). ``min_block_days`` is at least the longest lead time in days (96 h -> 4 days):
   one block then holds every start time whose targets overlap. ``b_PW`` minimises the error
   of the *variance* estimate; a test needs longer blocks for its size (the bias of the
   variance matters more than its noise), hence ``inflation`` (:data:`BLOCK_INFLATION`, checked by
   simulation in the test suite: 2 still rejects a true null in 7 % of the cases at
   ``rho = 0.8``, 3 in about 6.5 %).
3. **Batch means t test.** The days are cut into ``K = n // block_days`` consecutive blocks
   of near-equal length (the remainder spread over them); with blocks longer than the
   correlation the ``K`` block means are nearly independent and nearly normal, so
   ``t = mean / (sd / sqrt(K))`` of the block means follows Student's t with ``K - 1``
   degrees of freedom (the "batch means" test, the fixed-b view of a HAC / Diebold-Mariano
   test). Two-sided p-value; the ``1 - alpha`` confidence interval is the matching t
   interval, so "CI excludes zero" and ``p < alpha``
   always agree.

With fewer than 2 blocks the test cannot be run (:attr:`CalibratedTest.testable` is false): p = 1,
the interval is unbounded, and :meth:`CalibratedTest.describe` says "NOT TESTABLE" and how many
days a test would need, so that "p = 1" is never read as evidence of no difference. The loss of
every day counts with equal weight (the mean of the daily means), so a day with more evaluated
start times does not dominate.

References: Politis, D. N. & White, H. (2004), Econometric Reviews 23(1); Patton, A., Politis,
D. N. & White, H. (2009), Econometric Reviews 28(4); Diebold, F. X. & Mariano, R. S. (1995).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _sps

BLOCK_INFLATION = 3.0
"""Factor on the Politis-White block length (module docstring, step 2)."""


def daily_means(values: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per calendar day (UTC) of ``times``.

    Args:
        values: ``(n,)`` per-sample values (e.g. loss differences), finite.
        times: ``(n,)`` datetime64 forecast start times.

    Returns:
        ``(days (m,) datetime64[D] in time order, means (m,))``; days without a sample are absent.
    """
    values = np.asarray(values, dtype=np.float64)
    times = np.asarray(times)
    if values.shape != times.shape or values.ndim != 1:
        raise ValueError(
            f"daily_means needs 1-D values and times of one length, got {values.shape} and "
            f"{times.shape}"
        )
    if not np.issubdtype(times.dtype, np.datetime64):
        raise ValueError(f"daily_means needs datetime64 times, got dtype {times.dtype}")
    if np.isnat(times).any():
        raise ValueError(f"{int(np.isnat(times).sum())} of {times.size} sample times are NaT")
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{bad} of {values.size} per-sample values are not finite")
    days = times.astype("datetime64[D]")
    uniq, inverse = np.unique(days, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    return uniq, sums / counts


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelation ``r_0 .. r_max_lag`` of ``x`` (biased estimator, ``r_0 = 1``).

    A constant series has no defined autocorrelation; it is returned as ``[1, 0, 0, ...]``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    max_lag = int(max(0, min(max_lag, n - 1)))
    xc = x - x.mean()
    c0 = float(xc @ xc) / n if n else 0.0
    out = np.zeros(max_lag + 1)
    out[0] = 1.0
    if c0 <= 0.0:
        return out
    for k in range(1, max_lag + 1):
        out[k] = float(xc[:-k] @ xc[k:]) / n / c0
    return out


def _flat_top(t: np.ndarray) -> np.ndarray:
    """Politis & Romano's flat-top lag window: 1 up to 0.5, linear to 0 at 1."""
    a = np.abs(t)
    return np.where(a <= 0.5, 1.0, np.where(a <= 1.0, 2.0 * (1.0 - a), 0.0))


def politis_white_block_length(x: np.ndarray) -> float:
    """Automatic block length (in samples) of the circular block bootstrap of the mean of ``x``.

    Politis & White (2004) with Patton, Politis & White (2009): ``b = (2 G^2 / D)^(1/3)
    n^(1/3)``, ``G = sum lambda(k/M) |k| R(k)``, ``D = 4/3 g(0)^2``, ``g(0) = sum lambda(k/M)
    R(k)``, the lag window ``lambda`` flat-top and ``M = 2 m``, ``m`` the smallest lag after which
    ``K_N = max(5, sqrt(log10 n))`` autocorrelations in a row are within ``2 sqrt(log10 n / n)``.
    Capped at ``min(3 sqrt(n), n / 3)``; a series without correlation gives about 1.

    Args:
        x: ``(n,)`` the series (e.g. daily loss differences), ``n >= 3``.

    Returns:
        The block length in samples (a float >= 1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 3:
        return 1.0
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = math.ceil(math.sqrt(n)) + k_n
    b_max = max(1.0, min(3.0 * math.sqrt(n), n / 3.0))
    r = autocorrelation(x, min(n - 1, 2 * m_max + k_n))
    limit = 2.0 * math.sqrt(math.log10(n) / n)
    m = None
    for lag in range(0, r.size - 1):
        window = np.abs(r[lag + 1 : lag + 1 + k_n])
        if window.size and (window < limit).all():
            m = lag
            break
    if m is None:
        m = m_max
    big_m = min(2 * max(m, 1), n - 1, r.size - 1)
    xc = x - x.mean()
    c0 = float(xc @ xc) / n
    if c0 <= 0.0:
        return 1.0
    lags = np.arange(-big_m, big_m + 1)
    cov = c0 * r[np.abs(lags)]
    lam = _flat_top(lags / big_m)
    g = float((lam * np.abs(lags) * cov).sum())
    g0 = float((lam * cov).sum())
    d = 4.0 / 3.0 * g0**2
    if d <= 0.0 or g == 0.0:
        return 1.0
    b = (2.0 * g**2 / d) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return float(min(max(b, 1.0), b_max))


def batch_means_t(x: np.ndarray, block: int) -> tuple[np.ndarray, float, float, int]:
    """Block means of ``x`` in consecutive blocks of ``block`` samples, their t statistic, p.

    ``K = len(x) // block`` blocks of near-equal length (the remainder spread over them).

    Returns:
        ``(block_means (K,), t, two-sided p, degrees of freedom K - 1)``; with ``K < 2``, or
        block means without spread, ``t = 0, p = 1`` (a shift without spread is returned as
        ``t = +-inf, p = 0``).
    """
    x = np.asarray(x, dtype=np.float64)
    k = x.size // max(int(block), 1)
    if k < 1:
        return np.array([float(x.mean())]) if x.size else np.zeros(0), 0.0, 1.0, 0
    means = np.array([part.mean() for part in np.array_split(x, k)])  # (K,) near-equal blocks
    if k < 2:
        return means, 0.0, 1.0, 0
    mean = float(means.mean())
    sd = float(means.std(ddof=1))
    if sd == 0.0:
        if mean == 0.0:
            return means, 0.0, 1.0, k - 1
        return means, math.copysign(math.inf, mean), 0.0, k - 1
    t = mean / (sd / math.sqrt(k))
    p = float(2.0 * _sps.t.sf(abs(t), df=k - 1))
    return means, float(t), p, k - 1


@dataclass(frozen=True)
class CalibratedTest:
    """Model ``new`` against model ``ref`` on the same samples (difference = new - ref)."""

    ref_name: str
    new_name: str
    n_samples: int
    n_days: int
    mean_ref: float
    mean_new: float
    mean_diff: float
    rel_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    t_statistic: float
    df: int
    p_value: float
    alpha: float
    block_days: int
    n_blocks: int
    min_block_days: int
    rule_block_days: float
    block_inflation: float
    lag1_autocorrelation: float
    autocorrelation: tuple[float, ...]
    p_adjusted: float | None = None
    """Holm-adjusted p-value within the family the test belongs to (set by
    :func:`aqnet.report.holm.holm_tests`)."""

    @property
    def testable(self) -> bool:
        """At least 2 blocks: a t statistic with at least 1 degree of freedom exists."""
        return self.n_blocks >= 2

    def untestable_reason(self) -> str:
        """Why the test could not be run, and what it would need (empty when testable)."""
        if self.testable:
            return ""
        return (
            f"NOT TESTABLE: the {self.n_days} days make fewer than 2 blocks of "
            f"{self.block_days} d, and the test needs at least 2 (about {2 * self.block_days} "
            "days, the block length being chosen again from the data); its p = 1 is no evidence "
            "either way"
        )

    @property
    def p_decisive(self) -> float:
        """The p-value the decision uses: Holm-adjusted where adjusted, else the raw one."""
        return self.p_value if self.p_adjusted is None else self.p_adjusted

    @property
    def significant_improvement(self) -> bool:
        """``new`` has a lower loss and the (adjusted) p-value is below ``alpha``."""
        return self.mean_diff < 0 and self.p_decisive < self.alpha

    @property
    def significant_regression(self) -> bool:
        """``new`` has a higher loss and the (adjusted) p-value is below ``alpha``."""
        return self.mean_diff > 0 and self.p_decisive < self.alpha

    def block_choice(self) -> str:
        """How the block length was chosen, in words (stated in the report)."""
        return (
            f"blocks of {self.block_days} d = max({self.min_block_days} d minimum, "
            f"{self.block_inflation:g} x Politis-White {self.rule_block_days:.2f} d); lag-1 "
            f"autocorrelation of the daily differences {self.lag1_autocorrelation:+.2f}"
        )

    def describe(self) -> str:
        """One line with the numbers."""
        pct = 100.0 * self.confidence
        adj = "" if self.p_adjusted is None else f", Holm-adjusted p = {self.p_adjusted:.3g}"
        head = (
            f"{self.new_name} - {self.ref_name} mean loss difference {self.mean_diff:+.4g} "
            f"({100 * self.rel_diff:+.2f} %), "
        )
        if not self.testable:
            test = self.untestable_reason()
        else:
            test = (
                f"{pct:.0f} % CI [{self.ci_low:+.4g}, {self.ci_high:+.4g}], batch-means t = "
                f"{self.t_statistic:.3g} (df {self.df}), p = {self.p_value:.3g}{adj}"
            )
        return (
            f"{head}{test}; {self.n_blocks} {self.block_choice()} "
            f"(n = {self.n_samples} samples on {self.n_days} days)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["autocorrelation"] = list(self.autocorrelation)
        d["p_decisive"] = self.p_decisive
        d["testable"] = self.testable
        d["significant_improvement"] = self.significant_improvement
        d["significant_regression"] = self.significant_regression
        d["block_choice"] = self.block_choice()
        d["description"] = self.describe()
        return d

    def with_adjusted(self, p_adjusted: float) -> CalibratedTest:
        """A copy with the Holm-adjusted p-value set."""
        return CalibratedTest(**{**asdict(self), "p_adjusted": float(p_adjusted)})


def choose_block_days(
    daily: np.ndarray, *, min_block_days: int, inflation: float = BLOCK_INFLATION
) -> tuple[int, float, np.ndarray]:
    """``(block_days, Politis-White length in days, autocorrelation r_0..r_10)`` (module doc)."""
    if min_block_days < 1:
        raise ValueError(f"min_block_days must be >= 1, got {min_block_days}")
    rule = politis_white_block_length(daily)
    block = max(int(min_block_days), math.ceil(inflation * rule - 1e-9))
    return block, rule, autocorrelation(daily, 10)


def calibrated_test(
    loss_ref: np.ndarray,
    loss_new: np.ndarray,
    times: np.ndarray,
    *,
    min_block_days: int,
    alpha: float = 0.05,
    inflation: float = BLOCK_INFLATION,
    ref_name: str = "baseline",
    new_name: str = "fine-tuned",
) -> CalibratedTest:
    """The calibrated paired test of ``loss_new`` against ``loss_ref`` (module docstring).

    Args:
        loss_ref: ``(n,)`` per-sample loss of the reference model.
        loss_new: ``(n,)`` per-sample loss of the new model, same samples, same order.
        times: ``(n,)`` datetime64 forecast start times.
        min_block_days: the shortest block (days): at least the longest lead time in days.
        alpha: significance level; the interval has confidence ``1 - alpha``.
        inflation: factor on the Politis-White block length (``>= 1``).

    Raises:
        ValueError: for mismatched shapes, non-finite losses, fewer than 2 samples or a bad
            ``alpha`` / ``inflation``.
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
    if inflation < 1.0:
        raise ValueError(f"block inflation must be >= 1, got {inflation}")
    _, d = daily_means(new - ref, times)
    _, ref_daily = daily_means(ref, times)
    _, new_daily = daily_means(new, times)
    block, rule, acf = choose_block_days(d, min_block_days=min_block_days, inflation=inflation)
    means, t, p, df = batch_means_t(d, block)
    mean_diff = float(d.mean())
    if df >= 1 and math.isfinite(t) and t != 0.0:
        half = abs(mean_diff / t) * float(_sps.t.ppf(1.0 - alpha / 2.0, df))
    elif df >= 1 and math.isinf(t):
        half = 0.0
    else:
        half = math.inf
    mean_ref = float(ref_daily.mean())
    return CalibratedTest(
        ref_name=ref_name,
        new_name=new_name,
        n_samples=int(ref.size),
        n_days=int(d.size),
        mean_ref=mean_ref,
        mean_new=float(new_daily.mean()),
        mean_diff=mean_diff,
        rel_diff=mean_diff / mean_ref if mean_ref != 0 else math.nan,
        ci_low=mean_diff - half,
        ci_high=mean_diff + half,
        confidence=1.0 - alpha,
        t_statistic=float(t),
        df=int(df),
        p_value=float(p),
        alpha=float(alpha),
        block_days=int(block),
        n_blocks=int(means.size),
        min_block_days=int(min_block_days),
        rule_block_days=float(rule),
        block_inflation=float(inflation),
        lag1_autocorrelation=float(acf[1]) if acf.size > 1 else 0.0,
        autocorrelation=tuple(float(a) for a in acf),
    )


def min_block_days_for(lead_times_h: Sequence[int], min_block_hours: int) -> int:
    """The shortest block in days: the longest lead time and ``min_block_hours``, rounded up."""
    hours = max([int(h) for h in lead_times_h] + [int(min_block_hours)])
    return max(1, math.ceil(hours / 24))

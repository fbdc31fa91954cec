"""Holm's correction for the families of calibrated tests (variants, lead times, pollutants,
regions, tiles).

:func:`holm` adjusts a family's p-values (NaN entries are left out of it); :func:`holm_tests`
sets them on :class:`~aqnet.report.calibrated.CalibratedTest` objects; :func:`holm_where` adjusts
only the entries that were tested, the rest (a test with fewer than 2 blocks cannot reject) get
1 and do not widen the family.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aqnet.report.calibrated import CalibratedTest

__all__ = ["holm", "holm_tests", "holm_where"]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    ``p_adj(i) = max_{j <= rank(i)} min(1, (m - j + 1) p_(j))``; reject where ``p_adj < alpha``.
    NaN entries are left out of the family and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError(f"p-values must be in [0, 1], got {p[ok].tolist()}")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def holm_tests(tests: Sequence[CalibratedTest]) -> list[CalibratedTest]:
    """The tests of one family with their Holm-adjusted p-values set; a test that could not be
    run (``testable`` false: fewer than 2 blocks) gets 1 and does not widen the family, as in
    :func:`holm_where`."""
    adjusted = holm_where([t.p_value for t in tests], [t.testable for t in tests])
    return [t.with_adjusted(a) for t, a in zip(tests, adjusted, strict=True)]


def holm_where(p_values: Sequence[float], tested: Sequence[bool]) -> np.ndarray:
    """Holm-adjusted ``p_values`` over the entries with ``tested`` true; 1 elsewhere."""
    p = np.where(np.asarray(tested, dtype=bool), np.asarray(p_values, dtype=np.float64), np.nan)
    return np.nan_to_num(holm(p), nan=1.0)

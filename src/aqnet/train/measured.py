"""What ``validate_short`` measured, and whether the projection may use it.

* :func:`measured_times` - the median step and validation times of a run's ``metrics.csv``,
  without the first step (it includes one-off start-up work: memory allocation, kernel selection,
  compilation);
* :func:`measured_from_report` - the times a passed ``validate_short`` report holds, used by the
  projection (:mod:`aqnet.train.cost`) only when the report was made under the variant's current
  config; :func:`ignored_measurement` says why one is not.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aqnet.provenance import report_config_mismatch
from aqnet.train.metrics import read_metrics

__all__ = ["ignored_measurement", "measured_from_report", "measured_times"]


def measured_times(
    metrics: str | Path | Sequence[Mapping[str, Any]], *, skip_first: int = 1
) -> dict[str, float]:
    """Median step and validation times of a run.

    Args:
        metrics: a ``metrics.csv`` path or its rows.
        skip_first: optimizer steps left out at the start (kept when nothing else remains).

    Returns:
        ``{"step_time_s", "val_time_s", "steps_measured", "val_passes_measured"}``.

    Raises:
        ValueError: no step with a finite ``step_time_s`` (with the file named).
    """
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    where = str(metrics) if isinstance(metrics, (str, Path)) else "metrics rows"

    def finite(v: Any) -> bool:
        return v is not None and math.isfinite(float(v))

    steps = [r for r in rows if int(r.get("step") or 0) > 0 and finite(r.get("step_time_s"))]
    if not steps:
        raise ValueError(f"{where}: no optimizer step with a step_time_s to measure")
    kept = steps[skip_first:] or steps
    vals = [float(r["val_time_s"]) for r in rows if finite(r.get("val_time_s"))]
    return {
        "step_time_s": statistics.median(float(r["step_time_s"]) for r in kept),
        "val_time_s": statistics.median(vals) if vals else 0.0,
        "steps_measured": float(len(kept)),
        "val_passes_measured": float(len(vals)),
    }


def measured_from_report(
    report: Mapping[str, Any] | None, config: Mapping[str, Any] | None = None
) -> dict[str, float] | None:
    """The step and validation times a passed ``validate_short`` report measured, if any.

    Args:
        report: validate_short's report, or ``None`` before it ran.
        config: the variant's resolved config; when given, a report made under another config
            (:func:`aqnet.provenance.report_config_mismatch`) is not used.

    Returns:
        ``{"step_time_s", "val_time_s", "world_size"}`` or ``None`` (no report, a failed one, one
        without finite times, or one made under another config).
    """
    if not report or not report.get("passed"):
        return None
    if config is not None and ignored_measurement(report, config) is not None:
        return None
    step = report.get("measured_step_time_s")
    val = report.get("measured_val_time_s", 0.0)
    world = report.get("world_size")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (step, val, world)):
        return None
    return {"step_time_s": float(step), "val_time_s": float(val), "world_size": float(world)}


def ignored_measurement(report: Mapping[str, Any] | None, config: Mapping[str, Any]) -> str | None:
    """Why a passed validate_short report's measurement is not used for ``config``, else None.

    A measurement made under another config (another results folder's, an earlier batch size or
    node count) is not this run's step time: the projection falls back to the estimate and says
    so, rather than quoting it.
    """
    if not report or not report.get("passed"):
        return None
    return report_config_mismatch(report, config, what="validate_short's measurement")

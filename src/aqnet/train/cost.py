"""What the full fine-tune will cost, projected from the step time ``validate_short`` measured.

The short run uses one node with the full run's per-rank batch, so its step time is the full run's
(data-parallel steps cost the same per rank; the gradient all-reduce grows slowly with the number
of nodes, which this projection does not model). The projection is::

    wall time  = steps x step time + validation passes x validation time
    node-hours = wall time [h] x nodes
    GPU-hours  = node-hours x gpu_hours_per_node_hour   (LUMI standard-g bills 4 per node-hour)

The validation set is the same in both runs and is split over the ranks, so a validation pass of
the full run takes the short run's time x (ranks of the short run / ranks of the full run).

The step time is the median of the ``step_time_s`` column of ``metrics.csv`` without the first
step (it includes one-off start-up work: memory allocation, kernel selection, compilation).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aqnet.train.metrics import read_metrics

__all__ = ["measured_times", "project_cost", "validation_passes"]


def project_cost(
    step_time_s: float,
    *,
    steps: int,
    nodes: int,
    gpu_hours_per_node_hour: float,
    val_time_s: float = 0.0,
    val_passes: int = 0,
) -> dict[str, Any]:
    """Projected wall time, node-hours and GPU-hours of a run.

    Args:
        step_time_s: seconds per optimizer step.
        steps: optimizer steps of the run (``finetune.steps``).
        nodes: nodes of the run (``launch.nodes``).
        gpu_hours_per_node_hour: billing units per node-hour (``launch.gpu_hours_per_node_hour``).
        val_time_s: seconds per validation pass of the run.
        val_passes: validation passes of the run (:func:`validation_passes`).

    Returns:
        ``{"step_time_s", "steps", "nodes", "val_time_s", "val_passes", "gpu_hours_per_node_hour",
        "train_time_s", "wall_time_s", "wall_time_h", "node_hours", "gpu_hours"}``.

    Raises:
        ValueError: a negative or non-finite time, or non-positive nodes.
    """
    for name, value in (("step_time_s", step_time_s), ("val_time_s", val_time_s)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"project_cost: {name} must be a finite time >= 0, got {value}")
    if steps < 0 or val_passes < 0:
        raise ValueError(
            f"project_cost: steps ({steps}) and val_passes ({val_passes}) must be >= 0"
        )
    if nodes < 1 or gpu_hours_per_node_hour <= 0:
        raise ValueError(
            f"project_cost: nodes ({nodes}) must be >= 1 and gpu_hours_per_node_hour "
            f"({gpu_hours_per_node_hour}) > 0"
        )
    train_s = steps * step_time_s
    wall_s = train_s + val_passes * val_time_s
    node_hours = wall_s / 3600.0 * nodes
    return {
        "step_time_s": float(step_time_s),
        "steps": int(steps),
        "nodes": int(nodes),
        "val_time_s": float(val_time_s),
        "val_passes": int(val_passes),
        "gpu_hours_per_node_hour": float(gpu_hours_per_node_hour),
        "train_time_s": train_s,
        "wall_time_s": wall_s,
        "wall_time_h": wall_s / 3600.0,
        "node_hours": node_hours,
        "gpu_hours": node_hours * gpu_hours_per_node_hour,
    }


def validation_passes(steps: int, val_every: int) -> int:
    """Validation passes of a run: step 0, every ``val_every`` steps, and the last step."""
    if val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {val_every}")
    return 1 + steps // val_every + (1 if steps % val_every else 0)


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

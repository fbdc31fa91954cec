"""What the full fine-tune will cost, projected from the step time ``validate_short`` measured.

The short run uses one node with the full run's per-rank batch, so its step time is the full run's
(data-parallel steps cost the same per rank; the gradient all-reduce grows slowly with the number
of nodes, which this projection does not model). The projection is::

    wall time  = steps x step time + validation passes x validation time
    node-hours = wall time [h] x nodes
    GPU-hours  = node-hours x gpu_hours_per_node_hour   (LUMI standard-g bills 4 per node-hour)

The validation set is the same in both runs and is split over the ranks, so a validation pass of
the full run takes the short run's time x (ranks of the short run / ranks of the full run).

The step time is validate_short's median (:mod:`aqnet.train.measured`), else the estimate
``launch.step_time_estimate_s``.

The network check (``check_network``, once per run) is projected as its whole request,
:data:`NETWORK_CHECK_NODES` nodes for :data:`NETWORK_CHECK_MINUTES` minutes: an upper bound, since
Slurm bills the time it uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from aqnet.train.length import run_length

__all__ = [
    "NETWORK_CHECK_MINUTES",
    "NETWORK_CHECK_NODES",
    "SHARED_VARIANT",
    "finetune_projection",
    "format_projection",
    "network_check_projection",
    "project_cost",
    "requested_minutes",
    "run_projection",
    "validate_short_projection",
    "validation_passes",
]


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


# ---------------------------------------------------------------------------------------------
# The requested wall time


def requested_minutes(
    cost: Mapping[str, Any],
    *,
    margin: float,
    startup_min: float,
    limit_min: int,
) -> dict[str, Any]:
    """The wall time to request for a run: projected time x margin + start-up, capped.

    ``minutes = ceil(wall_time_s x margin / 60 + startup_min)``, then at most ``limit_min`` (the
    partition's limit). A capped request cannot finish in one allocation: the run saves at
    Slurm's warning signal and its job requeues itself (``finetune`` rule).

    Args:
        cost: :func:`project_cost`'s dict (``wall_time_s``).
        margin: factor >= 1 on the projected time (``launch.walltime_margin``).
        startup_min: minutes added for start-up and the signal's warning time
            (``launch.walltime_startup_min``).
        limit_min: the partition's time limit in minutes (``launch.partition_time_limit_min``).

    Returns:
        ``{"minutes", "uncapped_minutes", "capped", "limit_min", "margin", "startup_min"}``.
    """
    if margin < 1 or startup_min < 0 or limit_min < 1:
        raise ValueError(
            f"requested_minutes: margin ({margin}) must be >= 1, startup_min ({startup_min}) "
            f">= 0 and limit_min ({limit_min}) >= 1"
        )
    uncapped = math.ceil(float(cost["wall_time_s"]) * margin / 60.0 + startup_min)
    return {
        "minutes": min(uncapped, int(limit_min)),
        "uncapped_minutes": uncapped,
        "capped": uncapped > limit_min,
        "limit_min": int(limit_min),
        "margin": float(margin),
        "startup_min": float(startup_min),
    }


# ---------------------------------------------------------------------------------------------
# The projection of a whole run: every GPU stage of every variant, against the budget


def finetune_projection(
    cfg: Mapping[str, Any],
    *,
    start_times: int,
    measured: Mapping[str, float] | None,
) -> dict[str, Any]:
    """The fine-tune of one variant: length, cost and requested wall time.

    With ``measured`` (:func:`aqnet.train.measured.measured_from_report`) the step time and the
    validation time (scaled from the short run's ranks to the full run's) are validate_short's;
    without it the step time is ``launch.step_time_estimate_s`` and validation time is not
    counted.

    Args:
        cfg: the variant's resolved config.
        start_times: forecast start times of the training split.
        measured: the short run's times, or ``None`` before it ran.

    Returns:
        :func:`project_cost`'s dict plus ``"length"`` (:func:`run_length`), ``"request"``
        (:func:`requested_minutes`), ``"source"`` (``"measured"`` or ``"estimate"``) and
        ``"full_world_size"``.
    """
    launch, ft = cfg["launch"], cfg["finetune"]
    length = run_length(ft, start_times=start_times)
    full_world = int(launch["nodes"]) * int(launch["tasks_per_node"])
    if measured is not None:
        step_s = float(measured["step_time_s"])
        val_s = float(measured["val_time_s"]) * float(measured["world_size"]) / full_world
        source = "measured"
    else:
        step_s, val_s, source = float(launch["step_time_estimate_s"]), 0.0, "estimate"
    cost = project_cost(
        step_s,
        steps=length["steps"],
        nodes=int(launch["nodes"]),
        gpu_hours_per_node_hour=float(launch["gpu_hours_per_node_hour"]),
        val_time_s=val_s,
        val_passes=validation_passes(length["steps"], int(ft["val_every"])),
    )
    cost["length"] = length
    cost["request"] = requested_minutes(
        cost,
        margin=float(launch["walltime_margin"]),
        startup_min=float(launch["walltime_startup_min"]),
        limit_min=int(launch["partition_time_limit_min"]),
    )
    cost["source"] = source
    cost["full_world_size"] = full_world
    return cost


def validate_short_projection(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The short run of one variant: ``gates.validate_short_steps`` on one node.

    Its own step time is always the estimate (``launch.step_time_estimate_s``): what it measures
    is the fine-tune's. Start-up is not counted here, as for the fine-tune (:func:`project_cost`).
    """
    launch = cfg["launch"]
    cost = project_cost(
        float(launch["step_time_estimate_s"]),
        steps=int(cfg["gates"]["validate_short_steps"]),
        nodes=1,
        gpu_hours_per_node_hour=float(launch["gpu_hours_per_node_hour"]),
    )
    cost["source"] = "estimate"
    return cost


NETWORK_CHECK_NODES = 2
"""Nodes of the ``check_network`` stage: the fewest that put traffic between nodes (its rule in
``workflow/rules/train.smk`` and ``profiles/lumi/config.yaml`` request these)."""

NETWORK_CHECK_MINUTES = 15
"""The ``check_network`` stage's requested wall time, in minutes."""

SHARED_VARIANT = "shared"
"""The ``variant`` of a stage that runs once for every variant (``aqnet.plan.SHARED``)."""


def network_check_projection(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The network check's GPU-hours: its whole request (module docstring).

    Returns:
        ``{"source": "request", "nodes", "minutes", "wall_time_h", "node_hours",
        "gpu_hours_per_node_hour", "gpu_hours"}``.
    """
    per_node_hour = float(cfg["launch"]["gpu_hours_per_node_hour"])
    hours = NETWORK_CHECK_MINUTES / 60.0
    return {
        "source": "request",
        "nodes": NETWORK_CHECK_NODES,
        "minutes": NETWORK_CHECK_MINUTES,
        "wall_time_h": hours,
        "node_hours": NETWORK_CHECK_NODES * hours,
        "gpu_hours_per_node_hour": per_node_hour,
        "gpu_hours": NETWORK_CHECK_NODES * hours * per_node_hour,
    }


def run_projection(
    variant_cfgs: Mapping[str, Mapping[str, Any]],
    *,
    start_times: int,
    start_times_source: str,
    measured: Mapping[str, Mapping[str, float] | None],
    max_gpu_hours: float | None,
    notes: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Every GPU stage of a run, its GPU-hours, their total and the budget: the network check
    once, then each variant's validate_short and fine-tune.

    Args:
        variant_cfgs: ``{variant: resolved config}``.
        start_times: forecast start times of the training split.
        start_times_source: where ``start_times`` came from (``"cache"`` or ``"estimate"``).
        measured: ``{variant: validate_short's times or None}``.
        max_gpu_hours: ``launch.max_gpu_hours`` (``None``: no budget).
        notes: ``{variant: why its measurement is not used}``
            (:func:`aqnet.train.measured.ignored_measurement`), shown beside the estimate.

    Returns:
        ``{"stages": [{"stage", "variant", "gpu_hours", "cost"}], "total_gpu_hours",
        "max_gpu_hours", "over_budget", "start_times", "start_times_source"}``.
    """
    stages = []
    for cfg in list(variant_cfgs.values())[:1]:  # once per run; ``launch`` is the same for all
        network = network_check_projection(cfg)
        stages.append(
            {
                "stage": "check_network",
                "variant": SHARED_VARIANT,
                "gpu_hours": network["gpu_hours"],
                "cost": network,
            }
        )
    for variant, cfg in variant_cfgs.items():
        short = validate_short_projection(cfg)
        stages.append(
            {
                "stage": "validate_short",
                "variant": variant,
                "gpu_hours": short["gpu_hours"],
                "cost": short,
            }
        )
        full = finetune_projection(cfg, start_times=start_times, measured=measured.get(variant))
        if full["source"] == "estimate" and (notes or {}).get(variant):
            full["note"] = notes[variant]
        stages.append(
            {"stage": "finetune", "variant": variant, "gpu_hours": full["gpu_hours"], "cost": full}
        )
    total = sum(s["gpu_hours"] for s in stages)
    return {
        "stages": stages,
        "total_gpu_hours": total,
        "max_gpu_hours": max_gpu_hours,
        "over_budget": max_gpu_hours is not None and total > max_gpu_hours,
        "start_times": int(start_times),
        "start_times_source": start_times_source,
    }


def format_projection(projection: Mapping[str, Any]) -> list[str]:
    """The projection as lines for a terminal: one per GPU stage, then the total and budget."""
    lines = []
    for s in projection["stages"]:
        c = s["cost"]
        if c["source"] == "request":
            lines.append(
                f"{s['stage']:<15} {s['variant']:<20} {s['gpu_hours']:9.2f} GPU-h  "
                f"{c['nodes']} node(s) x {c['minutes']} min requested (an upper bound: Slurm "
                "bills the time used)"
            )
            continue
        text = (
            f"{s['stage']:<15} {s['variant']:<20} {s['gpu_hours']:9.2f} GPU-h  "
            f"{c['steps']} steps x {c['step_time_s']:.3g} s on {c['nodes']} node(s)"
        )
        if s["stage"] == "finetune":
            length, req = c["length"], c["request"]
            text += (
                f" = {length['epochs']:.2f} epoch(s), {length['samples_seen']} samples seen; "
                f"wall time requested {req['minutes']} min"
                + (f" (capped at the partition's {req['limit_min']} min)" if req["capped"] else "")
            )
        if c["source"] == "measured":
            text += " [step time measured by validate_short]"
        elif c.get("note"):
            text += f" [step time estimated: launch.step_time_estimate_s; {c['note']}: not used]"
        else:
            text += " [step time estimated: launch.step_time_estimate_s, until validate_short runs]"
        lines.append(text)
    budget = projection["max_gpu_hours"]
    lines.append(
        f"total           {'':<20} {projection['total_gpu_hours']:9.2f} GPU-h"
        + (
            f" of a budget of {budget:g} GPU-h (launch.max_gpu_hours)"
            if budget is not None
            else " (no budget: launch.max_gpu_hours is null)"
        )
        + f"; {projection['start_times']} training start times ({projection['start_times_source']})"
    )
    return lines

"""Gate ``validate_short``: a few fine-tune steps on one node under the real launcher.

It runs :func:`aqnet.train.run_training` with ``stage="validate_short"`` (the fine-tune's first
``gates.validate_short_steps`` steps, its schedule and its per-rank batch) and passes only when

1. every rank started and all agree on the world size, which is the configured one (one node:
   ``launch.tasks_per_node`` ranks, or ``--world-size``) - checked before the process group starts
   and again after it is up;
2. the step-0 validation loss (before any update, ``alpha = 0``) is within
   ``gates.val_loss_rtol`` of the baseline's (``baseline.val_loss``, else the one recorded in the
   baseline checkpoint). It is evaluated on the pipeline's one validation subset
   (``validation.samples``, :func:`aqnet.data.validation_indices`) - the items a baseline trained
   by ``train_baseline`` recorded its loss on and ``smoke_forward`` evaluates - so for such a
   baseline the two agree to float error whatever the number of ranks;
3. every training and validation loss is finite.

The JSON report (written on every outcome by :func:`aqnet.stage.run_stage`) holds the measured
step and validation times and the projected cost of the full run
(:func:`aqnet.train.cost.finetune_projection`): the fine-tune's steps (``finetune.epochs`` of
the cache's training start times, or ``finetune.steps``) x step time x ``launch.nodes`` as
node-hours, as GPU-hours (``launch.gpu_hours_per_node_hour``), as wall time and as the wall time
its job requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aqnet.data import read_meta
from aqnet.stage import StageFailure
from aqnet.train.cost import finetune_projection
from aqnet.train.length import start_times_in_cache
from aqnet.train.loop import run_training
from aqnet.train.measured import measured_times

__all__ = ["baseline_val_loss", "short_run_cost", "validate_short"]


def baseline_val_loss(cfg: Mapping[str, Any], init_checkpoint: str | Path) -> tuple[float, str]:
    """The baseline's validation loss and where it came from (config, else the checkpoint).

    Raises:
        StageFailure: neither the config nor the checkpoint records one.
    """
    configured = cfg["baseline"].get("val_loss")
    if configured is not None:
        return float(configured), "config baseline.val_loss"
    from aqnet.checkpoint import read_checkpoint

    contents = read_checkpoint(init_checkpoint)
    if contents.val_loss is None:
        raise StageFailure(
            f"validate_short: the baseline checkpoint {init_checkpoint} records no validation loss "
            "and baseline.val_loss is not set; set baseline.val_loss in the config"
        )
    return float(contents.val_loss), f"checkpoint {init_checkpoint} ({contents.val_loss_source})"


def short_run_cost(
    metrics: str | Path | list[Mapping[str, Any]],
    cfg: Mapping[str, Any],
    *,
    measured_world_size: int,
    start_times: int,
) -> dict[str, Any]:
    """Project the full fine-tune's cost from a short run's metrics.

    Args:
        metrics: the short run's ``metrics.csv`` (or its rows).
        cfg: the resolved config (``finetune``, ``launch``).
        measured_world_size: ranks of the short run (its validation time is scaled by
            ``measured / full`` ranks, since the validation set is split over the ranks).
        start_times: forecast start times of the training split (the length in epochs).

    Returns:
        :func:`aqnet.train.cost.finetune_projection`'s dict plus ``"measured"`` (the medians)
        and ``"measured_world_size"``.
    """
    times = measured_times(metrics)
    cost = finetune_projection(
        cfg,
        start_times=start_times,
        measured={
            "step_time_s": times["step_time_s"],
            "val_time_s": times["val_time_s"],
            "world_size": float(measured_world_size),
        },
    )
    cost["measured"] = times
    cost["measured_world_size"] = int(measured_world_size)
    return cost


def validate_short(
    cfg: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    out_dir: str | Path,
    state_dir: str | Path,
    init_checkpoint: str | Path,
    expected_world_size: int | None,
    report: dict[str, Any],
) -> str:
    """Run the short fine-tune and the gate; fill ``report``; return the one-line reason.

    Raises:
        StageFailure: a failed check, with the numbers.
        LaunchError: the ranks were not started as configured.
    """
    from aqnet.provenance import gate_digest

    report["config_digest"] = gate_digest(cfg)  # the projection and the fine-tune check it
    rtol = float(cfg["gates"]["val_loss_rtol"])
    base, base_source = baseline_val_loss(cfg, init_checkpoint)
    report.update(
        variant=cfg.get("variant", "default"),
        init_checkpoint=str(init_checkpoint),
        baseline_val_loss=base,
        baseline_val_loss_source=base_source,
        val_loss_rtol=rtol,
        expected_world_size=expected_world_size,
    )
    result = run_training(
        cfg,
        stage="validate_short",
        cache_dir=cache_dir,
        out_dir=out_dir,
        state_dir=state_dir,
        init_checkpoint=init_checkpoint,
        expected_world_size=expected_world_size,
        resume=False,
    )
    rows = result["rows"]
    report.update(
        world_size=result["world_size"],
        launcher=result["launcher"],
        ranks=result["ranks"],
        batch=result["batch"],
        validation_samples=result["validation_samples"],
        steps=result["steps_done"],
        metrics=str(Path(out_dir) / "metrics.csv"),
        train_losses=[r["train_loss"] for r in rows if r.get("train_loss") is not None],
        val_losses={r["step"]: r["val_loss"] for r in rows if r.get("val_loss") is not None},
    )

    world = result["world_size"]
    if expected_world_size is not None and world != expected_world_size:
        raise StageFailure(  # init_distributed refuses this already; kept as the gate's own check
            f"validate_short: {world} ranks ran but {expected_world_size} were configured"
        )
    sizes = sorted({r["world_size"] for r in result["ranks"]})
    if len(result["ranks"]) != world or sizes != [world]:
        raise StageFailure(
            f"validate_short: ranks disagree on the world size: {len(result['ranks'])} ranks "
            f"reported world sizes {sizes}"
        )

    bad = [
        (r["step"], k, r[k])
        for r in rows
        for k in ("train_loss", "val_loss")
        if r.get(k) is not None and not math.isfinite(r[k])
    ]
    if bad:
        step, key, value = bad[0]
        raise StageFailure(f"validate_short: {key} is {value} at step {step}")

    v0 = result["step0_val_loss"]
    rel = abs(v0 - base) / max(abs(base), 1e-12)
    report.update(step0_val_loss=v0, step0_rel_diff=rel)

    cost = short_run_cost(
        rows,
        cfg,
        measured_world_size=world,
        start_times=start_times_in_cache(read_meta(cache_dir)),
    )
    report["measured_step_time_s"] = cost["step_time_s"]
    report["measured_val_time_s"] = cost["measured"]["val_time_s"]
    report["projected_cost"] = cost

    if rel > rtol:
        raise StageFailure(
            f"validate_short: step-0 val_loss {v0:.6g} (on {result['validation_samples']} "
            f"validation samples) differs from the baseline's {base:.6g} ({base_source}) by "
            f"{100 * rel:.2f}% > {100 * rtol:.2f}% (gates.val_loss_rtol): the fine-tune does not "
            "start from the baseline"
        )
    return (
        f"{world} rank(s) agreed on the world size; step-0 val_loss {v0:.4f} on "
        f"{result['validation_samples']} validation samples within {100 * rel:.2f}% of the "
        f"baseline's {base:.4f}; {result['steps_done']} steps finite; "
        f"projected full run: {cost['steps']} steps ({cost['length']['epochs']:.3g} epochs, "
        f"{cost['length']['samples_seen']} samples) x {cost['step_time_s']:.3g} s x "
        f"{cost['nodes']} node(s) = {cost['node_hours']:.3g} node-hours = "
        f"{cost['gpu_hours']:.3g} GPU-hours, wall time {cost['wall_time_h']:.3g} h "
        f"(requested {cost['request']['minutes']} min)"
    )

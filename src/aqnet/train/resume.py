"""Fresh start or resume: what a training stage does with the state it finds in ``state_dir``.

* nothing there: it starts at step 0;
* ``last.pt`` of an unfinished run (a crash, a kill, Slurm's USR1, ``--stop-after-step``): it
  resumes from that step;
* ``last.pt`` of a finished run and ``complete.json`` (written once the run's outputs were): the
  outputs were delivered, so this is a deliberate rerun (``snakemake --forcerun finetune``) and it
  starts afresh;
* ``last.pt`` of a finished run without ``complete.json``: the run crashed after its last save;
  it resumes and only writes its outputs;
* any state with ``--fresh`` / ``AQNET_FRESH=1``: it starts afresh - unless the state was written
  by this same Slurm job, which is then a requeued job (same id, same environment) and resumes.

Starting afresh never deletes: ``last.pt`` and ``complete.json`` are renamed to
``last.<UTC time>.pt`` and ``complete.<UTC time>.json`` in the same folder (:func:`archive_state`).
A state written by a different run (other settings) is still refused by the training, naming the
difference, unless the start is asked to be fresh.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aqnet.stage import read_json, write_json

log = logging.getLogger("aqnet.train")

__all__ = [
    "COMPLETE_FILE",
    "FINGERPRINT_SETTINGS",
    "FRESH_ENV",
    "StartPlan",
    "archive_state",
    "check_fingerprint",
    "current_job_id",
    "fresh_requested",
    "mark_complete",
    "plan_start",
    "run_fingerprint",
    "start_state",
]

COMPLETE_FILE = "complete.json"
"""Written beside ``last.pt`` once a finished run has written its outputs."""
FRESH_ENV = "AQNET_FRESH"
"""Environment variable: ``1`` asks the training to start afresh (see the module docstring)."""
FINGERPRINT_SETTINGS = (
    "batch_size",
    "grad_accum",
    "lr",
    "lr_new",
    "weight_decay",
    "param_groups",
    "warmup_steps",
    "min_lr_ratio",
    "grad_clip",
    "bf16",
    "seed",
)
"""The ``train`` settings that must not change across a resume (part of the state's
``fingerprint``, with the model, the batch layout, the schedule and the data)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StartPlan:
    """What a run does with its state folder.

    Attributes:
        action: ``"new"`` (no state), ``"resume"`` or ``"fresh"`` (archive the state first).
        reason: one line for the log.
        state: the loaded state when resuming (and when a fresh start must still check it).
    """

    action: str
    reason: str
    state: dict[str, Any] | None = None


def fresh_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``AQNET_FRESH`` asks for a fresh start (``1``, ``true``, ``yes``)."""
    value = (os.environ if env is None else env).get(FRESH_ENV, "")
    return value.strip().lower() in {"1", "true", "yes"}


def current_job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The Slurm job id of this process (the same across a requeue), else ``None``."""
    return (os.environ if env is None else env).get("SLURM_JOB_ID") or None


def plan_start(
    state: Mapping[str, Any] | None,
    state_dir: Path,
    *,
    run_steps: int,
    fresh: bool,
    job_id: str | None,
) -> StartPlan:
    """Decide between a fresh start and a resume (see the module docstring).

    Args:
        state: the loaded ``last.pt`` (``aqnet.train.state.load_state``), ``None`` when absent.
        state_dir: the folder holding it and ``complete.json``.
        run_steps: the steps this run performs.
        fresh: ``--fresh`` / ``AQNET_FRESH``.
        job_id: this process's Slurm job id (``None`` outside Slurm).
    """
    if state is None:
        return StartPlan(action="new", reason="no resume state: starting at step 0")
    step = int(state.get("step", 0))
    if fresh:
        if job_id is not None and state.get("job_id") == job_id:
            return StartPlan(
                action="resume",
                state=dict(state),
                reason=f"fresh start asked, but the state (step {step}) was written by this same "
                f"Slurm job {job_id} (requeued): resuming",
            )
        return StartPlan(
            action="fresh",
            state=dict(state),
            reason=f"fresh start asked (--fresh / {FRESH_ENV}=1): the state at step {step} is "
            "kept under a dated name",
        )
    marker = state_dir / COMPLETE_FILE
    delivered = marker.is_file() and _marker_step(marker) == step
    if step >= run_steps and delivered:
        return StartPlan(
            action="fresh",
            state=dict(state),
            reason=f"the previous run finished ({step} steps) and wrote its outputs ({marker}): "
            "this rerun starts afresh and keeps that state under a dated name",
        )
    if step >= run_steps:
        return StartPlan(
            action="resume",
            state=dict(state),
            reason=f"the previous run finished ({step} steps) but did not write its outputs: "
            "resuming to write them",
        )
    return StartPlan(action="resume", state=dict(state), reason=f"resuming from step {step}")


def run_fingerprint(
    *,
    stage: str,
    model_config: Mapping[str, Any],
    global_batch: int,
    schedule_steps: int,
    lead_times_h: Sequence[int],
    train_samples: int,
    validation_samples: int,
    tcfg: Mapping[str, Any],
) -> dict[str, Any]:
    """What a resume state must match: the model, the batch layout, the schedule, the data and
    the :data:`FINGERPRINT_SETTINGS` of the stage's ``train`` section ``tcfg``."""
    return {
        "stage": stage,
        "model_config": model_config,
        "global_batch": global_batch,
        "schedule_steps": schedule_steps,
        "lead_times_h": list(lead_times_h),
        "train_samples": train_samples,
        # best_val_loss compares passes: they must all evaluate the same subset
        "validation_samples": validation_samples,
        **{k: tcfg[k] for k in FINGERPRINT_SETTINGS},
    }


def check_fingerprint(
    state: Mapping[str, Any], current: Mapping[str, Any], *, state_path: Path
) -> None:
    """Refuse a state written by a different run: ``state["fingerprint"]`` against ``current``.

    Raises:
        ResumeError: naming every setting that differs, the state's value and the current one.
    """
    from aqnet.train.state import ResumeError, fingerprint_differences

    diffs = fingerprint_differences(state.get("fingerprint", {}), current)
    if diffs:
        listing = "; ".join(f"{k}: {a!r} (state) vs {b!r} (now)" for k, (a, b) in diffs.items())
        raise ResumeError(
            f"resume state {state_path} was written by a different run ({listing}); restore the "
            f"settings, or start the stage afresh with {FRESH_ENV}=1 (the state is kept under a "
            "dated name)"
        )


def start_state(
    state_path: Path,
    *,
    stage: str,
    run_steps: int,
    fresh: bool,
    fingerprint: Mapping[str, Any],
    barrier: Callable[[], None],
    is_main: bool,
) -> dict[str, Any] | None:
    """Read ``state_path`` and act on :func:`plan_start`'s decision, on every rank.

    Returns the state to resume from, or ``None`` for a start at step 0, after rank 0 archived
    the state of a fresh start (every rank has read it first). A state of other settings is
    refused (:func:`check_fingerprint`) unless the start was asked to be fresh.

    Args:
        state_path: ``<state_dir>/last.pt``.
        stage: the training stage, for the log.
        run_steps: the steps this run performs.
        fresh: ``--fresh`` / ``AQNET_FRESH``.
        fingerprint: this run's fingerprint (what the state's must equal).
        barrier: waits for every rank (a no-op in a single process).
        is_main: this is rank 0, the one that archives.

    Raises:
        ResumeError: an unreadable state (without ``fresh``) or one of a different run.
    """
    from aqnet.train.state import ResumeError, load_state

    try:
        state = load_state(state_path)
    except ResumeError:
        if not fresh:
            raise
        state = {"step": -1}  # unreadable, archived below
    plan = plan_start(
        state, state_path.parent, run_steps=run_steps, fresh=fresh, job_id=current_job_id()
    )
    if plan.action == "resume":
        return plan.state
    if plan.action == "fresh":
        if not fresh and state is not None:
            # other settings: refused, whatever the step
            check_fingerprint(state, fingerprint, state_path=state_path)
        barrier()  # every rank has read the state before it moves
        if is_main:
            moved = archive_state(state_path.parent)
            log.info("%s starts afresh: %s (%s)", stage, plan.reason, ", ".join(map(str, moved)))
        barrier()
    return None


def _marker_step(marker: Path) -> int | None:
    try:
        return int(read_json(marker)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def archive_state(state_dir: Path, *, now: _dt.datetime | None = None) -> list[Path]:
    """Rename ``last.pt`` and ``complete.json`` of ``state_dir`` to dated names; return the new
    paths. Nothing is deleted; a name already taken gets a counter."""
    from aqnet.train.state import STATE_FILE

    stamp = (now or _dt.datetime.now(_dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for name in (STATE_FILE, COMPLETE_FILE):
        src = state_dir / name
        if not src.exists():
            continue
        stem, suffix = src.stem, src.suffix
        dst = state_dir / f"{stem}.{stamp}{suffix}"
        k = 1
        while dst.exists():
            dst = state_dir / f"{stem}.{stamp}-{k}{suffix}"
            k += 1
        os.replace(src, dst)
        moved.append(dst)
    return moved


def mark_complete(state_dir: Path, *, stage: str, step: int, outputs: Mapping[str, str]) -> Path:
    """Record that the finished run at ``step`` wrote ``outputs`` (``complete.json``)."""
    path = state_dir / COMPLETE_FILE
    when = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json(path, {"stage": stage, "step": int(step), "outputs": dict(outputs), "at": when})
    return path

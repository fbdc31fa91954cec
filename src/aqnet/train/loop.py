"""The training loop: one entry point for the baseline, the short validation run and the fine-tune.

:func:`run_training` runs as a single process, under ``torchrun`` or as ``srun`` ranks
(:mod:`aqnet.train.distributed`). This module orchestrates the steps; the parts are built before
the first one by :func:`aqnet.train.setup.set_up_run`, and each lives beside it:

* **data** - the cache's ``train`` split in a seeded, resumable ``DistributedSampler`` order
  (:mod:`aqnet.train.inputs`, :mod:`aqnet.train.sampling`); the global batch
  ``train.batch_size`` is split over ranks and ``train.grad_accum`` micro-batches
  (:mod:`aqnet.train.batches`), so one rank and N ranks train on the same global batches;
* **loss** - masked MSE over the data's domain mask (:func:`aqnet.losses.masked_mse`), one
  optimizer step at a time (:mod:`aqnet.train.step`);
* **optimisation** - AdamW over the parameter groups of ``train.param_groups`` with ``lr`` /
  ``lr_new`` (:mod:`aqnet.train.optim`), warm-up + cosine, gradient clipping, optional bf16
  autocast on GPUs, gradient accumulation (DDP's ``no_sync`` on all but the last micro-batch);
  every ``elevation_alpha`` is kept >= 0 after the update (:mod:`aqnet.model.alpha`);
* **validation** at step 0 (before any update), every ``val_every`` steps and at the end, over the
  pipeline's one validation subset (:mod:`aqnet.train.validation`, the best so far kept by
  :mod:`aqnet.train.best`; the ``smoke_forward`` gate
  evaluates the same items), so the loss does not depend on the number of ranks or the batch
  size;
* **metrics** - ``metrics.csv`` by rank 0 (:mod:`aqnet.train.metrics`), a progress bar on a TTY;
* **safety** - a NaN/inf loss or gradient norm stops the run before the update, naming the step,
  the last good checkpoint and whether the data or the model is at fault
  (:mod:`aqnet.train.divergence`, :class:`TrainingDiverged`);
* **resumption** - ``<state_dir>/last.pt`` every ``checkpoint_every`` steps and at the end
  (:mod:`aqnet.train.state`, :mod:`aqnet.train.snapshot`), written atomically; a restarted run
  continues exactly where the state left off. ``SIGUSR1`` (Slurm's ``--signal=USR1@<seconds>``
  before the time limit) makes every rank finish its step, save the state and stop with
  :class:`RequeueRequested`; the CLI exits with :data:`REQUEUE_EXIT_CODE`
  (:mod:`aqnet.train.requeue`). A finished state whose outputs were written is archived and the
  run starts afresh (a deliberate rerun), as is any state with ``AQNET_FRESH=1``
  (:mod:`aqnet.train.resume`); a failed write names the file, the free space and the last good
  checkpoint (:func:`aqnet.atomic.atomic_save`);
* **watchdog** - with validate_short's step time, a median step time over ``watchdog.max_slowdown``
  x it saves the state and stops (:class:`~aqnet.train.watchdog.RunTooSlow`); in a multi-rank run a
  heartbeat names a dead or stuck rank within ``watchdog.peer_timeout_s`` / ``stall_timeout_s``
  (:class:`~aqnet.train.heartbeat.PeerLost`);
* **outputs** - the stage's checkpoint (and the baseline's wind orders, the fine-tune's
  ``summary.json``) by rank 0 (:mod:`aqnet.train.outputs`, written with ``metrics.csv`` and
  ``last.pt`` by :mod:`aqnet.train.writer`). The fine-tune and ``validate_short``
  start from ``init_checkpoint``, loaded only through :func:`aqnet.checkpoint.load_weights` (the
  audited path, :mod:`aqnet.train.warm_start`).

``validate_short`` runs the fine-tune's first ``gates.validate_short_steps`` steps with the full
run's schedule and per-rank batch, so its step time is the full run's; it never resumes (a gate
must see step 0).

What the loop carries from step to step (the step, the metrics rows, the best validation, the
last checkpoint) is one record, :class:`~aqnet.train.run_state.RunState`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aqnet.model.alpha import alpha_values
from aqnet.train.batches import STAGES, BatchPlan, plan_batches, train_section
from aqnet.train.distributed import init_distributed
from aqnet.train.divergence import TrainingDiverged
from aqnet.train.heartbeat import name_lost_peer, start_heartbeat
from aqnet.train.requeue import REQUEUE_EXIT_CODE, RequeueRequested, usr1_flag
from aqnet.train.resume import FRESH_ENV, fresh_requested
from aqnet.train.setup import RunParts, set_up_run
from aqnet.train.snapshot import save_training_state
from aqnet.train.state import ResumeError
from aqnet.train.step import train_step

log = logging.getLogger("aqnet.train")

# The batch planning, requeue and divergence names stay importable from here.
__all__ = [
    "REQUEUE_EXIT_CODE",
    "STAGES",
    "BatchPlan",
    "RequeueRequested",
    "TrainingDiverged",
    "plan_batches",
    "run_training",
    "train_section",
]


def run_training(
    cfg: Mapping[str, Any],
    *,
    stage: str,
    cache_dir: str | Path,
    out_dir: str | Path,
    state_dir: str | Path,
    init_checkpoint: str | Path | None = None,
    expected_world_size: int | None = None,
    stop_after_step: int | None = None,
    resume: bool | None = None,
    fresh: bool | None = None,
    expected_step_time_s: float | None = None,
) -> dict[str, Any]:
    """Train one stage; see the module docstring.

    Args:
        cfg: a resolved, validated config (``aqnet.config.load_resolved``).
        stage: ``baseline``, ``validate_short`` or ``finetune``.
        cache_dir: the training cache (``aqnet.data.build_cache``).
        out_dir: where the stage's outputs go (``metrics.csv``, checkpoints, summary).
        state_dir: where ``last.pt`` (the resume state) lives, outside the declared outputs.
        init_checkpoint: the baseline checkpoint the fine-tune and ``validate_short`` start from.
        expected_world_size: the configured ``nodes x tasks_per_node``; a launch with another
            number of ranks is refused.
        stop_after_step: debugging - return right after this optimizer step, as if the process had
            been killed there (no extra checkpoint is written).
        resume: continue from ``<state_dir>/last.pt`` when present (default: every stage but
            ``validate_short``); a finished state whose outputs were written starts afresh
            (:mod:`aqnet.train.resume`).
        fresh: start afresh even from an unfinished state, keeping it under a dated name
            (default: the ``AQNET_FRESH`` environment variable).
        expected_step_time_s: validate_short's measured step time; arms the step-time watchdog
            (:mod:`aqnet.train.watchdog`, ``<stage>.watchdog``).

    Returns:
        ``{"stage", "steps_done", "run_steps", "completed", "stopped_after_step", "resumed_from",
        "world_size", "ranks", "launcher", "batch", "validation_samples", "rows",
        "step0_val_loss", "final_val_loss",
        "best_val_loss", "best_step", "step_time_s", "wall_time_s", "outputs", "state_path"}`` on
        every rank.

    Raises:
        TrainingDiverged: a NaN/inf loss or gradient norm.
        RequeueRequested: ``SIGUSR1`` arrived; the state is saved.
        RunTooSlow: the step-time watchdog stopped the run; the state is saved.
        PeerLost: a rank died or is stuck (multi-rank runs; the heartbeat names it).
        LaunchError: the ranks were not started as configured.
        ValueError: bad settings, a checkpoint that does not fit (``CheckpointError``), a resume
            state from a different run (``ResumeError``).
    """
    tcfg = train_section(cfg, stage)
    if stage != "baseline" and init_checkpoint is None:
        raise ValueError(
            f"stage {stage} needs --init: the baseline checkpoint to fine-tune from "
            "(baseline.checkpoint, or results/baseline/baseline.ckpt in the demo)"
        )
    ctx = init_distributed(
        backend=tcfg["backend"],
        device=tcfg["device"],
        timeout_s=float(tcfg["dist_timeout_s"]),
        expected_world_size=expected_world_size,
    )
    heartbeat = start_heartbeat(ctx, tcfg["watchdog"])
    try:
        with usr1_flag() as usr1, name_lost_peer(heartbeat):
            parts = set_up_run(
                cfg,
                stage=stage,
                ctx=ctx,
                cache_dir=Path(cache_dir),
                out_dir=Path(out_dir),
                state_dir=Path(state_dir),
                init_checkpoint=None if init_checkpoint is None else Path(init_checkpoint),
                resume=(stage != "validate_short") if resume is None else resume,
                fresh=fresh_requested() if fresh is None else fresh,
                expected_step_time_s=expected_step_time_s,
                tick=heartbeat.tick if heartbeat is not None else None,
                usr1=usr1,
            )
            return _Trainer(parts).run(stop_after_step=stop_after_step)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        ctx.close()


class _Trainer:
    """One training run on one rank (see :func:`run_training`), over the parts
    :func:`aqnet.train.setup.set_up_run` built; its running state is ``self.p.state``."""

    def __init__(self, parts: RunParts) -> None:
        self.p = parts
        self._iter: Iterator[Any] | None = None

    # ------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        """The next micro-batch; a new iterator at each epoch start (or after a resume)."""
        p = self.p
        if self._iter is None:
            epoch, pos = divmod(p.state.step, p.steps_per_epoch)
            p.sampler.set_position(epoch=epoch, start=pos * p.plan.per_rank_step)
            self._iter = iter(p.train_loader)
        return self._iter

    def _train_step(self) -> dict[str, Any]:
        p = self.p
        step = p.state.step + 1
        result = train_step(
            p.net,
            p.model,
            next_batch=lambda: next(self._batches()),
            ctx=p.ctx,
            stage=p.stage,
            grad_accum=p.plan.grad_accum,
            optimizer=p.optimizer,
            scheduler=p.scheduler,
            trainable=p.trainable,
            grad_clip=float(p.tcfg["grad_clip"]),
            bf16=p.bf16,
            requeue_requested=p.guard.usr1.is_set,
            slow=p.guard.slow,
            diverged=lambda what, value: p.guard.diverged(
                what, value, step, last_checkpoint_step=p.state.last_checkpoint_step
            ),
        )
        p.state.step = step
        if p.state.step % p.steps_per_epoch == 0:
            self._iter = None  # next epoch
        return {
            "step": p.state.step,
            "epoch": p.state.step / p.steps_per_epoch,
            "train_loss": result.train_loss,
            **result.lrs,
            **alpha_values(p.alpha_params),
            "grad_norm": result.grad_norm,
            "samples_per_s": p.plan.global_batch / result.step_time_s,
            "step_time_s": result.step_time_s,
            "requeue": result.requeue,
            "slow": result.slow,
        }

    def _record_validation(self, row: dict[str, Any]) -> None:
        self.p.validation.record(row, self.p.state, after_batch=self.p.guard.after_batch)

    def _save_state(self) -> None:
        """Rank 0 writes ``last.pt``; a failed write stops every rank with rank 0's message."""
        p = self.p
        save_training_state(
            p.ctx,
            lambda rng: p.writer.write_state(p.state, rng),
            stage=p.stage,
            step=p.state.step,
            state_path=p.state_path,
            last_checkpoint_step=p.state.last_checkpoint_step,
        )
        p.state.last_checkpoint_step = p.state.step

    # ------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------

    def run(self, *, stop_after_step: int | None = None) -> dict[str, Any]:
        p = self.p
        state = p.state
        run_steps = p.plan.run_steps
        if p.ctx.is_main:
            log.info(
                "%s: %d steps (from %d), global batch %d = %d ranks x %d x %d accumulation, "
                "%d steps per epoch, validation on %d samples, device %s",
                p.stage,
                run_steps,
                state.step,
                p.plan.global_batch,
                p.ctx.world_size,
                p.plan.micro_batch,
                p.plan.grad_accum,
                p.steps_per_epoch,
                p.n_val,
                p.ctx.device,
            )
        if state.step > run_steps:
            raise ResumeError(
                f"resume state {p.state_path} is at step {state.step}, beyond this run's "
                f"{run_steps} steps; start afresh with {FRESH_ENV}=1 (the state is kept under a "
                "dated name)"
            )
        if not state.rows:
            row: dict[str, Any] = {"step": 0, "epoch": 0.0}
            row.update(alpha_values(p.alpha_params))
            self._record_validation(row)
            state.rows.append(row)
            p.writer.write_metrics(state)
            p.progress.update(row)
        stopped = None
        val_every = int(p.tcfg["val_every"])
        ckpt_every = int(p.tcfg["checkpoint_every"])
        while state.step < run_steps:
            row = self._train_step()
            requeue = row.pop("requeue")
            slow = row.pop("slow")
            p.guard.watch(row["step_time_s"])
            last = state.step == run_steps
            if state.step % val_every == 0 or last:
                self._record_validation(row)
            state.rows.append(row)
            p.progress.update(row)
            if state.step % ckpt_every == 0 or last or requeue or slow:
                self._save_state()
            elif row.get("val_loss") is not None:
                p.writer.write_metrics(state)
            if requeue and not last:
                raise p.guard.requeue(state.step)
            if slow and not last:
                raise p.guard.too_slow(state.step)
            if stop_after_step is not None and state.step >= stop_after_step and not last:
                stopped = state.step
                break
        completed = state.step >= run_steps
        return p.writer.result(
            state,
            run_steps=run_steps,
            completed=completed,
            stopped_after_step=stopped,
            outputs=p.writer.finish(state) if completed else {},
            wall_time_s=time.perf_counter() - p.start_time,
        )

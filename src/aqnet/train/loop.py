"""The training loop: one entry point for the baseline, the short validation run and the fine-tune.

:func:`run_training` runs as a single process, under ``torchrun`` or as ``srun`` ranks
(:mod:`aqnet.train.distributed`). This module orchestrates; each part lives beside it:

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
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from aqnet.config import POLLUTANTS
from aqnet.model.alpha import alpha_parameters, alpha_values
from aqnet.train.batches import STAGES, BatchPlan, plan_batches, train_section
from aqnet.train.best import ValidationTracker
from aqnet.train.distributed import DistContext, init_distributed
from aqnet.train.divergence import TrainingDiverged
from aqnet.train.guard import RunGuard
from aqnet.train.heartbeat import name_lost_peer, start_heartbeat
from aqnet.train.inputs import make_loaders, open_training_data
from aqnet.train.metrics import Progress, metric_columns
from aqnet.train.optim import build_training_optimizer
from aqnet.train.requeue import REQUEUE_EXIT_CODE, RequeueRequested, usr1_flag
from aqnet.train.resume import (
    FRESH_ENV,
    check_fingerprint,
    fresh_requested,
    run_fingerprint,
    start_state,
)
from aqnet.train.run_state import RunState
from aqnet.train.snapshot import restore_training_state, save_training_state
from aqnet.train.state import STATE_FILE, ResumeError, seed_everything
from aqnet.train.step import train_step
from aqnet.train.warm_start import load_init_checkpoint
from aqnet.train.watchdog import armed_watchdog
from aqnet.train.writer import RunWriter

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
            trainer = _Trainer(
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
            return trainer.run(stop_after_step=stop_after_step)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        ctx.close()


class _Trainer:
    """One training run on one rank (see :func:`run_training`); its running state is
    ``self.state``."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        *,
        stage: str,
        ctx: DistContext,
        cache_dir: Path,
        out_dir: Path,
        state_dir: Path,
        init_checkpoint: Path | None,
        resume: bool,
        fresh: bool = False,
        expected_step_time_s: float | None = None,
        tick: Callable[[], None] | None = None,
        usr1: threading.Event,
    ) -> None:
        from aqnet.data import load_stats
        from aqnet.model import Forecaster, baseline_of, from_pipeline_config

        self.cfg = cfg
        self.stage = stage
        self.ctx = ctx
        self.device = ctx.device
        self.tcfg = train_section(cfg, stage)
        self.out_dir = out_dir
        self.state_path = state_dir / STATE_FILE
        watchdog = armed_watchdog(self.tcfg["watchdog"], expected_step_time_s)
        if expected_step_time_s is not None and watchdog is None and self.ctx.is_main:
            log.info("%s: step-time watchdog off (finetune.watchdog.max_slowdown: null)", stage)
        self.lead_times = [int(h) for h in cfg["lead_times_h"]]
        self.start_time = time.perf_counter()
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            state_dir.mkdir(parents=True, exist_ok=True)

        # -- data ---------------------------------------------------------------------------
        data = open_training_data(cfg, stage, cache_dir, world_size=ctx.world_size)
        self.train_ds = data.train
        self.val_ds = data.val
        self.plan = data.plan
        self.n_val = data.n_val
        self.steps_per_epoch = data.steps_per_epoch
        self.guard = RunGuard(
            ctx=ctx,
            stage=stage,
            state_path=self.state_path,
            usr1=usr1,
            tick=tick or (lambda: None),
            watchdog=watchdog,
            train_ds=self.train_ds,
            steps_per_epoch=self.steps_per_epoch,
            per_rank_step=self.plan.per_rank_step,
            seed=int(self.tcfg["seed"]),
        )

        # -- model --------------------------------------------------------------------------
        seed = int(self.tcfg["seed"])
        seed_everything(seed)
        mcfg = from_pipeline_config(cfg, stats=load_stats(cache_dir))
        self.mcfg = baseline_of(mcfg) if stage == "baseline" else mcfg
        self.model: nn.Module = Forecaster(self.mcfg)
        self.alpha_params = alpha_parameters(self.model)
        self.columns = metric_columns(
            out_variables=POLLUTANTS,
            lead_times_h=self.lead_times,
            topoflow_blocks=sorted(self.alpha_params),
        )

        self.fingerprint = run_fingerprint(
            stage=stage,
            model_config=self.mcfg.to_dict(),
            global_batch=self.plan.global_batch,
            schedule_steps=self.plan.schedule_steps,
            lead_times_h=self.lead_times,
            train_samples=len(self.train_ds),
            validation_samples=self.n_val,
            tcfg=self.tcfg,
        )
        saved = None
        if resume:  # the state to resume from, or None after archiving it for a fresh start
            saved = start_state(
                self.state_path,
                stage=stage,
                run_steps=self.plan.run_steps,
                fresh=fresh,
                fingerprint=self.fingerprint,
                barrier=ctx.barrier,
                is_main=ctx.is_main,
            )
        elif ctx.is_main and self.state_path.exists():
            log.info("%s starts afresh: ignoring %s", stage, self.state_path)
        init_report: dict[str, Any] | None = None
        if saved is None and init_checkpoint is not None:
            init_report = load_init_checkpoint(
                cfg, self.model, init_checkpoint, is_main=ctx.is_main
            )
        self.model.to(self.device)

        self.trainable, self.optimizer, self.scheduler = build_training_optimizer(
            self.model,
            self.tcfg,
            topoflow_blocks=self.mcfg.topoflow_blocks,
            schedule_steps=self.plan.schedule_steps,
        )

        # -- running state ------------------------------------------------------------------
        self.state = RunState(init_report=init_report)
        if saved is not None:
            check_fingerprint(saved, self.fingerprint, state_path=self.state_path)
            restore_training_state(
                saved,
                ctx=ctx,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
            )
            self.state = RunState.restored(saved)
            if ctx.is_main:
                log.info("resumed %s from %s at step %d", stage, self.state_path, self.state.step)

        # -- wrappers and loaders -----------------------------------------------------------
        self.net: nn.Module = self.model
        if ctx.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # elevation_alpha takes no gradient when the elevation bias is switched off.
                find_unused_parameters=bool(self.mcfg.topoflow_blocks)
                and not self.mcfg.elevation_bias,
                # The buffers (scan orders, H_scale) are constants: nothing to broadcast per step.
                broadcast_buffers=False,
            )
        self.sampler, self.train_loader, self.val_loader = make_loaders(
            data,
            ctx=ctx,
            seed=seed,
            num_workers=int(self.tcfg["num_workers"]),
            val_batch_size=int(cfg["validation"]["batch_size"]),
        )
        self._iter: Iterator[Any] | None = None
        self.autocast = bool(self.tcfg["bf16"]) and self.device.type == "cuda"
        self.progress = Progress(
            total=self.plan.run_steps, enabled=ctx.is_main, every=int(self.tcfg["log_every"])
        )
        self.validation = ValidationTracker(
            model=self.model,
            loader=self.val_loader,
            stage=stage,
            lead_times_h=self.lead_times,
            device=self.device,
            all_reduce_sum=ctx.all_reduce_sum,
            n_samples=self.n_val,
            bf16=self.autocast,
            diverged=self._diverged,
        )
        self.writer = RunWriter(
            ctx=ctx,
            stage=stage,
            variant=cfg.get("variant", "default"),
            tcfg=self.tcfg,
            out_dir=out_dir,
            state_path=self.state_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            mcfg=self.mcfg,
            plan=self.plan,
            steps_per_epoch=self.steps_per_epoch,
            lead_times_h=self.lead_times,
            columns=self.columns,
            train_ds=self.train_ds,
            n_val=self.n_val,
            fingerprint=self.fingerprint,
        )

    # ------------------------------------------------------------------------------------
    # Steps
    # ------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[Any]:
        """The next micro-batch; a new iterator at each epoch start (or after a resume)."""
        if self._iter is None:
            epoch, pos = divmod(self.state.step, self.steps_per_epoch)
            self.sampler.set_position(epoch=epoch, start=pos * self.plan.per_rank_step)
            self._iter = iter(self.train_loader)
        return self._iter

    def _train_step(self) -> dict[str, Any]:
        step = self.state.step + 1
        result = train_step(
            self.net,
            self.model,
            next_batch=lambda: next(self._batches()),
            ctx=self.ctx,
            stage=self.stage,
            grad_accum=self.plan.grad_accum,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainable=self.trainable,
            grad_clip=float(self.tcfg["grad_clip"]),
            bf16=self.autocast,
            requeue_requested=self.guard.usr1.is_set,
            slow=self.guard.slow,
            diverged=lambda what, value: self._diverged(what, value, step),
        )
        self.state.step = step
        if self.state.step % self.steps_per_epoch == 0:
            self._iter = None  # next epoch
        return {
            "step": self.state.step,
            "epoch": self.state.step / self.steps_per_epoch,
            "train_loss": result.train_loss,
            **result.lrs,
            **self._alphas(),
            "grad_norm": result.grad_norm,
            "samples_per_s": self.plan.global_batch / result.step_time_s,
            "step_time_s": result.step_time_s,
            "requeue": result.requeue,
            "slow": result.slow,
        }

    def _diverged(self, what: str, value: float, step: int) -> str:
        last = self.state.last_checkpoint_step
        return self.guard.diverged(what, value, step, last_checkpoint_step=last)

    def _alphas(self) -> dict[str, float]:
        return alpha_values(self.alpha_params)

    def _record_validation(self, row: dict[str, Any]) -> None:
        self.validation.record(row, self.state, after_batch=self.guard.after_batch)

    def _save_state(self) -> None:
        """Rank 0 writes ``last.pt``; a failed write stops every rank with rank 0's message."""
        save_training_state(
            self.ctx,
            lambda rng: self.writer.write_state(self.state, rng),
            stage=self.stage,
            step=self.state.step,
            state_path=self.state_path,
            last_checkpoint_step=self.state.last_checkpoint_step,
        )
        self.state.last_checkpoint_step = self.state.step

    # ------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------

    def run(self, *, stop_after_step: int | None = None) -> dict[str, Any]:
        run_steps = self.plan.run_steps
        if self.ctx.is_main:
            log.info(
                "%s: %d steps (from %d), global batch %d = %d ranks x %d x %d accumulation, "
                "%d steps per epoch, validation on %d samples, device %s",
                self.stage,
                run_steps,
                self.state.step,
                self.plan.global_batch,
                self.ctx.world_size,
                self.plan.micro_batch,
                self.plan.grad_accum,
                self.steps_per_epoch,
                self.n_val,
                self.device,
            )
        if self.state.step > run_steps:
            raise ResumeError(
                f"resume state {self.state_path} is at step {self.state.step}, beyond this run's "
                f"{run_steps} steps; start afresh with {FRESH_ENV}=1 (the state is kept under a "
                "dated name)"
            )
        if not self.state.rows:
            row: dict[str, Any] = {"step": 0, "epoch": 0.0}
            row.update(self._alphas())
            self._record_validation(row)
            self.state.rows.append(row)
            self.writer.write_metrics(self.state)
            self.progress.update(row)
        stopped = None
        val_every = int(self.tcfg["val_every"])
        ckpt_every = int(self.tcfg["checkpoint_every"])
        while self.state.step < run_steps:
            row = self._train_step()
            requeue = row.pop("requeue")
            slow = row.pop("slow")
            self.guard.watch(row["step_time_s"])
            last = self.state.step == run_steps
            if self.state.step % val_every == 0 or last:
                self._record_validation(row)
            self.state.rows.append(row)
            self.progress.update(row)
            if self.state.step % ckpt_every == 0 or last or requeue or slow:
                self._save_state()
            elif row.get("val_loss") is not None:
                self.writer.write_metrics(self.state)
            if requeue and not last:
                raise self.guard.requeue(self.state.step)
            if slow and not last:
                raise self.guard.too_slow(self.state.step)
            if stop_after_step is not None and self.state.step >= stop_after_step and not last:
                stopped = self.state.step
                break
        completed = self.state.step >= run_steps
        return self.writer.result(
            self.state,
            run_steps=run_steps,
            completed=completed,
            stopped_after_step=stopped,
            outputs=self.writer.finish(self.state) if completed else {},
            wall_time_s=time.perf_counter() - self.start_time,
        )

"""Everything one training run needs before its first step, built in order on every rank.

:func:`set_up_run` builds the parts :mod:`aqnet.train.loop` orchestrates, as one
:class:`RunParts`:

1. the data: the training and validation subsets, the batch plan, the loaders
   (:mod:`aqnet.train.inputs`);
2. the stop conditions: ``SIGUSR1``, the step-time watchdog, the heartbeat, divergence
   (:mod:`aqnet.train.guard`);
3. the model, seeded (:func:`aqnet.train.state.seed_everything`); the baseline stage trains the
   configured model with its physics priors off (:func:`aqnet.model.baseline_of`);
4. the starting point: a resume state that belongs to this run (:mod:`aqnet.train.resume`), else
   the audited ``init_checkpoint`` (:mod:`aqnet.train.warm_start`), else the seeded weights;
5. the optimizer and schedule (:mod:`aqnet.train.optim`), restored with the rest of the running
   state (:mod:`aqnet.train.snapshot`);
6. the DDP wrapper (:meth:`aqnet.train.distributed.DistContext.wrap`), the validation passes
   (:mod:`aqnet.train.best`), the progress bar and the outputs' writer (:mod:`aqnet.train.writer`).

The order matters: the model is seeded before it is built, and the weights are loaded before the
optimizer takes them and before DDP broadcasts rank 0's.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.config import POLLUTANTS
from aqnet.model.alpha import alpha_parameters
from aqnet.train.batches import BatchPlan, train_section
from aqnet.train.best import ValidationTracker
from aqnet.train.distributed import DistContext
from aqnet.train.guard import RunGuard
from aqnet.train.inputs import make_loaders, open_training_data
from aqnet.train.metrics import Progress, metric_columns
from aqnet.train.optim import build_training_optimizer
from aqnet.train.resume import check_fingerprint, run_fingerprint, start_state
from aqnet.train.run_state import RunState
from aqnet.train.sampling import ResumableDistributedSampler
from aqnet.train.snapshot import restore_training_state
from aqnet.train.state import STATE_FILE, seed_everything
from aqnet.train.warm_start import load_init_checkpoint
from aqnet.train.watchdog import armed_watchdog
from aqnet.train.writer import RunWriter

log = logging.getLogger("aqnet.train")

__all__ = ["RunParts", "set_up_run"]


@dataclasses.dataclass(kw_only=True, eq=False)
class RunParts:
    """One run's parts on one rank (see :func:`set_up_run`).

    ``model`` is the bare module (checkpoints, alphas, validation); ``net`` is what the training
    step calls (``model`` in DDP when the run has several ranks). ``state`` is the only part the
    loop changes.
    """

    stage: str
    ctx: DistContext
    tcfg: Mapping[str, Any]
    state_path: Path
    start_time: float
    plan: BatchPlan
    steps_per_epoch: int
    n_val: int
    guard: RunGuard
    model: nn.Module
    net: nn.Module
    alpha_params: Mapping[str, nn.Parameter]
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: RunState
    sampler: ResumableDistributedSampler
    train_loader: Iterable[Any]
    bf16: bool
    progress: Progress
    validation: ValidationTracker
    writer: RunWriter


def set_up_run(
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
) -> RunParts:
    """Build the parts of one run; arguments as :func:`aqnet.train.loop.run_training`'s.

    Raises:
        ResumeError: the resume state belongs to another run.
        CheckpointError: ``init_checkpoint`` does not fit the model.
    """
    from aqnet.data import load_stats
    from aqnet.model import Forecaster, baseline_of, from_pipeline_config

    tcfg = train_section(cfg, stage)
    seed = int(tcfg["seed"])
    state_path = state_dir / STATE_FILE
    lead_times = [int(h) for h in cfg["lead_times_h"]]
    start_time = time.perf_counter()
    watchdog = armed_watchdog(tcfg["watchdog"], expected_step_time_s)
    if expected_step_time_s is not None and watchdog is None and ctx.is_main:
        log.info("%s: step-time watchdog off (finetune.watchdog.max_slowdown: null)", stage)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)

    # 1-2. data and stop conditions
    data = open_training_data(cfg, stage, cache_dir, world_size=ctx.world_size)
    plan = data.plan
    guard = RunGuard(
        ctx=ctx,
        stage=stage,
        state_path=state_path,
        usr1=usr1,
        tick=tick or (lambda: None),
        watchdog=watchdog,
        train_ds=data.train,
        steps_per_epoch=data.steps_per_epoch,
        per_rank_step=plan.per_rank_step,
        seed=seed,
    )

    # 3. the model
    seed_everything(seed)
    mcfg = from_pipeline_config(cfg, stats=load_stats(cache_dir))
    if stage == "baseline":
        mcfg = baseline_of(mcfg)
    model: nn.Module = Forecaster(mcfg)
    alpha_params = alpha_parameters(model)

    # 4. the starting point
    fingerprint = run_fingerprint(
        stage=stage,
        model_config=mcfg.to_dict(),
        global_batch=plan.global_batch,
        schedule_steps=plan.schedule_steps,
        lead_times_h=lead_times,
        train_samples=len(data.train),
        validation_samples=data.n_val,
        tcfg=tcfg,
    )
    saved = None
    if resume:  # the state to resume from, or None after archiving it for a fresh start
        saved = start_state(
            state_path,
            stage=stage,
            run_steps=plan.run_steps,
            fresh=fresh,
            fingerprint=fingerprint,
            barrier=ctx.barrier,
            is_main=ctx.is_main,
        )
    elif ctx.is_main and state_path.exists():
        log.info("%s starts afresh: ignoring %s", stage, state_path)
    init_report: dict[str, Any] | None = None
    if saved is None and init_checkpoint is not None:
        init_report = load_init_checkpoint(cfg, model, init_checkpoint, is_main=ctx.is_main)
    model.to(ctx.device)

    # 5. optimizer, schedule and the running state
    trainable, optimizer, scheduler = build_training_optimizer(
        model, tcfg, topoflow_blocks=mcfg.topoflow_blocks, schedule_steps=plan.schedule_steps
    )
    state = RunState(init_report=init_report)
    if saved is not None:
        check_fingerprint(saved, fingerprint, state_path=state_path)
        restore_training_state(
            saved, ctx=ctx, model=model, optimizer=optimizer, scheduler=scheduler
        )
        state = RunState.restored(saved)
        if ctx.is_main:
            log.info("resumed %s from %s at step %d", stage, state_path, state.step)

    # 6. wrapper, loaders, validation, progress and outputs
    # elevation_alpha takes no gradient when the elevation bias is switched off.
    net = ctx.wrap(
        model,
        find_unused_parameters=bool(mcfg.topoflow_blocks) and not mcfg.elevation_bias,
    )
    sampler, train_loader, val_loader = make_loaders(
        data,
        ctx=ctx,
        seed=seed,
        num_workers=int(tcfg["num_workers"]),
        val_batch_size=int(cfg["validation"]["batch_size"]),
    )
    bf16 = bool(tcfg["bf16"]) and ctx.device.type == "cuda"
    validation = ValidationTracker(
        model=model,
        loader=val_loader,
        stage=stage,
        lead_times_h=lead_times,
        device=ctx.device,
        all_reduce_sum=ctx.all_reduce_sum,
        n_samples=data.n_val,
        bf16=bf16,
        diverged=guard.diverged,
    )
    writer = RunWriter(
        ctx=ctx,
        stage=stage,
        variant=cfg.get("variant", "default"),
        tcfg=tcfg,
        out_dir=out_dir,
        state_path=state_path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        mcfg=mcfg,
        plan=plan,
        steps_per_epoch=data.steps_per_epoch,
        lead_times_h=lead_times,
        columns=metric_columns(
            out_variables=POLLUTANTS,
            lead_times_h=lead_times,
            topoflow_blocks=sorted(alpha_params),
        ),
        train_ds=data.train,
        n_val=data.n_val,
        fingerprint=fingerprint,
    )
    return RunParts(
        stage=stage,
        ctx=ctx,
        tcfg=tcfg,
        state_path=state_path,
        start_time=start_time,
        plan=plan,
        steps_per_epoch=data.steps_per_epoch,
        n_val=data.n_val,
        guard=guard,
        model=model,
        net=net,
        alpha_params=alpha_params,
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        sampler=sampler,
        train_loader=train_loader,
        bf16=bf16,
        progress=Progress(total=plan.run_steps, enabled=ctx.is_main, every=int(tcfg["log_every"])),
        validation=validation,
        writer=writer,
    )

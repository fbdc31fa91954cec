"""``aqnet train`` and its aliases ``train-baseline``, ``validate-short``, ``finetune``.

Examples::

    # the demo baseline, one process
    aqnet train-baseline --config config.yaml --cache results/cache \\
        --out-dir results/baseline --state-dir results/state/baseline

    # the fine-tune on 2 nodes x 8 GCDs (srun sets SLURM_PROCID/LOCALID/NTASKS per rank)
    srun --nodes 2 --ntasks-per-node 8 aqnet finetune \\
        --config results/variants/default/config.yaml --cache results/cache \\
        --init results/baseline/baseline.ckpt \\
        --out-dir results/variants/default/finetune --state-dir results/state/default/finetune \\
        --world-size 16

    # the same under torchrun on one machine
    torchrun --nproc-per-node 2 -m aqnet train --stage finetune ... --world-size 2

    # the network gate on 2 nodes x 8 GCDs, as the fine-tune starts its ranks
    srun --nodes 2 --ntasks-per-node 8 aqnet check-network --config results/config/network.yaml \\
        --debug-dir logs/check_network/rccl --world-size 16 --report check_network.json

    # the short validation gate (JSON report on every outcome)
    aqnet validate-short --config ... --cache ... --init ... --out-dir .../validate_short \\
        --state-dir results/state/default/validate_short --report .../validate_short.json

Exit codes: 0 done (or gate passed), 1 failure (the reason is printed), 69 the step-time
watchdog stopped a run slower than ``watchdog.max_slowdown`` x validate_short's step time (state
saved; a rerun resumes), 70 a rank died or is stuck (the heartbeat names it), 75
(``EX_TEMPFAIL``) ``SIGUSR1`` received - the state was saved, requeue the job and it resumes.

A rerun resumes from ``--state-dir`` after a crash; a finished run rerun on purpose
(``snakemake --forcerun finetune``) starts afresh; ``--fresh`` (or ``AQNET_FRESH=1``) starts afresh
from any state. Starting afresh keeps the old state under a dated name
(:mod:`aqnet.train.resume`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aqnet.stage import StageFailure, add_report_arguments, run_stage, setup_logging

__all__ = [
    "add_arguments_finetune",
    "add_arguments_train",
    "add_arguments_check_network",
    "add_arguments_train_baseline",
    "add_arguments_validate_short",
    "default_world_size",
    "run_check_network",
    "run_finetune",
    "run_train",
    "run_train_baseline",
    "run_validate_short",
]

_ERRORS = (StageFailure, ValueError, FileNotFoundError, OSError, RuntimeError, KeyError)
_REQUEUE = 75  # aqnet.train.loop.REQUEUE_EXIT_CODE (not imported here: --help stays fast)
_SLOW, _PEER_LOST = 69, 70  # aqnet.train.watchdog.SLOW_EXIT_CODE, PEER_LOST_EXIT_CODE


def _common(parser: argparse.ArgumentParser, *, report_required: bool = False) -> None:
    parser.add_argument("--config", required=True, type=Path, help="resolved config (YAML)")
    parser.add_argument("--cache", required=True, type=Path, help="training cache folder")
    parser.add_argument("--out-dir", required=True, type=Path, help="the stage's output folder")
    parser.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="resume state folder (last.pt), outside the declared outputs so a failed job keeps it",
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="baseline checkpoint to fine-tune from"
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="expected number of ranks (nodes x tasks_per_node); a launch with another number "
        "is refused. Default: launch.nodes x tasks_per_node for finetune, launch.tasks_per_node "
        "for validate_short, no check for the baseline",
    )
    parser.add_argument(
        "--stop-after-step",
        type=int,
        default=None,
        help="debugging: stop right after this optimizer step as if killed (no extra checkpoint)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="start afresh even from an unfinished state, keeping it under a dated name "
        "(also AQNET_FRESH=1; a requeued Slurm job still resumes its own state)",
    )
    parser.add_argument(
        "--expected-step-time-from",
        type=Path,
        default=None,
        metavar="REPORT",
        help="validate_short's JSON report: its measured step time arms the step-time watchdog "
        "(watchdog.window_steps, watchdog.max_slowdown)",
    )
    add_report_arguments(parser, required=report_required)
    parser.epilog = (
        "exit codes: 0 done (gate passed), 1 failed (reason printed), "
        f"{_SLOW} stopped by the step-time watchdog (state saved), "
        f"{_PEER_LOST} a rank died or is stuck (named), "
        f"{_REQUEUE} SIGUSR1 received: state saved in --state-dir, requeue the job to resume"
    )


def add_arguments_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stage", required=True, choices=["baseline", "validate_short", "finetune"]
    )
    _common(parser)


def add_arguments_train_baseline(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def add_arguments_validate_short(parser: argparse.ArgumentParser) -> None:
    _common(parser, report_required=True)


def add_arguments_finetune(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def default_world_size(cfg: Mapping[str, Any], stage: str) -> int | None:
    """The world size a stage expects when ``--world-size`` is not given."""
    launch = cfg["launch"]
    if stage == "finetune":
        return int(launch["nodes"]) * int(launch["tasks_per_node"])
    if stage == "validate_short":
        return int(launch["tasks_per_node"])
    return None


def _launch_rank() -> int:
    from aqnet.train.distributed import LaunchError, detect_launch

    try:
        return detect_launch().rank
    except (LaunchError, ValueError):
        return 0  # the run itself reports the launch problem


def _run_rank(name: str, rank: int, check: Callable[[dict[str, Any]], str]) -> int:
    """A non-zero rank: run quietly, print only a failure."""
    try:
        check({})
    except _ERRORS as exc:
        print(f"{name} (rank {rank}): FAIL - {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _expected_step_time(args: argparse.Namespace, cfg: Mapping[str, Any]) -> float | None:
    """validate_short's measured step time (``--expected-step-time-from``), from a report made
    under the same config as this run (its ``config_digest``); else a ValueError."""
    if args.expected_step_time_from is None:
        return None
    from aqnet.provenance import report_config_mismatch
    from aqnet.stage import read_json
    from aqnet.train.watchdog import expected_step_time

    try:
        report = read_json(args.expected_step_time_from)
        mismatch = report_config_mismatch(report, cfg, what="the validate_short report")
        if mismatch is not None:
            raise ValueError(f"{mismatch}: its step time is not this run's; rerun validate_short")
        return expected_step_time(report)
    except ValueError as exc:
        raise ValueError(f"{args.expected_step_time_from}: {exc}") from exc


def _training_check(args: argparse.Namespace, cfg: Mapping[str, Any], stage: str, expected: Any):
    from aqnet.train.loop import run_training

    step_time_s = _expected_step_time(args, cfg)

    def check(report: dict[str, Any]) -> str:
        result = run_training(
            cfg,
            stage=stage,
            cache_dir=args.cache,
            out_dir=args.out_dir,
            state_dir=args.state_dir,
            init_checkpoint=args.init,
            expected_world_size=expected,
            stop_after_step=args.stop_after_step,
            fresh=True if args.fresh else None,
            expected_step_time_s=step_time_s,
        )
        report.update({k: v for k, v in result.items() if k != "rows"})
        if not result["completed"]:
            return (
                f"stopped after step {result['stopped_after_step']} as asked (--stop-after-step); "
                f"rerun to resume from {result['state_path']}"
            )
        best = result["best_val_loss"]
        return (
            f"{result['steps_done']} steps on {result['world_size']} rank(s), final val_loss "
            f"{result['final_val_loss']:.4f} (best {best:.4f} at step {result['best_step']}); "
            f"outputs in {args.out_dir}"
        )

    return check


def _run(args: argparse.Namespace, stage: str) -> int:
    from aqnet.config import load_resolved
    from aqnet.train.heartbeat import PEER_LOST_EXIT_CODE, PeerLost
    from aqnet.train.loop import REQUEUE_EXIT_CODE, RequeueRequested
    from aqnet.train.watchdog import SLOW_EXIT_CODE, RunTooSlow

    setup_logging()
    cfg = load_resolved(args.config)
    expected = args.world_size if args.world_size is not None else default_world_size(cfg, stage)
    if stage == "validate_short":
        if args.report is None:
            print("validate_short: --report is required", file=sys.stderr)
            return 2
        if args.init is None:
            print("validate_short: --init (the baseline checkpoint) is required", file=sys.stderr)
            return 2
        from aqnet.train.validate_short import validate_short

        def check(report: dict[str, Any]) -> str:
            return validate_short(
                cfg,
                cache_dir=args.cache,
                out_dir=args.out_dir,
                state_dir=args.state_dir,
                init_checkpoint=args.init,
                expected_world_size=expected,
                report=report,
            )

    else:
        try:
            check = _training_check(args, cfg, stage, expected)
        except (ValueError, OSError) as exc:
            print(f"{stage}: FAIL - {exc}", file=sys.stderr, flush=True)
            return 1
    rank = _launch_rank()
    try:
        if rank == 0:
            return run_stage(stage, check, args.report, args.report_copy)
        return _run_rank(stage, rank, check)
    except RequeueRequested as exc:
        print(f"{stage}: REQUEUE - {exc}", flush=True)
        return REQUEUE_EXIT_CODE
    except RunTooSlow as exc:
        print(f"{stage}: STOPPED - {exc}", flush=True)
        return SLOW_EXIT_CODE
    except PeerLost as exc:
        print(f"{stage}: FAIL - {exc}", flush=True)
        return PEER_LOST_EXIT_CODE


def run_train(args: argparse.Namespace) -> int:
    return _run(args, args.stage)


def run_train_baseline(args: argparse.Namespace) -> int:
    return _run(args, "baseline")


def run_validate_short(args: argparse.Namespace) -> int:
    return _run(args, "validate_short")


def run_finetune(args: argparse.Namespace) -> int:
    return _run(args, "finetune")


def add_arguments_check_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="resolved config (YAML)")
    parser.add_argument(
        "--debug-dir",
        required=True,
        type=Path,
        help="folder of the per-rank RCCL debug files (rccl.<rank>.log, NCCL_DEBUG_FILE)",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="expected number of ranks (nodes x tasks_per_node); another number is refused",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed all-reduces (3)")
    parser.add_argument("--iters", type=int, default=10, help="timed all-reduces (10)")
    add_report_arguments(parser, required=True)


def run_check_network(args: argparse.Namespace) -> int:
    """``aqnet check-network``: the inter-node gate (:mod:`aqnet.train.network`)."""
    from aqnet.config import load_resolved
    from aqnet.train.network import check_network

    setup_logging()
    cfg = load_resolved(args.config)

    def check(report: dict[str, Any]) -> str:
        return check_network(
            cfg,
            debug_dir=args.debug_dir,
            expected_world_size=args.world_size,
            report=report,
            warmup=args.warmup,
            iters=args.iters,
        )

    rank = _launch_rank()
    if rank == 0:
        return run_stage("check_network", check, args.report, args.report_copy)
    return _run_rank("check_network", rank, check)

"""Command-line entry points of the three gates (``aqnet <gate> ...``); the logic is in the package.

Each writes its JSON report on every outcome (``--report`` and ``--report-copy``), prints a
one-line verdict ``<gate>: PASS|FAIL - <reason>`` and exits non-zero on failure.

Examples::

    aqnet verify-wind-order --cache results/cache \\
        --reference results/baseline/wind_orders.npz \\
        --report results/gates/verify_wind_order.json

    aqnet verify-wind-order --cache run1/wind_scanner_cache.pkl \\
        --reference run2/wind_scanner_cache.pkl --report verify.json   # researchers' pickles

    aqnet verify-wind-order --cache results/cache --reference wind_scanner_cache.pkl \\
        --config results/variants/default/config.yaml --report verify.json  # what will run

    aqnet audit-checkpoint --config results/variants/default/config.yaml --cache results/cache \\
        --checkpoint results/baseline/baseline.ckpt \\
        --report results/variants/default/audit_checkpoint.json

    # the researchers' checkpoint alone, before any data or cache exists
    aqnet audit-checkpoint --checkpoint BASELINE.ckpt \\
        --config config.yaml config/reference.yaml --report audit.json

    aqnet smoke-forward --config results/variants/default/config.yaml --cache results/cache \\
        --checkpoint results/baseline/baseline.ckpt \\
        --audit results/variants/default/audit_checkpoint.json \\
        --report results/variants/default/smoke_forward.json --device auto

    aqnet rehearse-report --config results/config/report.yaml --cache results/cache \
        --baseline results/baseline/baseline.ckpt --gates results/gates \
        --variant-dir default=results/variants/default --work-dir results/rehearsal \
        --report results/gates/rehearse_report.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aqnet.stage import StageFailure, add_report_arguments, read_json, run_stage


def add_arguments_verify_wind_order(parser: argparse.ArgumentParser) -> None:
    kinds = "a cache folder, an aqnet orders .npz, or the researchers' wind_scanner_cache.pkl"
    parser.add_argument("--cache", required=True, type=Path, help=f"the cache's orders: {kinds}")
    parser.add_argument(
        "--reference",
        required=True,
        type=Path,
        help=f"the wind orders the baseline was trained with: {kinds}",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="resolved config: also check the orders that will run (in wind_scan reference mode "
        "they are recomputed on the validation samples; --cache must be the cache folder)",
    )
    add_report_arguments(parser)


def run_verify_wind_order(args: argparse.Namespace) -> int:
    from aqnet.config import load_resolved
    from aqnet.gates.wind_order import verify_wind_order

    def check(report: dict[str, Any]) -> str:
        cfg = None if args.config is None else load_resolved(args.config)
        return verify_wind_order(args.cache, args.reference, cfg=cfg, report=report)["reason"]

    return run_stage("verify_wind_order", check, args.report, args.report_copy)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="resolved config of the variant (or config.yaml)"
    )
    parser.add_argument(
        "--cache", required=True, type=Path, help="cache folder (stats.json, wind_orders.npz)"
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the baseline checkpoint")


def add_arguments_audit_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        nargs="+",
        type=Path,
        help="resolved config of the variant, or config files merged in order "
        "(e.g. config.yaml config/reference.yaml)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder (stats.json); not needed when data.normalization.source is table",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the baseline checkpoint")
    add_report_arguments(parser)


def run_audit_checkpoint(args: argparse.Namespace) -> int:
    from aqnet.config import load_merged
    from aqnet.gates.audit import audit_checkpoint

    def check(report: dict[str, Any]) -> str:
        cfg = load_merged(args.config)
        return audit_checkpoint(cfg, args.checkpoint, cache_dir=args.cache, report=report)["reason"]

    return run_stage("audit_checkpoint", check, args.report, args.report_copy)


def add_arguments_smoke_forward(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument(
        "--audit",
        required=True,
        type=Path,
        help="the audit_checkpoint report (gives the baseline's val_loss unless the config does)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU when visible), cpu, cuda or cuda:<i>"
    )
    add_report_arguments(parser)


def baseline_val_loss_of(cfg: dict[str, Any], audit_report: Path) -> tuple[float | None, str]:
    """The baseline's recorded val_loss: ``baseline.val_loss`` of the config, else the audit's.

    Raises:
        StageFailure: the audit report is missing, unreadable, records a failed audit, or was
            made under another config than ``cfg`` (its ``config_digest``).
    """
    from aqnet.provenance import report_config_mismatch

    configured = cfg.get("baseline", {}).get("val_loss")
    try:
        audit = read_json(audit_report)
    except (OSError, ValueError) as exc:
        raise StageFailure(
            f"the audit_checkpoint report {audit_report} is unreadable: {exc}"
        ) from exc
    if not audit.get("passed", False):
        raise StageFailure(
            f"the audit_checkpoint report {audit_report} records a failed audit: "
            f"{audit.get('reason', 'no reason recorded')}"
        )
    mismatch = report_config_mismatch(
        audit, cfg, what=f"the audit_checkpoint report {audit_report}"
    )
    if mismatch is not None:
        raise StageFailure(f"{mismatch}: rerun audit_checkpoint with this config")
    if configured is not None:
        return float(configured), "config baseline.val_loss"
    value = audit.get("baseline_val_loss")
    if value is None:
        return None, f"{audit_report} (none recorded)"
    return float(value), f"{audit_report} ({audit.get('baseline_val_loss_source')})"


def run_smoke_forward(args: argparse.Namespace) -> int:
    from aqnet.config import load_resolved
    from aqnet.gates.smoke import smoke_forward

    def check(report: dict[str, Any]) -> str:
        cfg = load_resolved(args.config)
        val_loss, source = baseline_val_loss_of(cfg, args.audit)
        report["baseline_val_loss_source"] = source
        return smoke_forward(
            cfg, args.cache, args.checkpoint, val_loss, device=args.device, report=report
        )["reason"]

    return run_stage("smoke_forward", check, args.report, args.report_copy)


def add_arguments_rehearse_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="the report's resolved config (YAML)"
    )
    parser.add_argument("--cache", required=True, type=Path, help="cache folder")
    parser.add_argument("--baseline", required=True, type=Path, help="the baseline checkpoint")
    parser.add_argument(
        "--variant-dir",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a variant's results folder holding validate_short/ (repeat per variant)",
    )
    parser.add_argument(
        "--gates", type=Path, default=None, help="folder with verify_wind_order.json"
    )
    parser.add_argument(
        "--work-dir", required=True, type=Path, help="scratch folder (replaced on every run)"
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu or cuda (default: finetune.device)"
    )
    add_report_arguments(parser)


def run_rehearse_report(args: argparse.Namespace) -> int:
    from aqnet.config import load_resolved
    from aqnet.gates.rehearsal import rehearse_report
    from aqnet.report.inputs import parse_variant_dirs

    def check(report: dict[str, Any]) -> str:
        cfg = load_resolved(args.config)
        return rehearse_report(
            cfg,
            cache_dir=args.cache,
            baseline_checkpoint=args.baseline,
            variant_dirs=parse_variant_dirs(args.variant_dir),
            gates_dir=args.gates,
            work_dir=args.work_dir,
            batches=int(cfg["gates"]["rehearsal_batches"]),
            device=args.device,
            report=report,
        )

    return run_stage("rehearse_report", check, args.report, args.report_copy)

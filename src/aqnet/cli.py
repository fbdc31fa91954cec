"""The ``aqnet`` command: one subcommand per pipeline stage, named like the Snakemake rules.

Examples::

    aqnet make-demo-data --config config.yaml --out results/demo_data
    aqnet build-cache --config config.yaml --out results/cache
    aqnet verify-wind-order --cache results/cache --reference results/baseline/wind_orders.npz \\
        --report results/gates/verify_wind_order.json
    aqnet audit-checkpoint --config config.yaml --checkpoint results/baseline/baseline.ckpt \\
        --report results/gates/audit_checkpoint.json

Each stage module exposes ``add_arguments_<stage>(parser)`` and ``run_<stage>(args) -> int``;
they are imported only when their subcommand runs, so ``aqnet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, function suffix, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "make-demo-data": ("aqnet.data.cli", "make_demo_data", "generate the demo data set (netCDF)"),
    "build-cache": ("aqnet.data.cli", "build_cache", "validate, regrid, normalise; orders"),
    "train": ("aqnet.train.cli", "train", "the training entry point (any stage, any launcher)"),
    "train-baseline": ("aqnet.train.cli", "train_baseline", "train the baseline (no TopoFlow)"),
    "verify-wind-order": ("aqnet.gates.cli", "verify_wind_order", "gate: scan orders = reference"),
    "audit-checkpoint": ("aqnet.gates.cli", "audit_checkpoint", "gate: checkpoint keys audit"),
    "smoke-forward": ("aqnet.gates.cli", "smoke_forward", "gate: one real batch, shapes, loss"),
    "check-network": ("aqnet.train.cli", "check_network", "gate: 2-node all-reduce, RCCL network"),
    "validate-short": ("aqnet.train.cli", "validate_short", "gate: 1-node short run, cost"),
    "rehearse-report": ("aqnet.gates.cli", "rehearse_report", "gate: evaluate + report, early"),
    "finetune": ("aqnet.train.cli", "finetune", "the full data-parallel fine-tune (resumable)"),
    "evaluate": ("aqnet.report.cli", "evaluate", "per-sample errors of baseline and fine-tune"),
    "report": ("aqnet.report.cli", "report", "figures, statistical verdict, report JSON"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aqnet",
        description="TopoFlow fine-tune pipeline stages (each also a Snakemake rule).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(f"  {name:<18} {help_}" for name, (_, _, help_) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="stage to run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, suffix, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"aqnet {name}", description=help_)
    getattr(module, f"add_arguments_{suffix}")(parser)
    args = parser.parse_args(rest)
    return int(getattr(module, f"run_{suffix}")(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

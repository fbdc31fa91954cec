"""``aqnet evaluate`` and ``aqnet report``.

Examples::

    aqnet evaluate --config results/variants/default/config.yaml --cache results/cache \\
        --baseline results/baseline/baseline.ckpt \\
        --finetuned results/variants/default/finetune/final.ckpt \\
        --out results/variants/default/evaluation.nc

    aqnet report --config results/config.yaml --cache results/cache \\
        --variant-dir default=results/variants/default \\
        --variant-dir h500=results/variants/h500 \\
        --gates results/gates --out-dir results/report

``--variant-dir NAME=DIR`` names one variant's results folder (repeat it per variant, the first is
the primary unless one is called ``default`` or ``--primary`` says otherwise). Each folder holds
the files listed in :mod:`aqnet.report.inputs`: ``evaluation.nc`` and ``finetune/metrics.csv``
(required), ``finetune/summary.json``, ``audit_checkpoint.json``, ``smoke_forward.json``,
``validate_short.json`` and ``config.yaml``. ``--gates DIR`` holds ``verify_wind_order.json``.

Both commands print one line and exit 0 when they produced their files; the report's line is the
verdict (any verdict, including REGRESSION, is a result, not a failure). On an error they print
``<command>: FAIL - <reason>`` and exit 1.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from aqnet.stage import StageFailure, setup_logging

log = logging.getLogger("aqnet.report")


def _run(name: str, fn: Callable[[], str]) -> int:
    setup_logging()
    try:
        line = fn()
    except (StageFailure, ValueError, FileNotFoundError, OSError, KeyError) as exc:
        reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        log.debug("%s failed", name, exc_info=True)
        print(f"{name}: FAIL - {reason}", flush=True)
        return 1
    print(f"{name}: {line}", flush=True)
    return 0


def add_arguments_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="resolved config (YAML)")
    parser.add_argument("--cache", required=True, type=Path, help="cache folder")
    parser.add_argument("--baseline", required=True, type=Path, help="baseline checkpoint")
    parser.add_argument("--finetuned", required=True, type=Path, help="fine-tuned final.ckpt")
    parser.add_argument("--out", required=True, type=Path, help="evaluation.nc to write")
    parser.add_argument(
        "--split",
        default=None,
        choices=["val", "test"],
        help="split to evaluate (default: report.split of the config)",
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu or cuda (default: finetune.device of the config)"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    def work() -> str:
        from aqnet.config import load_resolved
        from aqnet.report.analysis import calibrated_vs_baseline
        from aqnet.report.evaluate import evaluate

        cfg = load_resolved(args.config)
        split = args.split or str(cfg["report"]["split"])
        ds = evaluate(
            cfg,
            args.cache,
            args.baseline,
            args.finetuned,
            args.out,
            split=split,
            device=args.device,
        )
        name = str(cfg.get("variant", "default"))
        test = calibrated_vs_baseline(ds, cfg["report"], new_name=name)
        return (
            f"{ds.sizes['sample']} forecast start(s) x {ds.sizes['lead_time']} lead time(s) of "
            f"the {split} split written to {args.out}; {test.describe()}"
        )

    return _run("evaluate", work)


def add_arguments_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="resolved config (YAML)")
    parser.add_argument("--cache", required=True, type=Path, help="cache folder (static.npz)")
    parser.add_argument(
        "--variant-dir",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a variant's results folder (repeat per variant)",
    )
    parser.add_argument(
        "--gates", type=Path, default=None, help="folder with verify_wind_order.json"
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="report folder")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=None,
        help="the pipeline's benchmark folder (GPU-hours each GPU stage used)",
    )
    parser.add_argument(
        "--primary", default=None, help="variant of the headline verdict (default: 'default')"
    )


def run_report(args: argparse.Namespace) -> int:
    def work() -> str:
        from aqnet.config import load_resolved
        from aqnet.report.build import build_report
        from aqnet.report.inputs import parse_variant_dirs

        cfg = load_resolved(args.config)
        result = build_report(
            cfg,
            cache_dir=args.cache,
            variant_dirs=parse_variant_dirs(args.variant_dir),
            gates_dir=args.gates,
            out_dir=args.out_dir,
            primary=args.primary,
            benchmarks_dir=args.benchmarks,
        )
        return f"{result['line']} (variant {result['variant']}; report in {args.out_dir})"

    return _run("report", work)

"""Gate ``rehearse_report``: the evaluation and the report, run before the fine-tune.

Nothing may fail after the fine-tune that could have failed before it. ``evaluate`` and ``report``
check their inputs - the cache's units, variables, mask and grid, the checkpoints, every
variant's files, the statistics of the verdict - and until they run, a problem there stays
hidden behind hours of GPU time. This gate runs the real code on what exists before the
fine-tune: for every variant, ``validate_short``'s weights (``validate_short/final.ckpt``) stand
in for the fine-tuned ones and its ``metrics.csv`` for the fine-tune's; ``aqnet.report.evaluate``
evaluates them on ``gates.rehearsal_batches`` batches of the validation split (the real run uses
``report.eval_batches``), and ``aqnet.report.build_report`` builds the whole report across all
variants into a scratch folder. Any error either would raise fails the gate with its message, and
``finetune`` does not start.

The numbers of the rehearsal mean nothing (a few steps, a few samples); only that it completes.

One number is known exactly before the fine-tune: how many forecast start days the real
evaluation will cover (``report.split``, ``report.eval_batches``;
:func:`aqnet.report.evaluate.evaluated_start_days`). The calibrated test needs at least 2 blocks
of at least the longest lead time (:mod:`aqnet.report.calibrated`); with fewer days every
comparison would be NOT TESTABLE and every verdict INCONCLUSIVE, so with
``gates.require_testable_split`` (the default) the gate fails then, before any GPU-hour is spent.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aqnet.stage import StageFailure

__all__ = ["VALIDATE_SHORT_DIR", "rehearse_report"]

VALIDATE_SHORT_DIR = "validate_short"
"""Sub-folder of a variant's results holding validate_short's ``final.ckpt`` and ``metrics.csv``."""
_COPIED = ("config.yaml", "audit_checkpoint.json", "smoke_forward.json", "validate_short.json")
_ERRORS = (StageFailure, ValueError, KeyError, FileNotFoundError, OSError, RuntimeError)


def _reason(exc: BaseException) -> str:
    return f"missing key {exc}" if isinstance(exc, KeyError) else f"{exc}"


def _check_testable_split(
    cfg: Mapping[str, Any], cache_dir: str | Path, report: dict[str, Any]
) -> None:
    """Fail when the real evaluation covers too few start days for any calibrated test."""
    from aqnet.report.calibrated import min_block_days_for
    from aqnet.report.evaluate import evaluated_start_days

    rcfg = cfg["report"]
    days = evaluated_start_days(cfg, cache_dir)
    block = min_block_days_for(cfg["lead_times_h"], int(rcfg["block_hours"]))
    report.update(evaluation_days=days, min_block_days=block, needed_days=2 * block)
    if days < 2 * block and cfg["gates"]["require_testable_split"]:
        batches = rcfg["eval_batches"]
        raise StageFailure(
            f"rehearse_report: the evaluation of the {rcfg['split']} split covers {days} forecast "
            f"start day(s) (report.eval_batches {batches if batches is not None else 'null: all'}"
            f" x report.eval_batch_size {rcfg['eval_batch_size']}), fewer than the {2 * block} "
            f"days of the 2 blocks of at least {block} d (the longest lead time) that the "
            "calibrated test needs: after the fine-tune every comparison would be NOT TESTABLE "
            "and every verdict INCONCLUSIVE. Evaluate more days (report.eval_batches: null, or "
            "a longer data.split of that year), or set gates.require_testable_split: false to "
            "run without a verdict"
        )


def rehearse_report(
    cfg: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    baseline_checkpoint: str | Path,
    variant_dirs: Mapping[str, str | Path],
    gates_dir: str | Path | None,
    work_dir: str | Path,
    batches: int,
    report: dict[str, Any],
    device: str | None = None,
) -> str:
    """Evaluate every variant's validate_short weights and build the report from them.

    Args:
        cfg: the report's resolved config (as ``aqnet report`` reads it).
        cache_dir: the cache.
        baseline_checkpoint: the baseline checkpoint.
        variant_dirs: ``{variant: results folder}`` (``results/variants/<name>``), in order.
        gates_dir: the folder of ``verify_wind_order.json``.
        work_dir: scratch folder for the rehearsal's evaluation files and report (replaced).
        batches: evaluation batches per variant (``gates.rehearsal_batches``).
        report: filled with what ran.
        device: ``auto``/``cpu``/``cuda`` for the evaluation (default: each variant's config).

    Raises:
        StageFailure: naming the variant and the step (evaluate or report) that failed.
    """
    from aqnet.config import load_resolved
    from aqnet.report.build import build_report
    from aqnet.report.evaluate import evaluate

    _check_testable_split(cfg, cache_dir, report)
    work = Path(work_dir)
    if work.exists():
        shutil.rmtree(work)
    rehearsal_dirs: dict[str, Path] = {}
    items: dict[str, int] = {}
    for name, src in variant_dirs.items():
        src = Path(src)
        ckpt = src / VALIDATE_SHORT_DIR / "final.ckpt"
        metrics = src / VALIDATE_SHORT_DIR / "metrics.csv"
        missing = [str(p) for p in (src / "config.yaml", ckpt, metrics) if not p.is_file()]
        if missing:
            raise StageFailure(
                f"rehearse_report: variant {name!r} lacks {', '.join(missing)}: run validate_short"
            )
        dst = work / "variants" / name
        (dst / "finetune").mkdir(parents=True)
        for fname in _COPIED:
            if (src / fname).is_file():
                shutil.copy2(src / fname, dst / fname)
        shutil.copy2(metrics, dst / "finetune" / "metrics.csv")
        vcfg = copy.deepcopy(load_resolved(src / "config.yaml"))
        vcfg["report"]["eval_batches"] = int(batches)
        try:
            ds = evaluate(
                vcfg,
                cache_dir,
                baseline_checkpoint,
                ckpt,
                dst / "evaluation.nc",
                device=device,
            )
        except _ERRORS as exc:
            raise StageFailure(
                f"rehearse_report: evaluate would fail for variant {name!r} after the fine-tune: "
                f"{_reason(exc)}"
            ) from exc
        items[name] = int(ds.attrs.get("n_items", 0))
        rehearsal_dirs[name] = dst
    report.update(variants=list(rehearsal_dirs), evaluated_items=items, work_dir=str(work))
    try:
        result = build_report(
            cfg,
            cache_dir=cache_dir,
            variant_dirs=rehearsal_dirs,
            gates_dir=gates_dir,
            out_dir=work / "report",
        )
    except _ERRORS as exc:
        raise StageFailure(
            f"rehearse_report: the report of variant(s) {', '.join(rehearsal_dirs)} could not be "
            f"built: {_reason(exc)}"
        ) from exc
    report["files"] = sorted(p.name for p in (work / "report").iterdir())
    return (
        f"the real evaluation covers {report['evaluation_days']} start days (a test needs "
        f"{report['needed_days']}); "
        f"evaluate ran on validate_short's weights of {len(items)} variant(s) "
        f"({', '.join(f'{n}: {k} items' for n, k in items.items())}) and the report was built "
        f"({len(report['files'])} files, verdict of {result['variant']!r}) in {work / 'report'}"
    )

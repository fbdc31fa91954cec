"""The budget gate: a run whose projected GPU-hours exceed ``launch.max_gpu_hours`` is refused
before any fine-tune is submitted (the projection is :mod:`aqnet.train.cost`'s)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aqnet.stage import StageFailure
from aqnet.train.cost import (
    format_projection,
    run_projection,
)
from aqnet.train.length import start_times_in_cache
from aqnet.train.measured import ignored_measurement, measured_from_report

__all__ = ["BudgetExceeded", "budget_gate", "check_budget"]


class BudgetExceeded(StageFailure):
    """The projected GPU-hours exceed ``launch.max_gpu_hours``."""


def check_budget(projection: Mapping[str, Any]) -> None:
    """Refuse a run whose projected GPU-hours exceed its budget.

    Raises:
        BudgetExceeded: naming the projected total and the budget.
    """
    if projection["over_budget"]:
        finetunes = [s for s in projection["stages"] if s["stage"] == "finetune"]
        estimated = any(s["cost"]["source"] == "estimate" for s in finetunes)
        raise BudgetExceeded(
            f"projected {projection['total_gpu_hours']:.4g} GPU-hours exceed the budget of "
            f"{projection['max_gpu_hours']:g} GPU-hours (launch.max_gpu_hours); the fine-tunes "
            "are not submitted. Lower finetune.epochs, launch.nodes or the number of variants, "
            "or raise launch.max_gpu_hours"
            + (
                "; the step time is still the estimate (launch.step_time_estimate_s): "
                "`snakemake --until validate_short` measures it"
                if estimated
                else ""
            )
        )


def budget_gate(
    variant_cfgs: Mapping[str, Mapping[str, Any]],
    *,
    reports: Mapping[str, Mapping[str, Any] | None],
    meta: Mapping[str, Any],
    report: dict[str, Any],
) -> str:
    """Gate ``check_budget``, run after every variant's validate_short and before any fine-tune.

    The projection (:func:`run_projection`) with the measured step times and the cache's count of
    training start times; the budget is ``launch.max_gpu_hours`` of the first variant (the
    ``launch`` section is not a variant override). Fills ``report`` with the projection.

    Returns:
        the one-line reason of a pass.

    Raises:
        BudgetExceeded: the projected total is over the budget.
        StageFailure: a passed validate_short report made under another config than its
            variant's (the gate exists to judge the measured step times, not the estimate).
    """
    for variant, cfg in variant_cfgs.items():
        why = ignored_measurement(reports.get(variant), cfg)
        if why is not None:
            raise StageFailure(f"variant {variant!r}: {why}: rerun validate_short for this config")
    first = next(iter(variant_cfgs.values()))
    projection = run_projection(
        variant_cfgs,
        start_times=start_times_in_cache(meta),
        start_times_source="counted in the cache",
        measured={v: measured_from_report(reports.get(v), cfg) for v, cfg in variant_cfgs.items()},
        max_gpu_hours=first["launch"]["max_gpu_hours"],
    )
    report.update(projection=projection, lines=format_projection(projection))
    check_budget(projection)
    budget = projection["max_gpu_hours"]
    return f"projected {projection['total_gpu_hours']:.4g} GPU-hours" + (
        f" within the budget of {budget:g} GPU-hours" if budget is not None else " (no budget)"
    )

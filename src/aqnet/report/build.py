"""Build the report: figures, tables, the statistical verdict and a summary, for one or more
variants.

:func:`build_report` writes into ``out_dir`` (names are stable; the Snakemake report's captions in
``workflow/report/<stem>.rst`` refer to them):

==========================  ============================================================
file                        content
==========================  ============================================================
``verdict.json``            the verdict of the primary variant with its numbers, every
                            variant's verdict, the best variant and its tests, the gates
``summary.md`` / ``.html``  the verdict first, then the tables; the HTML embeds the figures
``val_loss.png``            val_loss vs step with the baseline and threshold lines; train loss
``alpha.png``               elevation_alpha per TopoFlow block vs step
``rmse_by_pollutant.png``   RMSE per pollutant and lead time, baseline vs fine-tuned
``rmse_table.csv/.html``    the same as a table (physical units)
``error_map.png``           baseline error map and the difference map with terrain contours
``gain_by_elevation.png``   gain by elevation band and by terrain class
``gain_by_region.png``      gain per wind-scan region, as a map
``gain_significance.png``   where the gain over the control is significant (per tile, Holm)
``gain_by_region.csv``      the same as a table, best region first
``gates.png``               gate outcomes and the projected vs measured fine-tune cost
``variants.png``            comparison across variants (loss with CIs, RMSE, alpha, cost)
``variants.csv``            the same as a table
==========================  ============================================================

The *primary* variant (``default`` when present, else the first given) is the one the headline
verdict, the RMSE table, the maps and the gains describe; the comparison covers all of them.

The verdicts (:mod:`aqnet.report.attribution`) are computed on the evaluations of
``report.split`` (the test year by default): each variant against the control arm
``report.control`` and against the baseline, with the calibrated paired test
(:mod:`aqnet.report.calibrated`) and Holm's correction across the variants. The *best* variant
is chosen on the validation year (lowest final val_loss of the fine-tune's monitoring), never on
the samples it is then judged on.

The pages (``summary.md``, ``summary.html``, ``rmse_table.html``) are rendered by
:mod:`aqnet.report.page`; this module assembles what they show. The comparison across the
variants (the checks of the arms, ``variants.csv``, the best variant) is
:mod:`aqnet.report.comparison`.

The baseline's recorded val_loss (for the training figure) is, in this order:
``baseline.val_loss`` of the config, the value recorded in the baseline checkpoint (stored in
``evaluation.nc`` by ``aqnet evaluate``), the ``audit_checkpoint`` report's. The verdict's
threshold is ``report.success_threshold``, or the baseline's paired mean loss on the evaluated
samples when null.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqnet.atomic import atomic_write_bytes
from aqnet.config import seed_groups
from aqnet.report import analysis, figures, page
from aqnet.report.attribution import judge_variants
from aqnet.report.bias_share import config_share
from aqnet.report.breakdown import breakdown_tests
from aqnet.report.comparison import best_variant, check_arms, comparison_table, rmse_change
from aqnet.report.inputs import (
    WIND_ORDER_FILE,
    VariantResults,
    alpha_columns,
    gate_rows,
    load_variant,
    read_json_report,
)
from aqnet.report.regions import gain_by_elevation, gain_by_region, gain_by_terrain
from aqnet.report.seeds import pool_runs, run_means, seed_test
from aqnet.report.significance import significance_map
from aqnet.report.usage import usage_rows
from aqnet.stage import write_json

log = logging.getLogger("aqnet.report")

TABLES: dict[str, str] = {
    "rmse_csv": "rmse_table.csv",
    "rmse_html": "rmse_table.html",
    "regions_csv": "gain_by_region.csv",
    "significance_csv": "gain_significance.csv",
    "variants_csv": "variants.csv",
}
OUTPUTS: dict[str, str] = {
    "verdict": "verdict.json",
    "summary_md": "summary.md",
    "summary_html": "summary.html",
    **figures.FIGURES,
    **TABLES,
}
"""Every file :func:`build_report` writes, by key."""

REPORT_CATEGORIES: dict[str, str] = {
    "verdict": "Verdict",
    "summary_html": "Verdict",
    "val_loss": "Training",
    "alpha": "Training",
    "rmse": "Errors",
    "rmse_html": "Errors",
    "error_map": "Errors",
    "gain_by_elevation": "Errors",
    "gain_by_region": "Errors",
    "significance_map": "Errors",
    "gates": "Gates",
    "variants": "Variants",
}
"""The outputs shown in Snakemake's HTML report, by key, with their category there (the others
are files only); the caption of each is ``workflow/report/<file stem>.rst``. The ``report`` rule's
outputs are generated from :data:`OUTPUTS` and this."""


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def baseline_val_loss(cfg: Mapping[str, Any], primary: VariantResults) -> tuple[float, str]:
    """The baseline's recorded validation loss and where it came from (module docstring).

    Raises:
        ValueError: when neither the config, the checkpoint nor the audit records one.
    """
    configured = _finite(cfg["baseline"].get("val_loss"))
    if configured is not None:
        return configured, "config baseline.val_loss"
    ev = primary.evaluation
    recorded = _finite(ev.attrs.get("baseline_checkpoint_val_loss"))
    if recorded is not None:
        return recorded, f"baseline checkpoint {ev.attrs.get('baseline_checkpoint', '')}".strip()
    audit = primary.gates.get("audit_checkpoint") or {}
    audited = _finite(audit.get("baseline_val_loss"))
    if audited is not None:
        return audited, f"audit_checkpoint report of variant {primary.name}"
    raise ValueError(
        "the baseline's val_loss is not recorded: baseline.val_loss is null, the baseline "
        f"checkpoint in {primary.files['evaluation']} records none, and the audit report has "
        "none; set baseline.val_loss (or report.success_threshold) in the config"
    )


def build_report(
    cfg: Mapping[str, Any],
    *,
    cache_dir: str | Path,
    variant_dirs: Mapping[str, str | Path],
    gates_dir: str | Path | None,
    out_dir: str | Path,
    primary: str | None = None,
    benchmarks_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Read every variant's results, decide the verdicts, write every file of :data:`OUTPUTS`.

    Args:
        cfg: a resolved config (``report``, ``baseline``, ``launch`` sections).
        cache_dir: the cache (``static.npz``: elevation for contours and bands).
        variant_dirs: ``{variant: results folder}`` (:mod:`aqnet.report.inputs`), in order.
        gates_dir: the folder holding ``verify_wind_order.json`` (``None``: shown as MISSING).
        out_dir: where the report goes.
        primary: the variant the headline verdict is about (default: ``default`` or the first).
        benchmarks_dir: the pipeline's benchmark folder, for the GPU-hours each GPU stage used
            (:mod:`aqnet.report.usage`; ``None``: shown as not recorded). The projection beside
            them is ``check_budget.json`` in ``gates_dir``.

    Returns:
        The content of ``verdict.json``.
    """
    from aqnet.data import load_static

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rcfg = cfg["report"]
    runs = {name: load_variant(name, d) for name, d in variant_dirs.items()}
    if not runs:
        raise ValueError("report: no variant given")
    # <variant>-seed<s> runs pooled under their variant (finetune.seeds)
    groups = seed_groups(list(runs))
    variants = {name: pool_runs([runs[r] for r in members]) for name, members in groups.items()}
    seed_means = {name: run_means([runs[r] for r in members]) for name, members in groups.items()}
    if primary is None:
        primary = "default" if "default" in variants else next(iter(variants))
    if primary not in variants:
        raise ValueError(f"report: primary variant {primary!r} is not among {list(variants)}")
    main = variants[primary]
    control = rcfg.get("control")
    check_arms(variants, rcfg, primary=primary, control=control)

    base_val, base_source = baseline_val_loss(cfg, main)
    threshold: float | None = None
    threshold_source = "the baseline's paired mean loss on the same samples"
    if rcfg["success_threshold"] is not None:
        threshold, threshold_source = float(rcfg["success_threshold"]), "report.success_threshold"

    vs_baseline = {
        name: analysis.calibrated_vs_baseline(v.evaluation, rcfg, new_name=name)
        for name, v in variants.items()
    }
    vs_control = {
        name: analysis.calibrated_between(
            variants[control].evaluation, v.evaluation, rcfg, ref_name=control, new_name=name
        )
        for name, v in variants.items()
        if control is not None and name != control
    }
    seeds = {
        name: seed_test(seed_means[control], seed_means[name], ref_name=control, new_name=name)
        for name in vs_control
    }
    verdicts = judge_variants(
        vs_baseline,
        vs_control,
        control=control,
        threshold=threshold,
        threshold_source=threshold_source,
        min_gain_pct=float(rcfg["min_gain_pct"]),
        seeds=seeds,
    )
    for name, vd in verdicts.items():
        log.info("report: %s: %s", name, vd.line)

    # both against the control arm (the baseline without one), on the same samples
    against = {
        "ev_ref": None if control is None else variants[control].evaluation,
        "ref_name": control or "baseline",
        "new_name": primary,
    }
    breakdown = breakdown_tests(main.evaluation, rcfg, **against)
    significance = significance_map(
        main.evaluation,
        rcfg,
        **against,
        grid_shape=(main.evaluation.sizes["y"], main.evaluation.sizes["x"]),
    )
    comparison = comparison_table(variants, verdicts, vs_baseline, rcfg, cfg["launch"])
    best = best_variant(variants, verdicts, control=control)

    static = load_static(cache_dir)
    elevation_m = np.asarray(static["elevation_m"], dtype=np.float64)
    bias_terrain = config_share(main.config, cache_dir, elevation_m)
    ev = main.evaluation
    lat, lon = ev["lat"].values, ev["lon"].values
    region_cells = [int(c) for c in np.atleast_1d(ev.attrs["region_cells"])]
    tag = f"variant {primary}"

    rmse = analysis.rmse_table(ev)
    bands = gain_by_elevation(ev, elevation_m)
    regions, gain_grid = gain_by_region(ev, elevation_m, region_cells=region_cells)
    terrain = gain_by_terrain(regions)
    base_map, ft_map = analysis.mse_maps(ev)
    wind_order = read_json_report(Path(gates_dir) / WIND_ORDER_FILE) if gates_dir else None
    gates = gate_rows(wind_order, variants)
    usage = usage_rows(
        cfg["launch"],
        list(variants),
        benchmarks_dir=benchmarks_dir,
        budget_report=Path(gates_dir) / "check_budget.json" if gates_dir else None,
    )
    costs = comparison[["variant", "projected_gpu_hours"]].assign(
        measured_gpu_hours=comparison["gpu_hours"]
    )

    paths = {k: out_dir / f for k, f in OUTPUTS.items()}
    figures.make_figures(
        figures.FigureData(
            metrics={n: v.metrics for n, v in variants.items()},
            alpha_cols={n: alpha_columns(v.metrics) for n, v in variants.items()},
            baseline_val_loss=base_val,
            threshold=base_val if threshold is None else threshold,
            rmse=rmse,
            base_map=base_map,
            ft_map=ft_map,
            lat=lat,
            lon=lon,
            elevation_m=elevation_m,
            bands=bands,
            terrain=terrain,
            gain_grid=gain_grid,
            region_cells=(region_cells[0], region_cells[1]),
            gates=gates,
            costs=costs,
            comparison=comparison,
            rmse_change=rmse_change(variants),
            alphas={n: v.final_alphas() for n, v in variants.items()},
            baseline_eval_loss=float(np.mean(analysis.paired_samples(ev)[0])),
            tag=tag,
            significance=significance,
            runs={n: [runs[r].metrics for r in members] for n, members in groups.items()},
        ),
        out_dir,
    )
    (pd.DataFrame() if significance is None else significance.table).to_csv(
        paths["significance_csv"], index=False, float_format="%.6g"
    )

    rmse.to_csv(paths["rmse_csv"], index=False, float_format="%.6g")
    atomic_write_bytes(paths["rmse_html"], page.rmse_html(rmse, tag).encode())
    regions.to_csv(paths["regions_csv"], index=False, float_format="%.6g")
    comparison.to_csv(paths["variants_csv"], index=False, float_format="%.6g")

    head = verdicts[primary]
    result: dict[str, Any] = {
        **head.to_dict(),
        "split": rcfg["split"],
        "final_val_loss": main.final_val_loss,
        "baseline_val_loss": base_val,
        "baseline_val_loss_source": base_source,
        "final_step": main.final_step,
        "criteria": {
            "success_threshold": rcfg["success_threshold"],
            "significance": rcfg["significance"],
            "min_block_hours": rcfg["block_hours"],
            "split": rcfg["split"],
            "control": control,
            "min_gain_pct": rcfg["min_gain_pct"],
            "multiple_comparisons": "Holm, across the variants (vs control; vs baseline)",
        },
        "variants": {
            name: {
                **(
                    verdicts[name].to_dict()
                    if name in verdicts
                    else {"verdict": "CONTROL", "vs_baseline": vs_baseline[name].to_dict()}
                ),
                "settings": variants[name].settings(),
                "seed_runs": groups[name],
                "seed_mean_losses": seed_means[name],
                "final_alphas": variants[name].final_alphas(),
                "gpu_hours": _finite(comparison.loc[i, "gpu_hours"]),
                "projected_gpu_hours": _finite(comparison.loc[i, "projected_gpu_hours"]),
                "evaluation": variants[name].files["evaluation"],
            }
            for i, name in enumerate(variants)
        },
        "best_variant": best,
        "breakdown": breakdown.to_dict(orient="records"),
        "gates": gates,
        "gpu_hours_by_stage": [
            {k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in usage
        ],
        "bias_share": bias_terrain,
        "gain_by_elevation": bands.to_dict(orient="records"),
        "gain_by_terrain": terrain.to_dict(orient="records"),
        "top_regions": regions.head(5).to_dict(orient="records"),
        "files": {k: p.name for k, p in paths.items()},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    blocks = page.summary_blocks(
        result, rmse, comparison, bands, terrain, regions, gates, tag, breakdown=breakdown
    )
    atomic_write_bytes(paths["summary_md"], page.summary_markdown(blocks).encode())
    atomic_write_bytes(paths["summary_html"], page.summary_html(blocks, out_dir).encode())
    write_json(paths["verdict"], result)
    return result

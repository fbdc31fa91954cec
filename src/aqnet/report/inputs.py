"""What the report reads: each variant's results folder and the shared gate reports.

A variant's folder is the pipeline's ``results/variants/<name>/`` (docs/ARCHITECTURE.md):

====================================  ======================================================
file                                  written by
====================================  ======================================================
``evaluation.nc``                     ``aqnet evaluate`` (required)
``finetune/metrics.csv``              ``aqnet finetune`` (required)
``finetune/summary.json``             ``aqnet finetune`` (GPU-hours, final alphas)
``audit_checkpoint.json``             gate ``audit_checkpoint``
``smoke_forward.json``                gate ``smoke_forward``
``validate_short.json``               gate ``validate_short`` (the projected cost)
``config.yaml``                       the variant's resolved config (model settings)
====================================  ======================================================

The shared gates folder (``results/gates/``) holds ``verify_wind_order.json``. A missing required
file is an error naming it; a missing gate report or summary is shown as ``MISSING`` in the gate
panel and the verdict file, never silently skipped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr
import yaml

from aqnet.report.analysis import check_evaluation
from aqnet.report.evaluation_file import open_evaluation

log = logging.getLogger("aqnet.report")

EVALUATION_FILE = "evaluation.nc"
METRICS_FILE = "finetune/metrics.csv"
SUMMARY_FILE = "finetune/summary.json"
AUDIT_FILE = "audit_checkpoint.json"
SMOKE_FILE = "smoke_forward.json"
VALIDATE_SHORT_FILE = "validate_short.json"
CONFIG_FILE = "config.yaml"
WIND_ORDER_FILE = "verify_wind_order.json"

GATES: tuple[str, ...] = ("audit_checkpoint", "smoke_forward", "validate_short")
"""The per-variant gates, in pipeline order."""

_ALPHA = re.compile(r"^alpha_block(\d+)$")


def read_json_report(path: Path) -> dict[str, Any] | None:
    """A JSON report, or ``None`` when the file does not exist (unreadable JSON is an error)."""
    if not path.is_file():
        log.warning("report: %s not found; shown as MISSING", path)
        return None
    try:
        with path.open() as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_metrics_table(path: Path) -> pd.DataFrame:
    """A training ``metrics.csv`` as a DataFrame sorted by step (empty cells are NaN).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file lacks ``step``/``val_loss``/``train_loss`` or has no validation row.
    """
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    df = pd.read_csv(path)
    missing = [c for c in ("step", "train_loss", "val_loss") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: metrics.csv lacks the column(s) {missing}")
    df = df.sort_values("step").reset_index(drop=True)
    if not df["val_loss"].notna().any():
        raise ValueError(f"{path}: metrics.csv has no row with a val_loss")
    return df


def alpha_columns(metrics: pd.DataFrame) -> dict[int, str]:
    """``{block: column}`` of the ``alpha_block<i>`` columns, sorted by block."""
    found = {int(m.group(1)): c for c in metrics.columns if (m := _ALPHA.match(str(c)))}
    return dict(sorted(found.items()))


def final_val_loss(metrics: pd.DataFrame, *, source: str = "metrics") -> tuple[float, int]:
    """``(val_loss, step)`` of the last validated step."""
    rows = metrics[metrics["val_loss"].notna()]
    if rows.empty:
        raise ValueError(f"{source}: no validated step")
    last = rows.iloc[-1]
    return float(last["val_loss"]), int(last["step"])


@dataclass
class VariantResults:
    """Everything the report uses of one variant."""

    name: str
    directory: Path
    evaluation: xr.Dataset
    metrics: pd.DataFrame
    summary: dict[str, Any] | None
    gates: dict[str, dict[str, Any] | None]
    config: dict[str, Any] | None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def final_val_loss(self) -> float:
        return final_val_loss(self.metrics, source=self.files.get("metrics", self.name))[0]

    @property
    def final_step(self) -> int:
        return final_val_loss(self.metrics, source=self.files.get("metrics", self.name))[1]

    def final_alphas(self) -> dict[int, float]:
        """``{block: elevation_alpha}`` after the last step (from ``metrics.csv``)."""
        out = {}
        for block, col in alpha_columns(self.metrics).items():
            values = self.metrics[col].dropna()
            if not values.empty:
                out[block] = float(values.iloc[-1])
        return out

    def settings(self) -> dict[str, Any]:
        """The variant's model settings that the comparison table shows."""
        model = (self.config or {}).get("model", {})
        keys = ("topoflow_blocks", "h_scale_m", "elevation_bias", "wind_scan")
        return {k: model[k] for k in keys if k in model}


def load_variant(name: str, directory: str | Path) -> VariantResults:
    """Read one variant's results folder (module docstring).

    Raises:
        FileNotFoundError / ValueError: a required file is missing or unusable, naming it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"variant {name!r}: results folder not found: {directory}")
    paths = {
        "evaluation": directory / EVALUATION_FILE,
        "metrics": directory / METRICS_FILE,
        "summary": directory / SUMMARY_FILE,
        "config": directory / CONFIG_FILE,
        **{gate: directory / f"{gate}.json" for gate in GATES},
    }
    evaluation = open_evaluation(paths["evaluation"])
    check_evaluation(evaluation, source=str(paths["evaluation"]))
    metrics = read_metrics_table(paths["metrics"])
    config = None
    if paths["config"].is_file():
        with paths["config"].open() as fh:
            config = yaml.safe_load(fh)
    gates = {gate: read_json_report(paths[gate]) for gate in GATES}
    if config is not None:
        check_gates_made_under(name, gates, paths)
    return VariantResults(
        name=name,
        directory=directory,
        evaluation=evaluation,
        metrics=metrics,
        summary=read_json_report(paths["summary"]),
        gates=gates,
        config=config,
        files={k: str(v) for k, v in paths.items()},
    )


def check_gates_made_under(
    name: str, gates: Mapping[str, Mapping[str, Any] | None], paths: Mapping[str, Path]
) -> None:
    """Refuse a variant whose gate reports were not made under its resolved config.

    Each gate of one variant stores the digest of the config it ran under
    (``aqnet.provenance.config_digest``); a report copied from another run, another results folder
    or an earlier config would put another run's figures (the projected cost, the starting
    loss) into this one's report.

    Raises:
        ValueError: naming the variant, the report and both digests.
    """
    from aqnet.config import load_resolved
    from aqnet.provenance import report_config_mismatch

    config = load_resolved(paths["config"])
    for gate, rep in gates.items():
        if rep is None:
            continue
        mismatch = report_config_mismatch(rep, config, what=f"{paths[gate]}")
        if mismatch is not None:
            raise ValueError(
                f"variant {name!r}: {mismatch} ({paths['config']}): rerun {gate} for this config"
            )


def parse_variant_dirs(specs: Sequence[str]) -> dict[str, Path]:
    """``["default=results/variants/default", ...]`` -> ``{"default": Path(...)}`` (in order).

    Raises:
        ValueError: a spec without ``=``, an empty name or a name given twice.
    """
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--variant-dir expects NAME=DIR, got {spec!r}")
        if name in out:
            raise ValueError(f"--variant-dir: variant {name!r} given twice")
        out[name] = Path(folder)
    if not out:
        raise ValueError("at least one --variant-dir NAME=DIR is needed")
    return out


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def gate_status(report: Mapping[str, Any] | None) -> str:
    """``PASS``, ``FAIL`` or ``MISSING``."""
    if report is None:
        return "MISSING"
    if "verdict" in report:
        return str(report["verdict"])
    return "PASS" if report.get("passed") else "FAIL"


def gate_rows(
    wind_order: Mapping[str, Any] | None, variants: Mapping[str, VariantResults]
) -> list[dict[str, Any]]:
    """One row per gate outcome: ``gate, variant, status, detail`` (detail: the key numbers)."""
    rows = []
    detail = "report not found"
    if wind_order is not None:
        digest = (wind_order.get("cache") or {}).get("digest", "")
        same = wind_order.get("digests_equal")
        detail = f"digest {str(digest)[:12]}" + (
            ", equal to the baseline's" if same else ", differs from the baseline's"
        )
        if wind_order.get("bytes_differ"):
            detail += " (file bytes differ, orders identical)" if same else ""
        if gate_status(wind_order) != "PASS":
            detail = str(wind_order.get("reason", detail))
    rows.append(
        {
            "gate": "verify_wind_order",
            "variant": "(all)",
            "status": gate_status(wind_order),
            "detail": detail,
        }
    )
    for name, v in variants.items():
        for gate in GATES:
            rep = v.gates.get(gate)
            rows.append(
                {
                    "gate": gate,
                    "variant": name,
                    "status": gate_status(rep),
                    "detail": _gate_detail(gate, rep),
                }
            )
    return rows


def _gate_detail(gate: str, rep: Mapping[str, Any] | None) -> str:
    if rep is None:
        return "report not found"
    if gate_status(rep) != "PASS":
        return str(rep.get("reason", "failed"))
    if gate == "audit_checkpoint":
        load = rep.get("load") or {}
        loaded, missing = len(load.get("loaded", [])), len(load.get("missing", []))
        unexpected = len(load.get("unexpected", []))
        return f"{loaded} keys loaded, {missing} new (expected), {unexpected} unexpected"
    if gate == "smoke_forward":
        val, base = _num(rep.get("val_loss")), _num(rep.get("baseline_val_loss"))
        if val is not None and base is not None:
            return f"loss {val:.4f} vs baseline {base:.4f} ({100 * (val - base) / base:+.2f} %)"
    if gate == "validate_short":
        cost = rep.get("projected_cost") or {}
        gpu_h, step_s = _num(cost.get("gpu_hours")), _num(cost.get("step_time_s"))
        if gpu_h is not None and step_s is not None:
            return f"step {step_s:.3g} s, projected {gpu_h:.3g} GPU-h"
    return str(rep.get("reason", ""))


def projected_gpu_hours(variant: VariantResults) -> float | None:
    """The full run's GPU-hours projected by ``validate_short`` (``None`` when unknown)."""
    rep = variant.gates.get("validate_short") or {}
    return _num((rep.get("projected_cost") or {}).get("gpu_hours"))


def measured_gpu_hours(variant: VariantResults, launch: Mapping[str, Any]) -> float | None:
    """GPU-hours the fine-tune actually used: the summed step and validation times of its
    ``metrics.csv`` x nodes x ``launch.gpu_hours_per_node_hour``.

    Nodes are the fine-tune's ranks (``summary.json`` ``world_size``) over
    ``launch.tasks_per_node``, rounded up; ``launch.nodes`` when the summary is missing.
    """
    m = variant.metrics
    seconds = 0.0
    found = False
    for col in ("step_time_s", "val_time_s"):
        if col in m.columns and m[col].notna().any():
            seconds += float(m[col].fillna(0.0).sum())
            found = True
    if not found:
        return None
    world = _num((variant.summary or {}).get("world_size"))
    tasks = int(launch["tasks_per_node"])
    nodes = math.ceil(world / tasks) if world is not None else int(launch["nodes"])
    return seconds / 3600.0 * nodes * float(launch["gpu_hours_per_node_hour"])

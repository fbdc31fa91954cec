"""Which config a gate report was made under: its digest, stored in the report
(``config_digest``) and checked by whatever reads the report back (the cost projection, the
fine-tune's watchdog, ``check_budget``, the report), so that no figure of one config is used for
another."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any


def config_digest(config: Mapping[str, Any]) -> str:
    """A short SHA-256 (16 hex digits) of ``config`` as canonical JSON (sorted keys).

    The same for a resolved config before :func:`dump_config` and after :func:`load_resolved`,
    so the workflow (which holds the first) and a stage (which reads the second) agree. The
    gates of one variant store it in their report (``config_digest``); what reads a report back
    uses it only under the same digest (:func:`report_config_mismatch`).
    """
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


NOT_MEASURED: tuple[tuple[str, ...], ...] = (
    ("results_dir",),
    ("variants",),
    ("report",),
    ("finetune", "seeds"),
    ("launch", "max_gpu_hours"),
    ("launch", "gpu_hours_per_node_hour"),
    ("launch", "walltime_margin"),
    ("launch", "walltime_startup_min"),
    ("launch", "partition_time_limit_min"),
    ("launch", "step_time_estimate_s"),
)
"""Keys a gate's findings do not depend on: where results go, the other variants and seeds, the
report's settings, the budget and the wall-time arithmetic. A gate report stays valid when only
these change (e.g. a raised ``launch.max_gpu_hours`` keeps validate_short's measured step time)."""


def without_unmeasured(
    config: Mapping[str, Any], *, keep: tuple[tuple[str, ...], ...] = ()
) -> dict[str, Any]:
    """A deep copy of ``config`` without the keys of :data:`NOT_MEASURED` (but those in
    ``keep``)."""
    kept = copy.deepcopy(dict(config))
    for path in NOT_MEASURED:
        if path in keep:
            continue
        section = kept
        for key in path[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(path[-1], None)
    return kept


def run_config(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The config a variant's gates and fine-tune run under: its resolved config (key
    ``variant`` set, its overrides merged) without the keys they do not depend on
    (:data:`NOT_MEASURED`; the results folder is kept), which take their defaults when a stage
    loads it. Its ``variants`` entry keeps the variant's name with no overrides: they are merged
    already, and how they were written (a seed given per variant, or by ``finetune.seeds``) does
    not change the run.

    The workflow writes it apart from the full resolved config (``variants/<v>/run.yaml`` beside
    ``config.yaml``), so a new seed, budget or report setting rewrites only the full one:
    evaluate, the budget gate and the report rerun, no finished fine-tune does. Its
    :func:`gate_digest` is the full config's.
    """
    out = without_unmeasured(resolved, keep=(("results_dir",),))
    out["variants"] = {resolved["variant"]: {}}
    return out


def gate_digest(config: Mapping[str, Any]) -> str:
    """The ``config_digest`` a gate stores in its report: :func:`config_digest` of ``config``
    without the keys of :data:`NOT_MEASURED`."""
    return config_digest(without_unmeasured(config))


def report_config_mismatch(
    report: Mapping[str, Any], config: Mapping[str, Any], *, what: str
) -> str | None:
    """Why ``report`` (a gate report) was not made under ``config``, else ``None``: its stored
    ``config_digest`` against :func:`gate_digest` of ``config``.

    A report without ``config_digest`` (written by hand, or by an older version) counts as made
    under another config: its figures are not this config's.
    """
    stored = report.get("config_digest")
    current = gate_digest(config)
    if stored == current:
        return None
    made = "records no config digest" if stored is None else f"was made under config {stored}"
    return f"{what} {made}, not under this run's config {current}"

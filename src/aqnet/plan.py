"""The workflow's view of a config: which files each stage reads and writes, which config each
stage runs under, how its ranks are started, and what the run will cost.

``workflow/rules/common.smk`` only loads the config and calls these (turning a :class:`PlanError`
into Snakemake's one-line ``WorkflowError``); everything here is plain Python, unit-tested
without Snakemake (``tests/test_plan.py``).

* :class:`Plan`: one validated config (``aqnet.config.validate_config``, control arm and seeds
  added) and the paths under its ``results_dir``.
* Resolved configs: :meth:`Plan.resolved_config` (one variant), :meth:`Plan.run_config` (the part
  of it the variant's gates and fine-tune run under) and :meth:`Plan.shared_config` (the
  variant-independent stages, each keeping only the keys of its scope in :data:`SHARED_SCOPES`).
* The launch of a stage's command (its prefix, its ranks) and the checks of the environment
  Snakemake runs in: :mod:`aqnet.launcher`.
* The cost: :meth:`Plan.cost_projection` (figures from :mod:`aqnet.train.cost`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aqnet.config import validate_config, variant_config
from aqnet.provenance import config_digest, run_config
from aqnet.train.cost import (
    SHARED_VARIANT,
    run_projection,
)
from aqnet.train.length import estimated_start_times, start_times_in_cache
from aqnet.train.measured import ignored_measurement, measured_from_report

SHARED = SHARED_VARIANT
"""Pseudo-variant name of the resolved config the shared stages read (and of their cost)."""

SHARED_SCOPES: dict[str, tuple[str, ...]] = {
    # make_demo_data, build_cache (the wind orders need the patch and region sizes)
    "data": (
        "results_dir",
        "data",
        "grid",
        "lead_times_h",
        "model.preset",
        "model.patch_size",
        "model.region_patches",
    ),
    # train_baseline (its recorded val_loss is over the validation subset the gates evaluate)
    "baseline": (
        "results_dir",
        "data",
        "grid",
        "lead_times_h",
        "model",
        "baseline.train",
        "validation",
    ),
    # verify_wind_order (in wind_scan reference mode it recomputes the validation samples' orders)
    "wind_order": ("results_dir", "data", "grid", "lead_times_h", "model", "validation"),
    # check_network (the model's gradient size, the fine-tune's backend, device and timeout)
    "network": (
        "results_dir",
        "grid",
        "lead_times_h",
        "model",
        "finetune.backend",
        "finetune.device",
        "finetune.dist_timeout_s",
        "launch.tasks_per_node",
    ),
    # report (everything but the variants: it is given their folders)
    "report": (
        "results_dir",
        "data",
        "grid",
        "lead_times_h",
        "model",
        "baseline",
        "validation",
        "gates",
        "launch",
        "finetune",
        "report",
    ),
}
"""The keys each variant-independent stage depends on (dotted paths); the rest stay at their
defaults, so that e.g. a new ``baseline.checkpoint`` or finetune setting does not rebuild the
cache, and a finetune setting does not retrain the baseline."""

BEFORE_FINETUNE = frozenset(
    {
        "resolve_config",
        "resolve_shared_config",
        "make_demo_data",
        "build_cache",
        "train_baseline",
        "verify_wind_order",
        "audit_checkpoint",
        "smoke_forward",
        "check_network",
        "validate_short",
    }
)
"""Rules after which nothing is fine-tuned: ``--until`` one of them measures without the budget."""


class PlanError(ValueError):
    """The config asks for something the workflow cannot plan; the message names the keys."""


def digest(obj: Any) -> str:
    """A params value for Snakemake's rerun trigger (:func:`aqnet.provenance.config_digest`)."""
    return config_digest(obj)


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


class Plan:
    """The files and configs of one run (``cfg``: validated, control arm and seeds added)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.results = str(Path(cfg["results_dir"]))
        self.variants = list(cfg["variants"])

    def result(self, path: str) -> str:
        """``path`` under the configured results folder."""
        return f"{self.results}/{path}"

    # -- input data ------------------------------------------------------------------------

    def split_years(self) -> list[int]:
        """Every year of the train/val/test split, sorted."""
        split = self.cfg["data"]["split"]
        return sorted({*split["train"], *split["val"], *split["test"]})

    def demo_files(self) -> list[str]:
        """The files make_demo_data writes (one per ``data.demo.years``)."""
        return [self.result(f"demo_data/demo_{y}.nc") for y in self.cfg["data"]["demo"]["years"]]

    def input_files(self) -> list[str]:
        """The yearly files build_cache reads: the split's years, demo or user-given."""
        data, years = self.cfg["data"], self.split_years()
        if data["source"] == "demo":
            missing = sorted(set(years) - set(data["demo"]["years"]))
            if missing:
                raise PlanError(
                    f"data.split uses years {missing} that data.demo.years "
                    f"{data['demo']['years']} does not generate"
                )
            return [self.result(f"demo_data/demo_{y}.nc") for y in years]
        files = {str(year): path for year, path in data["files"].items()}
        missing = [y for y in years if str(y) not in files]
        if missing:
            raise PlanError(
                f"data.files has no file for the split's years {missing} (it lists {sorted(files)})"
            )
        return [files[str(y)] for y in years]

    def mask_files(self) -> list[str]:
        """The file build_cache reads the loss mask from, when it is not the data's own."""
        mask = self.cfg["data"]["mask"]
        if mask["source"] == "file":
            if not mask["file"]:
                raise PlanError("data.mask.source is 'file' but data.mask.file is null")
            return [mask["file"]]
        if mask["source"] == "checkpoint":
            if not self.cfg["baseline"]["checkpoint"]:
                raise PlanError(
                    "data.mask.source is 'checkpoint' but baseline.checkpoint is null: the mask "
                    "of a baseline trained here would need the cache it is trained on"
                )
            return [self.cfg["baseline"]["checkpoint"]]
        return []

    # -- the baseline: given by the config, or trained by train_baseline --------------------

    def baseline_checkpoint(self) -> str:
        """``baseline.checkpoint``, or train_baseline's output when it is null."""
        return self.cfg["baseline"]["checkpoint"] or self.result("baseline/baseline.ckpt")

    def reference_orders(self) -> str:
        """The wind orders the baseline was trained with (verify_wind_order's reference).

        ``baseline.wind_orders`` when set; else train_baseline's output; for a given checkpoint
        without ``wind_orders``, the ``wind_orders.npz`` saved next to it.
        """
        base = self.cfg["baseline"]
        if base["wind_orders"]:
            return base["wind_orders"]
        if not base["checkpoint"]:
            return self.result("baseline/wind_orders.npz")
        beside = Path(base["checkpoint"]).with_name("wind_orders.npz")
        if not beside.exists():
            raise PlanError(
                f"baseline.checkpoint is {base['checkpoint']} but baseline.wind_orders is null "
                f"and there is no {beside}: set baseline.wind_orders to the scan orders the "
                "baseline was trained with"
            )
        return str(beside)

    # -- resolved configs (what each stage reads with aqnet.config.load_resolved) -----------

    def resolved_config(self, variant: str) -> dict[str, Any]:
        """The config one variant's stages read: its overrides merged, key ``variant`` set.

        Only this variant's entry is kept under ``variants``, so adding or changing another
        variant leaves it unchanged.
        """
        resolved = variant_config(self.cfg, variant)
        resolved["variants"] = {variant: self.cfg["variants"][variant]}
        return resolved

    def run_config(self, variant: str) -> dict[str, Any]:
        """The config one variant's gates and fine-tune read (``variants/<v>/run.yaml``): its
        resolved config without the keys no measurement or training depends on (seeds, budget,
        wall-time arithmetic, report settings; :func:`aqnet.provenance.run_config`). Changing
        those rewrites only the full ``config.yaml`` that evaluate, check_budget and the report
        read, so no finished fine-tune reruns."""
        return run_config(self.resolved_config(variant))

    def shared_config(self, scope: str) -> dict[str, Any]:
        """The config of the variant-independent stages of ``scope`` (a key of SHARED_SCOPES)."""
        dotted_keys = SHARED_SCOPES[scope]
        if scope == "data" and self.cfg["data"]["mask"]["source"] == "checkpoint":
            dotted_keys += ("baseline.checkpoint",)  # the china_mask buffer is read from it
        shared: dict[str, Any] = {}
        for dotted in dotted_keys:
            *parents, key = dotted.split(".")
            source, target = self.cfg, shared
            for part in parents:
                source, target = source[part], target.setdefault(part, {})
            if key in source:
                target[key] = source[key]
        shared["variants"] = {SHARED: {}}
        return variant_config(
            validate_config(shared, source=f"{scope} config", fine_tunes=False), SHARED
        )

    def state_dir(self, stage: str, variant: str | None = None) -> str:
        """The resume-state folder of a training stage, one per config.

        ``results/state/<variant>/<stage>/<digest>`` (``results/state/baseline/<digest>``): a
        stage interrupted and started again with the same config resumes from its ``last.pt``;
        one rerun because its config changed starts afresh instead of meeting a state the
        training refuses. The digest is of the config the stage runs under (:meth:`run_config`),
        so a new seed or budget keeps an interrupted fine-tune's state. Not a declared output, so
        Snakemake never deletes it.
        """
        if variant is None:
            return self.result(f"state/{stage}/{digest(self.shared_config(stage))}")
        return self.result(f"state/{variant}/{stage}/{digest(self.run_config(variant))}")

    def slurm_job_record(self, stage: str, variant: str) -> str:
        """A shell prefix that records the Slurm job id in
        ``benchmarks/<stage>/<variant>.slurm_jobs``, from which the report reads the GPU-hours
        used (:mod:`aqnet.report.usage`). A run that starts afresh (validate_short always; the
        fine-tune without a resume state) starts the file anew; a resumed or requeued fine-tune
        adds its allocation. Nothing outside Slurm."""
        path = self.result(f"benchmarks/{stage}/{variant}.slurm_jobs")
        fresh = "true"
        if stage == "finetune":
            fresh = f"[ ! -e {self.state_dir(stage, variant)}/last.pt ]"
        return (
            f'if [ -n "${{SLURM_JOB_ID:-}}" ]; then mkdir -p {Path(path).parent};'
            f" if {fresh}; then : > {path}; fi;"
            f' echo "$SLURM_JOB_ID" >> {path}; fi; '
        )

    # -- projected cost, budget and wall time (figures from aqnet.train.cost) ---------------

    def train_start_times(self) -> tuple[int, str]:
        """Forecast start times of the training split: counted in the cache once it is built,
        else estimated from the config (hourly data); and which of the two."""
        meta = _read_json(self.result("cache/meta.json"))
        if meta is not None:
            try:
                return start_times_in_cache(meta), "counted in the cache"
            except (KeyError, TypeError, ValueError):
                pass
        return estimated_start_times(
            self.cfg
        ), "estimated from the config until build_cache counts them"

    def cost_projection(self) -> dict[str, Any]:
        """Every GPU stage's projected GPU-hours (:func:`aqnet.train.cost.run_projection`),
        measured by each variant's validate_short where it passed under the variant's current
        config (its report's config digest), else from ``launch.step_time_estimate_s``, saying
        why."""
        start_times, source = self.train_start_times()
        resolved = {v: self.resolved_config(v) for v in self.variants}
        reports = {
            v: _read_json(self.result(f"variants/{v}/validate_short.json")) for v in self.variants
        }
        return run_projection(
            resolved,
            start_times=start_times,
            start_times_source=source,
            measured={v: measured_from_report(reports[v], resolved[v]) for v in self.variants},
            notes={v: ignored_measurement(reports[v], resolved[v]) for v in self.variants},
            max_gpu_hours=self.cfg["launch"]["max_gpu_hours"],
        )

    def finetune_minutes(self, variant: str) -> int:
        """The fine-tune's requested wall time in minutes: projected time x
        ``launch.walltime_margin`` + ``launch.walltime_startup_min``, capped by
        ``launch.partition_time_limit_min``."""
        for stage in self.cost_projection()["stages"]:
            if stage["stage"] == "finetune" and stage["variant"] == variant:
                return int(stage["cost"]["request"]["minutes"])
        raise PlanError(f"no fine-tune projection for variant {variant}")

    def gpu_nodes_refusal(self, limit: Any) -> str | None:
        """Why no fine-tune could start under the global ``gpu_nodes`` resource, else None: a
        fine-tune larger than it would be scaled down by Snakemake's scheduler while Slurm still
        gets ``launch.nodes``."""
        nodes = self.cfg["launch"]["nodes"]
        if isinstance(limit, int) and not isinstance(limit, bool) and nodes > limit:
            return (
                f"launch.nodes {nodes} exceeds the GPU nodes allowed in flight "
                f"(--resources gpu_nodes={limit}): no fine-tune could ever start"
            )
        return None

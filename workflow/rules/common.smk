"""Helpers shared by the rules (functions only, so ``snakemake --lint`` stays clean).

* ``CFG``: the validated config with defaults filled (``aqnet.config.validate_config``);
  ``VARIANTS``: the ablation variants, each its own chain under ``results/variants/<name>/``,
  the control arm ``report.control`` among them (``aqnet.config.with_control_arm``) and one run
  per seed of ``finetune.seeds`` (``aqnet.config.with_seeds``).
* ``result(path)``: a path under ``results_dir``.
* ``resolved_config(variant)`` / ``shared_config(scope)``: what the rules ``resolve_config`` and
  ``resolve_shared_config`` write; each stage reads one of them (a plain input), so a stage
  reruns when its config changes, and only then.
* ``launcher`` / ``world_size``: the command prefix of every stage (ranks, container), and the
  number of ranks a multi-rank rule starts.
* The projected GPU-hours of every GPU stage (aqnet.train.cost), printed when the workflow is
  parsed (dry runs too); the budget refusal and the fine-tune's derived wall time.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from snakemake.utils import update_config

from aqnet.config import (
    ConfigError,
    coerce_overrides,
    validate_config,
    variant_config,
    with_control_arm,
    with_seeds,
)
from aqnet.train.cost import (
    BudgetExceeded,
    check_budget,
    estimated_start_times,
    format_projection,
    measured_from_report,
    run_projection,
    start_times_in_cache,
)


def _config_source() -> str:
    """Where the config came from, for error messages: its files and any --config overrides."""
    source = " + ".join(str(f) for f in workflow.configfiles) or "config"
    if workflow.config_settings.overwrite_config:
        source += " + --config"
    return source


try:
    # --config values arrive as strings below the top level (finetune='{steps: 5}'): give each
    # its schema type before either validation sees it (the Snakefile's validate() reads `config`).
    if workflow.config_settings.config:
        update_config(config, coerce_overrides(workflow.config_settings.config))
    # report.control (no_elevation_bias by default) joins the variants: the control arm; then
    # one run per fine-tune seed of finetune.seeds (<variant>-seed<s>)
    CFG = with_seeds(with_control_arm(validate_config(config, source=_config_source())))
except ConfigError as exc:
    # One readable line naming the key (no traceback into the package).
    raise WorkflowError(f"invalid configuration: {exc}") from None


def _profiles_merged() -> str | None:
    """Why this run would merge a --profile with the default workflow profile, else None.

    Snakemake reads ``profiles/default`` (the demo's local settings) as the workflow-specific
    profile of every run not started with ``--workflow-profile``, and lets its keys override a
    ``--profile``'s one by one (a ``default-resources`` there would drop LUMI's account). The LUMI
    profile is therefore given as the workflow profile, which replaces the default one:
    ``snakemake --workflow-profile profiles/lumi``. Only the main process reads profiles.
    """
    if not workflow.is_main_process:
        return None
    argv = sys.argv[1:]
    given = [a for a in argv if a == "--profile" or a.startswith("--profile=")]
    own = [
        a
        for a in argv
        if a == "--workflow-profile" or a.startswith("--workflow-profile=")
    ]
    if not (given or os.environ.get("SNAKEMAKE_PROFILE", "none") != "none") or own:
        return None
    defaults = [
        Path("profiles/default"),
        Path(workflow.basedir) / "profiles" / "default",
    ]
    if not any(d.exists() for d in defaults):
        return None
    return (
        "a --profile (or $SNAKEMAKE_PROFILE) is combined with the default workflow profile "
        "profiles/default, whose keys would override it one by one: give the cluster profile as "
        "the only one, `snakemake --workflow-profile profiles/lumi` (or add --workflow-profile "
        "none)"
    )


if (_merged := _profiles_merged()) is not None:
    raise WorkflowError(f"aqnet: {_merged}")

# Without --sdm conda the rules' commands run in the environment Snakemake runs in; put its
# scripts folder first on PATH so `aqnet` resolves to the same installation even when that
# environment is not activated (e.g. `.venv/bin/snakemake`). A conda env's own bin comes first.
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ.update(PATH=os.pathsep.join([_BIN, os.environ.get("PATH", "")]))

RESULTS = str(Path(CFG["results_dir"]))
VARIANTS = list(CFG["variants"])
ENV = "../../envs/aqnet.yaml"
# The fine-tune's self-requeue after USR1 (a shell script, so tests/test_slurm.py runs it too).
REQUEUE_SCRIPT = str(
    Path(workflow.main_snakefile).parent
    / "workflow"
    / "scripts"
    / "requeue_on_tempfail.sh"
)
SHARED = "shared"  # pseudo-variant name of the resolved config the shared stages read

# The configs of the variant-independent stages keep only the keys those stages depend on (the
# rest stay at their defaults), so that e.g. a new baseline.checkpoint or finetune setting does not
# rebuild the cache, and a finetune setting does not retrain the baseline.
SHARED_SCOPES = {
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
    "wind_order": (
        "results_dir",
        "data",
        "grid",
        "lead_times_h",
        "model",
        "validation",
    ),
    # check_network (the model's gradient size, the fine-tune's backend, device and timeout)
    "network": (
        "results_dir",
        "grid",
        "lead_times_h",
        "model",
        "finetune",
        "launch",
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


wildcard_constraints:
    variant="|".join(VARIANTS),
    scope="|".join(SHARED_SCOPES),
    year=r"\d{4}",


def result(path: str) -> str:
    """``path`` under the configured results folder."""
    return f"{RESULTS}/{path}"


# ---------------------------------------------------------------------------------------------
# Input data


def split_years() -> list[int]:
    """Every year of the train/val/test split, sorted."""
    split = CFG["data"]["split"]
    return sorted({*split["train"], *split["val"], *split["test"]})


def demo_files() -> list[str]:
    """The demo files make_demo_data writes (one per ``data.demo.years``)."""
    return [result(f"demo_data/demo_{y}.nc") for y in CFG["data"]["demo"]["years"]]


def input_files() -> list[str]:
    """The yearly input files build_cache reads: the split's years, demo or user-given."""
    years = split_years()
    if CFG["data"]["source"] == "demo":
        missing = sorted(set(years) - set(CFG["data"]["demo"]["years"]))
        if missing:
            raise WorkflowError(
                f"data.split uses years {missing} that data.demo.years "
                f"{CFG['data']['demo']['years']} does not generate"
            )
        return [result(f"demo_data/demo_{y}.nc") for y in years]
    files = {str(year): path for year, path in CFG["data"]["files"].items()}
    missing = [y for y in years if str(y) not in files]
    if missing:
        raise WorkflowError(
            f"data.files has no file for the split's years {missing} (it lists {sorted(files)})"
        )
    return [files[str(y)] for y in years]


# ---------------------------------------------------------------------------------------------
# The baseline: given by the config, or trained by train_baseline


def baseline_checkpoint() -> str:
    """``baseline.checkpoint``, or train_baseline's output when it is null."""
    return CFG["baseline"]["checkpoint"] or result("baseline/baseline.ckpt")


def reference_orders() -> str:
    """The wind orders the baseline was trained with (verify_wind_order's reference).

    ``baseline.wind_orders`` when set; else train_baseline's output; for a given checkpoint
    without ``wind_orders``, the ``wind_orders.npz`` saved next to it.
    """
    base = CFG["baseline"]
    if base["wind_orders"]:
        return base["wind_orders"]
    if not base["checkpoint"]:
        return result("baseline/wind_orders.npz")
    beside = Path(base["checkpoint"]).with_name("wind_orders.npz")
    if not beside.exists():
        raise WorkflowError(
            f"baseline.checkpoint is {base['checkpoint']} but baseline.wind_orders is null and "
            f"there is no {beside}: set baseline.wind_orders to the scan orders the baseline was "
            "trained with"
        )
    return str(beside)


# ---------------------------------------------------------------------------------------------
# Resolved configs (what each stage reads with aqnet.config.load_resolved)


def resolved_config(variant: str) -> dict:
    """The config one variant's stages read: its overrides merged, key ``variant`` set.

    Only this variant's entry is kept under ``variants``, so adding or changing another variant
    leaves the file unchanged.
    """
    resolved = variant_config(CFG, variant)
    resolved["variants"] = {variant: CFG["variants"][variant]}
    return resolved


def mask_files() -> list[str]:
    """The file build_cache reads the loss mask from, when it is not the data's own."""
    mask = CFG["data"]["mask"]
    if mask["source"] == "file":
        if not mask["file"]:
            raise WorkflowError("data.mask.source is 'file' but data.mask.file is null")
        return [mask["file"]]
    if mask["source"] == "checkpoint":
        if not CFG["baseline"]["checkpoint"]:
            raise WorkflowError(
                "data.mask.source is 'checkpoint' but baseline.checkpoint is null: the mask of a "
                "baseline trained here would need the cache it is trained on"
            )
        return [CFG["baseline"]["checkpoint"]]
    return []


def shared_config(scope: str) -> dict:
    """The config of the variant-independent stages of ``scope`` (a key of SHARED_SCOPES)."""
    shared: dict = {}
    dotted_keys = SHARED_SCOPES[scope]
    if scope == "data" and CFG["data"]["mask"]["source"] == "checkpoint":
        dotted_keys += ("baseline.checkpoint",)  # the china_mask buffer is read from it
    for dotted in dotted_keys:
        *parents, key = dotted.split(".")
        source, target = CFG, shared
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        if key in source:
            target[key] = source[key]
    shared["variants"] = {SHARED: {}}
    return variant_config(validate_config(shared, source=f"{scope} config"), SHARED)


def digest(obj) -> str:
    """A short SHA-256 of ``obj`` as canonical JSON (a params value for the rerun trigger)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _folder(files) -> str:
    """The folder of a file, or of a list of files that share one."""
    folders = {
        str(Path(f).parent) for f in ([files] if isinstance(files, str) else files)
    }
    if len(folders) != 1:
        raise WorkflowError(f"expected files in one folder, got {sorted(folders)}")
    return folders.pop()


def output_dir(name: str):
    """A params function: the folder of output ``name`` (for --out / --out-dir arguments)."""
    return lambda wildcards, output: _folder(output[name])


def input_dir(name: str):
    """A params function: the folder of input ``name`` (e.g. the cache of cache/meta.json)."""
    return lambda wildcards, input: _folder(input[name])


def state_dir(stage: str):
    """A params function: the resume-state folder of a training stage, one per config.

    ``results/state/<variant>/<stage>/<digest>`` (``results/state/baseline/<digest>``): a stage
    interrupted and started again with the same config resumes from its ``last.pt``; a stage
    rerun because its config changed starts afresh instead of meeting a state the training
    refuses (written by a different run). Not a declared output, so Snakemake never deletes it.
    """

    def _state_dir(wildcards) -> str:
        variant = getattr(wildcards, "variant", None)
        if variant is None:
            return result(f"state/{stage}/{digest(shared_config(stage))}")
        return result(f"state/{variant}/{stage}/{digest(resolved_config(variant))}")

    return _state_dir


# ---------------------------------------------------------------------------------------------
# Multi-rank launch


def launcher(wildcards, threads, resources) -> str:
    """The command prefix of every stage: ``{params.launcher}aqnet ...``.

    Empty locally. On a cluster it is, in this order:

    * for the multi-rank stages, when the profile sets ``mpi`` (LUMI, ``srun ...``) with
      ``nodes`` and ``tasks_per_node``: ``<mpi> --nodes=N --ntasks-per-node=T
      --cpus-per-task=C --kill-on-bad-exit=1``. The task geometry is passed explicitly because
      the Slurm executor plugin clears ``SLURM_*`` inside the job, so a bare ``srun`` would start
      one rank per node; ``C`` is ``cpus_per_task`` or the rule's threads;
    * ``resources.rank_wrapper`` when the profile sets one (LUMI: the container and the per-rank
      environment, ``profiles/lumi/rank.sh``), so that it runs once per rank.
    """
    parts = []
    mpi = resources.get("mpi")
    if mpi:
        nodes = int(resources.get("nodes") or 1)
        tasks = int(resources.get("tasks_per_node") or 1)
        cpus = int(resources.get("cpus_per_task") or threads)
        parts.append(
            f"{mpi} --nodes={nodes} --ntasks-per-node={tasks} --cpus-per-task={cpus} "
            "--kill-on-bad-exit=1"
        )
    wrapper = resources.get("rank_wrapper")
    if wrapper:
        parts.append(str(wrapper))
    return "".join(f"{part} " for part in parts)  # each followed by a space


def world_size(wildcards, resources) -> int:
    """Ranks the launcher starts: nodes x tasks_per_node under ``mpi``, else 1.

    Passed to the training as ``--world-size``: it refuses to start with any other number.
    """
    if not resources.get("mpi"):
        return 1
    return int(resources.get("nodes") or 1) * int(resources.get("tasks_per_node") or 1)


# ---------------------------------------------------------------------------------------------
# Projected cost, budget and wall time (computed by aqnet.train.cost, the one place)


def _read_json(path: str):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def train_start_times() -> tuple[int, str]:
    """Forecast start times of the training split: counted in the cache once it is built, else
    estimated from the config (hourly data); and which of the two."""
    meta = _read_json(result("cache/meta.json"))
    if meta is not None:
        try:
            return start_times_in_cache(meta), "counted in the cache"
        except (KeyError, TypeError, ValueError):
            pass
    return (
        estimated_start_times(CFG),
        "estimated from the config until build_cache counts them",
    )


def cost_projection() -> dict:
    """Every GPU stage's projected GPU-hours (aqnet.train.cost.run_projection), measured by each
    variant's validate_short where it has passed, else from launch.step_time_estimate_s.
    """
    start_times, source = train_start_times()
    return run_projection(
        {v: resolved_config(v) for v in VARIANTS},
        start_times=start_times,
        start_times_source=source,
        measured={
            v: measured_from_report(
                _read_json(result(f"variants/{v}/validate_short.json"))
            )
            for v in VARIANTS
        },
        max_gpu_hours=CFG["launch"]["max_gpu_hours"],
    )


def finetune_runtime(wildcards) -> int:
    """The fine-tune's requested wall time in minutes: projected time x launch.walltime_margin +
    launch.walltime_startup_min, capped by launch.partition_time_limit_min. Evaluated again
    when the job becomes ready, so validate_short's measurement of the same run is used.
    """
    for stage in cost_projection()["stages"]:
        if stage["stage"] == "finetune" and stage["variant"] == wildcards.variant:
            return int(stage["cost"]["request"]["minutes"])
    raise WorkflowError(f"no fine-tune projection for variant {wildcards.variant}")


# Rules after which nothing is fine-tuned: `--until` one of them measures without the budget.
_BEFORE_FINETUNE = {
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


def budget_refusal(wildcards) -> list:
    """An input function of check_budget (so of every fine-tune): refuses the DAG, dry runs
    included, when the projection exceeds launch.max_gpu_hours. Not applied with
    `--until <a stage before the fine-tune>`, which measures the step time first."""
    until = set(workflow.dag_settings.until)
    if until and until <= _BEFORE_FINETUNE:
        return []
    try:
        check_budget(cost_projection())
    except BudgetExceeded as exc:
        raise WorkflowError(str(exc)) from None
    return []


def record_slurm_job(stage: str):
    """A params function: a shell prefix that records the Slurm job id in
    ``benchmarks/<stage>/<variant>.slurm_jobs``, from which the report reads the GPU-hours used
    (aqnet.report.usage). A run that starts afresh (validate_short always; the fine-tune without
    a resume state) starts the file anew; a resumed or requeued fine-tune adds its allocation.
    Nothing outside Slurm."""

    def _record(wildcards) -> str:
        path = result(f"benchmarks/{stage}/{wildcards.variant}.slurm_jobs")
        fresh = "true"
        if stage == "finetune":
            fresh = f"[ ! -e {state_dir(stage)(wildcards)}/last.pt ]"
        return (
            f'if [ -n "${{SLURM_JOB_ID:-}}" ]; then mkdir -p {Path(path).parent};'
            f" if {fresh}; then : > {path}; fi;"
            f' echo "$SLURM_JOB_ID" >> {path}; fi; '
        )

    return _record


def check_gpu_nodes() -> None:
    """A fine-tune larger than the global `gpu_nodes` resource would be scaled down by Snakemake's
    scheduler while Slurm still gets launch.nodes: refuse it instead."""
    limit = workflow.global_resources.get("gpu_nodes")
    value = getattr(limit, "value", limit)
    if isinstance(value, int) and CFG["launch"]["nodes"] > value:
        raise WorkflowError(
            f"launch.nodes {CFG['launch']['nodes']} exceeds the GPU nodes allowed in flight "
            f"(--resources gpu_nodes={value}): no fine-tune could ever start"
        )


def print_projected_cost() -> None:
    """Print every GPU stage's projected GPU-hours and their total (main process only)."""
    if not workflow.is_main_process:
        return
    for line in format_projection(cost_projection()):
        print(f"aqnet: projected cost: {line}", file=sys.stderr)


# Printed while the workflow is parsed rather than from `onstart:`: Snakemake 9 does not run
# `onstart` on a dry run (workflow.execute skips it when dryrun is set), and `snakemake -n` is
# where the projection matters most. The figures themselves come from aqnet.train.cost.
check_gpu_nodes()
print_projected_cost()

"""Config loading, wildcard constraints, and the input and params functions of the rules.

The logic lives in the package (``aqnet.plan``, unit-tested without Snakemake); these wrappers
only adapt it to Snakemake's signatures and turn its errors into one-line ``WorkflowError``s.

* ``CFG``: the config, validated once with defaults filled (``aqnet.config.validate_config``),
  with the control arm ``report.control`` and one run per seed of ``finetune.seeds``;
  ``VARIANTS``: its variants, each a chain under ``results/variants/<name>/``.
* ``PLAN``: ``aqnet.plan.Plan`` of ``CFG``: paths, resolved configs, projected cost.
"""

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import update_config

from aqnet import launcher as _launcher
from aqnet import plan as _plan
from aqnet.config import ConfigError, coerce_overrides, validate_config
from aqnet.config import with_control_arm, with_seeds
from aqnet.train.budget import BudgetExceeded, check_budget
from aqnet.train.cost import NETWORK_CHECK_MINUTES, NETWORK_CHECK_NODES
from aqnet.train.cost import format_projection

_files = {
    str(Path(f).resolve()): str(f) for f in workflow.configfiles
}  # each file once
_source = " + ".join(_files.values()) or "config"
if workflow.config_settings.config:
    _source += " + --config"
try:
    # --config values arrive as strings below the top level (finetune='{steps: 5}'): each gets
    # its schema type before validation.
    if workflow.config_settings.config:
        update_config(config, coerce_overrides(workflow.config_settings.config))
    CFG = with_seeds(with_control_arm(validate_config(config, source=_source)))
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None
# What Snakemake itself shows of the config (the HTML report's description) is the same, with
# its defaults, the control arm and the seeds' runs.
update_config(config, CFG)

if workflow.is_main_process:  # only the main process reads profiles
    if (_why := _launcher.profiles_with_lumi(sys.argv[1:], os.environ)) is not None:
        raise WorkflowError(f"aqnet: {_why}")
# `aqnet` of this installation in every process, the job's own Snakemake on a cluster included
_launcher.put_first_on_path(Path(sys.executable).parent)

PLAN = _plan.Plan(CFG)
VARIANTS = PLAN.variants
SHARED = _plan.SHARED
ENV = "../../envs/aqnet.yaml"
# The fine-tune's self-requeue after USR1 (a shell script, so tests/workflow/test_slurm.py runs it too).
REQUEUE_SCRIPT = str(
    Path(workflow.main_snakefile).parent
    / "workflow"
    / "scripts"
    / "requeue_on_tempfail.sh"
)


wildcard_constraints:
    variant="|".join(VARIANTS),
    scope="|".join(_plan.SHARED_SCOPES),
    year=r"\d{4}",


def _planned(method, *args):
    """``method(*args)`` of PLAN, with a PlanError as Snakemake's one-line error."""
    try:
        return method(*args)
    except _plan.PlanError as exc:
        raise WorkflowError(str(exc)) from None


result = PLAN.result
digest = _plan.digest
resolved_config = PLAN.resolved_config
run_config = PLAN.run_config
shared_config = PLAN.shared_config
baseline_checkpoint = PLAN.baseline_checkpoint
demo_files = PLAN.demo_files


def input_files() -> list[str]:
    return _planned(PLAN.input_files)


def mask_files() -> list[str]:
    return _planned(PLAN.mask_files)


def reference_orders() -> str:
    return _planned(PLAN.reference_orders)


def report_outputs() -> dict:
    """The report rule's outputs: every file of aqnet.report.build.OUTPUTS under report/, those
    of REPORT_CATEGORIES shown in Snakemake's HTML report with workflow/report/<stem>.rst.
    """
    from aqnet.report.build import OUTPUTS, REPORT_CATEGORIES

    captions = Path(workflow.basedir) / "workflow" / "report"
    outputs = {}
    for key, name in OUTPUTS.items():
        path = result(f"report/{name}")
        if key in REPORT_CATEGORIES:
            caption = str(captions / f"{Path(name).stem}.rst")
            path = report(path, caption=caption, category=REPORT_CATEGORIES[key])
        outputs[key] = path
    return outputs


def _folder(files) -> str:
    """The folder of a file, or of a list of files that share one."""
    listed = [files] if isinstance(files, str) else files
    folders = {str(Path(f).parent) for f in listed}
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
    """A params function: the resume-state folder of a training stage (Plan.state_dir)."""
    return lambda wildcards: PLAN.state_dir(stage, getattr(wildcards, "variant", None))


def record_slurm_job(stage: str):
    """A params function: the shell prefix recording the Slurm job id (Plan.slurm_job_record)."""
    return lambda wildcards: PLAN.slurm_job_record(
        stage, getattr(wildcards, "variant", SHARED)
    )


def launcher(wildcards, threads, resources) -> str:
    """A params function: the command prefix of every stage (aqnet.launcher.launcher)."""
    return _launcher.launcher(threads, resources)


def world_size(wildcards, resources) -> int:
    """A params function: the ranks the launcher starts (aqnet.launcher.world_size)."""
    return _launcher.world_size(resources)


def finetune_runtime(wildcards) -> int:
    """The fine-tune's requested wall time in minutes (Plan.finetune_minutes), evaluated again
    when the job becomes ready, so validate_short's measurement of the same run is used.
    """
    return _planned(PLAN.finetune_minutes, wildcards.variant)


def budget_refusal(wildcards) -> list:
    """An input function of check_budget (so of every fine-tune): refuses the DAG, dry runs
    included, when the projection exceeds launch.max_gpu_hours. Not applied with
    `--until <a stage before the fine-tune>`, which measures the step time first."""
    until = set(workflow.dag_settings.until)
    if not (until and until <= _plan.BEFORE_FINETUNE):
        try:
            check_budget(PLAN.cost_projection())
        except BudgetExceeded as exc:
            raise WorkflowError(str(exc)) from None
    return []


_limit = workflow.global_resources.get("gpu_nodes")
if (_why := PLAN.gpu_nodes_refusal(getattr(_limit, "value", _limit))) is not None:
    raise WorkflowError(_why)

# The projected GPU-hours of every GPU stage, printed while the workflow is parsed rather than
# from `onstart:`: Snakemake 9 does not run `onstart` on a dry run (workflow.execute skips it
# when dryrun is set), and `snakemake -n` is where the projection matters most.
if workflow.is_main_process:
    for _line in format_projection(PLAN.cost_projection()):
        print(f"aqnet: projected cost: {_line}", file=sys.stderr)

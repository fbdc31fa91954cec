"""TopoFlow fine-tune pipeline.

    snakemake --profile profiles/local        # the demo, locally (what `make demo` runs)
    snakemake --profile profiles/lumi         # the real run on LUMI
    snakemake verify_wind_order               # a shared stage by name (and what it needs)
    snakemake --until audit_checkpoint        # a per-variant stage, for every variant
    snakemake --forcerun smoke_forward        # redo a stage and what depends on it
    snakemake --until validate_short          # stop before the expensive stages
    snakemake -n                              # the plan and the projected GPU-hours

Locally, give the local profile to each (``--profile profiles/local``) or once for the shell
(``export SNAKEMAKE_PROFILE=$PWD/profiles/local``); a ``--profile profiles/lumi`` replaces it.

Per-variant stages (audit_checkpoint .. evaluate) have a ``{variant}`` wildcard: name them with
``--until``/``--forcerun``, or ask for a file, e.g. ``results/variants/h500/smoke_forward.json``
(Snakemake refuses a rule with wildcards as a bare target).

Each rule is a thin wrapper over an ``aqnet`` subcommand (``aqnet --help``); each gate's pass
report is an input of the next stage, so a failed gate stops everything downstream.
"""

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: "config.yaml"


# common.smk validates the config once, with aqnet.config.validate_config against the package's
# schema (a misspelt key stops the run with its name and the allowed keys; each variant's
# overrides are checked too), and fills defaults.
include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/gates.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.report.output.verdict,

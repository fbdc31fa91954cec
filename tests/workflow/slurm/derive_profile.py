"""The localhost-Slurm test profile, derived from ``profiles/lumi/config.yaml``.

The test must run what LUMI runs, only smaller, so the profile is not written by hand: it is the
LUMI profile with exactly these keys changed (:data:`SCALED_KEYS` lists them, and
:func:`changed_keys` lets the test check that nothing else moved):

* **sizes** - the fine-tune's ``nodes`` (50 -> 2) and every ranked stage's ``tasks_per_node``
  (8 -> 2): 2 nodes x 2 ranks instead of 50 x 8 (check_network keeps LUMI's 2 nodes);
* **account** - ``slurm_account`` becomes the account ``.ci/slurm.sh`` registers;
* **container** - ``rank_wrapper`` keeps ``profiles/lumi/rank.sh`` (the same per-rank environment)
  but with ``--container none`` and the test's virtual environment, as an absolute path because
  the test runs in its own folder;
* **launcher** - the ``srun`` line keeps its CPU binding, with one mask per local rank on this
  host's CPUs instead of LUMI's eight 7-core masks (Slurm refuses masks outside the CPUs a node
  really has: "Unable to satisfy cpu bind request");
* **run plumbing** - the test's own config file, Slurm logs in the test folder, the first status
  check after 8 s and a 5 s file latency (LUMI's 40 s / 60 s would only make the test wait).

Partitions, CPUs per task, GPUs, memory, wall times, ``mpi``, ``--signal``, retries and the
status command stay exactly as on LUMI; the test reads them back from ``sacct``.

Usage (to run the pipeline on the localhost Slurm by hand)::

    python tests/workflow/slurm/derive_profile.py --config my_small_config.yaml --out /tmp/profile
    snakemake --profile /tmp/profile
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
LUMI_PROFILE = REPO / "profiles" / "lumi" / "config.yaml"
RANK_WRAPPER = REPO / "profiles" / "lumi" / "rank.sh"
CI_ACCOUNT = "project_465000001"
"""The account ``.ci/slurm.sh`` registers (``CI_SLURM_ACCOUNTS``)."""

RANKED_RULES: tuple[str, ...] = ("check_network", "validate_short", "finetune")
"""The rules the LUMI profile starts with ``srun`` (resource ``mpi``)."""

SCALED_KEYS: frozenset[str] = frozenset(
    {
        "configfile",
        "default-resources.slurm_account",
        "default-resources.rank_wrapper",
        "set-resources.finetune.nodes",
        *(f"set-resources.{rule}.tasks_per_node" for rule in RANKED_RULES),
        *(f"set-resources.{rule}.mpi" for rule in RANKED_RULES),
        "slurm-logdir",
        "slurm-init-seconds-before-status-checks",
        "latency-wait",
    }
)
"""Dotted keys of the LUMI profile the test profile changes; every other key is LUMI's."""

_MASK_RE = re.compile(r"--cpu-bind=mask_cpu:[0-9a-fA-Fx,]+")


def load_profile(path: Path = LUMI_PROFILE) -> dict[str, Any]:
    """The profile's YAML as a dict (anchors resolved)."""
    with Path(path).open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile must be a mapping, got {type(data).__name__}")
    return data


def unquote(value: Any) -> Any:
    """A profile string resource as Snakemake evaluates it: ``"'srun ...'"`` -> ``srun ...``."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def quote(value: str) -> str:
    """The profile form of a string resource: quoted, so Snakemake keeps it a string."""
    if "'" in value:
        raise ValueError(f"cannot quote a resource value that contains a single quote: {value!r}")
    return f"'{value}'"


def host_cpu_masks(ranks: int, cpus: Sequence[int] | None = None) -> list[str]:
    """One CPU mask per local rank over this host's CPUs (cycling when there are fewer CPUs).

    ``host_cpu_masks(2, [0, 1]) == ["0x1", "0x2"]``.
    """
    if ranks < 1:
        raise ValueError(f"need at least one rank per node, got {ranks}")
    available = sorted(os.sched_getaffinity(0)) if cpus is None else sorted(cpus)
    if not available:
        raise ValueError("no CPU available to bind ranks to")
    return [hex(1 << available[i % len(available)]) for i in range(ranks)]


def scale_launcher(mpi: str, masks: Sequence[str]) -> str:
    """The LUMI ``srun`` line with its mask list replaced by ``masks``.

    Raises:
        ValueError: when the line has no ``--cpu-bind=mask_cpu:`` list to scale.
    """
    if not _MASK_RE.search(mpi):
        raise ValueError(f"the LUMI launcher {mpi!r} has no --cpu-bind=mask_cpu: list to scale")
    return _MASK_RE.sub(f"--cpu-bind=mask_cpu:{','.join(masks)}", mpi)


def derive_test_profile(
    lumi: Mapping[str, Any],
    *,
    configfile: Path,
    logdir: Path,
    nodes: int = 2,
    tasks_per_node: int = 2,
    account: str = CI_ACCOUNT,
    venv: Path | None = None,
    cpus: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The LUMI profile scaled down for the localhost Slurm (see the module docstring).

    Args:
        lumi: the LUMI profile (:func:`load_profile`).
        configfile: the reduced pipeline config the run uses.
        logdir: where the plugin writes the jobs' Slurm logs.
        nodes: nodes of the fine-tune (validate_short keeps LUMI's 1).
        tasks_per_node: ranks per node of the ranked stages.
        account: the Slurm account the jobs are billed to.
        venv: a virtual environment the rank wrapper activates (default: this interpreter's,
            when it runs in one).
        cpus: the CPUs to bind ranks to (default: those this process may run on).

    Raises:
        ValueError: when the LUMI profile lacks a key the derivation scales.
    """
    required = [
        "default-resources.slurm_account",
        "default-resources.rank_wrapper",
        "set-resources.finetune.nodes",
        *(f"set-resources.{rule}.tasks_per_node" for rule in RANKED_RULES),
        *(f"set-resources.{rule}.mpi" for rule in RANKED_RULES),
    ]
    missing = [key for key in required if key not in _flatten(lumi)]
    if missing:
        raise ValueError(f"the LUMI profile lacks the keys the test scales: {', '.join(missing)}")
    prof = copy.deepcopy(dict(lumi))
    defaults, rules = prof["default-resources"], prof["set-resources"]
    prof["configfile"] = [str(configfile)]
    defaults["slurm_account"] = account
    if venv is None and sys.prefix != sys.base_prefix:
        venv = Path(sys.prefix)
    wrapper = f"{RANK_WRAPPER} --container none"
    if venv is not None:
        wrapper += f" --venv {venv}"
    defaults["rank_wrapper"] = quote(f"{wrapper} --")
    masks = host_cpu_masks(tasks_per_node, cpus)
    for rule in RANKED_RULES:
        rules[rule]["tasks_per_node"] = tasks_per_node
        rules[rule]["mpi"] = quote(scale_launcher(unquote(rules[rule]["mpi"]), masks))
    rules["finetune"]["nodes"] = nodes
    prof["slurm-logdir"] = str(logdir)
    # The plugin polls after this many seconds, then 10 s longer each time no job has ended;
    # 8 s puts the checks at 8, 26 and 54 s, just after this machine's stages end (20-50 s).
    prof["slurm-init-seconds-before-status-checks"] = 8
    prof["latency-wait"] = 5
    return prof


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    """Dotted keys whose value differs (or that exist on one side only)."""
    a, b = _flatten(before), _flatten(after)
    return {k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object())}


def write_profile(profile: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``profile`` as ``out_dir/config.yaml`` (a Snakemake profile folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    header = (
        f"# Derived from {LUMI_PROFILE.relative_to(REPO)} by "
        "tests/workflow/slurm/derive_profile.py; do not edit. Changed keys: "
        + ", ".join(sorted(SCALED_KEYS))
        + "\n"
    )
    path.write_text(header + yaml.safe_dump(dict(profile), sort_keys=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the reduced pipeline config")
    parser.add_argument("--out", required=True, type=Path, help="profile folder to write")
    parser.add_argument("--nodes", type=int, default=2, help="fine-tune nodes (default 2)")
    parser.add_argument("--tasks-per-node", type=int, default=2, help="ranks per node (2)")
    parser.add_argument("--account", default=CI_ACCOUNT, help=f"Slurm account ({CI_ACCOUNT})")
    args = parser.parse_args(argv)
    profile = derive_test_profile(
        load_profile(),
        configfile=args.config.resolve(),
        logdir=(args.out / "slurm_logs").resolve(),
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        account=args.account,
    )
    print(write_profile(profile, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

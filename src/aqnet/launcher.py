"""How the workflow starts a stage's command, and the environment it starts it in.

* :func:`launcher`: the command prefix of every stage (empty locally; ``srun`` with the task
  geometry and the per-rank wrapper on LUMI), and :func:`world_size`: the ranks it starts, which
  the training checks (``--world-size``).
* :func:`profiles_with_lumi` and :func:`put_first_on_path`: checked and done once, when
  ``workflow/rules/common.smk`` is parsed.

Plain Python, unit-tested without Snakemake (``tests/test_launcher.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["launcher", "profiles_with_lumi", "put_first_on_path", "world_size"]


def launcher(threads: int, resources: Mapping[str, Any]) -> str:
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


def world_size(resources: Mapping[str, Any]) -> int:
    """Ranks the launcher starts: nodes x tasks_per_node under ``mpi``, else 1.

    Passed to the training as ``--world-size``: it refuses to start with any other number.
    """
    if not resources.get("mpi"):
        return 1
    return int(resources.get("nodes") or 1) * int(resources.get("tasks_per_node") or 1)


def profiles_with_lumi(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why the LUMI profile would be merged with another profile in this run, else None.

    Snakemake merges the keys of every profile in force one by one (``--profile`` given twice,
    ``$SNAKEMAKE_PROFILE`` without ``--profile``, a ``--workflow-profile``): a
    ``default-resources`` in another one would silently drop LUMI's account. The repository has
    no ``profiles/default`` (which Snakemake would add to every run) for that reason; this refuses
    the explicit combinations.
    """
    profiles = []
    for i, arg in enumerate(argv):
        for flag in ("--profile", "--workflow-profile"):
            if arg == flag and i + 1 < len(argv):
                profiles.append(argv[i + 1])
            elif arg.startswith(f"{flag}="):
                profiles.append(arg.split("=", 1)[1])
    if not any(a == "--profile" or a.startswith("--profile=") for a in argv):
        profiles.append(env.get("SNAKEMAKE_PROFILE", "none"))
    profiles = [p for p in profiles if p != "none"]
    if len(profiles) < 2 or not any(Path(p).name == "lumi" for p in profiles):
        return None
    return (
        f"the LUMI profile is combined with {len(profiles) - 1} other profile(s) "
        f"({', '.join(profiles)}), whose keys would override it one by one: run it as the only "
        "one, `snakemake --profile profiles/lumi` (unset SNAKEMAKE_PROFILE)"
    )


def put_first_on_path(bin_dir: str | Path) -> None:
    """Put ``bin_dir`` first on ``$PATH`` unless it is there already.

    Without ``--sdm conda`` the rules' commands run in the environment Snakemake runs in; with
    its scripts folder on PATH, ``aqnet`` resolves to the same installation even when that
    environment is not activated (``.venv/bin/snakemake``).
    """
    path = os.environ.get("PATH", "")
    if str(bin_dir) not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([str(bin_dir), path])

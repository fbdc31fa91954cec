"""Who am I and how many are we: rank, local rank and world size from whichever launcher started
the process, and the check that it started the configured number of ranks.

* a **single process** (no launcher variables): rank 0 of 1;
* ranks started by **torchrun**: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
* ranks started by **srun** (one task per GPU/GCD): ``SLURM_PROCID``, ``SLURM_LOCALID``,
  ``SLURM_NTASKS``, the tasks on this node from ``SLURM_STEP_TASKS_PER_NODE`` /
  ``SLURM_TASKS_PER_NODE`` (``"8(x2),4"``) and ``SLURM_NODEID``; the rendezvous host is
  ``MASTER_ADDR``, else the first host of the step's node list (:func:`expand_hostlist`, without
  calling ``scontrol``); the port ``MASTER_PORT``, else :func:`port_for_job`. Slurm variables
  count only inside a job step (``SLURM_STEP_ID`` set).

:func:`check_world_size` refuses a launch of another size than configured: Snakemake's Slurm
executor clears ``SLURM_*`` before a rule runs, so a bare ``srun`` starts one task per node.
The devices and the process group are :mod:`aqnet.train.distributed`'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

__all__ = [
    "LaunchError",
    "LaunchInfo",
    "check_world_size",
    "detect_launch",
    "expand_hostlist",
    "expand_tasks_per_node",
    "port_for_job",
]


class LaunchError(RuntimeError):
    """The ranks were not started as the run is configured; the message says how to fix it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchInfo:
    """How this process was started.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        local_rank: rank on this node (selects the GPU).
        world_size: number of ranks the launcher started.
        local_world_size: ranks on this node.
        master_addr: rendezvous host of rank 0.
        master_port: rendezvous TCP port.
        launcher: ``"single"``, ``"torchrun"`` or ``"slurm"``.
        source: the variables the numbers came from, for messages.
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str
    source: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------------------------------------
# Slurm's compressed lists
# ---------------------------------------------------------------------------------------------


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"Slurm host list {spec!r}: unbalanced ']' at position {i}")
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"Slurm host list {spec!r}: unbalanced '['")
    parts.append(spec[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(item: str, spec: str) -> list[str]:
    """``"001-003"`` -> ``["001", "002", "003"]`` (zero padding kept); ``"7"`` -> ``["7"]``."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
    if not m:
        raise ValueError(f"Slurm host list {spec!r}: cannot read the range {item!r}")
    lo, hi = m.group(1), m.group(2)
    if hi is None:
        return [lo]
    if int(hi) < int(lo):
        raise ValueError(f"Slurm host list {spec!r}: range {item!r} runs backwards")
    width = len(lo)
    return [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]


def _expand_host(host: str, spec: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", host)
    if not m:
        if "[" in host or "]" in host:
            raise ValueError(f"Slurm host list {spec!r}: unbalanced brackets in {host!r}")
        return [host]
    head, tail = host[: m.start()], host[m.end() :]
    values = [v for item in m.group(1).split(",") for v in _expand_range(item, spec)]
    return [h for v in values for h in _expand_host(f"{head}{v}{tail}", spec)]


def expand_hostlist(spec: str) -> list[str]:
    """Expand a Slurm host list, as ``scontrol show hostnames`` does.

    Written here rather than taken from a library: python-hostlist is GPL-2.0-or-later (this
    package is MIT), and ``scontrol`` is not inside the container (``profiles/lumi/rank.sh`` uses
    it outside, to set ``MASTER_ADDR``) and accepts malformed lists (``nid[001-003`` gives
    ``nid]``), which this refuses.

    Examples::

        expand_hostlist("nid[001-003,007]") == ["nid001", "nid002", "nid003", "nid007"]
        expand_hostlist("a1,b[1-2]") == ["a1", "b1", "b2"]
        expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]

    Raises:
        ValueError: for an empty list, unbalanced brackets or an unreadable range.
    """
    hosts = [h for part in _split_top_level(spec) for h in _expand_host(part, spec)]
    if not hosts:
        raise ValueError(f"Slurm host list {spec!r} names no host")
    return hosts


def expand_tasks_per_node(spec: str) -> list[int]:
    """Expand Slurm's tasks-per-node list: ``"8(x2),4"`` -> ``[8, 8, 4]``."""
    out: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ValueError(f"Slurm tasks-per-node list {spec!r}: cannot read {item!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def port_for_job(job_id: str | int) -> int:
    """Rendezvous port of a Slurm job: ``20000 + job_id % 20000`` (in 20000..39999)."""
    digits = re.match(r"\d+", str(job_id))
    if not digits:
        raise ValueError(f"cannot derive a port from the Slurm job id {job_id!r}")
    return 20000 + int(digits.group(0)) % 20000


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as exc:
        raise LaunchError(f"environment variable {name}={env[name]!r} is not an integer") from exc


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Rank, local rank, world size and rendezvous address from the launcher's environment.

    ``torchrun``'s variables win over Slurm's (``torchrun`` inside an ``srun`` step sets both);
    without either, the process is a single rank.

    Raises:
        LaunchError: a variable that is not an integer, or a rank outside the world.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        local_rank = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        local_world = (
            _int_env(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else max(1, world)
        )
        info = LaunchInfo(
            rank=rank,
            local_rank=local_rank,
            world_size=world,
            local_world_size=local_world,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun",
            source=f"RANK={rank}, WORLD_SIZE={world} (torchrun)",
        )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _in_slurm_step(env):
        rank, world = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local_rank = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
        addr = env.get("MASTER_ADDR") or (expand_hostlist(nodelist)[0] if nodelist else "")
        if not addr:
            raise LaunchError(
                "Slurm rank without a rendezvous host: neither MASTER_ADDR nor "
                "SLURM_STEP_NODELIST/SLURM_JOB_NODELIST is set"
            )
        if "MASTER_PORT" in env:
            port = _int_env(env, "MASTER_PORT")
        elif "SLURM_JOB_ID" in env:
            port = port_for_job(env["SLURM_JOB_ID"])
        else:
            raise LaunchError("Slurm rank without MASTER_PORT or SLURM_JOB_ID to derive a port")
        tpn = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        node_id = _int_env(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
        per_node = expand_tasks_per_node(tpn) if tpn else [world]
        local_world = per_node[node_id] if node_id < len(per_node) else per_node[-1]
        info = LaunchInfo(
            rank=rank,
            local_rank=local_rank,
            world_size=world,
            local_world_size=local_world,
            master_addr=addr,
            master_port=port,
            launcher="slurm",
            source=(
                f"SLURM_PROCID={rank}, SLURM_NTASKS={world}, "
                f"SLURM_STEP_NODELIST/SLURM_JOB_NODELIST={nodelist or '(unset)'}"
            ),
        )
    else:
        info = LaunchInfo(
            rank=0,
            local_rank=0,
            world_size=1,
            local_world_size=1,
            master_addr="127.0.0.1",
            master_port=0,
            launcher="single",
            source="no launcher variables (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS)",
        )
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise LaunchError(
            f"rank {info.rank} is outside a world of {info.world_size} ({info.source})"
        )
    if info.local_rank < 0:
        raise LaunchError(f"local rank {info.local_rank} is negative ({info.source})")
    return info


def _in_slurm_step(env: Mapping[str, str]) -> bool:
    return "SLURM_STEP_ID" in env or "SLURM_STEPID" in env


def check_world_size(info: LaunchInfo, expected: int | None) -> None:
    """Refuse to start when the launcher started another number of ranks than configured.

    Raises:
        LaunchError: ``"started 2 ranks but the run is configured for 4 (nodes x
            tasks_per_node): ..."``.
    """
    if expected is None or info.world_size == expected:
        return
    hint = (
        "the launcher did not start the configured task geometry. Under Snakemake's Slurm "
        "executor the SLURM_* variables are cleared before the rule runs, so a bare srun starts "
        "one task per node: pass --nodes and --ntasks-per-node (or -n) to srun explicitly"
        if info.launcher in ("slurm", "single")
        else "check torchrun's --nnodes and --nproc-per-node"
    )
    raise LaunchError(
        f"started {info.world_size} rank{'s' * (info.world_size != 1)} but the run is configured "
        f"for {expected} (nodes x tasks_per_node): {hint} [{info.source}]"
    )

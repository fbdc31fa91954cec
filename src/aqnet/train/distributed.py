"""Who am I, how many are we, and which device is mine: one answer for every launcher.

The training entry point runs unchanged as

* a **single process** (no launcher variables): rank 0 of 1, no process group;
* ranks started by **torchrun**: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``;
* ranks started by **srun** (one task per GPU/GCD): ``SLURM_PROCID`` (rank), ``SLURM_LOCALID``
  (local rank), ``SLURM_NTASKS`` (world size), the tasks on this node from
  ``SLURM_STEP_TASKS_PER_NODE`` / ``SLURM_TASKS_PER_NODE`` (``"8(x2),4"``) and ``SLURM_NODEID``.
  The rendezvous address is ``MASTER_ADDR`` when set, else the first host of the step's node list
  (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST``, expanded by :func:`expand_hostlist`
  without calling ``scontrol``); the port is ``MASTER_PORT`` when set, else
  :func:`port_for_job` (``20000 + job id % 20000``), so two jobs on one node do not collide.
  Slurm variables count only inside a job step (``SLURM_STEP_ID`` set): a batch script that runs
  Python directly is a single process, not rank 0 of a world that never starts.

Checks, each failing at once with a message that says what to fix:

* :func:`check_world_size` - the world size the launcher started must equal the one the run is
  configured for (``nodes x tasks_per_node``). Snakemake's Slurm executor clears ``SLURM_*`` before
  running a rule, so a bare ``srun`` starts one task per node: on LUMI 50 ranks instead of 400.
* :func:`select_device` - each rank must see the GPU it expects: either exactly one (bound per
  task) or at least one per local rank, and it takes ``cuda:<local_rank>`` then; after the process
  group is up, :func:`init_distributed` checks that no two ranks on a host share a GPU (the known
  way for a job to run silently on one GPU) and that every rank agrees on the world size. "The
  same GPU" means the same physical device (:func:`gpu_identity`: PCI address, else UUID), not
  the same index: on LUMI, Slurm and ``profiles/lumi/rank.sh`` narrow ``ROCR_VISIBLE_DEVICES`` to
  one GCD per rank, so every rank sees its own GCD as ``cuda:0``.
* The process group is created with ``timeout=train.dist_timeout_s``: a rank that dies makes the
  others fail within that time instead of hanging until the job's wall time.

The backend is ``nccl`` on GPUs (RCCL under ROCm, where PyTorch's devices are also ``cuda``) and
``gloo`` on the CPU, unless ``train.backend`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("aqnet.train")

__all__ = [
    "DistContext",
    "LaunchError",
    "LaunchInfo",
    "check_world_size",
    "choose_backend",
    "detect_launch",
    "expand_hostlist",
    "expand_tasks_per_node",
    "gpu_identity",
    "init_distributed",
    "port_for_job",
    "rank_record",
    "select_device",
]

_GPU_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


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


# ---------------------------------------------------------------------------------------------
# Devices and backends
# ---------------------------------------------------------------------------------------------


def _gpu_env() -> str:
    return ", ".join(f"{k}={os.environ[k]}" for k in _GPU_ENV if k in os.environ) or "none set"


def select_device(requested: str, info: LaunchInfo) -> torch.device:
    """The device of this rank (and make it current), checking that the expected GPU is visible.

    Args:
        requested: ``"auto"`` (a GPU when one is visible), ``"cpu"`` or ``"cuda"``.
        info: this rank's launch information.

    Raises:
        LaunchError: ``cuda`` requested without a visible GPU; a rank that sees more than one GPU
            but fewer than its node's ranks (it would share a GPU or pick the wrong one).
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    host = socket.gethostname()
    if not torch.cuda.is_available():
        raise LaunchError(
            f"rank {info.rank} on {host}: train.device is 'cuda' but no GPU is visible "
            f"({_gpu_env()}); request GPUs from the scheduler or set train.device: cpu"
        )
    count = torch.cuda.device_count()
    if count == 1:
        index = 0  # one GPU bound to this task by the launcher
    elif count >= info.local_world_size and info.local_rank < count:
        index = info.local_rank
    else:
        raise LaunchError(
            f"rank {info.rank} (local rank {info.local_rank} of {info.local_world_size} on {host}) "
            f"sees {count} GPUs; expected either 1 (bound per task) or at least "
            f"{info.local_world_size} (one per local rank) - {_gpu_env()}. Check --gpus-per-node / "
            "--gres and the GPU binding of the launcher"
        )
    torch.cuda.set_device(index)
    if torch.cuda.current_device() != index:
        raise LaunchError(
            f"rank {info.rank} on {host}: asked for GPU {index} but the current device is "
            f"{torch.cuda.current_device()} ({_gpu_env()})"
        )
    return torch.device("cuda", index)


def gpu_identity(index: int, *, properties: Callable[[int], Any] | None = None) -> str:
    """The physical identity of visible GPU ``index``: its PCI address, else its UUID.

    The index is relative to what the process sees (``ROCR_VISIBLE_DEVICES`` /
    ``CUDA_VISIBLE_DEVICES``), so two ranks narrowed to different GPUs both see ``cuda:0``; the
    PCI address (``pci:<domain>:<bus>:<device>``, as ``torch.cuda.get_device_properties``
    reports it under CUDA and ROCm alike; each MI250X GCD is its own PCI device) or the UUID
    tells them apart. When torch reports neither, the identity is the index within the
    visibility variables, e.g. ``ROCR_VISIBLE_DEVICES=3#0``.

    Args:
        index: the visible device index (``cuda:<index>``).
        properties: the source of device properties (default
            ``torch.cuda.get_device_properties``). Injected by the tests: this project's CI has
            no GPU to query, so they pass objects shaped like torch's device properties.
    """
    props = (properties or torch.cuda.get_device_properties)(index)
    bus = getattr(props, "pci_bus_id", None)
    if isinstance(bus, int):
        domain = getattr(props, "pci_domain_id", 0) or 0
        device = getattr(props, "pci_device_id", 0) or 0
        return f"pci:{domain:04x}:{bus:02x}:{device:02x}"
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid and uuid.strip("0-") != "":  # an all-zero UUID identifies nothing
        return f"uuid:{uuid}"
    visible = [f"{k}={os.environ[k]}" for k in _GPU_ENV if k in os.environ]
    return f"{','.join(visible) or 'all visible'}#{index}"


def choose_backend(requested: str, device: torch.device) -> str:
    """``nccl`` on GPUs (RCCL under ROCm), ``gloo`` on the CPU, or the configured one.

    Raises:
        ValueError: an unknown backend, or ``nccl`` on a CPU device.
    """
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested not in ("gloo", "nccl"):
        raise ValueError(f"train.backend must be auto, gloo or nccl, got {requested!r}")
    if requested == "nccl" and device.type != "cuda":
        raise ValueError(
            "train.backend is 'nccl' but this rank runs on the CPU (no GPU visible or "
            "train.device: cpu); use gloo or auto"
        )
    return requested


# ---------------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class DistContext:
    """This rank's view of the run; collectives are no-ops for a single process.

    Attributes:
        info: how the process was started.
        device: this rank's device.
        backend: the torch.distributed backend (``None`` for a single process).
        ranks: per rank ``{"rank", "world_size", "host", "device"}`` gathered at start-up.
    """

    info: LaunchInfo
    device: torch.device
    backend: str | None
    ranks: list[dict[str, Any]]

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks, in place (returned for chaining)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum of ``tensor`` over ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group (idempotent)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(
    *,
    backend: str = "auto",
    device: str = "auto",
    timeout_s: float = 600.0,
    expected_world_size: int | None = None,
    env: Mapping[str, str] | None = None,
    identity: Callable[[int], str] = gpu_identity,
) -> DistContext:
    """Detect the launch, check it, pick the device and start the process group.

    Args:
        backend: ``train.backend`` (``auto``, ``gloo``, ``nccl``).
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``).
        timeout_s: ``train.dist_timeout_s``: collectives (and the rendezvous) waiting on a dead
            rank fail after this many seconds.
        expected_world_size: the configured ``nodes x tasks_per_node``; ``None`` skips the check.
        env: the environment to read (default ``os.environ``).
        identity: the physical identity of a visible GPU index (:func:`gpu_identity`).

    Raises:
        LaunchError: wrong world size, a GPU that is not the expected one, two ranks sharing a
            GPU, or ranks that disagree on the world size.
    """
    info = detect_launch(env)
    check_world_size(info, expected_world_size)
    dev = select_device(device, info)
    host = socket.gethostname()
    me = rank_record(info, dev, host=host, identity=identity)
    if info.world_size == 1:
        choose_backend(backend, dev)  # still validate the setting
        return DistContext(info=info, device=dev, backend=None, ranks=[me])

    name = choose_backend(backend, dev)
    log.info(
        "rank %d/%d (local %d) on %s: %s, backend %s, rendezvous %s:%d",
        info.rank,
        info.world_size,
        info.local_rank,
        host,
        dev,
        name,
        info.master_addr,
        info.master_port,
    )
    try:
        dist.init_process_group(
            backend=name,
            init_method=f"tcp://{info.master_addr}:{info.master_port}",
            rank=info.rank,
            world_size=info.world_size,
            timeout=_dt.timedelta(seconds=float(timeout_s)),
        )
    except (RuntimeError, OSError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
        raise LaunchError(
            f"rank {info.rank} of {info.world_size} on {host} could not join the process group at "
            f"{info.master_addr}:{info.master_port} within {timeout_s:g} s "
            f"(train.dist_timeout_s): {exc}. A rank failed to start or died - see the other "
            "ranks' logs - or the rendezvous address/port is wrong or in use"
        ) from exc
    ctx = DistContext(info=info, device=dev, backend=name, ranks=[])
    try:
        ctx.ranks = ctx.all_gather_object(me)
        _check_ranks(ctx.ranks, info.world_size)
    except BaseException:
        ctx.close()
        raise
    return ctx


def rank_record(
    info: LaunchInfo,
    device: torch.device,
    *,
    host: str,
    identity: Callable[[int], str] = gpu_identity,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What a rank reports about itself at start-up (gathered into ``DistContext.ranks``).

    ``{"rank", "world_size", "host", "device", "gpu", "visible"}``: ``gpu`` is the physical
    identity of its GPU (``None`` on the CPU), ``visible`` the GPU visibility variables it ran
    with (``ROCR_VISIBLE_DEVICES=3``), for messages and reports.
    """
    env = os.environ if env is None else env
    return {
        "rank": info.rank,
        "world_size": info.world_size,
        "host": host,
        "device": str(device),
        "gpu": identity(device.index or 0) if device.type == "cuda" else None,
        "visible": ", ".join(f"{k}={env[k]}" for k in _GPU_ENV if k in env) or "none set",
    }


def _check_ranks(ranks: list[dict[str, Any]], world_size: int) -> None:
    sizes = sorted({r["world_size"] for r in ranks})
    if sizes != [world_size] or sorted(r["rank"] for r in ranks) != list(range(world_size)):
        raise LaunchError(
            f"ranks disagree on the world: world sizes {sizes}, ranks "
            f"{sorted(r['rank'] for r in ranks)} (expected 0..{world_size - 1})"
        )
    # The same physical GPU on one host, however each rank's visibility was narrowed.
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in ranks:
        if not str(r["device"]).startswith("cuda"):
            continue
        key = (r["host"], str(r.get("gpu") or r["device"]))
        if key in seen:
            first = seen[key]
            raise LaunchError(
                f"ranks {first['rank']} and {r['rank']} on {r['host']} both use the GPU "
                f"{key[1]} (rank {first['rank']}: {first['device']}, "
                f"{first.get('visible', '?')}; rank {r['rank']}: {r['device']}, "
                f"{r.get('visible', '?')}): the job would run on fewer GPUs than ranks. Check "
                "the GPU binding of the launcher (one GPU per task, or all GPUs visible to every "
                "task)"
            )
        seen[key] = r

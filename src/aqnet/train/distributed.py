"""Which device is mine, and the process group: one answer for every launcher.

The training entry point runs unchanged as a single process, under ``torchrun`` or as ranks
started by ``srun``: :mod:`aqnet.train.launch` reads which (rank, local rank, world size,
rendezvous address) and is re-exported here. This module picks each rank's device, checks it and
starts the process group.

Checks, each failing at once with a message that says what to fix:

* :func:`check_world_size` (:mod:`aqnet.train.launch`) - the world size the launcher started must
  equal the one the run is configured for (``nodes x tasks_per_node``): on LUMI a bare ``srun``
  under Snakemake's Slurm executor starts 50 ranks instead of 400.
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
import socket
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from aqnet.train.launch import (
    LaunchError,
    LaunchInfo,
    check_world_size,
    detect_launch,
    expand_hostlist,
    expand_tasks_per_node,
    port_for_job,
)

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

    def wrap(self, model: torch.nn.Module, *, find_unused_parameters: bool) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` over this run's ranks; itself for one process.

        The buffers (scan orders, ``H_scale``) are constants, so none is broadcast per step.
        """
        if not self.distributed:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
            broadcast_buffers=False,
        )

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

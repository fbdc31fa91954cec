"""Gate ``check_network``: the network between nodes, proven on 2 nodes before any run on 50.

On LUMI the ranks of different nodes talk through RCCL, which reaches the Slingshot network only
through the aws-ofi-rccl plugin and libfabric's ``cxi`` provider. When the plugin or the libcxi
library is missing from the container, RCCL does not fail: it falls back to TCP sockets
(``NET/Socket``) and a 400-GCD fine-tune runs at a fraction of its projected speed. This stage

1. starts the ranks exactly as the fine-tune does (same ``srun`` line, same wrapper), with RCCL's
   debug output on (``NCCL_DEBUG=INFO``, ``NCCL_DEBUG_SUBSYS`` including ``INIT,NET``), one
   debug file per rank (``NCCL_DEBUG_FILE``; the rule appends them to the stage log);
2. all-reduces a buffer of the model's gradient size (its trainable parameters, as
   :func:`aqnet.model.count_parameters` counts them for the configured preset), checks the sum,
   and reports the time and the bandwidth (algorithm and bus bandwidth, GB/s, as nccl-tests
   defines them: ``busbw = algbw * 2 (n - 1) / n``);
3. reads each rank's RCCL log (:func:`check_rccl_log`, pure) and fails, naming the fallback,
   unless the Slingshot provider was selected.

Without RCCL (the ``gloo`` backend on CPUs: the demo, the localhost Slurm test) there is no
provider to check; the report says so, with the reason, and the rest of the check runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aqnet.stage import StageFailure
from aqnet.train.distributed import choose_backend, detect_launch, init_distributed

log = logging.getLogger("aqnet.train")

__all__ = [
    "RcclNetwork",
    "bus_bandwidth_gbps",
    "check_network",
    "check_rccl_log",
    "gradient_numel",
    "parse_rccl_log",
    "rccl_debug_env",
]

SLINGSHOT_PROVIDER = "cxi"
"""The libfabric provider of HPE Slingshot 11 (LUMI-G's network)."""

# aws-ofi-rccl (a build of aws-ofi-nccl) logs the libfabric provider it picked at initialisation,
# "NET/OFI Selected Provider is cxi (found 4 nics)" (newer releases: "Selected provider is cxi,
# fabric is cxi (found 4 nics)"); RCCL then names the network it uses, "Using network AWS
# Libfabric", or its own fallbacks, "Using network Socket" / "Using network IB".
_PROVIDER_RE = re.compile(r"NET/OFI Selected provider is ([\w.;:-]+)", re.IGNORECASE)
_NETWORK_RE = re.compile(r"Using network (.+?)\s*$", re.MULTILINE)
_SOCKET_RE = re.compile(r"NET/Socket\b[^\n]*")
_IB_USING_RE = re.compile(r"NET/IB ?: ?Using[^\n]*")
_PLUGIN_RE = re.compile(r"NET/Plugin[^\n]*")
_FALLBACKS = {"socket": "NET/Socket", "ib": "NET/IB"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RcclNetwork:
    """What an RCCL debug log says about the network it chose.

    Attributes:
        providers: libfabric providers the OFI plugin selected (one per process that logged).
        networks: the networks RCCL said it uses (``"AWS Libfabric"``, ``"Socket"``, ``"IB"``).
        socket_lines: lines of RCCL's own TCP transport (``NET/Socket ...``).
        ib_lines: lines of RCCL's InfiniBand transport selecting a device (``NET/IB : Using ...``).
        plugin_lines: what RCCL said about loading a network plugin (``NET/Plugin ...``).
    """

    providers: tuple[str, ...]
    networks: tuple[str, ...]
    socket_lines: tuple[str, ...]
    ib_lines: tuple[str, ...]
    plugin_lines: tuple[str, ...]

    @property
    def fallback(self) -> str | None:
        """The transport RCCL fell back to (``"NET/Socket"``, ``"NET/IB"``), else None."""
        for net in self.networks:
            name = _FALLBACKS.get(net.strip().lower())
            if name:
                return name
        if not self.networks and not self.providers:
            if self.socket_lines:
                return "NET/Socket"
            if self.ib_lines:
                return "NET/IB"
        return None


def parse_rccl_log(text: str) -> RcclNetwork:
    """Read the network choice out of RCCL's ``NCCL_DEBUG=INFO`` output (any number of ranks)."""
    return RcclNetwork(
        providers=tuple(m.group(1).rstrip(",;") for m in _PROVIDER_RE.finditer(text)),
        networks=tuple(m.group(1) for m in _NETWORK_RE.finditer(text)),
        socket_lines=tuple(m.group(0).strip() for m in _SOCKET_RE.finditer(text)),
        ib_lines=tuple(m.group(0).strip() for m in _IB_USING_RE.finditer(text)),
        plugin_lines=tuple(m.group(0).strip() for m in _PLUGIN_RE.finditer(text)),
    )


def check_rccl_log(
    text: str, *, provider: str = SLINGSHOT_PROVIDER, source: str = "the log"
) -> str:
    """Pass when RCCL used the OFI plugin with ``provider``; the evidence line is returned.

    Args:
        text: RCCL's debug output (``NCCL_DEBUG=INFO``, ``NCCL_DEBUG_SUBSYS`` with ``INIT,NET``).
        provider: the libfabric provider required (``cxi``: Slingshot).
        source: where the text came from, for the message.

    Raises:
        StageFailure: one line naming the fallback RCCL took (``NET/Socket``, ``NET/IB``, another
            libfabric provider), or saying that the log shows neither the provider nor a fallback.
    """
    net = parse_rccl_log(text)
    plugin = f" RCCL said: {net.plugin_lines[0]!r}." if net.plugin_lines else ""
    fix = (
        "the aws-ofi-rccl plugin (librccl-net.so) or libcxi is not visible inside the container: "
        "check the binds of profiles/lumi/rank.sh (/opt/cray, /usr/lib64/libcxi.so.1, "
        "/var/spool/slurmd) and that the plugin's folder is on LD_LIBRARY_PATH"
    )
    if net.fallback:
        seen = [n for n in net.networks if _FALLBACKS.get(n.strip().lower())] or [
            (net.socket_lines or net.ib_lines)[0]
        ]
        raise StageFailure(
            f"check_network: RCCL fell back to {net.fallback} ({seen[0]!r} in {source}) instead of "
            f"the Slingshot provider {provider!r} (NET/OFI): inter-node traffic would go through "
            f"{'TCP sockets' if net.fallback == 'NET/Socket' else 'InfiniBand verbs'} at a "
            f"fraction of the network's speed; {fix}.{plugin}"
        )
    others = sorted({p for p in net.providers if p != provider})
    if others:
        raise StageFailure(
            f"check_network: RCCL's OFI plugin selected the libfabric provider {others[0]!r}, not "
            f"{provider!r} (Slingshot), in {source}: libfabric did not find the cxi devices "
            "(libcxi not bound into the container, or FI_PROVIDER set to another provider)"
        )
    if provider in net.providers:
        return f"NET/OFI Selected Provider is {provider} ({len(net.providers)} process(es))"
    used = f" (RCCL used the network {net.networks[0]!r})" if net.networks else ""
    raise StageFailure(
        f"check_network: {source} shows neither the Slingshot provider line "
        f"('NET/OFI Selected Provider is {provider}') nor a fallback (NET/Socket, NET/IB){used}: "
        "was RCCL's debug output on (NCCL_DEBUG=INFO, NCCL_DEBUG_SUBSYS with INIT,NET) and did the "
        "ranks use the nccl backend?"
    )


def rccl_debug_env(env: Mapping[str, str], debug_file: Path) -> dict[str, str]:
    """The RCCL debug settings of the check: ``INFO``, the ``INIT`` and ``NET`` subsystems (added
    to any the user set), and one debug file per rank."""
    subsys = [s for s in env.get("NCCL_DEBUG_SUBSYS", "").split(",") if s]
    if "ALL" not in (s.upper() for s in subsys):
        subsys += [s for s in ("INIT", "NET") if s not in (x.upper() for x in subsys)]
    return {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": ",".join(subsys),
        "NCCL_DEBUG_FILE": str(debug_file),
    }


def gradient_numel(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The gradient DDP all-reduces every step: the trainable parameters of the configured model.

    Counted by :func:`aqnet.model.count_parameters` on the model
    :func:`aqnet.model.presets.from_pipeline_config` builds (on the meta device, so the paper
    model costs no memory).
    """
    from aqnet.model import count_parameters
    from aqnet.model.presets import from_pipeline_config

    counts = count_parameters(from_pipeline_config(cfg))
    return {"preset": cfg["model"].get("preset", "tiny"), "params": int(counts["trainable"])}


def bus_bandwidth_gbps(n_bytes: int, seconds: float, world_size: int) -> tuple[float, float]:
    """Algorithm and bus bandwidth of one all-reduce, in GB/s (10^9 bytes per second).

    ``algbw = bytes / time``; ``busbw = algbw * 2 (n - 1) / n``, the traffic each rank's link
    carries in a ring all-reduce, comparable across world sizes (nccl-tests' definition).
    """
    if seconds <= 0 or world_size < 1:
        raise ValueError(f"cannot compute a bandwidth from {seconds} s over {world_size} ranks")
    algbw = n_bytes / seconds / 1e9
    return algbw, algbw * 2 * (world_size - 1) / world_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure_allreduce(ctx: Any, numel: int, *, warmup: int, iters: int) -> dict[str, Any]:
    """Time ``iters`` all-reduces of ``numel`` float32 values (after ``warmup``), each the slowest
    rank's time, and compare the last one's sums (a sample of 1024) with the exact sum
    (``sum_wrong``: the first wrong value, else None; judged after every rank has reported)."""
    import torch.distributed as dist

    buf = torch.empty(numel, dtype=torch.float32, device=ctx.device)
    times: list[float] = []
    for i in range(warmup + iters):
        buf.fill_(float(ctx.rank + 1))
        _sync(ctx.device)
        ctx.barrier()
        start = time.perf_counter()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        _sync(ctx.device)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        if i >= warmup:
            times.append(float(ctx.all_reduce_max(elapsed.to(ctx.device)).item()))
    want = ctx.world_size * (ctx.world_size + 1) / 2  # the sum of rank + 1 over the ranks
    got = buf[:: max(1, numel // 1024)].to("cpu", torch.float64)
    wrong = got[got != want]
    median = statistics.median(times)
    n_bytes = numel * buf.element_size()
    algbw, busbw = bus_bandwidth_gbps(n_bytes, median, ctx.world_size)
    return {
        "measured": True,
        "sum_expected": want,
        "sum_wrong": float(wrong[0]) if wrong.numel() else None,
        "bytes": n_bytes,
        "dtype": "float32",
        "warmup": warmup,
        "iters": iters,
        "times_s": times,
        "median_s": median,
        "algbw_gbps": algbw,
        "busbw_gbps": busbw,
    }


def _node_name() -> str:
    """The Slurm node this rank runs on (``SLURMD_NODENAME``), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def check_network(
    cfg: Mapping[str, Any],
    *,
    debug_dir: str | Path,
    expected_world_size: int | None,
    report: dict[str, Any],
    warmup: int = 3,
    iters: int = 10,
) -> str:
    """Run the check on this rank; fill ``report`` (rank 0's is written); return the verdict.

    Args:
        cfg: the resolved config (``model``, ``grid``, ``finetune.backend/device/
            dist_timeout_s``).
        debug_dir: the folder of the per-rank RCCL debug files (``rccl.<rank>.log``).
        expected_world_size: the ranks the launcher must have started (``--world-size``).
        report: filled with the measurement, the ranks and the provider check.
        warmup, iters: untimed and timed all-reduces.

    Raises:
        StageFailure: a fallback instead of the Slingshot provider (naming it), a wrong sum, an
            nccl run on a single node (it proves nothing about the network between nodes).
        LaunchError: the ranks were not started as configured.
    """
    if warmup < 0 or iters < 1:
        raise ValueError(f"check_network: need warmup >= 0 and iters >= 1, got {warmup}, {iters}")
    info = detect_launch()
    debug_dir = Path(debug_dir)
    debug_dir.mkdir(parents=True, exist_ok=True)
    debug_file = debug_dir / f"rccl.{info.rank:04d}.log"
    debug_file.unlink(missing_ok=True)  # a rerun's evidence only
    rccl_env = rccl_debug_env(os.environ, debug_file)
    os.environ.update(rccl_env)  # read by RCCL when its first communicator starts, below
    tcfg = cfg["finetune"]
    ctx = init_distributed(
        backend=tcfg["backend"],
        device=tcfg["device"],
        timeout_s=float(tcfg["dist_timeout_s"]),
        expected_world_size=expected_world_size,
    )
    try:
        grad = gradient_numel(cfg)
        node = _node_name()
        if ctx.distributed:
            allreduce = _measure_allreduce(ctx, grad["params"], warmup=warmup, iters=iters)
        else:
            allreduce = {
                "measured": False,
                "reason": "one rank: no all-reduce between ranks to measure (a single process, "
                "as in the demo); on LUMI this stage runs 2 nodes x 8 GCDs",
            }
        if ctx.backend == "nccl":
            try:
                text = debug_file.read_text(errors="replace") if debug_file.exists() else ""
                mine = {
                    "status": "passed",
                    "evidence": check_rccl_log(text, source=str(debug_file)),
                }
            except StageFailure as exc:
                mine = {"status": "failed", "reason": str(exc)}
        else:
            mine = {"status": "skipped"}
        gathered = ctx.all_gather_object(
            {
                "rank": ctx.rank,
                "node": node,
                "device": str(ctx.device),
                "visible": next((r["visible"] for r in ctx.ranks if r["rank"] == ctx.rank), ""),
                "sum_wrong": allreduce.get("sum_wrong"),
                "provider_check": mine,
            }
        )
    finally:
        ctx.close()

    nodes = sorted({r["node"] for r in gathered})
    backend = ctx.backend or choose_backend(tcfg["backend"], ctx.device)
    report.update(
        world_size=ctx.world_size,
        nodes=nodes,
        backend=backend,
        ranks=gathered,
        gradient={**grad, "bytes": grad["params"] * 4, "dtype": "float32"},
        allreduce=allreduce,
        rccl_debug={**rccl_env, "NCCL_DEBUG_FILE": str(debug_dir / "rccl.<rank>.log")},
    )
    corrupt = [r for r in gathered if r["sum_wrong"] is not None]
    if corrupt:
        raise StageFailure(
            f"check_network: the all-reduce returned {corrupt[0]['sum_wrong']} on rank "
            f"{corrupt[0]['rank']} ({corrupt[0]['node']}) where the sum over {ctx.world_size} "
            f"ranks is {allreduce['sum_expected']}: the collective corrupts data "
            f"({len(corrupt)} of {len(gathered)} rank(s))"
        )
    failed = [r for r in gathered if r["provider_check"]["status"] == "failed"]
    if backend != "nccl":
        report["provider_check"] = {
            "status": "skipped",
            "reason": (
                f"backend {backend}: the ranks run on the CPU without RCCL, so there is no "
                "network provider to check; with GPUs (nccl = RCCL on LUMI) the Slingshot provider "
                f"{SLINGSHOT_PROVIDER!r} is required"
            ),
        }
    elif failed:
        first = failed[0]
        report["provider_check"] = {
            "status": "failed",
            "failed_ranks": [r["rank"] for r in failed],
            "reason": first["provider_check"]["reason"],
        }
        raise StageFailure(
            f"{first['provider_check']['reason']} [rank {first['rank']} on {first['node']}; "
            f"{len(failed)} of {len(gathered)} rank(s) failed]"
        )
    else:
        report["provider_check"] = {
            "status": "passed",
            "evidence": gathered[0]["provider_check"]["evidence"],
            "ranks": len(gathered),
        }
        if len(nodes) < 2:
            raise StageFailure(
                f"check_network: the {ctx.world_size} ranks ran on one node ({nodes[0]}): the "
                "check proves nothing about the network between nodes; give it 2 nodes"
            )
    size = f"{grad['params']:,} parameters ({grad['params'] * 4 / 1e6:.1f} MB float32)"
    if allreduce["measured"]:
        measured = (
            f"all-reduce of {size} over {ctx.world_size} ranks on {len(nodes)} node(s): "
            f"{allreduce['median_s'] * 1e3:.3g} ms, bus bandwidth "
            f"{allreduce['busbw_gbps']:.3g} GB/s"
        )
    else:
        measured = f"gradient {size}; {allreduce['reason']}"
    check = report["provider_check"]
    provider = (
        f"provider check skipped: {check['reason']}"
        if check["status"] == "skipped"
        else f"RCCL used Slingshot: {check['evidence']}"
    )
    if allreduce["measured"] and not math.isfinite(allreduce["busbw_gbps"]):
        raise StageFailure(f"check_network: the bus bandwidth is {allreduce['busbw_gbps']}")
    return f"{measured}; {provider}"

"""Forward+backward time and peak memory of the TopoFlow block against a plain and a naive block.

Blocks (all ``D = --dim``, ``--heads`` heads, MLP ratio 4, batch ``--batch``, fp32 by default):

* ``plain``    - the baseline block: ``scaled_dot_product_attention`` without bias;
* ``topoflow`` - the TopoFlow block as the model runs it (``attention_impl="auto"``: the chunked
  path with recomputation on CPU, FlexAttention on CUDA), elevation bias only;
* ``naive``    - the reference code's way: the ``(B, heads, N, N)`` bias materialised and passed as
  ``attn_mask`` to ``scaled_dot_product_attention``;
* ``topoflow-sdpa`` / ``topoflow-reference`` (opt-in) - the other implementations of the model.

Every (block, N) is measured in fresh Python processes: ``--warmup`` untimed steps, then
``--repeats`` timed forward+backward steps; the median time is reported. Peak memory is a
steady-state peak. On CPU it comes from a second fresh process started with glibc's mmap threshold
fixed (``MALLOC_MMAP_THRESHOLD_``, ``--mmap-threshold-kib``), so that freed tensors leave the
resident set at once: after the warm-up the kernel's peak-RSS mark (``VmHWM``) is reset through
``/proc/self/clear_refs`` and ``--memory-steps`` steps run; the figure is the peak RSS minus the
RSS at the reset. (Times come from the first process, with glibc's default allocator, because the
fixed threshold turns every large allocation into fresh page faults.) On GPU one process does
both: ``torch.cuda.max_memory_allocated`` over the timed steps minus the memory allocated after
the warm-up. The peak of the
first steps (one-time kernel initialisation included) is kept in the JSON as
``first_steps_peak_rss_bytes``. A configuration whose estimated need exceeds ``--mem-limit-gb`` is
skipped, not run. The 1-minute load average is recorded with each measurement: other processes
on the same cores slow the many-kernel chunked path far more than one fused kernel, so compare
timings taken on a quiet machine only.

Examples::

    python benchmarks/attention.py                        # N = 512 2048 4096 8192, 3 repeats
    python benchmarks/attention.py --n 2048 --repeats 5
    python benchmarks/attention.py --blocks plain topoflow topoflow-sdpa --n 1024 2048
    python benchmarks/attention.py --json results/attention_benchmark.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BLOCKS: tuple[str, ...] = ("plain", "topoflow", "naive", "topoflow-sdpa", "topoflow-reference")
DEFAULT_BLOCKS: tuple[str, ...] = ("plain", "topoflow", "naive")
# Full (B, heads, N, N) fp32 tensors alive at the peak of a materialising forward+backward
# (scores, probabilities, their gradients, the bias), used to skip runs that cannot fit.
_MATERIALISED_COPIES = {"naive": 5, "topoflow-reference": 5, "topoflow-sdpa": 5}


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last reset."""
    try:
        return _status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _estimated_bytes(block: str, n: int, args: argparse.Namespace) -> int:
    per_matrix = args.batch * args.heads * n * n * 4
    return _MATERIALISED_COPIES.get(block, 0) * per_matrix


def _build(block: str, args: argparse.Namespace, device: Any) -> Any:
    """The block under test (seeded), with a non-zero elevation strength."""
    import torch
    import torch.nn.functional as F

    from aqnet.model.blocks import Block, TopoFlowBlock
    from aqnet.model.elevation_attention import TopoFlowAttention, elevation_bias

    class NaiveTopoFlowAttention(TopoFlowAttention):
        """The reference code's attention: a full (B, heads, N, N) bias as the SDPA mask."""

        def forward(
            self, x: torch.Tensor, *, elevation_m: torch.Tensor, coords: Any = None
        ) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = self._split_heads(x)  # 3 x (B, h, N, hd)
            bias = elevation_bias(elevation_m, elevation_m, self.elevation_alpha, self.H_scale)
            bias = bias[:, None].expand(b, self.num_heads, n, n).contiguous()  # (B, h, N, N)
            return self._merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))

    torch.manual_seed(0)
    kwargs = {"dim": args.dim, "num_heads": args.heads, "mlp_ratio": 4.0, "index": 0}
    if block == "plain":
        module = Block(**kwargs)
    else:
        impl = {"topoflow": "auto", "topoflow-sdpa": "sdpa", "topoflow-reference": "reference"}
        module = TopoFlowBlock(**kwargs, attention_impl=impl.get(block, "auto"))
        if block == "naive":
            module.attn = NaiveTopoFlowAttention(dim=args.dim, num_heads=args.heads, name="naive")
        with torch.no_grad():
            module.attn.elevation_alpha.fill_(0.5)
    return module.to(device)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import torch

    from aqnet.model.blocks import TopoFlowBlock

    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    module = _build(args.block, args, device).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.n, args.dim, generator=gen).to(device, dtype)
    x.requires_grad_(True)
    # Terrain-like token elevations: smooth ridges between 0 and ~3 km.
    pos = torch.linspace(0, 6.28, args.n)
    elev = 1500 + 1500 * torch.sin(3 * pos)[None] * torch.cos(pos + torch.rand(args.batch, 1))
    elev = elev.to(device, dtype)
    topo = isinstance(module, TopoFlowBlock)

    def step() -> None:
        out = module(x, elevation_m=elev) if topo else module(x)
        out.float().square().mean().backward()
        x.grad = None
        module.zero_grad(set_to_none=True)

    load_before = os.getloadavg()[0]
    rss_start = _status_bytes("VmRSS")
    for _ in range(args.warmup):
        step()
    # Steady state: one-time costs of the warm-up (lazy kernel initialisation, allocator set-up,
    # compilation) are excluded from the peaks below.
    first_peak = _peak_rss_bytes() - rss_start
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device)
    times: list[float] = []
    cpu_times: list[float] = []  # CPU seconds of all threads: less sensitive to other processes
    for _ in range(args.repeats if args.measure == "time" or cuda else 0):
        if cuda:
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    reset = True
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - mem_before
    elif args.measure == "memory":
        # This process runs with a fixed glibc mmap threshold (see _run_one): freed tensors leave
        # the RSS at once, so the peak RSS tracks the live tensors, not the allocator's caching.
        reset = _reset_peak_rss()
        rss_before = _status_bytes("VmRSS") if reset else rss_start
        for _ in range(max(1, args.memory_steps)):
            step()
        peak = _peak_rss_bytes() - rss_before
    else:
        peak = None
    impl = module.attn.resolve_impl(device) if hasattr(module.attn, "resolve_impl") else "sdpa"
    return {
        "block": args.block,
        "n": args.n,
        "impl": "naive" if args.block == "naive" else impl,
        "time_s": statistics.median(times) if times else None,
        "times_s": times,
        "cpu_time_s": statistics.median(cpu_times) if cpu_times else None,
        "peak_bytes": peak,
        "load_1min": max(load_before, os.getloadavg()[0]),
        "peak_reset": reset,
        "first_steps_peak_rss_bytes": first_peak,
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _run_one(block: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    need = _estimated_bytes(block, n, args)
    if args.device == "cpu" and need > args.mem_limit_gb * 2**30:
        return {"block": block, "n": n, "skipped": f"needs ~{need / 2**30:.1f} GiB"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--block", block,
        "--n", str(n),
        "--dim", str(args.dim),
        "--heads", str(args.heads),
        "--batch", str(args.batch),
        "--repeats", str(args.repeats),
        "--warmup", str(args.warmup),
        "--device", args.device,
        "--dtype", args.dtype,
        "--threads", str(args.threads),
        "--memory-steps", str(args.memory_steps),
        "--mmap-threshold-kib", str(args.mmap_threshold_kib),
    ]  # fmt: skip
    if args.device.startswith("cuda"):
        return _worker_process(cmd + ["--measure", "time"], block, n, env=None)
    # CPU: time with glibc's default allocator, memory in a second process whose fixed mmap
    # threshold returns every freed tensor to the OS at once (a deterministic peak RSS).
    timed = _worker_process(cmd + ["--measure", "time"], block, n, env=None)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold_kib * 1024)}
    mem = _worker_process(cmd + ["--measure", "memory"], block, n, env=env)
    if "time_s" not in timed:
        return timed
    if "peak_bytes" not in mem:
        return mem
    fields = ("peak_bytes", "peak_reset", "first_steps_peak_rss_bytes")
    return {
        **timed,
        **{k: mem[k] for k in fields},
        "load_1min": max(timed["load_1min"], mem["load_1min"]),
    }


def _worker_process(
    cmd: list[str], block: str, n: int, *, env: dict[str, str] | None
) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"rc {proc.returncode}"]
        return {"block": block, "n": n, "failed": tail[0][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(num: dict[str, Any], den: dict[str, Any], key: str) -> str:
    """``num[key] / den[key]`` formatted, or ``-`` where either is missing."""
    if not num.get(key) or not den.get(key):
        return "-"
    return f"{num[key] / den[key]:.2f}x"


def _table(results: list[dict[str, Any]], blocks: list[str], sizes: list[int]) -> str:
    by = {(r["block"], r["n"]): r for r in results}
    lines = [
        f"{'N':>6} {'block':<19} {'impl':<10} {'time s':>8} {'cpu s':>7} {'peak MiB':>9} "
        f"{'time/plain':>10} {'mem/plain':>9} {'naive/mem':>9} {'load':>5}",
    ]
    for n in sizes:
        plain = by.get(("plain", n), {})
        naive = by.get(("naive", n), {})
        for block in blocks:
            r = by.get((block, n), {})
            if "time_s" not in r:
                why = r.get("skipped") or r.get("failed") or "not run"
                lines.append(f"{n:>6} {block:<19} {'-':<10} {why}")
                continue
            lines.append(
                f"{n:>6} {block:<19} {r['impl']:<10} {r['time_s']:>8.3f} {r['cpu_time_s']:>7.3f} "
                f"{r['peak_bytes'] / 2**20:>9.1f} {_ratio(r, plain, 'time_s'):>10} "
                f"{_ratio(r, plain, 'peak_bytes'):>9} {_ratio(naive, r, 'peak_bytes'):>9} "
                f"{r['load_1min']:>5.1f}"
            )
    return "\n".join(lines)


def _goals(results: list[dict[str, Any]], device: str) -> list[str]:
    by = {(r["block"], r["n"]): r for r in results if "time_s" in r}
    out = []
    t, p = by.get(("topoflow", 2048)), by.get(("plain", 2048))
    if t and p:
        limit = 1.3 if device == "cuda" else 2.0
        rt, rm = t["time_s"] / p["time_s"], t["peak_bytes"] / p["peak_bytes"]
        out.append(f"N=2048 time  topoflow/plain = {rt:.2f}x (goal <= {limit}x): "
                   f"{'met' if rt <= limit else 'MISSED'}")  # fmt: skip
        out.append(f"N=2048 peak  topoflow/plain = {rm:.2f}x (goal <= 1.5x): "
                   f"{'met' if rm <= 1.5 else 'MISSED'}")  # fmt: skip
    t, nv = by.get(("topoflow", 4096)), by.get(("naive", 4096))
    if t and nv:
        r = nv["peak_bytes"] / t["peak_bytes"]
        out.append(f"N=4096 peak  naive/topoflow = {r:.1f}x (goal >= 5x): "
                   f"{'met' if r >= 5 else 'MISSED'}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    parser.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(DEFAULT_BLOCKS))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--mem-limit-gb",
        type=float,
        default=None,
        help="skip CPU runs estimated to need more (default: 80%% of MemAvailable)",
    )
    parser.add_argument(
        "--mmap-threshold-kib",
        type=int,
        default=128,
        help="glibc mmap threshold of the memory-measuring process on CPU",
    )
    parser.add_argument(
        "--memory-steps", type=int, default=1, help="steps measured for memory (after timing)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["time", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--block", choices=BLOCKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        args.n = args.n[0]
        print(json.dumps(worker(args)))
        return 0
    if args.mem_limit_gb is None:
        args.mem_limit_gb = 0.8 * _available_bytes() / 2**30
    results = []
    for n in args.n:
        for block in args.blocks:
            r = _run_one(block, n, args)
            results.append(r)
            done = f"{r['time_s']:.3f} s, {r['peak_bytes'] / 2**20:.1f} MiB" if "time_s" in r else r
            print(f"  measured {block:<19} N={n:<5} {done}", file=sys.stderr, flush=True)
    header = (
        f"device={args.device} D={args.dim} heads={args.heads} batch={args.batch} "
        f"dtype={args.dtype} repeats={args.repeats} threads={args.threads or 'default'}\n"
        "time s / cpu s: median wall / CPU seconds of one forward+backward; peak MiB: steady-state "
        "peak memory delta; load: 1-min load average during the run (timings are only comparable "
        "on a quiet machine)"
    )
    print(header)
    print(_table(results, args.blocks, args.n))
    for line in _goals(results, "cuda" if args.device.startswith("cuda") else "cpu"):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

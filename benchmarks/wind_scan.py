"""Benchmark: the reference wind scan batched against a per-sample, per-region Python loop.

The loop is written the way the researchers' training code works
(``AmmarKheder/TopoFlow`` a962ae0 ``src/wind_scanning_cached.py``, the last definition of
``apply_regional_wind_reordering_32x32_optimized``): for every sample and every region, a scalar
angle taken to the host, a Python sort of the region's projections, then the tokens written slot by
slot. The batched side is what ``wind_scan: reference`` runs
(:func:`aqnet.model.reference_scan.reference_permutation`, then one gather).

Three figures, each a ratio of medians measured in the same run (both sides give the same result,
checked):

* ``permutation`` - the orders alone (the part the two ways compute differently);
* ``scan (B, V, L, D)`` - the orders and the reordered tokens, where the reference reorders them
  (before the variable aggregation, ``V`` = 15 variables);
* ``scan (B, L, D)`` - the batched scan where aqnet applies it (after the aggregation) against the
  loop on the reference's ``(B, V, L, D)`` tokens.

Usage::

    .venv/bin/python benchmarks/wind_scan.py      # paper size: 128 x 256, patch 2, batch 2
    .venv/bin/python benchmarks/wind_scan.py --embed-dim 256 --repeats 3 --json results/scan.json
    .venv/bin/python benchmarks/wind_scan.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from aqnet.model.reference_scan import reference_permutation, reference_permutation_loop
from aqnet.model.wind_scan import WindScan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_s(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loop_scan(
    tokens: torch.Tensor, u: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """tokens: (B, V, L, D) -> reordered the reference's way: the per-region orders, then every
    slot written on its own."""
    perm = reference_permutation_loop(u, v, grid_patches=grid).tolist()  # per-region Python loop
    out = torch.empty_like(tokens)
    for b in range(tokens.shape[0]):
        for slot, src in enumerate(perm[b]):
            out[b, :, slot, :] = tokens[b, :, src, :]
    return out


def batched_scan(tokens: torch.Tensor, u: torch.Tensor, v: torch.Tensor, grid) -> torch.Tensor:
    """tokens: (B, V, L, D) or (B, L, D) -> reordered with one gather along L."""
    perm = reference_permutation(u, v, grid_patches=grid)  # (B, L)
    if tokens.ndim == 4:  # (B, V, L, D): rows of D picked by (b * V + v) * L + perm[b, s]
        b, nv, n, d = tokens.shape
        base = (torch.arange(b * nv, device=perm.device) * n).reshape(b, nv, 1)  # (B, V, 1)
        flat = (base + perm[:, None, :]).reshape(-1)  # (B * V * L,)
        return tokens.reshape(-1, d).index_select(0, flat).reshape(tokens.shape)
    return WindScan.scan(tokens, perm)  # (B, L, D): the forecaster's gather


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variables", type=int, default=15)
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.img
    grid = (h // args.patch, w // args.patch)
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(args.batch, h, w, generator=g) + 0.5).to(device)  # normalised winds
    v = (torch.randn(args.batch, h, w, generator=g) - 0.3).to(device)
    tokens = torch.randn(args.batch, args.variables, n, args.embed_dim, generator=g).to(device)
    aggregated = tokens[:, 0].contiguous()  # (B, L, D)

    fast = reference_permutation(u, v, grid_patches=grid)
    slow = reference_permutation_loop(u, v, grid_patches=grid)
    if not torch.equal(fast, slow):
        raise SystemExit("the batched and the loop permutations differ")
    if not torch.equal(batched_scan(tokens, u, v, grid), loop_scan(tokens, u, v, grid)):
        raise SystemExit("the batched and the loop scans differ")

    t = {
        "permutation_batched_s": _median_s(
            lambda: reference_permutation(u, v, grid_patches=grid), args.repeats, device
        ),
        "permutation_loop_s": _median_s(
            lambda: reference_permutation_loop(u, v, grid_patches=grid), args.repeats, device
        ),
        "scan_bvld_batched_s": _median_s(
            lambda: batched_scan(tokens, u, v, grid), args.repeats, device
        ),
        "scan_bvld_loop_s": _median_s(
            lambda: loop_scan(tokens, u, v, grid), max(1, args.repeats // 2), device
        ),
        "scan_bld_batched_s": _median_s(
            lambda: batched_scan(aggregated, u, v, grid), args.repeats, device
        ),
    }
    ratios = {
        "permutation": t["permutation_loop_s"] / t["permutation_batched_s"],
        "scan (B, V, L, D)": t["scan_bvld_loop_s"] / t["scan_bvld_batched_s"],
        "scan (B, L, D)": t["scan_bvld_loop_s"] / t["scan_bld_batched_s"],
    }
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "shape": {
            "B": args.batch,
            "V": args.variables,
            "L": n,
            "D": args.embed_dim,
            "img": [h, w],
            "patch": args.patch,
        },  # fmt: skip
        "times_s": t,
        "speedup": ratios,
    }
    print(
        f"reference wind scan, {h} x {w}, patch {args.patch}, batch {args.batch}, "
        f"V {args.variables}, D {args.embed_dim}, {device} ({torch.get_num_threads()} threads)"
    )
    for name, ratio in ratios.items():
        print(f"  {name:<20} batched is {ratio:8.1f}x faster than the per-region loop")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

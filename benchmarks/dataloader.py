"""Samples per second: the cache's DataLoader against reading and regridding samples with xarray.

The reference code read every training sample from the yearly netCDF/Zarr files with xarray and
interpolated it onto the model grid on the fly. This benchmark times both ways on the same files,
in one run, and checks that they return the same sample:

1. writes demo files (``--src-ny x --src-nx`` cells, ``--hours`` per year; 2013 = train,
   2014 = val), or takes ``--inputs`` (two yearly files; the first is the training year);
2. builds the cache on the target grid (``--ny x --nx``, by default the paper grid 128 x 256) and
   times the build;
3. **on the fly**: a Dataset that, per sample, selects the two time steps (input and target) from
   the lazily opened file with xarray, interpolates every variable onto the target grid
   (``Dataset.interp``), normalises and stacks them -- the files stay open between samples, which
   favours it over code that reopens them;
4. **cache**: ``CacheDataset`` + ``make_loader`` (memory-mapped ``.npy``);
5. prints samples per second of both through the same DataLoader settings, their ratio (goal:
   >= 10x), the per-sample time, and, next to it, the model's compute time per sample from
   ``benchmarks/attention.py`` (``--attention-json``: the TopoFlow block's forward+backward time at
   N = (ny / patch) * (nx / patch) tokens, divided by its batch and multiplied by ``--depth``) or
   ``--model-step-s`` (seconds per sample measured elsewhere).

The cache files were just written, so both loaders read through the page cache; the on-the-fly
loader reads compressed netCDF like the users' files.

Examples::

    python benchmarks/dataloader.py
    python benchmarks/dataloader.py --samples 16 --cache-samples 256 --num-workers 2
    python benchmarks/attention.py --n 8192 --blocks topoflow --json results/attention.json
    python benchmarks/dataloader.py --attention-json results/attention.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader, Dataset

from aqnet.config import INPUT_VARIABLES, MODEL_VARIABLES, POLLUTANTS, validate_config
from aqnet.data import CacheDataset, build_cache, load_static, load_stats, make_loader
from aqnet.data.demo import make_demo_data
from aqnet.data.io import MASK_NAMES, open_year, spatial_coords

TRAIN_YEAR, VAL_YEAR = 2013, 2014


class OnTheFlyDataset(Dataset):
    """The reference way: every sample read from the input files with xarray and regridded.

    Items follow ``index`` (a :class:`CacheDataset` of the same files), so both loaders serve the
    same ``(year, time, lead time)`` for the same item number.
    """

    def __init__(
        self,
        files: dict[int, Path],
        *,
        index: CacheDataset,
        lat: np.ndarray,
        lon: np.ndarray,
        stats: dict[str, dict[str, float]],
    ) -> None:
        self.files = files
        self.index = index
        self.lat, self.lon = lat, lon
        self.mean = np.array([stats[v]["mean"] for v in MODEL_VARIABLES], np.float32)
        self.std = np.array([stats[v]["std"] for v in MODEL_VARIABLES], np.float32)
        self._open: dict[int, xr.Dataset] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def _dataset(self, year: int) -> xr.Dataset:
        if year not in self._open:
            ds = open_year(self.files[year])
            lat2d, lon2d, (ydim, xdim) = spatial_coords(ds, str(self.files[year]))
            ds = ds.assign_coords({ydim: lat2d[:, 0], xdim: lon2d[0, :]})
            self._open[year] = (
                ds.rename({ydim: "y", xdim: "x"}) if (ydim, xdim) != ("y", "x") else ds
            )
        return self._open[year]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        year, t, lead_h, _ = self.index.sample_info(i)
        lead = int(round(lead_h / self.index.time_step_h))
        ds = self._dataset(year)
        mask_name = next(n for n in MASK_NAMES if n in ds.variables)
        sub = ds[[*INPUT_VARIABLES, mask_name]].isel(time=[t, t + lead])
        grid = sub.interp(y=self.lat, x=self.lon).load()  # read + regrid on the fly
        h, w = len(self.lat), len(self.lon)
        x = np.empty((len(MODEL_VARIABLES), h, w), np.float32)
        for c, name in enumerate(INPUT_VARIABLES):
            var = grid[name]
            x[c] = var.values[0] if "time" in var.dims else var.values
        x[-2] = self.lat[:, None]
        x[-1] = self.lon[None, :]
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        idx = [MODEL_VARIABLES.index(p) for p in POLLUTANTS]
        y = np.stack([grid[p].values[1] for p in POLLUTANTS])
        y = (y - self.mean[idx, None, None]) / self.std[idx, None, None]
        elevation = grid["elevation"].values.astype(np.float32)
        mask = (grid[mask_name].values >= 0.5).astype(np.float32)
        return (
            torch.from_numpy(x),
            torch.from_numpy(y.astype(np.float32)),
            torch.tensor(float(lead_h)),
            torch.from_numpy(elevation),
            torch.from_numpy(mask),
        )


def _time_loader(loader: DataLoader, max_samples: int) -> tuple[float, int]:
    """Seconds to draw batches until ``max_samples`` samples (first batch included)."""
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch[0].shape[0]
        if n >= max_samples:
            break
    return time.perf_counter() - t0, n


def _model_time_per_sample(args: argparse.Namespace, n_tokens: int) -> tuple[float | None, str]:
    if args.model_step_s is not None:
        return args.model_step_s, "--model-step-s"
    if args.attention_json is None:
        return None, "not given (run benchmarks/attention.py --json and pass --attention-json)"
    data = json.loads(args.attention_json.read_text())
    batch = int(data["config"]["batch"])
    dim = data["config"]["dim"]
    rows = [r for r in data["results"] if r.get("block") == "topoflow" and "time_s" in r]
    if not rows:
        return None, f"{args.attention_json} holds no topoflow measurement"
    best = min(rows, key=lambda r: abs(int(r["n"]) - n_tokens))
    per_sample = best["time_s"] / batch * args.depth
    where = (
        f"{args.attention_json}: topoflow block fwd+bwd at N={best['n']} (D={dim}, batch {batch}, "
        f"{best.get('device', '?')}) x depth {args.depth}"
    )
    return per_sample, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ny", type=int, default=128, help="target grid rows (paper: 128)")
    parser.add_argument("--nx", type=int, default=256, help="target grid columns (paper: 256)")
    parser.add_argument("--src-ny", type=int, default=128, help="demo source grid rows")
    parser.add_argument("--src-nx", type=int, default=256, help="demo source grid columns")
    parser.add_argument("--hours", type=int, default=120, help="hours per demo year")
    parser.add_argument("--inputs", type=Path, nargs=2, default=None, help="train and val files")
    parser.add_argument("--samples", type=int, default=24, help="samples the on-the-fly loader")
    parser.add_argument("--cache-samples", type=int, default=384, help="samples the cache loader")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--patch-size", type=int, default=2, help="model patch (tokens per sample)")
    parser.add_argument("--depth", type=int, default=6, help="transformer blocks of the model")
    parser.add_argument("--attention-json", type=Path, default=None)
    parser.add_argument("--model-step-s", type=float, default=None, help="model s per sample")
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    tmp = tempfile.TemporaryDirectory(prefix="aqnet_dataloader_") if args.workdir is None else None
    work = Path(tmp.name) if tmp is not None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.inputs is None:
            t0 = time.perf_counter()
            paths = make_demo_data(
                work / "demo",
                seed=0,
                years=[TRAIN_YEAR, VAL_YEAR],
                hours=args.hours,
                ny=args.src_ny,
                nx=args.src_nx,
            )
            print(f"demo data: 2 years x {args.hours} h on {args.src_ny}x{args.src_nx} "
                  f"in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
            files = {TRAIN_YEAR: paths[0], VAL_YEAR: paths[1]}
        else:
            files = {TRAIN_YEAR: args.inputs[0], VAL_YEAR: args.inputs[1]}
        cfg = validate_config(
            {
                "data": {"split": {"train": [TRAIN_YEAR], "val": [VAL_YEAR], "test": []}},
                "grid": {"ny": args.ny, "nx": args.nx},
                "model": {"preset": "paper", "patch_size": args.patch_size},
            },
            source="benchmarks/dataloader.py",
        )
        t0 = time.perf_counter()
        cache = build_cache(cfg, files, work / "cache")
        build_s = time.perf_counter() - t0
        print(f"build_cache: {build_s:.1f} s for 2 years on {args.ny}x{args.nx}", flush=True)

        cached = CacheDataset(cache, "train")
        static = load_static(cache)
        otf = OnTheFlyDataset(
            files, index=cached, lat=static["lat"], lon=static["lon"], stats=load_stats(cache)
        )
        # Same sample, both ways (the comparison is only fair if they do the same work).
        probe = len(cached) // 2 + 1
        names = ("x", "y", "lead", "elev", "mask")
        for a, b, name in zip(cached[probe], otf[probe], names, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3, msg=f"{name} differs")

        common = {"batch_size": args.batch_size, "shuffle": True, "seed": 0}
        order = list(make_loader(cached, **common).sampler)
        otf_loader = DataLoader(
            otf, batch_size=args.batch_size, sampler=order, num_workers=args.num_workers
        )
        cache_loader = make_loader(cached, num_workers=args.num_workers, **common)
        _time_loader(make_loader(cached, **common), args.batch_size)  # warm imports
        otf_s, otf_n = _time_loader(otf_loader, args.samples)
        cache_s, cache_n = _time_loader(cache_loader, min(args.cache_samples, len(cached)))
        otf_rate, cache_rate = otf_n / otf_s, cache_n / cache_s
        n_tokens = (args.ny // args.patch_size) * (args.nx // args.patch_size)
        model_s, model_src = _model_time_per_sample(args, n_tokens)

        sample_mb = cached[0][0].numel() * 4 / 2**20
        print()
        print(f"grid {args.ny}x{args.nx}, {len(MODEL_VARIABLES)} channels ({sample_mb:.1f} MiB "
              f"per input), batch {args.batch_size}, workers {args.num_workers}, "
              f"torch threads {torch.get_num_threads()}")  # fmt: skip
        print(f"  on the fly (xarray read + interp): {otf_rate:8.2f} samples/s  "
              f"{1e3 / otf_rate:8.2f} ms/sample  ({otf_n} samples)")  # fmt: skip
        print(f"  cache (memory-mapped .npy):        {cache_rate:8.2f} samples/s  "
              f"{1e3 / cache_rate:8.2f} ms/sample  ({cache_n} samples)")  # fmt: skip
        ratio = cache_rate / otf_rate
        print(f"  speed-up cache / on the fly: {ratio:.1f}x (goal >= 10x): "
              f"{'met' if ratio >= 10 else 'MISSED'}")  # fmt: skip
        if model_s is not None:
            verdict = "data loading is hidden" if 1.0 / cache_rate < model_s else "RANK WAITS"
            shown = f"{model_s:.2f} s" if model_s >= 1.0 else f"{1e3 * model_s:.2f} ms"
            print(f"  model compute per sample: {shown} ({model_src})")
            print(f"  data: {1e3 / cache_rate:.2f} ms/sample per loader process: {verdict}")
        else:
            print(f"  model compute per sample: {model_src}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "grid": [args.ny, args.nx], "source_grid": [args.src_ny, args.src_nx],
                "batch_size": args.batch_size, "num_workers": args.num_workers,
                "build_cache_s": build_s, "on_the_fly_samples_per_s": otf_rate,
                "cache_samples_per_s": cache_rate, "speedup": ratio,
                "model_s_per_sample": model_s, "model_source": model_src,
            }, indent=1))  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

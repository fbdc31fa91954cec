"""Command-line stages of the data layer.

Examples::

    aqnet make-demo-data --config config.yaml --out results/demo_data
    aqnet build-cache --config config.yaml --inputs results/demo_data/demo_*.nc \\
        --out results/cache --report results/logs/build_cache.json
    aqnet build-cache --config my_config.yaml --out results/cache   # data.source: files

``make-demo-data`` writes ``demo_<year>.nc`` for every year of ``data.demo.years``.
``build-cache`` matches the inputs to the years of ``data.split`` (by the year in each file name
and/or its first time step), validates, regrids and normalises them, writes the cache and prints
the wind orders digest. Both print one line and exit non-zero on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aqnet.config import ConfigError, load_resolved
from aqnet.stage import add_report_arguments, run_stage, setup_logging


def add_arguments_make_demo_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    parser.add_argument("--out", required=True, type=Path, help="folder for demo_<year>.nc")


def run_make_demo_data(args: argparse.Namespace) -> int:
    from aqnet.data.demo import make_demo_data

    setup_logging()
    try:
        demo = load_resolved(args.config)["data"]["demo"]
        paths = make_demo_data(
            args.out,
            seed=demo["seed"],
            years=demo["years"],
            hours=demo["hours"],
            ny=demo["ny"],
            nx=demo["nx"],
            blocked_flow=demo["blocked_flow"],
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"make-demo-data: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"make-demo-data: wrote {len(paths)} file(s) of {demo['hours']} hours on a "
        f"{demo['ny']}x{demo['nx']} grid: {', '.join(str(p) for p in paths)}"
    )
    return 0


def add_arguments_build_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    parser.add_argument(
        "--inputs",
        nargs="+",
        type=Path,
        default=None,
        help="yearly input files (netCDF or Zarr); default: data.files when data.source is files",
    )
    parser.add_argument("--out", required=True, type=Path, help="the cache folder")
    add_report_arguments(parser, required=False)


def match_years(inputs: list[Path]) -> dict[int, Path]:
    """``{year: path}`` from the year in each name or, failing that, its first time step.

    Raises:
        DataValidationError: a file whose year cannot be told, or two files of one year.
    """
    from aqnet.data.io import DataValidationError, infer_year, open_year

    out: dict[int, Path] = {}
    for path in inputs:
        ds = open_year(path)
        try:
            year = infer_year(path, ds)
        finally:
            ds.close()
        if year in out:
            raise DataValidationError(f"{path}: a second file for year {year} (first: {out[year]})")
        out[year] = path
    return out


def run_build_cache(args: argparse.Namespace) -> int:
    def check(report: dict) -> str:
        from aqnet.data.cache import build_cache, read_meta

        cfg = load_resolved(args.config)
        if args.inputs:
            inputs = list(args.inputs)
        elif cfg["data"]["source"] == "files" and cfg["data"]["files"]:
            inputs = [Path(p) for p in cfg["data"]["files"].values()]
        else:
            raise ValueError(
                "no --inputs given and data.source is 'demo' (or data.files is empty): pass "
                "the files written by make-demo-data"
            )
        files = match_years(inputs)
        report["inputs"] = {str(y): str(p) for y, p in sorted(files.items())}
        out = build_cache(cfg, files, args.out)
        meta = read_meta(out)
        report.update(
            cache=str(out),
            years=meta["split"],
            grid=meta["grid"],
            nan_counts=meta["nan_counts"],
            wind_orders_digest=meta["wind_orders"]["digest"],
        )
        n_times = sum(v["n_times"] for v in meta["per_year"].values())
        return (
            f"cache {out} of {len(meta['years'])} year(s) ({n_times} time steps) on a "
            f"{meta['grid']['ny']}x{meta['grid']['nx']} grid; "
            f"train years {meta['split']['train']}; "
            f"wind orders digest {meta['wind_orders']['digest'][:16]}"
        )

    return run_stage("build_cache", check, args.report, args.report_copy)

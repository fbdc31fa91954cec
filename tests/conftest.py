"""Shared, session-scoped fixtures: a tiny validated config, tiny demo files and their cache.

* ``tiny_config`` - a validated config dict: target grid 16 x 32, the ``tiny`` model preset with
  patch size 2 (an 8 x 16 patch grid) and regions of 2 x 4 patches, three short demo years on a
  24 x 48 source grid: 2013 train, 2014 val, 2015 test. It is shared by the whole session:
  ``copy.deepcopy`` it before changing anything.
* ``demo_files`` - ``{year: Path}`` of the demo netCDF files generated from ``tiny_config``.
* ``tiny_cache`` - ``Path`` of the cache folder built from ``demo_files`` with ``tiny_config``.

All of them are built once per session in pytest's temporary folder (a few seconds on a CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aqnet.config import validate_config

TINY_YEARS: tuple[int, int, int] = (2013, 2014, 2015)


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    """A validated config for tiny, fast runs (deep-copy it before changing it)."""
    return validate_config(
        {
            "data": {
                "source": "demo",
                "demo": {"seed": 0, "years": list(TINY_YEARS), "hours": 120, "ny": 24, "nx": 48},
                "split": {"train": [2013], "val": [2014], "test": [2015]},
            },
            "grid": {"ny": 16, "nx": 32},
            "lead_times_h": [12, 24, 48, 96],
            "model": {"preset": "tiny", "patch_size": 2, "region_patches": [2, 4]},
            # 120 h a year: one day of forecast start times, too few for any calibrated test,
            # so rehearse_report must not refuse the run (its own test turns this on)
            "gates": {"require_testable_split": False},
        },
        source="tests/conftest.py:tiny_config",
    )


@pytest.fixture(scope="session")
def demo_files(
    tiny_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, Path]:
    """The tiny demo data set: ``{year: Path}`` of ``demo_<year>.nc`` files."""
    from aqnet.data import make_demo_data

    demo = tiny_config["data"]["demo"]
    paths = make_demo_data(
        tmp_path_factory.mktemp("demo_data"),
        seed=demo["seed"],
        years=demo["years"],
        hours=demo["hours"],
        ny=demo["ny"],
        nx=demo["nx"],
    )
    return {int(p.stem.split("_")[-1]): p for p in paths}


@pytest.fixture(scope="session")
def tiny_cache(
    tiny_config: dict[str, Any],
    demo_files: dict[int, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The cache folder built from the tiny demo files (meta.json, stats.json, year_*.npy, ...)."""
    from aqnet.data import build_cache

    return build_cache(tiny_config, demo_files, tmp_path_factory.mktemp("tiny") / "cache")

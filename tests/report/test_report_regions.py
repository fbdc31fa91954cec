"""The gains over the terrain (by elevation band, wind-scan region and terrain class) and the named
regions, on the tiny cache's grid and on a constructed one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_report_figures import constructed_evaluation

from aqnet.report.regions import (
    REGION_NAMES,
    gain_by_elevation,
    gain_by_region,
    gain_by_terrain,
    named_region_codes,
)


@pytest.fixture(scope="module")
def static(tiny_cache: Path) -> dict[str, np.ndarray]:
    from aqnet.data import load_static

    return load_static(tiny_cache)


def test_gain_by_elevation_finds_the_high_terrain(static):
    ev = constructed_evaluation(static, high_gain=0.2)
    bands = gain_by_elevation(ev, static["elevation_m"], n_bands=4)
    assert list(bands.columns[:4]) == ["band", "elev_low_m", "elev_high_m", "n_cells"]
    assert bands.gain_pct.iloc[0] == pytest.approx(0.0, abs=1e-9)  # lowest band: no change
    assert bands.gain_pct.iloc[-1] == pytest.approx(20.0)  # highest band: 20 % less error
    assert bands.n_cells.sum() == int(np.asarray(static["mask"]).sum())
    with pytest.raises(ValueError, match="not on one grid"):
        gain_by_elevation(ev, static["elevation_m"][:-1])


def test_gain_by_region_and_terrain(static):
    ev = constructed_evaluation(static)
    regions, grid = gain_by_region(ev, static["elevation_m"], region_cells=(4, 8))
    assert grid.shape == (4, 4)  # 16 x 32 cells in regions of 4 x 8
    assert regions.gain_pct.is_monotonic_decreasing
    assert set(regions.terrain) <= {"basin", "mountain", "plain"}
    best = regions.iloc[0]
    assert best.gain_pct == pytest.approx(grid[int(best.row), int(best.col)])
    assert 0 < best.gain_pct <= 20.0 + 1e-9
    terrain = gain_by_terrain(regions)
    assert terrain.regions.sum() == len(regions)
    with pytest.raises(ValueError, match="does not tile"):
        gain_by_region(ev, static["elevation_m"], region_cells=(5, 8))


def test_named_regions_from_terrain_classes():
    # 3 x 4 tiles of 2 x 2 cells at 400 m: a rugged tile, a high flat one, a hollow
    elev = np.full((6, 8), 400.0)
    elev[0:2, 0:2] = [[200.0, 1400.0], [300.0, 1500.0]]  # mountain: relief
    elev[0:2, 6:8] = 1200.0  # plateau: high and flat
    elev[4:6, 2:4] = 0.0  # basin: lower than its neighbours
    names = np.array(REGION_NAMES)[named_region_codes(elev, [2, 2])][::2, ::2]  # per tile
    assert (names[0, 0], names[0, 3], names[2, 1]) == ("mountain", "plateau", "basin")
    assert names[1, 1] == names[2, 3] == "plain"
    with pytest.raises(ValueError, match="does not tile the 6x8 grid"):
        named_region_codes(elev, [4, 4])

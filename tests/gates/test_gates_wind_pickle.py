"""verify_wind_order with the researchers' pickle cache: read safely, compared by content, and in
reference mode the orders that will run are recomputed."""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aqnet.cli import main
from aqnet.gates.wind_order import verify_wind_order
from aqnet.orders import grid_params, save_orders
from aqnet.stage import StageFailure
from aqnet.wind_tables import UnsafePickleError, load_pickle, read_tables

HP, WP, RH, RW = 8, 16, 4, 4  # patch grid 8 x 16, 4 x 4 regions of 2 x 4 patches


def _sorted_by_projection(rows: np.ndarray, cols: np.ndarray, angle: float) -> list[int]:
    """The researchers' projection: coordinates over the whole grid, row 0 north; stable sort."""
    proj = ((cols / (WP - 1)) * 2 - 1) * math.cos(angle) + (-((rows / (HP - 1)) * 2 - 1)) * (
        math.sin(angle)
    )
    return np.argsort(proj, kind="stable").tolist()


def researchers_cache() -> dict[str, Any]:
    """A cache in the structure of the researchers' ``wind_scanner_cache.pkl``, 8 x 16 patches."""
    angles = [2 * math.pi * k / 16 for k in range(16)]
    rows, cols = np.divmod(np.arange(HP * WP), WP)
    lr, lc = np.divmod(np.arange(8), 4)
    return {
        "grid_h": HP,
        "grid_w": WP,
        "num_sectors": 16,
        "regions_h": RH,
        "regions_w": RW,
        "sector_angles": angles,
        "cached_orders": {
            k: torch.tensor(_sorted_by_projection(rows, cols, a), dtype=torch.long)
            for k, a in enumerate(angles)
        },
        "regional_cached_orders": {
            r: {
                k: torch.tensor(_sorted_by_projection(lr, lc, a), dtype=torch.long)
                for k, a in enumerate(angles)
            }
            for r in range(RH * RW)
        },
    }


def write(path: Path, data: Any, protocol: int) -> Path:
    with path.open("wb") as fh:
        pickle.dump(data, fh, protocol=protocol)
    return path


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two runs of the generator: the same orders, written with different pickle protocols."""
    a = write(tmp_path / "run1.pkl", researchers_cache(), protocol=2)
    b = write(tmp_path / "run2.pkl", researchers_cache(), protocol=4)
    assert a.read_bytes() != b.read_bytes()
    return a, b


def test_two_pickles_with_different_bytes_and_the_same_orders_pass(two_runs):
    report = verify_wind_order(*two_runs)
    assert report["bytes_differ"] is True and report["digests_equal"] is True
    assert report["cache"]["md5"] != report["reference"]["md5"]
    assert report["cache"]["kind"] == report["reference"]["kind"] == "pickle"
    assert "bytes differ, orders identical" in report["reason"]
    assert "16 sectors x global, regional orders over 128 patches (16 regions)" in report["reason"]
    assert report["differences"] == []


def test_a_swapped_global_pair_fails_naming_the_sector(tmp_path: Path, two_runs):
    data = researchers_cache()
    t = data["cached_orders"][5]
    t[[10, 11]] = t[[11, 10]]
    bad = write(tmp_path / "bad.pkl", data, protocol=4)
    with pytest.raises(StageFailure, match=r"global orders: sector\(s\) 5 differ in 2 position"):
        verify_wind_order(bad, two_runs[1])


def test_a_swapped_regional_pair_fails_naming_sector_and_region(tmp_path: Path, two_runs):
    data = researchers_cache()
    t = data["regional_cached_orders"][3][7]
    t[[0, 1]] = t[[1, 0]]
    bad = write(tmp_path / "bad.pkl", data, protocol=2)
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure, match=r"regional orders: sector\(s\) 7 .* region\(s\) 3 "):
        verify_wind_order(two_runs[0], bad, report=report)
    assert report["differing_sectors"] == {"global": [], "regional": [7]}


def test_an_aqnet_orders_file_with_the_same_content_matches_the_pickle(tmp_path, two_runs):
    """aqnet's file holds regional orders as patch indices; compared by content they are the
    pickle's local indices."""
    tables = read_tables(two_runs[0]).tables
    members = np.stack(
        [(ri * 2 + np.arange(8) // 4) * WP + ci * 4 + np.arange(8) % 4
         for ri in range(RH) for ci in range(RW)]
    )  # fmt: skip  # (R, 8) raster members of each 2 x 4 block
    regional = np.take_along_axis(members[None].repeat(16, 0), tables["regional"], axis=2)
    params = grid_params(img_size=(16, 32), patch_size=2, region_patches=(2, 4))
    npz = tmp_path / "orders.npz"
    save_orders(npz, {"global": tables["global"], "regional": regional}, params)
    report = verify_wind_order(npz, two_runs[1])
    assert report["cache"]["kind"] == "aqnet" and report["digests_equal"] is True
    assert "match the reference by content (aqnet vs pickle" in report["reason"]


def test_aqnets_own_orders_differ_from_the_researchers(tiny_cache: Path, two_runs):
    """The real difference: aqnet's corrected scan is not the researchers' - named by sector."""
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure, match=r"differ from the reference's: global orders: sector"):
        verify_wind_order(tiny_cache, two_runs[0], report=report)
    assert report["differing_sectors"]["global"] and report["differing_sectors"]["regional"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_naming_posix_system_is_refused_and_nothing_runs(tmp_path: Path, two_runs):
    marker = tmp_path / "ran"
    evil = researchers_cache()
    evil["cached_orders"][0] = _Payload(marker)
    path = write(tmp_path / "wind_scanner_cache.pkl", evil, protocol=2)
    assert b"posix" in path.read_bytes() and b"system" in path.read_bytes()
    with pytest.raises(UnsafePickleError, match=r"refused the global posix\.system"):
        load_pickle(path)
    out = tmp_path / "verify.json"
    args = ["verify-wind-order", "--cache", str(path), "--reference", str(two_runs[0])]
    assert main([*args, "--report", str(out)]) == 1
    saved = json.loads(out.read_text())
    assert "refused the global posix.system" in saved["reason"]
    assert not marker.exists()


def test_a_malformed_cache_names_the_key(tmp_path: Path, two_runs):
    data = researchers_cache()
    del data["regional_cached_orders"][9][4]
    bad = write(tmp_path / "bad.pkl", data, protocol=4)
    with pytest.raises(StageFailure, match=r"regional_cached_orders\[9\] must map the sectors"):
        verify_wind_order(bad, two_runs[0])


def _reference_config(tiny_config: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(tiny_config)
    cfg["model"]["wind_scan"] = "reference"
    return cfg


def test_reference_mode_recomputes_the_applied_orders(tiny_cache, tiny_config, two_runs):
    """The tables differ (aqnet's vs the researchers'), but in reference mode no table runs: the
    gate recomputes the orders of the validation samples and reports that."""
    cfg = _reference_config(tiny_config)
    report = verify_wind_order(tiny_cache, two_runs[0], cfg=cfg)
    applied = report["applied_orders"]
    assert applied["tables_used"] is False and applied["identical"] is True
    assert applied["samples"] == min(cfg["validation"]["samples"], len(applied["items"]))
    assert applied["regions"] == 16 and 0.0 <= applied["table_agreement"] <= 1.0
    assert report["reason"].startswith("the tables differ but are not used")
    assert "no table is used" in report["reason"]
    # in aqnet's own modes the same table difference fails: those tables are what runs
    with pytest.raises(StageFailure, match=r"differ from the reference's"):
        verify_wind_order(tiny_cache, two_runs[0], cfg=tiny_config)


def test_reference_mode_fails_when_the_model_would_scan_otherwise(
    tiny_cache, tiny_config, two_runs, monkeypatch
):
    import aqnet.model.wind_scan as wind_scan

    real = wind_scan.reference_permutation

    def off_by_one_swap(*args, **kwargs):
        perm = real(*args, **kwargs).clone()
        perm[:, [42, 43]] = perm[:, [43, 42]]
        return perm

    monkeypatch.setattr(wind_scan, "reference_permutation", off_by_one_swap)
    with pytest.raises(StageFailure, match=r"differs from the reference rule .* region 5, slot 42"):
        verify_wind_order(tiny_cache, two_runs[0], cfg=_reference_config(tiny_config))


def test_cli_with_the_config_checks_what_will_run(tiny_cache, tiny_config, two_runs, tmp_path):
    from aqnet.config import dump_config, variant_config

    cfg_path = tmp_path / "baseline.yaml"
    dump_config(variant_config(_reference_config(tiny_config), "default"), cfg_path)
    out = tmp_path / "verify.json"
    args = ["verify-wind-order", "--cache", str(tiny_cache), "--reference", str(two_runs[1])]
    assert main([*args, "--config", str(cfg_path), "--report", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["applied_orders"]["tables_used"] is False
    assert "recomputed from each sample's wind and equal the reference rule" in saved["reason"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_reads_to_the_same_content(tmp_path: Path, protocol: int):
    path = write(tmp_path / "wind_scanner_cache.pkl", researchers_cache(), protocol=protocol)
    tables = read_tables(path)
    assert tables.kind == "pickle" and tables.grid["regions_h"] == RH
    assert tables.tables["global"].shape == (16, HP * WP)
    assert tables.tables["regional"].shape == (16, RH * RW, 8)
    reference = read_tables(write(tmp_path / "p4.pkl", researchers_cache(), protocol=4))
    assert tables.content_digest() == reference.content_digest()

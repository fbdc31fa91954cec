"""Gate verify_wind_order: identical orders pass whatever the bytes; every real mismatch fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aqnet.cli import main
from aqnet.gates.wind_order import verify_wind_order
from aqnet.orders import build_orders, grid_params, load_orders, save_orders
from aqnet.stage import StageFailure

GRID = {"img_size": (16, 32), "patch_size": 2, "region_patches": (2, 4)}


def _orders() -> tuple[dict[str, np.ndarray], dict[str, object]]:
    return build_orders((8, 16), region_patches=(2, 4)), grid_params(**GRID)


@pytest.fixture()
def reference(tmp_path: Path) -> Path:
    orders, params = _orders()
    save_orders(tmp_path / "reference.npz", orders, params, compress=True)
    return tmp_path / "reference.npz"


def test_different_bytes_identical_orders_pass(tmp_path: Path, reference: Path) -> None:
    orders, params = _orders()
    # Another encoding of the same orders: uncompressed, arrays in another order, int32.
    rewritten = {mode: orders[mode].astype(np.int32) for mode in reversed(list(orders))}
    save_orders(tmp_path / "cache.npz", rewritten, params, compress=False)
    assert (tmp_path / "cache.npz").read_bytes() != reference.read_bytes()

    report = verify_wind_order(tmp_path / "cache.npz", reference)
    assert report["bytes_differ"] is True
    assert report["cache"]["md5"] != report["reference"]["md5"]
    assert report["digests_equal"] is True
    assert report["cache"]["digest"] == report["reference"]["digest"]
    assert report["cache"]["stored_digest"] == report["cache"]["digest"]
    assert report["differences"] == [] and report["problems"] == []
    assert "bytes differ" in report["reason"] and "orders are identical" in report["reason"]
    assert "16 sectors x global, regional orders over 128 patches" in report["reason"]


def test_byte_identical_copy_passes(tmp_path: Path, reference: Path) -> None:
    shutil.copy(reference, tmp_path / "copy.npz")
    report = verify_wind_order(tmp_path / "copy.npz", reference)
    assert report["bytes_differ"] is False
    assert "byte-identical" in report["reason"]


def test_one_swapped_pair_fails_naming_the_sector(tmp_path: Path, reference: Path) -> None:
    orders, params = _orders()
    swapped = orders["global"].copy()
    swapped[5, [10, 11]] = swapped[5, [11, 10]]
    save_orders(tmp_path / "cache.npz", {**orders, "global": swapped}, params)
    report: dict[str, object] = {}
    with pytest.raises(StageFailure) as err:
        verify_wind_order(tmp_path / "cache.npz", reference, report=report)
    msg = str(err.value)
    assert "global mode: sector(s) 5 differ in 2 position(s)" in msg
    a, b = int(orders["global"][5, 10]), int(orders["global"][5, 11])
    assert f"position 10: patch {b} (cache) vs {a} (reference)" in msg
    assert report["differing_sectors"] == {"global": [5], "regional": []}
    (diff,) = report["differences"]  # type: ignore[misc]
    assert diff["n_positions"] == 2 and diff["first"][0] == {
        "position": 10,
        "cache": b,
        "reference": a,
    }


def test_regional_mismatch_names_mode_sectors_and_regions(tmp_path: Path, reference: Path) -> None:
    orders, params = _orders()
    regional = orders["regional"].copy()
    for sector in (2, 9):
        regional[sector, 3, [0, 7]] = regional[sector, 3, [7, 0]]
    save_orders(tmp_path / "cache.npz", {**orders, "regional": regional}, params)
    with pytest.raises(StageFailure, match=r"regional mode: sector\(s\) 2, 9 differ in 4 position"):
        verify_wind_order(tmp_path / "cache.npz", reference)


def test_not_a_permutation_fails(tmp_path: Path, reference: Path) -> None:
    orders, params = _orders()
    broken = orders["global"].copy()
    broken[0, 0] = broken[0, 1]  # a duplicated patch, one patch never visited
    save_orders(tmp_path / "cache.npz", {**orders, "global": broken}, params)
    with pytest.raises(StageFailure, match=r"global orders of sector\(s\) 0 are not a permutation"):
        verify_wind_order(tmp_path / "cache.npz", reference)

    regional = orders["regional"].copy()
    regional[4, 0, 0], regional[4, 1, 0] = regional[4, 1, 0], regional[4, 0, 0]  # across regions
    save_orders(tmp_path / "cache2.npz", {**orders, "regional": regional}, params)
    with pytest.raises(StageFailure, match=r"regional orders of sector\(s\) 4 are not each region"):
        verify_wind_order(tmp_path / "cache2.npz", reference)


def test_grid_mismatch_fails_naming_the_fields(tmp_path: Path, reference: Path) -> None:
    params = grid_params(img_size=(16, 32), patch_size=4, region_patches=(2, 4))
    save_orders(tmp_path / "cache.npz", build_orders((4, 8), region_patches=(2, 4)), params)
    with pytest.raises(
        StageFailure, match=r"grid differs.*patch_size 4 \(cache\) vs 2 \(reference"
    ):
        verify_wind_order(tmp_path / "cache.npz", reference)


def test_tampered_file_fails_on_its_digest(tmp_path: Path, reference: Path) -> None:
    orders, params = _orders()
    _, _, digest = load_orders(reference)
    edited = orders["global"].copy()
    edited[3] = edited[3][::-1]  # still a permutation, written without updating the digest
    np.savez(
        tmp_path / "cache.npz",
        order_global=edited,
        order_regional=orders["regional"],
        params_json=np.array(json.dumps(params, sort_keys=True)),
        digest=np.array(digest),
    )
    with pytest.raises(StageFailure, match=r"cache file .* was modified after it was written"):
        verify_wind_order(tmp_path / "cache.npz", reference)


def test_missing_and_unreadable_files_fail_cleanly(tmp_path: Path, reference: Path) -> None:
    with pytest.raises(StageFailure, match=r"cache wind orders cannot be used: .*not found"):
        verify_wind_order(tmp_path / "nowhere", reference)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(StageFailure, match=r"reference wind orders cannot be used: .*unreadable"):
        verify_wind_order(reference, tmp_path / "junk.npz")


def test_cache_folder_against_the_model_grid(tiny_cache: Path, tiny_config: dict, tmp_path: Path):
    """The cache built by build_cache holds the orders of the model's grid (a folder argument)."""
    m = tiny_config["model"]
    params = grid_params(
        img_size=(tiny_config["grid"]["ny"], tiny_config["grid"]["nx"]),
        patch_size=m["patch_size"],
        region_patches=tuple(m["region_patches"]),
    )
    hp, wp = (
        tiny_config["grid"]["ny"] // m["patch_size"],
        tiny_config["grid"]["nx"] // m["patch_size"],
    )
    orders = build_orders((hp, wp), region_patches=tuple(m["region_patches"]))
    save_orders(tmp_path / "baseline_orders.npz", orders, params, compress=False)
    report = verify_wind_order(tiny_cache, tmp_path / "baseline_orders.npz")
    assert report["cache_file"] == str(tiny_cache / "wind_orders.npz")
    assert report["digests_equal"] is True


def test_cli_writes_the_report_on_pass_and_fail(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orders, params = _orders()
    save_orders(tmp_path / "same.npz", orders, params, compress=False)
    out, copy = tmp_path / "gates" / "verify.json", tmp_path / "logs" / "verify.json"
    args = ["verify-wind-order", "--cache", str(tmp_path / "same.npz"), "--reference"]
    code = main([*args, str(reference), "--report", str(out), "--report-copy", str(copy)])
    assert code == 0
    assert capsys.readouterr().out.startswith("verify_wind_order: PASS - 16 sectors")
    saved = json.loads(out.read_text())
    assert saved["passed"] is True and saved == json.loads(copy.read_text())
    assert saved["cache"]["md5"] != saved["reference"]["md5"]

    swapped = orders["global"].copy()
    swapped[12, [0, 1]] = swapped[12, [1, 0]]
    save_orders(tmp_path / "bad.npz", {**orders, "global": swapped}, params)
    args = ["verify-wind-order", "--cache", str(tmp_path / "bad.npz"), "--reference"]
    code = main([*args, str(reference), "--report", str(out), "--report-copy", str(copy)])
    assert code == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("verify_wind_order: FAIL - the wind scan orders differ")
    assert "sector(s) 12" in line
    saved = json.loads(copy.read_text())
    assert saved["passed"] is False and saved["verdict"] == "FAIL"
    assert saved["differing_sectors"]["global"] == [12]

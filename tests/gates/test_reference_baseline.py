"""The researchers' baseline through the gates: config/reference.yaml, the audit without a cache,
the normalisation table, the loss mask and the cache normalisation gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import checkpoint_fixtures as fx
from aqnet.cli import main
from aqnet.config import MODEL_VARIABLES, load_merged
from aqnet.data.reference import (
    PreprocessingError,
    baseline_stats,
    check_cache_normalization,
    load_table,
    loss_mask,
)
from aqnet.model.presets import from_pipeline_config

REPO = Path(__file__).resolve().parents[2]
REFERENCE = [REPO / "config.yaml", REPO / "config" / "reference.yaml"]


@pytest.fixture()
def tiny_overlay(tmp_path: Path) -> Path:
    """The reference config at the fixtures' tiny size (a third file, merged last)."""
    path = tmp_path / "tiny.yaml"
    size = {"embed_dim": fx.TINY["embed_dim"], "depth": fx.TINY["depth"], "num_heads": 4}
    path.write_text(
        yaml.safe_dump({"model": {"preset": "tiny", **size}, "grid": {"ny": 16, "nx": 32}})
    )
    return path


def test_reference_config_describes_the_baseline() -> None:
    cfg = load_merged(REFERENCE)
    mcfg = from_pipeline_config(cfg)
    assert mcfg.in_variables == fx.AQNET_REFERENCE_ORDER
    assert mcfg.pos_embed == "learned" and mcfg.lead_time_scale_h == 1.0
    assert (mcfg.img_size, mcfg.embed_dim, mcfg.depth) == ((128, 256), 768, 6)
    assert cfg["validation"]["samples"] == "all" and cfg["gates"]["val_loss_rtol"] == 0.01
    assert cfg["data"]["coordinates"] == "degrees" and cfg["data"]["mask"]["source"] == "checkpoint"
    assert cfg["baseline"]["variables"] == list(fx.REFERENCE_VARIABLES)


def test_the_table_holds_the_researchers_constants() -> None:
    table = load_table(REPO / "config" / "reference_normalization.yaml")
    assert table["elevation"] == {"mean": 1039.13, "std": 1931.40}
    assert table["u"] == table["v"] == {"mean": 0.0, "std": 10.0}
    assert set(table) == set(MODEL_VARIABLES)
    stats, record = baseline_stats(load_merged(REFERENCE))
    assert stats["lat"] == stats["lon"] == {"mean": 0.0, "std": 1.0}  # raw degrees
    assert stats["pm25"] == {"mean": 25.0, "std": 15.0}
    assert record["source"] == "table" and record["coordinates"] == "degrees"


def test_audit_of_the_training_layout_without_a_cache(tmp_path, tiny_overlay, capsys) -> None:
    sd = fx.tensors(fx.training_code_shapes())
    ckpt = fx.write(tmp_path / "baseline.ckpt", fx.lightning_checkpoint(sd))
    report = tmp_path / "audit.json"
    argv = ["audit-checkpoint", "--checkpoint", str(ckpt), "--report", str(report), "--config"]
    rc = main([*argv, *map(str, REFERENCE), str(tiny_overlay)])
    out = capsys.readouterr()
    assert rc == 0, out
    data = json.loads(report.read_text())
    assert data["passed"] and data["adapter"] == "training-code"
    assert sorted(data["load"]["missing"]) == sorted(data["expected_missing"])
    assert all(
        ".attn.elevation_alpha" in k or ".attn.H_scale" in k for k in data["expected_missing"]
    )
    assert data["baseline_val_loss"] == pytest.approx(0.3557)
    assert "audit_checkpoint: PASS - training-code layout" in out.out + out.err


def test_a_stray_key_fails_with_the_reason_on_the_terminal_line(tmp_path, tiny_overlay, capsys):
    sd = fx.tensors(fx.training_code_shapes())
    sd["climax.extra.weight"] = torch.zeros(2)  # no model. prefix: outside the layout
    ckpt = fx.write(tmp_path / "stray.ckpt", fx.lightning_checkpoint(sd))
    argv = ["audit-checkpoint", "--checkpoint", str(ckpt), "--report", str(tmp_path / "a.json")]
    rc = main([*argv, "--config", *map(str, REFERENCE), str(tiny_overlay)])
    text = capsys.readouterr()
    line = next(ln for ln in (text.out + text.err).splitlines() if "audit_checkpoint: FAIL" in ln)
    assert rc != 0
    assert "'climax.extra.weight' does not" in line and "was not loaded" in line


def test_loss_mask_from_the_checkpoint_stays_inside_the_data(tmp_path) -> None:
    sd = fx.tensors(fx.training_code_shapes())
    ckpt = fx.write(tmp_path / "b.ckpt", fx.lightning_checkpoint(sd))
    cfg = load_merged(REFERENCE)
    cfg["baseline"]["checkpoint"] = str(ckpt)
    data_mask = np.ones((16, 32), dtype=bool)
    data_mask[:, :4] = False  # ocean / no data
    mask, record = loss_mask(cfg, data_mask)
    china = sd["china_mask"].numpy() > 0.5
    np.testing.assert_array_equal(mask, china & data_mask)
    assert record["source"] == "checkpoint" and record["excluded_by_data"] == int(
        china[:, :4].sum()
    )
    cfg["data"]["mask"] = {"source": "file", "file": str(tmp_path / "m.npy")}
    np.save(tmp_path / "m.npy", np.ones((8, 8)))
    with pytest.raises(PreprocessingError, match=r"shape \(8, 8\), the grid is \(16, 32\)"):
        loss_mask(cfg, data_mask)


def test_a_cache_normalised_otherwise_is_refused() -> None:
    cfg = load_merged(REFERENCE)
    stats, record = baseline_stats(cfg)
    meta = {"normalization": record}
    assert check_cache_normalization(cfg, stats, meta)["checked"]
    other = {k: dict(v) for k, v in stats.items()}
    other["elevation"] = {"mean": 1200.0, "std": 900.0}  # the training years' statistics
    with pytest.raises(PreprocessingError, match=r"elevation mean 1200 vs 1039.13"):
        check_cache_normalization(cfg, other, meta)
    with pytest.raises(PreprocessingError, match="keeps lat/lon 'normalized'"):
        check_cache_normalization(cfg, stats, {})  # a cache of aqnet's defaults


def test_cache_with_the_baselines_preprocessing(tiny_config, demo_files, tiny_cache, tmp_path):
    import copy

    from aqnet.data import CacheDataset, build_cache, load_static, load_stats, read_meta

    cfg = copy.deepcopy(tiny_config)
    cfg["data"]["normalization"] = {
        "source": "table",
        "table": str(REPO / "config" / "reference_normalization.yaml"),
    }
    cfg["data"]["coordinates"] = "degrees"
    given = np.zeros((16, 32))
    given[4:12, 8:24] = 1.0
    np.save(tmp_path / "mask.npy", given)
    cfg["data"]["mask"] = {"source": "file", "file": str(tmp_path / "mask.npy")}
    cache = build_cache(cfg, demo_files, tmp_path / "cache")

    table, _ = baseline_stats(cfg)
    assert load_stats(cache) == table
    meta = read_meta(cache)
    assert meta["normalization"]["source"] == "table" and meta["mask"]["source"] == "file"
    check_cache_normalization(cfg, load_stats(cache), meta)
    with pytest.raises(PreprocessingError):  # aqnet's default cache is not the baseline's
        check_cache_normalization(cfg, load_stats(tiny_cache), read_meta(tiny_cache))
    static, default_static = load_static(cache), load_static(tiny_cache)
    np.testing.assert_array_equal(static["mask"], default_static["mask"] & (given > 0.5))

    # The same physical fields under either normalisation; lat/lon in raw degrees.
    ds = CacheDataset(cache, "val", in_variables=fx.AQNET_REFERENCE_ORDER)
    ref = CacheDataset(tiny_cache, "val")
    x, x_default = ds[3][0], ref[3][0]
    default_stats = load_stats(tiny_cache)
    for i, name in enumerate(fx.AQNET_REFERENCE_ORDER):
        j = ref.in_variables.index(name)
        physical = x_default[j] * default_stats[name]["std"] + default_stats[name]["mean"]
        ours = x[i] * table[name]["std"] + table[name]["mean"]
        torch.testing.assert_close(ours, physical, rtol=1e-4, atol=1e-3 * table[name]["std"])
    lat = x[fx.AQNET_REFERENCE_ORDER.index("lat")]
    np.testing.assert_allclose(lat[:, 0].numpy(), static["lat"], rtol=1e-6)

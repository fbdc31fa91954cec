"""Gate smoke_forward: real batches from the tiny cache through the real DataLoader and model.

The baseline checkpoint is written from a seeded tiny baseline; its recorded val_loss is computed
here, item by item, over the pipeline's validation subset (8 samples of the tiny val year, in 2
batches of 4), so a correct load reproduces it to float error. That the training loop records
its loss on the same subset is checked in ``test_train_loop.py``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aqnet.checkpoint import save_lightning_checkpoint
from aqnet.cli import main
from aqnet.config import dump_config, variant_config
from aqnet.data import CacheDataset, load_stats, validation_indices
from aqnet.gates import smoke as smoke_module
from aqnet.gates import smoke_forward
from aqnet.losses import masked_error_sums
from aqnet.model import Forecaster, baseline_of, from_pipeline_config
from aqnet.model.blocks import TopoFlowBlock
from aqnet.model.head import Head
from aqnet.orders import build_orders, grid_params, save_orders
from aqnet.stage import StageFailure


@pytest.fixture(scope="module")
def cfg(tiny_config: dict[str, Any]) -> dict[str, Any]:
    out = variant_config(tiny_config, "default")
    out["validation"].update(samples=8, batch_size=4)  # keeps the suite fast: 2 batches of 4
    return out


@torch.no_grad()
def _recorded_val_loss(model: Forecaster, cfg: dict[str, Any], cache: Path) -> float:
    """The masked MSE over the validation subset, one item at a time (sums divided once)."""
    dataset = CacheDataset(cache, "val", lead_times_h=tuple(cfg["lead_times_h"]))
    n_leads = len(cfg["lead_times_h"])
    subset = validation_indices(len(dataset), cfg["validation"]["samples"], group=n_leads)
    model.eval()
    sq, weight = 0.0, 0.0
    for i in subset:
        x, y, lead, elev, mask = (t.unsqueeze(0) for t in dataset[i])
        s, w = masked_error_sums(model(x, lead, elev).double(), y.double(), mask)
        sq, weight = sq + float(s.sum()), weight + float(w.sum())
    return sq / weight


@pytest.fixture(scope="module")
def baseline(cfg: dict[str, Any], tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(checkpoint path, recorded val_loss, baseline model)``."""
    torch.manual_seed(0)
    model = Forecaster(baseline_of(from_pipeline_config(cfg, stats=load_stats(tiny_cache))))
    with torch.no_grad():  # weights of a trained model's size: O(1) predictions, attention matters
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.15)
    val_loss = _recorded_val_loss(model, cfg, tiny_cache)
    path = tmp_path_factory.mktemp("smoke") / "baseline.ckpt"
    save_lightning_checkpoint(path, model, val_loss=val_loss, global_step=150)
    return path, val_loss, model


def test_real_batch_passes_with_shapes_and_equal_losses(
    cfg: dict[str, Any], tiny_cache: Path, baseline: tuple[Path, float, Forecaster]
) -> None:
    path, val_loss, _ = baseline
    report = smoke_forward(cfg, tiny_cache, path, val_loss, device="cpu")
    b = cfg["validation"]["batch_size"]
    assert report["batch_shapes"] == {
        "x": [b, 15, 16, 32],
        "y": [b, 6, 16, 32],
        "lead_time_h": [b],
        "elevation_m": [b, 16, 32],
        "mask": [b, 16, 32],
    }
    shapes = report["shapes"]
    assert shapes["patch_embed"] == (b, 15, 128, 64)  # (B, V, L, D): 8 x 16 patches
    assert shapes["aggregate"] == (b, 128, 64)  # (B, L, D)
    assert shapes["blocks.0"] == shapes["blocks.1"] == (b, 128, 64)
    assert shapes["head"] == (b, 128, 15 * 2 * 2)
    assert shapes["output"] == (b, 6, 16, 32)
    assert report["validation_samples"] == 8 and report["batches"] == 2
    assert report["max_rel_diff"] < cfg["gates"]["smoke_equal_rtol"]
    # The same items as the recorded loss: equal to float error, not merely within 10%.
    assert report["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert report["baseline_model_val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert abs(report["val_loss_rel_diff"]) < 1e-6
    assert report["alpha"] == {"blocks.0.attn.elevation_alpha": 0.0}
    orders = report["wind_orders"]
    assert orders["digests_equal"] and orders["model_wind_scan"] == "regional"
    assert report["reason"].startswith(
        "8 validation samples in 2 batch(es) on cpu: output (4, 6, 16, 32)"
    )


def test_validation_loss_does_not_depend_on_the_batch_size(
    cfg: dict[str, Any], tiny_cache: Path, baseline: tuple[Path, float, Forecaster]
) -> None:
    path, val_loss, _ = baseline
    odd = copy.deepcopy(cfg)
    odd["validation"]["batch_size"] = 3  # batches of 3, 3 and 2 items
    report = smoke_forward(odd, tiny_cache, path, val_loss, device="cpu")
    assert report["batches"] == 3 and report["validation_samples"] == 8
    assert report["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    # More samples than the split holds: the whole split (96 items), each once.
    whole = copy.deepcopy(cfg)
    whole["validation"].update(samples=500, batch_size=32)
    _, _, model = baseline
    expected = _recorded_val_loss(model, whole, tiny_cache)
    report = smoke_forward(whole, tiny_cache, path, expected, device="cpu")
    assert report["validation_samples"] == 96 and report["batches"] == 3
    assert report["val_loss"] == pytest.approx(expected, rel=1e-6)


def test_perturbed_weights_fail_the_loss_comparison(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    tmp_path: Path,
) -> None:
    _, val_loss, model = baseline
    perturbed = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in perturbed.head.parameters():
            p.add_(0.5 * torch.randn_like(p))
    path = save_lightning_checkpoint(tmp_path / "perturbed.ckpt", perturbed, val_loss=val_loss)
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure) as err:
        smoke_forward(cfg, tiny_cache, path, val_loss, device="cpu", report=report)
    got = report["val_loss"]
    rel = (got - val_loss) / val_loss
    assert abs(rel) > cfg["gates"]["val_loss_rtol"]
    assert str(err.value).startswith(
        f"smoke_forward: validation loss {got:.3f} vs the baseline's {val_loss:.3f} "
        f"({rel:+.0%}, tolerance {cfg['gates']['val_loss_rtol']:.0%}) over 8 validation samples: "
        "the weights are not the baseline's, or the cache (data, normalisation, variables) "
        "differs from the one the baseline was trained on; "
    )
    assert str(err.value).endswith(
        f"none reproduces the recorded {val_loss:.3f}, so the token order is not what is wrong"
    )
    assert report["scan_orders"]["reproduced_by"] == []
    assert report["max_rel_diff"] < 1e-5  # it loads cleanly, the two models agree


def test_block_0_receiving_4d_tokens_fails_naming_the_stage(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The historical bug: block 0 got the per-variable tokens (B, V, L, D)."""
    original = TopoFlowBlock.forward

    def forward_4d(self: TopoFlowBlock, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return original(self, x.unsqueeze(1).expand(-1, 15, -1, -1), **kwargs)  # (B, V, L, D)

    monkeypatch.setattr(TopoFlowBlock, "forward", forward_4d)
    path, val_loss, _ = baseline
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure) as err:
        smoke_forward(cfg, tiny_cache, path, val_loss, device="cpu", report=report)
    msg = str(err.value)
    assert msg.startswith("smoke_forward: the fine-tune model failed on validation batch 0")
    assert "after stage 'embed'" in msg
    assert (
        "block 0 attention expects (B, N, C=64), got a 4-D tensor of shape (4, 15, 128, 64)" in msg
    )
    assert report["shapes"]["embed"] == (4, 128, 64) and "blocks.0" not in report["shapes"]


def test_nonzero_alpha_fails_the_equality_with_the_baseline(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_load = smoke_module.load_weights

    def load_then_set_alpha(model: torch.nn.Module, path: Path, **kwargs: Any) -> Any:
        report = real_load(model, path, **kwargs)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("elevation_alpha"):
                    p.fill_(2.0)
        return report

    monkeypatch.setattr(smoke_module, "load_weights", load_then_set_alpha)
    path, val_loss, _ = baseline
    with pytest.raises(
        StageFailure, match=r"on validation batch 0 the fine-tune model's loss"
    ) as e:
        smoke_forward(cfg, tiny_cache, path, val_loss, device="cpu")
    assert "TopoFlow additions change the output before training" in str(e.value)
    assert "'blocks.0.attn.elevation_alpha': 2.0" in str(e.value)


def test_non_finite_loss_fails(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Head.forward
    monkeypatch.setattr(Head, "forward", lambda self, x: original(self, x) * float("nan"))
    path, val_loss, _ = baseline
    with pytest.raises(StageFailure, match=r"loss of validation batch 0 is nan \(not finite\)"):
        smoke_forward(cfg, tiny_cache, path, val_loss, device="cpu")


def test_model_orders_differing_from_the_cache_fail(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for item in tiny_cache.iterdir():
        if item.name != "wind_orders.npz":
            os.symlink(item, cache / item.name)
    orders = build_orders((8, 16), region_patches=(2, 4))
    orders["regional"][6, 0, [0, 1]] = orders["regional"][6, 0, [1, 0]]
    params = grid_params(img_size=(16, 32), patch_size=2, region_patches=(2, 4))
    save_orders(cache / "wind_orders.npz", orders, params)
    path, val_loss, _ = baseline
    with pytest.raises(StageFailure, match=r"the model's wind scan orders .* are not the cache's"):
        smoke_forward(cfg, cache, path, val_loss, device="cpu")


def test_missing_baseline_val_loss_fails(
    cfg: dict[str, Any], tiny_cache: Path, baseline: tuple[Path, float, Forecaster]
) -> None:
    path, _, _ = baseline
    with pytest.raises(StageFailure, match=r"baseline's validation loss is not recorded"):
        smoke_forward(cfg, tiny_cache, path, None, device="cpu")


def test_cli_audit_then_smoke(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline: tuple[Path, float, Forecaster],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, val_loss, _ = baseline
    dump_config(cfg, tmp_path / "config.yaml")
    common = ["--config", str(tmp_path / "config.yaml"), "--cache", str(tiny_cache)]
    common += ["--checkpoint", str(path)]
    audit = tmp_path / "audit.json"
    assert main(["audit-checkpoint", *common, "--report", str(audit)]) == 0
    report, copy_ = tmp_path / "smoke.json", tmp_path / "logs" / "smoke.json"
    smoke = ["smoke-forward", *common, "--audit", str(audit), "--device", "cpu"]
    assert main([*smoke, "--report", str(report), "--report-copy", str(copy_)]) == 0
    out = capsys.readouterr().out
    assert "smoke_forward: PASS - 8 validation samples in 2 batch(es) on cpu" in out
    saved = json.loads(report.read_text())
    assert saved["passed"] and saved == json.loads(copy_.read_text())
    assert saved["baseline_val_loss"] == pytest.approx(val_loss)
    assert "best_val_loss" in saved["baseline_val_loss_source"]
    assert saved["shapes"]["output"] == [4, 6, 16, 32]

    # A configured baseline.val_loss wins over the audit's; far from the real one, it fails.
    wrong = copy.deepcopy(cfg)
    wrong["baseline"]["val_loss"] = float(np.float64(val_loss) * 3)
    dump_config(wrong, tmp_path / "config.yaml")
    # The audit was made under the old config: refused, naming the report (the workflow reruns
    # audit_checkpoint when its config changes; by hand, so does the user)
    assert main([*smoke, "--report", str(report), "--report-copy", str(copy_)]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"smoke_forward: FAIL - the audit_checkpoint report {audit} was made")
    assert line.endswith("rerun audit_checkpoint with this config")
    assert main(["audit-checkpoint", *common, "--report", str(audit)]) == 0
    assert main([*smoke, "--report", str(report), "--report-copy", str(copy_)]) == 1
    fails = [ln for ln in capsys.readouterr().out.splitlines() if "smoke_forward: FAIL" in ln]
    assert fails[0].startswith("smoke_forward: FAIL - smoke_forward: validation loss"), fails
    assert json.loads(copy_.read_text())["baseline_val_loss_source"] == "config baseline.val_loss"

    # A failed audit stops the smoke test.
    failed = json.loads(audit.read_text()) | {"passed": False, "reason": "head mismatch"}
    audit.write_text(json.dumps(failed))
    dump_config(cfg, tmp_path / "config.yaml")
    assert main([*smoke, "--report", str(report)]) == 1
    assert "records a failed audit: head mismatch" in capsys.readouterr().out
    assert json.loads(report.read_text())["passed"] is False

"""smoke_forward names the token order the baseline was trained with when its loss is missed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from aqnet.checkpoint import save_lightning_checkpoint
from aqnet.config import variant_config
from aqnet.data import CacheDataset, load_stats, validation_indices
from aqnet.gates import smoke_forward
from aqnet.losses import masked_error_sums
from aqnet.model import Forecaster, baseline_of, from_pipeline_config
from aqnet.stage import StageFailure


def _config(tiny_config: dict[str, Any], wind_scan: str) -> dict[str, Any]:
    out = variant_config(copy.deepcopy(tiny_config), "default")
    out["validation"].update(samples=8, batch_size=4)
    out["model"]["wind_scan"] = wind_scan
    # The recorded loss comes from this very evaluation, so the right order reproduces it to float
    # error; the orders differ by about 1 % here, so the gate's tolerance is tightened to see it.
    out["gates"]["val_loss_rtol"] = 1e-5
    return out


@torch.no_grad()
def _val_loss(model: Forecaster, cfg: dict[str, Any], cache: Path) -> float:
    dataset = CacheDataset(cache, "val", lead_times_h=tuple(cfg["lead_times_h"]))
    subset = validation_indices(len(dataset), 8, group=len(cfg["lead_times_h"]))
    sq, weight = 0.0, 0.0
    for i in subset:
        x, y, lead, elev, mask = (t.unsqueeze(0) for t in dataset[i])
        s, w = masked_error_sums(model.eval()(x, lead, elev), y, mask)  # (1, C), (1, C)
        sq, weight = sq + float(s.sum()), weight + float(w.sum())
    return sq / weight


@pytest.fixture(scope="module")
def reference_baseline(tiny_config, tiny_cache, tmp_path_factory):
    """A baseline trained with the reference scan: its recorded loss is under that order."""
    cfg = _config(tiny_config, "reference")
    torch.manual_seed(0)
    model = Forecaster(baseline_of(from_pipeline_config(cfg, stats=load_stats(tiny_cache))))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.15)
    val_loss = _val_loss(model, cfg, tiny_cache)
    path = tmp_path_factory.mktemp("smoke_scan") / "baseline.ckpt"
    save_lightning_checkpoint(path, model, val_loss=val_loss, global_step=10)
    return path, val_loss


def test_the_trained_order_is_named_when_the_loss_is_missed(
    tiny_config, tiny_cache, reference_baseline
):
    path, val_loss = reference_baseline
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure) as err:
        smoke_forward(_config(tiny_config, "regional"), tiny_cache, path, val_loss,
                      device="cpu", report=report)  # fmt: skip
    tried = report["scan_orders"]
    assert tried["reproduced_by"] == ["reference"]
    assert set(tried["candidates"]) == {"reference", "off", "global", "regional"}
    assert tried["candidates"]["reference"]["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert tried["candidates"]["regional"]["val_loss"] == pytest.approx(report["val_loss"])
    for mode in ("off", "global", "regional"):
        assert abs(tried["candidates"][mode]["rel_diff"]) > 1e-5
    assert "the baseline was trained with another token order than wind_scan 'regional'" in str(
        err.value
    )
    assert str(err.value).endswith(
        f"wind_scan 'reference' reproduces the recorded {val_loss:.3f}, so the baseline was "
        "trained with that order"
    )


def test_the_reference_order_reproduces_its_baseline(tiny_config, tiny_cache, reference_baseline):
    path, val_loss = reference_baseline
    report = smoke_forward(_config(tiny_config, "reference"), tiny_cache, path, val_loss,
                           device="cpu")  # fmt: skip
    assert report["val_loss"] == pytest.approx(val_loss, rel=1e-6)
    assert report["wind_orders"]["tables_used"] is False
    assert "scan_orders" not in report

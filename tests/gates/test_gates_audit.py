"""Gate audit_checkpoint: the baseline checkpoint against the real fine-tune model.

Checkpoints are written by the tests themselves from a seeded tiny baseline model with
``save_lightning_checkpoint`` (Lightning layout, every key prefixed ``model.``).
"""

from __future__ import annotations

import builtins
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aqnet.checkpoint import load_weights, save_lightning_checkpoint
from aqnet.cli import main
from aqnet.config import dump_config, variant_config
from aqnet.data import load_stats
from aqnet.gates import audit_checkpoint
from aqnet.model import Forecaster, baseline_of, from_pipeline_config
from aqnet.stage import StageFailure

NEW_KEYS = ["blocks.0.attn.elevation_alpha", "blocks.0.attn.H_scale"]


def _with(cfg: dict[str, Any], **model: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    out["model"].update(model)
    return out


def _baseline(cfg: dict[str, Any], cache: Path, seed: int = 0) -> Forecaster:
    torch.manual_seed(seed)
    return Forecaster(baseline_of(from_pipeline_config(cfg, stats=load_stats(cache))))


@pytest.fixture(scope="module")
def cfg(tiny_config: dict[str, Any]) -> dict[str, Any]:
    return variant_config(tiny_config, "default")


@pytest.fixture(scope="module")
def baseline_ckpt(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("audit") / "baseline.ckpt"
    return save_lightning_checkpoint(
        path, _baseline(cfg, tiny_cache), val_loss=0.356, global_step=150
    )


def test_lightning_checkpoint_with_model_prefix_audits_clean(
    cfg: dict[str, Any], tiny_cache: Path, baseline_ckpt: Path
) -> None:
    raw = torch.load(baseline_ckpt, map_location="cpu", weights_only=True)
    assert all(key.startswith("model.") for key in raw["state_dict"])

    report = audit_checkpoint(cfg, baseline_ckpt, cache_dir=tiny_cache)
    load = report["load"]
    assert load["ok"] is True and load["layout"] == "lightning"
    assert load["missing"] == NEW_KEYS and report["expected_missing"] == NEW_KEYS
    assert load["unexpected"] == [] and load["shape_mismatched"] == []
    assert load["prefix_rules"] == [
        f"removed 'model.' from all {len(raw['state_dict'])} keys "
        "(PyTorch Lightning module attribute)"
    ]
    assert len(load["loaded"]) == len(raw["state_dict"])
    assert report["baseline_val_loss"] == pytest.approx(0.356)
    assert report["baseline_val_loss_source"] == "best_val_loss"
    assert load["global_step"] == 150

    model = Forecaster(from_pipeline_config(cfg, stats=load_stats(tiny_cache)))
    n_head = sum(p.numel() for p in model.head.parameters())
    assert f"head: 3 linear layers, {n_head:,} parameters loaded" in report["module_summary"]
    assert load["groups"]["blocks.0"]["new"] == NEW_KEYS
    assert load["loaded_parameters"] == sum(
        p.numel() for p in _baseline(cfg, tiny_cache).state_dict().values()
    )
    # The config differences are reported (only TopoFlow's switch differs from the baseline).
    assert set(load["config_differences"]) == {"topoflow_blocks"}
    assert "missing exactly the 2 expected new parameter(s)" in report["reason"]


def test_loaded_weights_are_the_checkpoint_s(
    cfg: dict[str, Any], tiny_cache: Path, baseline_ckpt: Path
) -> None:
    baseline = _baseline(cfg, tiny_cache)
    torch.manual_seed(123)
    model = Forecaster(from_pipeline_config(cfg, stats=load_stats(tiny_cache)))
    report = load_weights(model, baseline_ckpt)
    got = model.state_dict()
    for key, value in baseline.state_dict().items():
        assert torch.equal(got[key], value), key
    assert report.applied and model.blocks[0].attn.elevation_alpha.item() == 0.0


def test_ddp_and_compile_prefixes_are_stripped(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    sd = {f"module._orig_mod.{k}": v for k, v in _baseline(cfg, tiny_cache).state_dict().items()}
    torch.save(sd, tmp_path / "ddp.pt")
    report = audit_checkpoint(cfg, tmp_path / "ddp.pt", cache_dir=tiny_cache)
    rules = report["load"]["prefix_rules"]
    assert [r.split("'")[1] for r in rules] == ["module.", "_orig_mod."]
    assert report["load"]["layout"] == "plain" and report["baseline_val_loss"] is None


def test_one_layer_head_fails_naming_the_head(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    one_layer = _baseline(_with(cfg, head_layers=1), tiny_cache)
    path = save_lightning_checkpoint(tmp_path / "head1.ckpt", one_layer, val_loss=0.356)
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure) as err:
        audit_checkpoint(cfg, path, cache_dir=tiny_cache, report=report)
    msg = str(err.value)
    assert "the checkpoint's head has 1 linear layer(s) but the model's has 3" in msg
    assert "keys head.2.weight, head.2.bias, head.4.weight, head.4.bias missing" in msg
    assert "head.0.weight (60, 64) in the checkpoint vs (64, 64) in the model" in msg
    assert msg.endswith("different model config: head_layers 1 (checkpoint) vs 3 (model)")
    assert report["load"]["ok"] is False
    assert report["load"]["groups"]["head"]["checkpoint_linear_layers"] == 1


def test_unknown_extra_key_fails(cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path) -> None:
    baseline = _baseline(cfg, tiny_cache)
    path = save_lightning_checkpoint(tmp_path / "extra.ckpt", baseline)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["model.blocks.1.attn.gate.weight"] = torch.ones(64, 64)
    torch.save(ckpt, path)
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure, match=r"keys blocks\.1\.attn\.gate\.weight unexpected"):
        audit_checkpoint(cfg, path, cache_dir=tiny_cache, report=report)
    assert report["load"]["unexpected"] == ["blocks.1.attn.gate.weight"]


def test_truncated_checkpoint_is_refused(
    cfg: dict[str, Any], tiny_cache: Path, baseline_ckpt: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(baseline_ckpt.read_bytes()[:4096])
    with pytest.raises(StageFailure, match=r"truncated\.ckpt .*unreadable - truncated or corrupt"):
        audit_checkpoint(cfg, bad, cache_dir=tiny_cache)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_malicious_checkpoint_is_refused_without_running(
    cfg: dict[str, Any], tiny_cache: Path, baseline_ckpt: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(baseline_ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["callback"] = _Payload(marker)
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(StageFailure, match=r"evil\.ckpt was refused: loading it would import"):
        audit_checkpoint(cfg, tmp_path / "evil.ckpt", cache_dir=tiny_cache)
    assert not marker.exists()


def test_expected_missing_keys_follow_the_variant_and_the_override(
    cfg: dict[str, Any], tiny_cache: Path, baseline_ckpt: Path
) -> None:
    two = _with(cfg, topoflow_blocks=[0, 1])  # derived: both blocks' keys are expected
    report = audit_checkpoint(two, baseline_ckpt, cache_dir=tiny_cache)
    assert report["expected_missing"] == [*NEW_KEYS, *(k.replace(".0.", ".1.") for k in NEW_KEYS)]

    override = copy.deepcopy(two)
    override["gates"]["expected_missing_keys"] = NEW_KEYS  # block 1's keys not expected
    with pytest.raises(StageFailure, match=r"blocks\.1 does not match: keys blocks\.1\.attn\.elev"):
        audit_checkpoint(override, baseline_ckpt, cache_dir=tiny_cache)


def test_cli_reports_pass_and_failure(
    cfg: dict[str, Any],
    tiny_cache: Path,
    baseline_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dump_config(cfg, tmp_path / "config.yaml")
    out, copy_ = tmp_path / "audit.json", tmp_path / "logs" / "audit.json"
    base = ["audit-checkpoint", "--config", str(tmp_path / "config.yaml"), "--cache"]
    args = [*base, str(tiny_cache), "--report", str(out), "--report-copy", str(copy_)]
    assert main([*args, "--checkpoint", str(baseline_ckpt)]) == 0
    assert capsys.readouterr().out.startswith("audit_checkpoint: PASS - ")
    saved = json.loads(out.read_text())
    assert saved["passed"] is True and saved["baseline_val_loss"] == pytest.approx(0.356)
    assert saved == json.loads(copy_.read_text())

    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not a zip archive")
    assert main([*args, "--checkpoint", str(tmp_path / "junk.ckpt")]) == 1
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("audit_checkpoint: FAIL - checkpoint ") and "junk.ckpt" in line
    saved = json.loads(copy_.read_text())
    assert saved["passed"] is False and "junk.ckpt" in saved["reason"]

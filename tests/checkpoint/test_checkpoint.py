"""aqnet.checkpoint: safe reading, prefix rules, clean-or-refused loading, Lightning layout.

A small stand-in network (an embedding, two blocks, a configurable head and, like the TopoFlow
model, an extra ``blocks.0.alpha``) keeps these tests of the key logic fast; the gate tests run the
same code against the real forecaster.
"""

from __future__ import annotations

import builtins
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from aqnet.checkpoint import (
    CheckpointError,
    compare_state_dicts,
    load_weights,
    read_checkpoint,
    save_lightning_checkpoint,
    strip_prefixes,
)
from aqnet.model.presets import tiny


class _Block(nn.Module):
    def __init__(self, *, topoflow: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        if topoflow:
            self.alpha = nn.Parameter(torch.zeros(()))


class _Head(nn.Module):
    def __init__(self, *, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4 if i < layers - 1 else 2) for i in range(layers))


class Net(nn.Module):
    """Key layout like the forecaster's: embed, blocks.<i>, head.layers.<j>."""

    def __init__(self, *, head_layers: int = 3, topoflow: bool = True) -> None:
        super().__init__()
        self.config = tiny(img_size=(16, 32), head_layers=head_layers)
        self.embed = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([_Block(topoflow=topoflow), _Block(topoflow=False)])
        self.head = _Head(layers=head_layers)

    def topoflow_keys(self) -> list[str]:
        return ["blocks.0.alpha"] if hasattr(self.blocks[0], "alpha") else []


def _seeded(seed: int, **kwargs: object) -> Net:
    torch.manual_seed(seed)
    return Net(**kwargs)  # type: ignore[arg-type]


def _assert_weights_equal(a: nn.Module, b: nn.Module, keys: list[str]) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for key in keys:
        assert torch.equal(sa[key], sb[key]), key


def test_lightning_checkpoint_round_trip(tmp_path: Path) -> None:
    baseline = _seeded(0, topoflow=False)
    path = save_lightning_checkpoint(
        tmp_path / "b.ckpt", baseline, hyper_parameters={"lr": 1e-3}, val_loss=0.356, global_step=7
    )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) >= {"state_dict", "hyper_parameters", "callbacks", "pytorch-lightning_version"}
    assert all(k.startswith("model.") for k in raw["state_dict"])
    (callback,) = raw["callbacks"].values()
    assert callback["best_model_score"].item() == pytest.approx(0.356)

    contents = read_checkpoint(path)
    assert contents.layout == "lightning"
    assert contents.val_loss == pytest.approx(0.356)
    assert contents.global_step == 7
    assert contents.hyper_parameters["lr"] == 1e-3
    assert contents.hyper_parameters["model_config"] == baseline.config.to_dict()

    model = _seeded(1)
    report = load_weights(model, path)  # default expected missing: model.topoflow_keys()
    assert report.ok and report.applied
    assert report.missing == ["blocks.0.alpha"] == report.expected_missing
    assert report.unexpected == [] and report.shape_mismatched == []
    assert report.prefix_rules == [
        "removed 'model.' from all 16 keys (PyTorch Lightning module attribute)"
    ]
    _assert_weights_equal(model, baseline, report.loaded)
    assert model.blocks[0].alpha.item() == 0.0  # the new parameter keeps its initial value
    head = report.groups["head"]
    n_head = sum(p.numel() for p in model.head.parameters())
    assert head.summary == f"head: 3 linear layers, {n_head} parameters loaded"
    assert "1 new, expected missing" in report.groups["blocks.0"].summary
    assert report.to_dict()["summary"] == report.summary_lines()


def test_val_loss_from_the_model_checkpoint_callback_only(tmp_path: Path) -> None:
    """A checkpoint written by Lightning itself records the score only in its callback state."""
    sd = {f"model.{k}": v for k, v in _seeded(0).state_dict().items()}
    callbacks = {
        "ModelCheckpoint{'monitor': 'val_acc'}": {
            "monitor": "val_acc",
            "best_model_score": torch.tensor(0.9),
        },
        "ModelCheckpoint{'monitor': 'val_loss'}": {
            "monitor": "val_loss",
            "best_model_score": torch.tensor(0.5),
        },
    }
    torch.save({"state_dict": sd, "callbacks": callbacks, "epoch": 3}, tmp_path / "l.ckpt")
    contents = read_checkpoint(tmp_path / "l.ckpt")
    assert contents.layout == "lightning"
    assert contents.val_loss == pytest.approx(0.5)
    assert contents.val_loss_source == "callbacks.ModelCheckpoint.best_model_score"


@pytest.mark.parametrize(
    ("prefix", "rules"),
    [
        ("", []),
        ("module.", ["module."]),
        ("_orig_mod.", ["_orig_mod."]),
        ("model.module._orig_mod.", ["model.", "module.", "_orig_mod."]),
        ("_orig_mod.model.", ["_orig_mod.", "model."]),
    ],
)
def test_prefixes_removed_when_all_keys_carry_them(
    tmp_path: Path, prefix: str, rules: list[str]
) -> None:
    source = _seeded(0)
    torch.save({prefix + k: v for k, v in source.state_dict().items()}, tmp_path / "p.pt")
    model = _seeded(1)
    report = load_weights(model, tmp_path / "p.pt", expected_missing=[])
    assert report.layout == "plain"
    assert [r.split("'")[1] for r in report.prefix_rules] == rules
    _assert_weights_equal(model, source, list(model.state_dict()))


def test_prefix_on_some_keys_is_not_removed_and_is_reported(tmp_path: Path) -> None:
    sd = {"model.a": torch.zeros(1), "b": torch.zeros(1)}
    stripped, rules = strip_prefixes(sd)
    assert stripped == sd and rules == []
    net_sd = {f"model.{k}": v for k, v in _seeded(0).state_dict().items()}
    net_sd["ema.embed.weight"] = torch.zeros(4, 3)
    with pytest.raises(
        CheckpointError, match=r"none of the checkpoint's 18 keys match the model's 17"
    ) as err:
        load_weights(_seeded(1), _save(net_sd, tmp_path / "mixed.pt"), expected_missing=[])
    assert "17 of 18 keys start with 'model.'" in str(err.value)
    # The example is a key that lacks the prefix (the one that stopped its removal).
    assert "but 'ema.embed.weight' does not, so the prefix was not removed" in str(err.value)


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_head_with_fewer_layers_fails_naming_the_head(tmp_path: Path) -> None:
    one_layer = _seeded(0, head_layers=1, topoflow=False)
    path = save_lightning_checkpoint(tmp_path / "h1.ckpt", one_layer, val_loss=0.3)
    model = _seeded(1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "the checkpoint's head has 1 linear layer(s) but the model's has 3" in msg
    assert "head.layers.1.weight" in msg and "missing" in msg
    assert "head.layers.0.weight (2, 4) in the checkpoint vs (4, 4) in the model" in msg
    assert "head_layers 1 (checkpoint) vs 3 (model)" in msg  # the config fields that differ
    report = err.value.report
    assert report is not None and not report.ok and not report.applied
    assert report.groups["head"].checkpoint_linear_layers == 1
    assert report.groups["head"].model_linear_layers == 3
    for key, value in model.state_dict().items():  # nothing was copied
        assert torch.equal(value, before[key]), key


def test_unexpected_key_fails_naming_it(tmp_path: Path) -> None:
    sd = _seeded(0, topoflow=False).state_dict()
    sd["blocks.1.gate.weight"] = torch.ones(4, 4)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"keys blocks\.1\.gate\.weight unexpected") as err:
        load_weights(_seeded(1), tmp_path / "x.pt")
    assert err.value.report is not None
    assert err.value.report.unexpected == ["blocks.1.gate.weight"]


def test_missing_must_equal_expected_exactly(tmp_path: Path) -> None:
    baseline_ckpt = save_lightning_checkpoint(tmp_path / "b.ckpt", _seeded(0, topoflow=False))
    finetuned_ckpt = save_lightning_checkpoint(tmp_path / "f.ckpt", _seeded(0))
    # A fine-tuned checkpoint already holds the "new" parameter.
    with pytest.raises(CheckpointError, match=r"blocks\.0\.alpha are already in the checkpoint"):
        load_weights(_seeded(1), finetuned_ckpt)
    assert load_weights(_seeded(1), finetuned_ckpt, expected_missing=[]).missing == []
    # An expected key the model does not have (a typo in gates.expected_missing_keys).
    with pytest.raises(CheckpointError, match=r"blocks\.0\.alpah are not parameters of the model"):
        load_weights(
            _seeded(1), baseline_ckpt, expected_missing=["blocks.0.alpha", "blocks.0.alpah"]
        )
    # A baseline checkpoint loaded with nothing expected missing.
    with pytest.raises(CheckpointError, match=r"keys blocks\.0\.alpha missing"):
        load_weights(_seeded(1), baseline_ckpt, expected_missing=[])


def test_config_differences_are_reported_but_do_not_fail_a_clean_load(tmp_path: Path) -> None:
    path = save_lightning_checkpoint(
        tmp_path / "b.ckpt",
        _seeded(0, topoflow=False),
        hyper_parameters={"model_config": {**tiny(img_size=(16, 32)).to_dict(), "h_scale_m": 5.0}},
    )
    report = compare_state_dicts(_seeded(1), read_checkpoint(path))
    assert report.ok
    assert report.config_differences == {"h_scale_m": {"checkpoint": 5.0, "model": 1000.0}}


def test_truncated_file_is_refused_naming_it(tmp_path: Path) -> None:
    good = save_lightning_checkpoint(tmp_path / "good.ckpt", _seeded(0))
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt .* unreadable - truncated or"):
        read_checkpoint(bad)
    (tmp_path / "legacy.pt").write_bytes(b"xjunk: not a pickle")  # a non-zip (legacy) file
    with pytest.raises(CheckpointError, match=r"legacy\.pt \(19 bytes\) is unreadable"):
        read_checkpoint(tmp_path / "legacy.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope\.ckpt"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_non_dict_and_non_tensor_content_is_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt holds a list, not a dict"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "nosd.pt")
    with pytest.raises(CheckpointError, match=r"holds no state dict.*'epoch'"):
        read_checkpoint(tmp_path / "nosd.pt")
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"entry 'step' is a int, not a tensor"):
        read_checkpoint(tmp_path / "mixed.pt")


class _Payload:
    """Pickles into a call of ``exec`` that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran.txt"
    sd = {f"model.{k}": v for k, v in _seeded(0).state_dict().items()}
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {"x": _Payload(marker)}}, path)

    match = r"evil\.ckpt was refused: loading it would import or call exec, which"
    with pytest.raises(CheckpointError, match=match + r".*nothing in it was run"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(_seeded(1), path)
    assert not marker.exists()

    # The payload is live: an unsafe load runs it (which is why weights_only=True matters).
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.read_text() == "payload ran"


def test_hyper_parameters_must_survive_a_weights_only_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"hyper_parameters\.opt is a object"):
        save_lightning_checkpoint(
            tmp_path / "b.ckpt", _seeded(0), hyper_parameters={"opt": object()}
        )
    assert not (tmp_path / "b.ckpt").exists()

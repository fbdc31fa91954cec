"""Parameter groups and the warm-up + cosine schedule (:mod:`aqnet.train.optim`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aqnet.train.optim import (
    GROUP_NEW,
    GROUP_OLD,
    GROUP_OLD_NO_DECAY,
    build_param_groups,
    warmup_cosine,
)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.blocks[0].alpha = nn.Parameter(torch.zeros(1))
        self.norm = nn.LayerNorm(4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 4))


@pytest.mark.parametrize(
    ("mode", "trained"),
    [
        ("all", {"embed", "blocks.0", "blocks.1", "norm", "pos_embed"}),
        ("new", {"blocks.0.alpha"}),
        ("new_and_blocks", {"blocks.0"}),
    ],
)
def test_param_groups(mode: str, trained: set[str]) -> None:
    model = _Toy()
    groups = build_param_groups(
        model,
        mode=mode,
        lr=1e-3,
        lr_new=1e-1,
        weight_decay=0.05,
        new_names=["blocks.0.alpha"],
        topoflow_blocks=[0],
    )
    by_name = {g["name"]: g for g in groups}
    assert by_name[GROUP_NEW]["lr"] == 1e-1 and by_name[GROUP_NEW]["weight_decay"] == 0.0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(tuple(trained))}
    if mode == "all":
        decayed = {id(p) for p in by_name[GROUP_OLD]["params"]}
        named = dict(model.named_parameters())
        assert decayed == {
            id(named[k]) for k in ("embed.weight", "blocks.0.weight", "blocks.1.weight")
        }
        assert by_name[GROUP_OLD]["weight_decay"] == 0.05
        no_decay = {id(p) for p in by_name[GROUP_OLD_NO_DECAY]["params"]}
        assert id(named["norm.weight"]) in no_decay and id(named["pos_embed"]) in no_decay
        assert id(named["blocks.1.bias"]) in no_decay
    with pytest.raises(ValueError, match="leaves nothing to train"):
        build_param_groups(
            _Toy(), mode="new", lr=1, lr_new=1, weight_decay=0, new_names=[], topoflow_blocks=[]
        )


def test_warmup_cosine_schedule() -> None:
    kw = {"total_steps": 20, "warmup_steps": 4, "min_lr_ratio": 0.1}
    assert [warmup_cosine(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)
    assert warmup_cosine(12, **kw) == pytest.approx(0.55)  # half-way down the cosine
    assert warmup_cosine(20, **kw) == pytest.approx(0.1)
    assert warmup_cosine(50, **kw) == pytest.approx(0.1)
    values = [warmup_cosine(s, **kw) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))

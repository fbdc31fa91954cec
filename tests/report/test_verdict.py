"""Known answer at test size: data with an effect the TopoFlow bias can represent, the verdict of
TopoFlow against its control finds it, and the reversed direction does not.

The data follow the demo's ``data.demo.blocked_flow: downslope`` in miniature: each token's
target is the mean of a fixed linear map of the tokens that are *not higher* than it (a low
receptor does not see a high source). Every arm starts from one pre-trained plain attention (the
"baseline") and is fine-tuned for the same steps on the same batches: the control with the bias
off, ``uphill`` (the formula's direction) and ``downhill`` (reversed). Elevation is an input
feature, as in the real model, so the control can use it through the attention's content.

The demo's condition is tested too: one terrain shared by every sample, and a learned position
embedding, so the control can learn the terrain's pattern by position (as the demo's baseline can).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from aqnet.config import validate_config
from aqnet.data.demo import terrain_wind
from aqnet.model.elevation_attention import TopoFlowAttention
from aqnet.report.attribution import judge_variants
from aqnet.report.calibrated import calibrated_test

N, D, HEADS = 16, 16, 2
H_SCALE_M = 100.0


def _data(gen: torch.Generator, n: int, proj: torch.Tensor, terrain: torch.Tensor | None = None):
    """``(x (n, N, D), elevation_m (n, N), y (n, N, D))``: targets see only tokens not above.

    ``terrain`` (1, N): one elevation per token shared by every sample; default a new draw each.
    """
    fresh = terrain is None
    elev = torch.rand(n, N, generator=gen) * 1000.0 if fresh else terrain.expand(n, N)  # metres
    feats = torch.randn(n, N, D - 1, generator=gen)
    x = torch.cat([feats, (elev / 1000.0)[..., None]], dim=-1)  # elevation as an input channel
    sees = (elev[:, None, :] <= elev[:, :, None]).float()  # (n, Nq, Nk): key not above query
    values = x @ proj  # (n, N, D)
    y = (sees @ values) / sees.sum(-1, keepdim=True)
    return x, elev, y


class _Positioned(nn.Module):
    """A TopoFlow attention over tokens plus a learned position embedding ``(N, D)``."""

    def __init__(self, attn: TopoFlowAttention) -> None:
        super().__init__()
        self.attn = attn
        self.pos = nn.Parameter(torch.zeros(N, D))

    @property
    def elevation_alpha(self) -> nn.Parameter:
        return self.attn.elevation_alpha

    def forward(self, x: torch.Tensor, *, elevation_m: torch.Tensor) -> torch.Tensor:
        return self.attn(x + self.pos, elevation_m=elevation_m)


def _fit(model: nn.Module, batches, *, steps: int, lr: float) -> nn.Module:
    """Adam, with ``elevation_alpha`` on 10 x the learning rate (the real recipe's ``lr_new``)."""
    alpha = [model.elevation_alpha]
    rest = [p for p in model.parameters() if p is not model.elevation_alpha]
    opt = torch.optim.Adam([{"params": rest, "lr": lr}, {"params": alpha, "lr": 10 * lr}])
    for step in range(steps):
        x, elev, y = batches[step % len(batches)]
        loss = (model(x, elevation_m=elev) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.elevation_alpha.clamp_(min=0.0)  # as the fine-tune keeps it (>= 0)
    return model


def train_arms(seed: int = 0, *, fixed_terrain: bool = False) -> dict[str, np.ndarray]:
    """Per-sample test losses of the baseline and of each fine-tuned arm, and the arms' alphas.

    ``fixed_terrain``: the demo's condition, one terrain for every sample and a learned position
    embedding in every arm.
    """
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(D, D, generator=gen) / D**0.5
    terrain = torch.rand(1, N, generator=gen) * 1000.0 if fixed_terrain else None
    train = [_data(gen, 32, proj, terrain) for _ in range(8)]
    x_test, e_test, y_test = _data(gen, 180, proj, terrain)
    torch.manual_seed(0)

    def arm_model(name: str, **kw) -> nn.Module:
        attn = TopoFlowAttention(dim=D, num_heads=HEADS, name=name, h_scale_m=H_SCALE_M, **kw)
        return _Positioned(attn) if fixed_terrain else attn

    base = _fit(arm_model("base", elevation_bias=False), train, steps=150, lr=3e-3)
    settings = {
        "no_elevation_bias": {"elevation_bias": False},
        "uphill": {"elevation_bias_direction": "uphill"},
        "downhill": {"elevation_bias_direction": "downhill"},
    }
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        out["baseline"] = (base(x_test, elevation_m=e_test) - y_test).square().mean((1, 2)).numpy()
    for name, kw in settings.items():
        arm = arm_model(name, **kw)
        arm.load_state_dict(copy.deepcopy(base.state_dict()))
        _fit(arm, train, steps=150, lr=3e-3)
        with torch.no_grad():
            pred = arm(x_test, elevation_m=e_test)
        out[name] = (pred - y_test).square().mean((1, 2)).numpy()  # (180,) per-sample loss
        out[f"{name}_alpha"] = np.array(float(arm.elevation_alpha.detach()))
    return out


@pytest.fixture(scope="module")
def arms() -> dict[str, np.ndarray]:
    return train_arms(0)


def _verdicts(arms: dict[str, np.ndarray]):
    """The calibrated tests against the baseline and the control, and the verdict of each arm."""
    times = np.datetime64("2018-01-01T00", "ns") + np.arange(180) * np.timedelta64(1, "D")
    names = ("no_elevation_bias", "uphill", "downhill")
    vs_base = {
        n: calibrated_test(arms["baseline"], arms[n], times, min_block_days=4, new_name=n)
        for n in names
    }
    vs_ctrl = {
        n: calibrated_test(
            arms["no_elevation_bias"],
            arms[n],
            times,
            min_block_days=4,
            ref_name="no_elevation_bias",
            new_name=n,
        )
        for n in names[1:]
    }
    min_gain = validate_config({})["report"]["min_gain_pct"]  # the default margin, 2 %
    verdicts = judge_variants(
        vs_base, vs_ctrl, control="no_elevation_bias", threshold=None, min_gain_pct=min_gain
    )
    return vs_base, verdicts


def test_the_verdict_finds_the_known_effect_and_not_its_reverse(arms):
    vs_base, verdicts = _verdicts(arms)
    assert arms["uphill_alpha"] > 1.0  # the formula's direction learns a strong bias
    assert arms["downhill_alpha"] < 0.5 * arms["uphill_alpha"]
    assert verdicts["uphill"].verdict == "SUCCESS", verdicts["uphill"].line
    assert verdicts["downhill"].verdict == "NOT ATTRIBUTABLE", verdicts["downhill"].line
    # the reversed bias is a slightly different model, not the effect: under 1 % of the control
    assert abs(verdicts["downhill"].to_dict()["gain_vs_control_pct"]) < 1.0
    assert verdicts["uphill"].to_dict()["gain_vs_control_pct"] > 50.0
    # the control alone improves on the baseline (more training): context, not attribution
    assert vs_base["no_elevation_bias"].mean_diff < 0


def test_with_one_terrain_and_a_position_embedding_the_formula_still_wins():
    """The demo's condition: the control could learn the terrain's pattern by position, yet the
    formula's direction gains over half the control's loss, about 20 x what the reversed
    direction gains (which, with a fixed terrain, is a small real gain of its own: an extra
    position-dependent term)."""
    arms = train_arms(0, fixed_terrain=True)
    _, verdicts = _verdicts(arms)
    uphill = verdicts["uphill"].to_dict()["gain_vs_control_pct"]
    downhill = verdicts["downhill"].to_dict()["gain_vs_control_pct"]
    assert verdicts["uphill"].verdict == "SUCCESS", verdicts["uphill"].line
    assert uphill > 50.0
    assert abs(downhill) < 0.1 * uphill, verdicts["downhill"].line
    assert arms["uphill_alpha"] > 1.0


def test_demo_terrain_blocks_descending_flow_when_downslope():
    gx = np.array([[0.2, 0.2]])  # terrain rising to the east
    gy = np.zeros((1, 2))
    u, _ = terrain_wind(np.array([[-5.0, 5.0]]), np.zeros((1, 2)), gx, gy, blocked_flow="downslope")
    assert 0.0 >= u[0, 0] > -0.05  # westward = down the slope: blocked
    assert u[0, 1] == 5.0  # up the slope: free
    with pytest.raises(ValueError, match="blocked_flow must be one of"):
        terrain_wind(u, u, gx, gy, blocked_flow="sideways")


# -- seeds -----------------------------------------------------------------------------------


def test_seeds_expand_every_variant_and_group_back():
    from aqnet.config import seed_groups, with_control_arm, with_seeds

    cfg = validate_config({"finetune": {"seeds": [3, 4, 5]}, "variants": {"default": {}}})
    out = with_seeds(with_control_arm(cfg))
    assert list(out["variants"]) == [
        "default", "default-seed4", "default-seed5",
        "no_elevation_bias", "no_elevation_bias-seed4", "no_elevation_bias-seed5",
    ]  # fmt: skip
    assert out["variants"]["default"]["finetune"]["seed"] == 3
    assert out["variants"]["no_elevation_bias-seed5"] == {
        "model": {"elevation_bias": False},
        "finetune": {"seed": 5},
    }
    groups = seed_groups(list(out["variants"]))
    assert groups == {
        "default": ["default", "default-seed4", "default-seed5"],
        "no_elevation_bias": [
            "no_elevation_bias", "no_elevation_bias-seed4", "no_elevation_bias-seed5"
        ],
    }  # fmt: skip
    assert seed_groups(["a-seed1"]) == {"a-seed1": ["a-seed1"]}  # no base run: its own variant
    assert with_seeds(validate_config({}))["variants"] == {"default": {}}  # seeds null


def test_a_gain_within_the_seed_spread_is_not_a_success():
    from aqnet.report.attribution import attributed_verdict
    from aqnet.report.seeds import seed_test

    times = np.datetime64("2018-01-01T00", "ns") + np.arange(120) * np.timedelta64(1, "D")
    rng = np.random.default_rng(0)
    control = 0.3 + 0.02 * rng.random(120)
    new = control * 0.95  # 5 % better on every sample of the pooled runs
    vs_c = calibrated_test(control, new, times, min_block_days=4, ref_name="control")
    vs_b = calibrated_test(control * 1.1, new, times, min_block_days=4)
    noisy = seed_test([0.30, 0.26, 0.33], [0.29, 0.25, 0.31], ref_name="control", new_name="x")
    steady = seed_test([0.300, 0.301, 0.299], [0.285, 0.286, 0.284], ref_name="c", new_name="x")
    assert noisy.p_value > 0.05 and steady.p_value < 0.05
    common = {"vs_baseline": vs_b, "vs_control": vs_c, "control": "control", "threshold": None}
    assert attributed_verdict("x", **common, min_gain_pct=2.0, seeds=steady).verdict == "SUCCESS"
    v = attributed_verdict("x", **common, min_gain_pct=2.0, seeds=noisy)
    assert v.verdict == "NOT ATTRIBUTABLE" and "beyond the spread between seeds" in v.reason
    one = attributed_verdict("x", **common, min_gain_pct=2.0, seeds=None)
    assert one.verdict == "SUCCESS" and "the spread between training runs is not measured" in (
        one.reason
    )
    assert seed_test([0.3], [0.2, 0.1], ref_name="c", new_name="x") is None


def test_pooled_runs_average_the_errors(tmp_path):
    import dataclasses

    from test_report_calibration import _evaluation

    from aqnet.report.inputs import VariantResults
    from aqnet.report.seeds import pool_runs, run_means

    rng = np.random.default_rng(1)
    base = 0.4 + rng.random((20, 4, 6))
    evs = [_evaluation(np.stack([base, base * f])) for f in (0.8, 0.9, 1.0)]
    fields = {f.name for f in dataclasses.fields(VariantResults)}
    runs = [
        VariantResults(
            **{
                **{k: None for k in fields},
                "name": f"d{i}",
                "evaluation": ev,
                "files": {"evaluation": f"d{i}.nc"},
            }
        )
        for i, ev in enumerate(evs)
    ]
    pooled = pool_runs(runs)
    np.testing.assert_allclose(pooled.evaluation["mse"].sel(model="finetuned"), base * 0.9)
    assert pooled.name == "d0" and pooled.evaluation.attrs["pooled_runs"] == "d0, d1, d2"
    np.testing.assert_allclose(run_means(runs), [f * base.mean() for f in (0.8, 0.9, 1.0)])
    other = dataclasses.replace(runs[1], evaluation=evs[1].isel(sample=slice(0, 10)))
    with pytest.raises(ValueError, match="was evaluated on other samples"):
        pool_runs([runs[0], other])

"""Unit tests of the training pieces that need no data: losses, launch detection, host lists,
world-size refusal, parameter groups, the schedule, the metrics file and the cost projection."""

from __future__ import annotations

import math
import random
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aqnet.losses import masked_error_sums, masked_mse, masked_mse_per_channel
from aqnet.train.cost import measured_times, project_cost, validation_passes
from aqnet.train.distributed import (
    LaunchError,
    check_world_size,
    choose_backend,
    detect_launch,
    expand_hostlist,
    expand_tasks_per_node,
    init_distributed,
    port_for_job,
)
from aqnet.train.metrics import metric_columns, read_metrics, write_metrics
from aqnet.train.optim import (
    GROUP_NEW,
    GROUP_OLD,
    GROUP_OLD_NO_DECAY,
    build_param_groups,
    warmup_cosine,
)
from aqnet.train.sampling import ResumableDistributedSampler
from aqnet.train.state import capture_rng, restore_rng
from aqnet.train.validate_short import short_run_cost

# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def test_masked_mse_equals_the_mean_over_masked_cells_only() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=gen) > 0.4
    expected = ((pred - target) ** 2)[:, :, mask].mean()
    assert torch.allclose(masked_mse(pred, target, mask), expected, rtol=1e-12)
    # A per-sample (B, H, W) float mask gives the same; cells outside it do not matter.
    target_out = target.clone()
    target_out[:, :, ~mask] = 1e6
    per_sample = mask.expand(3, 4, 5).double()
    assert torch.allclose(masked_mse(pred, target_out, per_sample), expected, rtol=1e-12)
    per_channel = masked_mse_per_channel(pred, target, mask)
    assert per_channel.shape == (6,)
    assert torch.allclose(per_channel.mean(), expected, rtol=1e-12)
    assert torch.allclose(per_channel[2], ((pred - target)[:, 2][:, mask] ** 2).mean())


def test_masked_sums_add_up_over_batches() -> None:
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    mask = torch.ones(3, 3)
    sq_a, w_a = masked_error_sums(pred[:1], target[:1], mask)
    sq_b, w_b = masked_error_sums(pred[1:], target[1:], mask)
    assert sq_a.shape == (1, 2) and w_b.shape == (3, 2)
    whole = (sq_a.sum() + sq_b.sum()) / (w_a.sum() + w_b.sum())
    assert torch.allclose(whole, masked_mse(pred, target, mask), rtol=1e-6)


def test_masked_mse_gradient_and_errors() -> None:
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.ones(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    masked_mse(pred, target, mask).backward()
    assert pred.grad is not None
    assert pred.grad[0, 0].tolist() == [[-2.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match=r"mask must be \(B, H, W\) = \(1, 2, 2\)"):
        masked_mse(pred, target, torch.ones(3, 3))
    with pytest.raises(ValueError, match="pred must be"):
        masked_mse(pred[0], target[0], mask)
    with pytest.raises(ValueError, match="selects no grid cell"):
        masked_mse(pred, target, torch.zeros(2, 2))


# --------------------------------------------------------------------------------------------
# Launch detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "hosts"),
    [
        ("nid001", ["nid001"]),
        ("nid[001-003,007]", ["nid001", "nid002", "nid003", "nid007"]),
        ("nid[008-010]", ["nid008", "nid009", "nid010"]),
        ("a1,b[1-2],c", ["a1", "b1", "b2", "c"]),
        ("nid[001-002],gpu[9-10]", ["nid001", "nid002", "gpu9", "gpu10"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
        ("x[7]-ib", ["x7-ib"]),
    ],
)
def test_expand_hostlist(spec: str, hosts: list[str]) -> None:
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("bad", ["nid[001-003", "nid001]", "nid[3-1]", "nid[a-b]", ""])
def test_expand_hostlist_refuses_malformed_lists(bad: str) -> None:
    with pytest.raises(ValueError, match="Slurm host list"):
        expand_hostlist(bad)


def test_tasks_per_node_and_port() -> None:
    assert expand_tasks_per_node("8(x2),4") == [8, 8, 4]
    assert expand_tasks_per_node("2") == [2]
    assert port_for_job("1234567") == 20000 + 1234567 % 20000
    assert 20000 <= port_for_job(99999999) < 40000
    with pytest.raises(ValueError, match="job id"):
        port_for_job("abc")


def test_detect_single_torchrun_and_slurm() -> None:
    single = detect_launch({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single")

    tr = detect_launch(
        {
            "RANK": "3",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "4",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "host-a",
            "MASTER_PORT": "29400",
        }
    )
    assert (tr.rank, tr.local_rank, tr.world_size, tr.local_world_size) == (3, 1, 4, 2)
    assert (tr.master_addr, tr.master_port, tr.launcher) == ("host-a", 29400, "torchrun")

    slurm_env = {
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "16",
        "SLURM_NODEID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "nid[005-006]",
        "SLURM_JOB_NODELIST": "nid[005-006]",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    }
    sl = detect_launch(slurm_env)
    assert (sl.rank, sl.local_rank, sl.world_size, sl.local_world_size) == (9, 1, 16, 8)
    assert (sl.master_addr, sl.master_port, sl.launcher) == ("nid005", 24242, "slurm")
    # MASTER_ADDR/PORT set by the job script win over the derived ones.
    sl2 = detect_launch({**slurm_env, "MASTER_ADDR": "nid099", "MASTER_PORT": "31000"})
    assert (sl2.master_addr, sl2.master_port) == ("nid099", 31000)
    # A batch script (no job step) running Python directly is a single process.
    batch = {k: v for k, v in slurm_env.items() if k != "SLURM_STEP_ID"}
    assert detect_launch(batch).launcher == "single"
    with pytest.raises(LaunchError, match="outside a world of 2"):
        detect_launch({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="not an integer"):
        detect_launch({"RANK": "x", "WORLD_SIZE": "2"})


def test_world_size_mismatch_is_refused_with_the_fix() -> None:
    cleared = detect_launch(
        {
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "7",
            "SLURM_JOB_NODELIST": "nid[001-002]",
        }
    )
    with pytest.raises(LaunchError) as err:
        check_world_size(cleared, 4)
    msg = str(err.value)
    assert msg.startswith(
        "started 2 ranks but the run is configured for 4 (nodes x tasks_per_node)"
    )
    assert "--ntasks-per-node" in msg and "SLURM_NTASKS=2" in msg
    check_world_size(cleared, 2)
    check_world_size(cleared, None)


def test_init_distributed_refuses_before_any_rendezvous() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(LaunchError, match="started 2 ranks but the run is configured for 8"):
        init_distributed(expected_world_size=8, env=env, timeout_s=10)
    ctx = init_distributed(expected_world_size=1, env={}, device="cpu")
    assert (ctx.world_size, ctx.backend, ctx.device.type) == (1, None, "cpu")
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]


def test_a_missing_rank_fails_in_bounded_time() -> None:
    """Rank 0 of 2 whose peer never starts: the rendezvous gives up after the timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    start = time.monotonic()
    with pytest.raises(LaunchError, match=r"rank 0 of 2 .* could not join .* within 2 s"):
        init_distributed(env=env, timeout_s=2, device="cpu")
    assert time.monotonic() - start < 30


def test_backend_choice() -> None:
    assert choose_backend("auto", torch.device("cpu")) == "gloo"
    assert choose_backend("auto", torch.device("cuda", 0)) == "nccl"
    assert choose_backend("gloo", torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ValueError, match="'nccl' but this rank runs on the CPU"):
        choose_backend("nccl", torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, sampler, RNG state
# --------------------------------------------------------------------------------------------


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


def test_resumable_sampler_skips_exactly_and_matches_one_rank() -> None:
    data = list(range(23))
    one = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=5)
    one.set_position(epoch=2, start=0)
    full = list(one)
    one.set_position(epoch=2, start=8)
    assert list(one) == full[8:]
    # Two ranks: rank r takes positions r, r + 2, ... of the same permutation.
    ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_position(epoch=2, start=2)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert r0[:3] == full[4:10:2] and r1[:3] == full[5:11:2]
    with pytest.raises(ValueError, match="outside this rank's"):
        one.set_position(epoch=0, start=99)


def test_rng_state_round_trip() -> None:
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002 - the global generator
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


# --------------------------------------------------------------------------------------------
# Metrics file and cost projection
# --------------------------------------------------------------------------------------------


def test_metrics_round_trip(tmp_path: Path) -> None:
    cols = metric_columns(out_variables=["pm25"], lead_times_h=[12], topoflow_blocks=[0])
    assert cols[:4] == ["step", "epoch", "train_loss", "val_loss"]
    assert {"val_loss_pm25", "val_loss_12h", "alpha_block0", "lr_new"} <= set(cols)
    rows = [{"step": 0, "val_loss": 0.1 + 0.2}, {"step": 1, "train_loss": 1 / 3, "lr": math.nan}]
    write_metrics(tmp_path / "m.csv", rows, cols)
    back = read_metrics(tmp_path / "m.csv")
    assert back[0]["val_loss"] == 0.1 + 0.2  # bit for bit
    assert back[1]["train_loss"] == 1 / 3 and back[1]["lr"] is None and back[1]["step"] == 1
    with pytest.raises(ValueError, match="not in"):
        write_metrics(tmp_path / "m.csv", [{"bogus": 1}], cols)


def test_project_cost_numbers() -> None:
    cost = project_cost(2.0, steps=270, nodes=50, gpu_hours_per_node_hour=4.0)
    assert cost["wall_time_s"] == 540.0
    assert cost["node_hours"] == pytest.approx(7.5)
    assert cost["gpu_hours"] == pytest.approx(30.0)
    with_val = project_cost(
        2.0, steps=270, nodes=50, gpu_hours_per_node_hour=4.0, val_time_s=36.0, val_passes=13
    )
    assert with_val["wall_time_s"] == pytest.approx(540.0 + 13 * 36.0)
    assert validation_passes(270, 25) == 1 + 10 + 1
    assert validation_passes(250, 25) == 1 + 10
    with pytest.raises(ValueError, match="nodes"):
        project_cost(1.0, steps=1, nodes=0, gpu_hours_per_node_hour=4.0)
    with pytest.raises(ValueError, match="step_time_s"):
        project_cost(math.nan, steps=1, nodes=1, gpu_hours_per_node_hour=4.0)


def test_cost_projection_from_a_constructed_metrics_file(tmp_path: Path) -> None:
    cols = metric_columns(out_variables=["pm25"], lead_times_h=[12], topoflow_blocks=[0])
    # Step 1 carries start-up work (left out); the median of the rest is 2.0 s. Validation passes
    # at steps 0 and 4 took 8 s each on the short run's 8 ranks.
    rows = [
        {"step": 0, "val_loss": 0.4, "val_time_s": 8.0},
        {"step": 1, "train_loss": 0.4, "step_time_s": 30.0},
        {"step": 2, "train_loss": 0.4, "step_time_s": 2.0},
        {"step": 3, "train_loss": 0.4, "step_time_s": 2.5},
        {"step": 4, "train_loss": 0.4, "step_time_s": 1.5, "val_loss": 0.39, "val_time_s": 8.0},
        {"step": 5, "train_loss": 0.4, "step_time_s": 2.0},
    ]
    path = tmp_path / "metrics.csv"
    write_metrics(path, rows, cols)
    times = measured_times(path)
    assert times["step_time_s"] == 2.0 and times["val_time_s"] == 8.0
    cfg = {
        "launch": {
            "nodes": 50,
            "tasks_per_node": 8,
            "gpu_hours_per_node_hour": 4.0,
            "step_time_estimate_s": 10.0,
            "walltime_margin": 1.5,
            "walltime_startup_min": 15.0,
            "partition_time_limit_min": 2880,
        },
        "finetune": {"steps": 270, "epochs": None, "batch_size": 800, "val_every": 25},
    }
    cost = short_run_cost(path, cfg, measured_world_size=8, start_times=35_000)
    # Validation is split over 400 ranks instead of 8: 8 s x 8 / 400 = 0.16 s per pass, 12 passes.
    wall = 270 * 2.0 + 12 * 0.16
    assert cost["wall_time_s"] == pytest.approx(wall)
    assert cost["node_hours"] == pytest.approx(wall / 3600 * 50)
    assert cost["gpu_hours"] == pytest.approx(wall / 3600 * 50 * 4)
    assert cost["full_world_size"] == 400
    with pytest.raises(ValueError, match="no optimizer step"):
        measured_times([{"step": 0, "val_loss": 1.0}])


def test_alpha_projected_back_to_zero_and_gradient_alive_at_zero():
    import torch

    from aqnet.model import Forecaster, tiny
    from aqnet.train.loop import project_alphas

    torch.manual_seed(0)
    model = Forecaster(tiny(img_size=(16, 32)))
    alpha = dict(model.named_parameters())["blocks.0.attn.elevation_alpha"]
    with torch.no_grad():
        alpha.fill_(-0.02)
    project_alphas(model)
    assert float(alpha.detach()) == 0.0
    x = torch.randn(2, len(model.config.in_variables), 16, 32)
    elev = torch.linspace(0, 3000, 16 * 32).reshape(16, 32)
    model(x, torch.tensor([12.0, 24.0]), elev).square().mean().backward()
    assert alpha.grad is not None and float(alpha.grad.abs()) > 0

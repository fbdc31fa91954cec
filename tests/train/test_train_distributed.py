"""Launch detection (single, ``torchrun``, ``srun``), Slurm host lists and tasks per node, the
world-size refusal, a bounded rendezvous and the backend choice (:mod:`aqnet.train.distributed`)."""

from __future__ import annotations

import socket
import time

import pytest
import torch

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

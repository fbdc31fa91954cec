"""The check_network gate: the RCCL log check (pure), the bandwidth arithmetic, the gradient size
of the configured model, and the check itself as one process (the demo's case).

The RCCL logs below are written in the format RCCL and aws-ofi-rccl print with
``NCCL_DEBUG=INFO`` (host:pid:tid [device] NCCL INFO ...); there is no RCCL or Slingshot here, so
the multi-node runs with the real library happen only on LUMI.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from aqnet.config import validate_config, variant_config
from aqnet.model import count_parameters
from aqnet.model.presets import from_pipeline_config, paper
from aqnet.stage import StageFailure
from aqnet.train.network import (
    bus_bandwidth_gbps,
    check_network,
    check_rccl_log,
    gradient_numel,
    parse_rccl_log,
    rccl_debug_env,
)

_PREAMBLE = """\
nid005000:81234:81234 [0] NCCL INFO Bootstrap : Using hsn0:10.253.6.67<0>
nid005000:81234:81234 [0] NCCL INFO NET/Plugin : Plugin load (librccl-net.so) returned 0
"""

SLINGSHOT_LOG = (
    _PREAMBLE
    + """\
nid005000:81234:81290 [0] NCCL INFO NET/OFI Using aws-ofi-rccl 1.4.0
nid005000:81234:81290 [0] NCCL INFO NET/OFI Selected Provider is cxi (found 4 nics)
nid005000:81234:81290 [0] NCCL INFO Using network AWS Libfabric
nid005000:81234:81290 [0] NCCL INFO Channel 00/0 : 0[c1000] -> 8[c1000] via NET/AWS Libfabric/0
"""
)

SOCKET_LOG = """\
nid005000:81234:81234 [0] NCCL INFO Bootstrap : Using hsn0:10.253.6.67<0>
nid005000:81234:81234 [0] NCCL INFO NET/Plugin : No plugin found (librccl-net.so), using internal
nid005000:81234:81290 [0] NCCL INFO NET/IB : No device found.
nid005000:81234:81290 [0] NCCL INFO NET/Socket : Using [0]hsn0:10.253.6.67<0> [1]hsn1:10.253.6.68<0>
nid005000:81234:81290 [0] NCCL INFO Using network Socket
"""

NO_NETWORK_LOG = """\
nid005000:81234:81234 [0] NCCL INFO ROCr version 1.1
nid005000:81234:81234 [0] NCCL INFO Dmabuf feature disabled without NCCL_ENABLE_DMABUF_SUPPORT=1
"""


def test_the_slingshot_provider_line_passes() -> None:
    evidence = check_rccl_log(SLINGSHOT_LOG)
    assert evidence == "NET/OFI Selected Provider is cxi (1 process(es))"
    net = parse_rccl_log(SLINGSHOT_LOG)
    assert net.providers == ("cxi",) and net.networks == ("AWS Libfabric",)
    assert net.fallback is None
    # Newer plugin releases word it "Selected provider is cxi, fabric is cxi".
    newer = SLINGSHOT_LOG.replace(
        "Selected Provider is cxi (found 4 nics)",
        "Selected provider is cxi, fabric is cxi (found 4 nics)",
    )
    assert parse_rccl_log(newer).providers == ("cxi",)
    assert check_rccl_log(newer).startswith("NET/OFI Selected Provider is cxi")


def test_the_socket_fallback_fails_naming_it() -> None:
    with pytest.raises(StageFailure) as err:
        check_rccl_log(SOCKET_LOG, source="logs/check_network/rccl/rccl.0003.log")
    msg = str(err.value)
    assert msg.startswith("check_network: RCCL fell back to NET/Socket ('Socket' in ")
    assert "logs/check_network/rccl/rccl.0003.log" in msg
    assert "instead of the Slingshot provider 'cxi'" in msg and "TCP sockets" in msg
    assert "No plugin found (librccl-net.so)" in msg  # what RCCL said about the plugin
    assert "/usr/lib64/libcxi.so.1" in msg  # the fix


def test_the_socket_fallback_is_named_without_the_using_network_line() -> None:
    # Older RCCL releases print only the transport's own line.
    text = "\n".join(line for line in SOCKET_LOG.splitlines() if "Using network" not in line)
    with pytest.raises(
        StageFailure, match=r"fell back to NET/Socket \('NET/Socket : Using \[0\]hsn0"
    ):
        check_rccl_log(text)


def test_an_infiniband_choice_fails_naming_it() -> None:
    text = (
        _PREAMBLE
        + "x:1:1 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/RoCE\n"
        + "x:1:1 [0] NCCL INFO Using network IB\n"
    )
    with pytest.raises(StageFailure, match=r"fell back to NET/IB \('IB' in the log\)"):
        check_rccl_log(text)


def test_another_libfabric_provider_fails_naming_it() -> None:
    text = SLINGSHOT_LOG.replace("Provider is cxi", "Provider is tcp;ofi_rxm")
    with pytest.raises(StageFailure) as err:
        check_rccl_log(text)
    assert "selected the libfabric provider 'tcp;ofi_rxm', not 'cxi'" in str(err.value)


def test_one_rank_that_fell_back_among_good_ones_fails() -> None:
    with pytest.raises(StageFailure, match="fell back to NET/Socket"):
        check_rccl_log(SLINGSHOT_LOG + SOCKET_LOG)


@pytest.mark.parametrize("text", [NO_NETWORK_LOG, ""])
def test_a_log_with_neither_fails_saying_so(text: str) -> None:
    with pytest.raises(StageFailure) as err:
        check_rccl_log(text)
    msg = str(err.value)
    assert "shows neither the Slingshot provider line ('NET/OFI Selected Provider is cxi')" in msg
    assert "nor a fallback (NET/Socket, NET/IB)" in msg and "NCCL_DEBUG=INFO" in msg


def test_the_plugin_without_its_provider_line_is_not_a_pass() -> None:
    text = "\n".join(line for line in SLINGSHOT_LOG.splitlines() if "Selected Provider" not in line)
    with pytest.raises(StageFailure, match="RCCL used the network 'AWS Libfabric'"):
        check_rccl_log(text)


def test_rccl_debug_env_adds_init_and_net_to_the_users_subsystems(tmp_path: Path) -> None:
    env = rccl_debug_env({"NCCL_DEBUG": "WARN", "NCCL_DEBUG_SUBSYS": "COLL"}, tmp_path / "r.log")
    assert env == {
        "NCCL_DEBUG": "INFO",
        "NCCL_DEBUG_SUBSYS": "COLL,INIT,NET",
        "NCCL_DEBUG_FILE": str(tmp_path / "r.log"),
    }
    assert rccl_debug_env({"NCCL_DEBUG_SUBSYS": "ALL"}, tmp_path)["NCCL_DEBUG_SUBSYS"] == "ALL"
    assert rccl_debug_env({}, tmp_path)["NCCL_DEBUG_SUBSYS"] == "INIT,NET"


def test_bus_bandwidth_follows_the_ring_all_reduce() -> None:
    # 1 GB in 0.1 s: 10 GB/s algorithm bandwidth; on 16 ranks each link carries 2 * 15/16 of it.
    algbw, busbw = bus_bandwidth_gbps(10**9, 0.1, 16)
    assert algbw == pytest.approx(10.0)
    assert busbw == pytest.approx(18.75)
    assert bus_bandwidth_gbps(10**9, 0.1, 1)[1] == 0.0
    with pytest.raises(ValueError, match="cannot compute a bandwidth"):
        bus_bandwidth_gbps(10**9, 0.0, 16)


def test_the_gradient_is_the_configured_models_trainable_parameters(
    tiny_config: dict[str, Any],
) -> None:
    cfg = variant_config(validate_config(copy.deepcopy(tiny_config)), "default")
    got = gradient_numel(cfg)
    assert got == {
        "preset": "tiny",
        "params": count_parameters(from_pipeline_config(cfg))["trainable"],
    }
    # The paper preset: the 46,189,885 parameters the README quotes, all trained.
    lumi_like = copy.deepcopy(cfg)
    lumi_like["model"]["preset"] = "paper"
    lumi_like["grid"].update(ny=128, nx=256)
    paper_params = gradient_numel(lumi_like)["params"]
    assert paper_params == count_parameters(paper())["trainable"] == 46_189_885


def test_one_process_reports_why_nothing_was_measured_or_checked(
    tiny_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID", "NCCL_DEBUG_SUBSYS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NCCL_DEBUG", "WARN")  # the check turns it up, for this process only
    cfg = variant_config(validate_config(copy.deepcopy(tiny_config)), "default")
    cfg["finetune"].update(device="cpu", backend="auto")
    report: dict[str, Any] = {}
    verdict = check_network(cfg, debug_dir=tmp_path / "rccl", expected_world_size=1, report=report)
    assert report["world_size"] == 1 and report["backend"] == "gloo"
    assert report["allreduce"]["measured"] is False
    assert "one rank: no all-reduce between ranks" in report["allreduce"]["reason"]
    assert report["provider_check"]["status"] == "skipped"
    assert report["provider_check"]["reason"].startswith("backend gloo: the ranks run on the CPU")
    assert "provider check skipped: backend gloo" in verdict
    assert report["gradient"]["params"] == gradient_numel(cfg)["params"]
    assert report["rccl_debug"]["NCCL_DEBUG"] == "INFO"
    json.dumps(report)  # the report is JSON as it stands


def _fake_rccl_init(tmp_path: Path, rccl_log: str) -> Any:
    """An ``init_distributed`` whose ranks use the nccl backend as far as the check can tell.

    There is no GPU or RCCL here: a real one-rank gloo process group carries the collectives, and
    the RCCL debug file RCCL would write at start-up (``NCCL_DEBUG_FILE``) is written with
    ``rccl_log``. Everything after it (reading the file, the verdict, the report) is the check's.
    """
    import os

    import torch
    import torch.distributed as dist

    from aqnet.train.distributed import DistContext, LaunchInfo, rank_record

    def init(**kwargs: Any) -> DistContext:
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
        )
        Path(os.environ["NCCL_DEBUG_FILE"]).write_text(rccl_log)
        info = LaunchInfo(
            rank=0, local_rank=0, world_size=1, local_world_size=1, master_addr="h",
            master_port=0, launcher="torchrun", source="test",
        )  # fmt: skip
        me = rank_record(info, torch.device("cpu"), host="nid005000", env={})
        return DistContext(info=info, device=torch.device("cpu"), backend="nccl", ranks=[me])

    return init


@pytest.fixture
def network_cfg(tiny_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID", "NCCL_DEBUG_SUBSYS"):
        monkeypatch.delenv(key, raising=False)
    for key in ("NCCL_DEBUG", "NCCL_DEBUG_FILE"):
        monkeypatch.setenv(key, "")  # restored after the test: the check sets them
    monkeypatch.setenv("SLURMD_NODENAME", "nid005000")
    return variant_config(validate_config(copy.deepcopy(tiny_config)), "default")


def test_a_rank_whose_rccl_fell_back_fails_the_check_naming_it(
    network_cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "aqnet.train.network.init_distributed", _fake_rccl_init(tmp_path, SOCKET_LOG)
    )
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure) as err:
        check_network(
            network_cfg, debug_dir=tmp_path / "rccl", expected_world_size=1, report=report
        )
    msg = str(err.value)
    assert msg.startswith("check_network: RCCL fell back to NET/Socket ('Socket' in ")
    assert str(tmp_path / "rccl" / "rccl.0000.log") in msg
    assert msg.endswith("[rank 0 on nid005000; 1 of 1 rank(s) failed]")
    assert report["provider_check"]["status"] == "failed"
    assert report["provider_check"]["failed_ranks"] == [0]
    assert report["backend"] == "nccl"


def test_rccl_on_slingshot_but_one_node_proves_nothing(
    network_cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "aqnet.train.network.init_distributed", _fake_rccl_init(tmp_path, SLINGSHOT_LOG)
    )
    report: dict[str, Any] = {}
    with pytest.raises(StageFailure, match="ran on one node \\(nid005000\\): the check proves"):
        check_network(
            network_cfg, debug_dir=tmp_path / "rccl", expected_world_size=1, report=report
        )
    assert report["provider_check"] == {
        "status": "passed",
        "evidence": "NET/OFI Selected Provider is cxi (1 process(es))",
        "ranks": 1,
    }
    assert report["allreduce"]["measured"] and report["allreduce"]["busbw_gbps"] == 0.0


def test_an_all_reduce_that_returns_a_wrong_sum_fails(
    network_cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed as dist

    real = dist.all_reduce

    def corrupting(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        work = real(tensor, *args, **kwargs)
        if tensor.numel() > 1:  # the gradient-sized buffer, not the timing scalars
            tensor[0] += 0.5
        return work

    monkeypatch.setattr(dist, "all_reduce", corrupting)
    monkeypatch.setattr(
        "aqnet.train.network.init_distributed", _fake_rccl_init(tmp_path, SLINGSHOT_LOG)
    )
    with pytest.raises(StageFailure) as err:
        check_network(network_cfg, debug_dir=tmp_path / "rccl", expected_world_size=1, report={})
    assert str(err.value) == (
        "check_network: the all-reduce returned 1.5 on rank 0 (nid005000) where the sum over 1 "
        "ranks is 1.0: the collective corrupts data (1 of 1 rank(s))"
    )

"""LUMI launch correctness without a GPU or a cluster: which GPU each rank uses, however Slurm
narrows the visible devices."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aqnet.train.distributed import (
    LaunchError,
    LaunchInfo,
    _check_ranks,
    gpu_identity,
    rank_record,
)

# PCI buses of the eight GCDs of a LUMI-G node (MI250X: each GCD is its own PCI device).
LUMI_GCD_BUS = (0xC1, 0xC6, 0xC9, 0xCE, 0xD1, 0xD6, 0xD9, 0xDE)


def _lumi_rank(rank: int, gcd: int, *, host: str = "nid005000", world: int = 8) -> dict:
    """Rank ``rank`` as it starts on LUMI: narrowed to GCD ``gcd``, which it sees as cuda:0.

    The device properties come from a stand-in shaped like ``torch.cuda.get_device_properties``
    (there is no GPU here); index ``i`` is resolved through the rank's ROCR_VISIBLE_DEVICES as
    the ROCm runtime does.
    """
    env = {"ROCR_VISIBLE_DEVICES": str(gcd)}

    def properties(index: int) -> SimpleNamespace:
        physical = int(env["ROCR_VISIBLE_DEVICES"].split(",")[index])
        return SimpleNamespace(
            pci_bus_id=LUMI_GCD_BUS[physical], pci_domain_id=0, pci_device_id=0, uuid=None
        )

    info = LaunchInfo(
        rank=rank,
        local_rank=rank % 8,
        world_size=world,
        local_world_size=8,
        master_addr=host,
        master_port=20042,
        launcher="slurm",
        source="test",
    )
    return rank_record(
        info,
        torch.device("cuda", 0),
        host=host,
        identity=lambda i: gpu_identity(i, properties=properties),
        env=env,
    )


def test_lumi_narrowing_every_rank_on_cuda0_passes() -> None:
    ranks = [_lumi_rank(r, r) for r in range(8)]
    assert {r["device"] for r in ranks} == {"cuda:0"}
    assert [r["gpu"] for r in ranks][:2] == ["pci:0000:c1:00", "pci:0000:c6:00"]
    assert len({r["gpu"] for r in ranks}) == 8
    assert ranks[3]["visible"] == "ROCR_VISIBLE_DEVICES=3"
    _check_ranks(ranks, 8)  # the index-based check refused exactly this


def test_two_ranks_truly_sharing_a_gcd_fail_naming_it() -> None:
    ranks = [_lumi_rank(r, r) for r in range(8)]
    ranks[5] = _lumi_rank(5, 3)  # rank 5 narrowed to rank 3's GCD
    with pytest.raises(LaunchError) as err:
        _check_ranks(ranks, 8)
    msg = str(err.value)
    assert "ranks 3 and 5 on nid005000 both use the GPU pci:0000:ce:00" in msg
    assert "ROCR_VISIBLE_DEVICES=3" in msg and "fewer GPUs than ranks" in msg


def test_the_same_gcd_on_two_nodes_is_two_gpus() -> None:
    ranks = [_lumi_rank(r, r % 8, host=f"nid00500{r // 8}", world=16) for r in range(16)]
    _check_ranks(ranks, 16)


def test_gpu_identity_falls_back_to_uuid_then_to_the_visible_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uuid = "5e1f9a3c-0000-0000-0000-000000000001"
    assert gpu_identity(0, properties=lambda i: SimpleNamespace(uuid=uuid)) == f"uuid:{uuid}"
    zero = "00000000-0000-0000-0000-000000000000"
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "6")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    got = gpu_identity(0, properties=lambda i: SimpleNamespace(uuid=zero))
    assert got == "ROCR_VISIBLE_DEVICES=6#0"


def test_cpu_ranks_have_no_gpu_identity() -> None:
    info = LaunchInfo(
        rank=0, local_rank=0, world_size=2, local_world_size=2, master_addr="h",
        master_port=1, launcher="torchrun", source="test",
    )  # fmt: skip
    rec = rank_record(info, torch.device("cpu"), host="h", env={})
    assert rec["gpu"] is None and rec["visible"] == "none set"
    _check_ranks([rec, {**rec, "rank": 1}], 2)

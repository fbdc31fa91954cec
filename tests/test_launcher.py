"""aqnet.launcher: a stage's command prefix and ranks, and the checks at parse time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aqnet.launcher import launcher, profiles_with_lumi, put_first_on_path, world_size


def test_the_launcher_and_world_size_from_the_resources() -> None:
    assert launcher(2, {}) == "" and world_size({}) == 1
    lumi = {"mpi": "srun --label", "nodes": 50, "tasks_per_node": 8, "cpus_per_task": 7}
    prefix = launcher(2, {**lumi, "rank_wrapper": "profiles/lumi/rank.sh --container x.sif --"})
    assert prefix == (
        "srun --label --nodes=50 --ntasks-per-node=8 --cpus-per-task=7 --kill-on-bad-exit=1 "
        "profiles/lumi/rank.sh --container x.sif -- "
    )
    assert world_size(lumi) == 400
    assert launcher(3, {"mpi": "srun"}).startswith("srun --nodes=1 --ntasks-per-node=1 ")
    assert "--cpus-per-task=3" in launcher(3, {"mpi": "srun"})


@pytest.mark.parametrize(
    ("argv", "env", "refused"),
    [
        (["--profile", "profiles/lumi"], {}, False),
        (["--profile=profiles/lumi", "-n"], {"SNAKEMAKE_PROFILE": "x"}, False),
        (["--profile", "profiles/lumi", "--profile", "mine"], {}, True),
        (["--profile", "profiles/lumi", "--workflow-profile", "profiles/local"], {}, True),
        (["--profile", "profiles/lumi", "--workflow-profile", "none"], {}, False),
        (["--workflow-profile", "profiles/lumi"], {"SNAKEMAKE_PROFILE": "profiles/local"}, True),
        (["--profile", "a", "--profile", "b"], {}, False),  # not LUMI: not ours to refuse
    ],
)
def test_the_lumi_profile_alone(argv: list[str], env: dict[str, str], refused: bool) -> None:
    why = profiles_with_lumi(argv, env)
    assert (why is not None) == refused, why
    if refused:
        assert "the LUMI profile is combined with 1 other profile(s)" in why
        assert "snakemake --profile profiles/lumi" in why


def test_put_first_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", "/usr/bin")
    put_first_on_path(tmp_path)
    put_first_on_path(tmp_path)
    assert os.environ["PATH"] == f"{tmp_path}{os.pathsep}/usr/bin"

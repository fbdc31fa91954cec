"""Only one profile applies to a LUMI run: the settings Snakemake itself ends up with.

``snakemake.cli.parse_args`` is what the ``snakemake`` command runs first: it finds the profiles,
prints which it uses and merges their keys. Run in the repository, whose Snakefile would have a
``profiles/default`` merged into every run if there were one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _settings(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Any, str]:
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    _, args = parse_args(argv)
    return args, capsys.readouterr().err


def _raw(resources: dict[str, Any]) -> dict[str, Any]:
    """Resource name -> the value as written in the profile (string resources keep quotes)."""
    return {name: str(res.raw).strip("'\"") for name, res in resources.items()}


def test_the_lumi_profile_is_the_only_one_in_force(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, err = _settings(["--profile", "profiles/lumi", "-n"], monkeypatch, capsys)
    assert "Using profile profiles/lumi for setting default command line arguments." in err
    assert "workflow specific profile" not in err
    assert not (REPO / "profiles/default").exists()
    with (REPO / "profiles/lumi/config.yaml").open() as fh:
        lumi = yaml.safe_load(fh)
    assert args.executor == "slurm"
    assert args.configfile == [
        Path("config.yaml"),
        Path("config/reference.yaml"),
        Path("config/lumi.yaml"),
    ]
    assert args.cores is None  # the demo profile's `cores: all` is not applied
    defaults = _raw(args.default_resources)
    assert defaults["slurm_account"] == lumi["default-resources"]["slurm_account"]
    assert defaults["slurm_account"].startswith("project_46")
    assert defaults["slurm_partition"] == "small"
    partitions = {rule: _raw(res)["slurm_partition"] for rule, res in args.set_resources.items()}
    assert partitions["validate_short"] == partitions["finetune"] == "standard-g"
    assert partitions["smoke_forward"] == "small-g"
    assert partitions == {
        rule: res["slurm_partition"] for rule, res in lumi["set-resources"].items()
    }
    assert _raw(args.set_resources["finetune"])["nodes"] == "50"
    # Every multi-rank stage starts its ranks with srun --label: each log line names its rank.
    ranked = {rule: _raw(res)["mpi"] for rule, res in args.set_resources.items() if "mpi" in res}
    assert {"validate_short", "finetune"} <= set(ranked)
    assert all(mpi.split()[:2] == ["srun", "--label"] for mpi in ranked.values()), ranked


def test_the_local_profile_runs_the_demo_on_this_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, err = _settings(["--profile", "profiles/local"], monkeypatch, capsys)
    assert "workflow specific profile" not in err
    assert args.cores is not None and args.executor in (None, "local")
    assert args.configfile in (None, [], [Path("config.yaml")])  # the demo config
    assert args.rerun_incomplete and args.show_failed_logs


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--profile", "--workflow-profile"])
def test_snakemake_refuses_the_lumi_profile_merged_with_another(tmp_path: Path, flag: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--profile", str(REPO / "profiles/lumi"), flag, str(REPO / "profiles/local"),
            "--configfile", str(REPO / "config/lumi.yaml"), "-n",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the LUMI profile is combined with 1 other profile(s)" in out, out[-3000:]
    assert "snakemake --profile profiles/lumi" in out

"""The LUMI profile and config as files, and the settings Snakemake itself ends up with.

* ``test_lumi_config_is_the_real_run``, ``test_lumi_profile_maps_every_stage_*`` and
  ``test_lumi_cpu_masks_*``: the LUMI config merged as the profile merges it, and every stage's
  Slurm request against LUMI's partitions, read from the files; no Slurm, no Snakemake run.
* ``test_test_profile_*``: the localhost-Slurm profile ``test_slurm.py`` derives from it changes
  only sizes, the account, the container and the launcher.
* ``test_the_*_profile_*`` and ``test_snakemake_refuses_*``: only one profile applies to a LUMI
  run. ``snakemake.cli.parse_args`` is what the ``snakemake`` command runs first: it finds the
  profiles, prints which it uses and merges their keys. Run in the repository, whose Snakefile
  would have a ``profiles/default`` merged into every run if there were one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lumi_files import (
    GATED_CHAIN,
    LUMI_CONFIG,
    LUMI_CORES_PER_GCD,
    LUMI_GCDS_PER_NODE,
    LUMI_NODE_MEM_MB,
    LUMI_PARTITIONS,
    RANKED,
    REFERENCE_CONFIG,
    REPO,
    derive,
    rule_resources,
)

from aqnet.config import validate_config
from aqnet.train.cost import NETWORK_CHECK_MINUTES, NETWORK_CHECK_NODES


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


# ---------------------------------------------------------------------------------------------
# The profile and the LUMI config, read as files
# ---------------------------------------------------------------------------------------------


def test_lumi_config_is_the_real_run(lumi_config: dict[str, Any]) -> None:
    with LUMI_CONFIG.open() as fh:
        own = yaml.safe_load(fh)
    assert lumi_config["data"]["source"] == "files"
    years = {
        *lumi_config["data"]["split"]["train"],
        *lumi_config["data"]["split"]["val"],
        *lumi_config["data"]["split"]["test"],
    }
    assert {str(y) for y in years} <= set(lumi_config["data"]["files"])
    assert (lumi_config["grid"]["ny"], lumi_config["grid"]["nx"]) == (128, 256)
    assert lumi_config["model"]["preset"] == "paper"
    assert lumi_config["baseline"]["checkpoint"] and lumi_config["baseline"]["wind_orders"]
    # The study's length: one epoch (the steps follow from the cache's training start times).
    assert lumi_config["finetune"]["epochs"] == 1
    assert lumi_config["finetune"]["val_every"] == 25
    assert (lumi_config["launch"]["nodes"], lumi_config["launch"]["tasks_per_node"]) == (50, 8)
    world = 50 * 8
    assert (
        lumi_config["finetune"]["batch_size"] % (world * lumi_config["finetune"]["grad_accum"]) == 0
    )
    # Merged over the demo's config.yaml, nothing of the demo leaks in: every section the demo
    # sets is set in config/lumi.yaml, and the variants are exactly LUMI's.
    with (REPO / "config.yaml").open() as fh:
        demo = yaml.safe_load(fh)
    assert set(demo) <= set(own), f"config/lumi.yaml lacks the sections {set(demo) - set(own)}"
    assert lumi_config["variants"] == own["variants"]
    with REFERENCE_CONFIG.open() as fh:
        reference = yaml.safe_load(fh)
    model = {**reference["model"], **own["model"]}  # the baseline's model, then the run's keys
    assert lumi_config["model"] == validate_config({"model": model})["model"]
    assert lumi_config["data"]["normalization"]["source"] == "table"
    assert lumi_config["validation"]["samples"] == "all"
    assert lumi_config["finetune"] == validate_config({"finetune": own["finetune"]})["finetune"]


def test_lumi_profile_maps_every_stage_within_lumi_limits(
    lumi_profile: dict[str, Any], lumi_config: dict[str, Any]
) -> None:
    assert lumi_profile["executor"] == "slurm"
    assert lumi_profile["retries"] == 0
    assert lumi_profile["slurm-status-command"] == "sacct"
    assert [REPO / p for p in lumi_profile["configfile"]] == [
        REPO / "config.yaml",
        REFERENCE_CONFIG,
        LUMI_CONFIG,
    ]
    # The account is set in one place: default-resources, never per rule.
    assert re.fullmatch(r"project_46\d{7}", lumi_profile["default-resources"]["slurm_account"])
    for rule, res in lumi_profile["set-resources"].items():
        assert "slurm_account" not in res, f"{rule} sets its own slurm_account"
    for rule in (*GATED_CHAIN, "train_baseline", "make_demo_data"):
        res = rule_resources(lumi_profile, rule)
        part = LUMI_PARTITIONS[res["slurm_partition"]]
        assert 0 < res["runtime"] <= part["max_minutes"], (rule, res["runtime"])
        assert res.get("nodes", 1) <= part["max_nodes"], rule
        assert res["mem_mb"] > 0 and res["cpus_per_task"] >= 1, rule
        if part["gpu"]:
            gpus = int(res["gres"].split(":")[-1])
            tasks = res.get("tasks_per_node", 1)
            assert res["cpus_per_task"] * tasks <= LUMI_CORES_PER_GCD * gpus, rule
            assert res["mem_mb"] <= LUMI_NODE_MEM_MB * gpus / LUMI_GCDS_PER_NODE, rule
        else:
            assert "gres" not in res and "mpi" not in res, rule
    assert rule_resources(lumi_profile, "smoke_forward")["slurm_partition"] in ("small-g", "dev-g")
    assert rule_resources(lumi_profile, "smoke_forward")["gres"] == "gpu:1"
    for rule in RANKED:
        res = rule_resources(lumi_profile, rule)
        assert res["slurm_partition"] == "standard-g"
        assert res["mpi"].split()[0] == "srun"
        assert re.search(r"--cpu-bind=mask_cpu:(0x[0-9a-f]+,){7}0x[0-9a-f]+\b", res["mpi"])
        assert res["gres"] == f"gpu:{LUMI_GCDS_PER_NODE}"
        assert (
            res["tasks_per_node"] == LUMI_GCDS_PER_NODE == lumi_config["launch"]["tasks_per_node"]
        )
        assert res["cpus_per_task"] == LUMI_CORES_PER_GCD
        assert res["mem_mb"] == LUMI_NODE_MEM_MB
    assert rule_resources(lumi_profile, "validate_short")["nodes"] == 1
    # traffic between nodes; the budget projects this request (aqnet.train.cost)
    network = rule_resources(lumi_profile, "check_network")
    assert network["nodes"] == NETWORK_CHECK_NODES == 2
    assert network["runtime"] == NETWORK_CHECK_MINUTES
    finetune = rule_resources(lumi_profile, "finetune")
    assert finetune["nodes"] == lumi_config["launch"]["nodes"] == 50
    assert re.fullmatch(r"--signal=USR1@\d+", finetune["slurm_extra"])


def test_lumi_cpu_masks_give_each_gcd_its_own_seven_cores(lumi_profile: dict[str, Any]) -> None:
    mpi = rule_resources(lumi_profile, "finetune")["mpi"]
    masks = [int(m, 16) for m in re.search(r"mask_cpu:(\S+)", mpi).group(1).split(",")]
    assert len(masks) == LUMI_GCDS_PER_NODE
    assert all(bin(m).count("1") == LUMI_CORES_PER_GCD for m in masks)
    union = 0
    for m in masks:
        assert union & m == 0, "two ranks share a core"
        union |= m
        low = (m & -m).bit_length() - 1
        # cores 1-7 of one 8-core CCD: core 0 of each CCD stays with the system
        assert low % 8 == 1 and m == 0x7F << low, hex(m)
    assert union < 1 << 64  # LUMI-G: 64 cores (the first hardware thread of each)


# ---------------------------------------------------------------------------------------------
# The test profile derivation
# ---------------------------------------------------------------------------------------------


def test_test_profile_changes_only_sizes_account_container_and_launcher(
    tmp_path: Path, lumi_profile: dict[str, Any]
) -> None:
    test = derive.derive_test_profile(
        lumi_profile, configfile=tmp_path / "c.yaml", logdir=tmp_path / "l", cpus=[0, 1]
    )
    assert derive.changed_keys(lumi_profile, test) == set(derive.SCALED_KEYS)
    assert rule_resources(test, "finetune")["nodes"] == 2
    for rule in RANKED:
        res, lumi = rule_resources(test, rule), rule_resources(lumi_profile, rule)
        assert res["tasks_per_node"] == 2
        assert res["mpi"] == lumi["mpi"].split("--cpu-bind=")[0] + "--cpu-bind=mask_cpu:0x1,0x2"
    assert "--container none" in rule_resources(test, "smoke_forward")["rank_wrapper"]
    assert derive.host_cpu_masks(3, [4, 6]) == ["0x10", "0x40", "0x10"]

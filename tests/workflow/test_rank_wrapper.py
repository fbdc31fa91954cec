"""``profiles/lumi/rank.sh``, the per-rank environment of every LUMI stage, run with bash in a fake
Slurm environment (no Snakemake, no Slurm daemons; one test needs ``scontrol`` from slurm-client).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RANK_SH = REPO / "profiles" / "lumi" / "rank.sh"


def _rank_sh(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        ["bash", str(RANK_SH), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_rank_wrapper_sets_the_per_rank_environment(tmp_path: Path) -> None:
    env = {
        "MASTER_ADDR": "nid001234",
        "SLURM_JOB_ID": "8123457",
        "SLURM_LOCALID": "3",
        "ROCR_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
        "MIOPEN_USER_DB_PATH": str(tmp_path / "miopen"),
    }
    show = (
        "echo $MASTER_ADDR $MASTER_PORT $ROCR_VISIBLE_DEVICES $MIOPEN_CUSTOM_CACHE_DIR"
        " $NCCL_SOCKET_IFNAME"
    )
    proc = _rank_sh(["--container", "none", "--", "bash", "-c", show], env)
    assert proc.returncode == 0, proc.stderr
    addr, port, gpu, cache, ifname = proc.stdout.split()
    assert addr == "nid001234"
    assert int(port) == 20000 + 8123457 % 20000
    assert gpu == "3"  # local rank 3 keeps the 4th visible GCD
    assert cache == str(tmp_path / "miopen") and (tmp_path / "miopen").is_dir()
    assert ifname == "hsn0,hsn1,hsn2,hsn3"
    # A single GPU bound to the task (a small-g job) is left alone, whatever the local rank.
    proc = _rank_sh(
        ["--container", "none", "--", "bash", "-c", "echo $ROCR_VISIBLE_DEVICES"],
        {**env, "ROCR_VISIBLE_DEVICES": "5", "SLURM_LOCALID": "0"},
    )
    assert proc.stdout.strip() == "5"


def test_rank_wrapper_outside_slurm_runs_one_plain_process(tmp_path: Path) -> None:
    proc = _rank_sh(
        ["--", "bash", "-c", "echo addr=${MASTER_ADDR:-unset} port=${MASTER_PORT:-unset}"],
        {"MIOPEN_USER_DB_PATH": str(tmp_path / "m")},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["addr=unset", "port=unset"]


def test_rank_wrapper_binds_lumis_minimal_bindings_for_rccl(tmp_path: Path) -> None:
    """In a container, rank.sh adds LUMI's minimal bindings to --bind (there is no Singularity
    here: a stand-in `singularity` on PATH prints what it was asked to run)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "singularity").write_text('#!/bin/bash\necho "singularity $*"\n')
    (fake / "singularity").chmod(0o755)
    image = tmp_path / "image.sif"
    image.touch()
    spool, cray = tmp_path / "spool", tmp_path / "cray"
    spool.mkdir()
    cray.mkdir()
    missing = tmp_path / "lib64" / "libcxi.so.1"
    base = {
        "MASTER_ADDR": "a",
        "MASTER_PORT": "1",
        "MIOPEN_USER_DB_PATH": str(tmp_path / "m"),
        "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    args = ["--container", str(image), "--bind", "/scratch", "--", "true"]
    proc = _rank_sh(args, {**base, "AQNET_LUMI_BINDS": f"{spool},{cray},{missing}"})
    assert proc.returncode == 0, proc.stderr
    assert f"singularity exec --bind /scratch,{spool},{cray} {image} bash -c" in proc.stdout
    assert (
        f"rank.sh: warning: {missing} (LUMI's minimal bindings for RCCL) is not on this host"
        in (proc.stderr)
    )
    # LUMI's own list by default: the Slurm spool, the Cray tree, the host's libcxi.
    script = RANK_SH.read_text()
    assert "${AQNET_LUMI_BINDS-/var/spool/slurmd,/opt/cray,/usr/lib64/libcxi.so.1}" in script
    assert "lumi-supercomputer.github.io/LUMI-EasyBuild-docs/p/PyTorch/" in script


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol (slurm-client) not found")
def test_rank_wrapper_takes_rank_zero_node_from_the_step(tmp_path: Path) -> None:
    env = {
        "SLURM_STEP_NODELIST": "nid[005-006,010]",
        "SLURM_JOB_ID": "42",
        "MIOPEN_USER_DB_PATH": str(tmp_path / "m"),
    }
    proc = _rank_sh(["--", "bash", "-c", "echo $MASTER_ADDR $MASTER_PORT"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["nid005", "20042"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bogus", "--", "true"], {"MASTER_ADDR": "a", "MASTER_PORT": "1"}, "unknown option"),
        (["--container", "none", "--"], {"MASTER_ADDR": "a", "MASTER_PORT": "1"}, "no command"),
        (
            ["--", "true"],
            {
                "MASTER_ADDR": "a",
                "MASTER_PORT": "1",
                "ROCR_VISIBLE_DEVICES": "0,1",
                "SLURM_LOCALID": "2",
            },
            "more ranks per node than GCDs",
        ),
        (
            ["--container", "/nonexistent/image.sif", "--", "true"],
            {"MASTER_ADDR": "a", "MASTER_PORT": "1"},
            "container image '/nonexistent/image.sif' not found",
        ),
    ],
)
def test_rank_wrapper_refuses_what_it_cannot_run(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    proc = _rank_sh(args, {**env, "MIOPEN_USER_DB_PATH": str(tmp_path / "m")})
    assert proc.returncode == 2
    assert message in proc.stderr

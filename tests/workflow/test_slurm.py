"""The LUMI profile: its dry run, its consistency with the LUMI config, its per-rank wrapper, and
the pipeline submitted through it to a real (localhost) Slurm.

* ``test_lumi_profile_*`` and ``test_lumi_stages_*`` need no Slurm: ``snakemake --profile
  profiles/lumi -n -p`` with stand-ins for the data and the baseline. The profile and config read
  as files: ``test_lumi_profile.py``; the paths, LUMI's limits and ``rule_resources``:
  ``lumi_files.py``.
* ``profiles/lumi/rank.sh`` alone, with a fake Slurm environment: ``test_rank_wrapper.py``.
* ``test_pipeline_on_localhost_slurm`` (marker ``slurm``) needs the mini-LUMI of ``.ci/slurm.sh``
  (``bash .ci/slurm.sh up`` as root) and is skipped with the reason when it is not up. It runs the
  LUMI pipeline (data files and a baseline given, as on LUMI) with the profile derived from
  ``profiles/lumi`` by ``tests/workflow/slurm/derive_profile.py`` (2 nodes x 2 ranks, gloo on the
  CPU, no container) and checks, from ``sacct`` rather than from our own logs, where and how every
  stage ran, and that ``check_network`` measured its all-reduce over 2 nodes with gloo, only the
  RCCL provider check skipped (with its reason). ``test_bare_srun_*`` (marker ``slurm``) shows on
  the same cluster why the launcher spells the task geometry out.
* ``test_lumi_gpu_narrowing_*`` / ``test_two_ranks_bound_to_one_gpu_*`` (marker ``slurm``): LUMI's
  per-task ``ROCR_VISIBLE_DEVICES`` (Slurm's, narrowed by ``rank.sh``) on real Slurm nodes with
  real gloo ranks; only the GPUs' device properties are stood in for (the fake GPUs cannot be
  queried).
* ``test_finetune_requeues_itself_on_localhost_slurm`` (markers ``slurm``, ``slow``): USR1 before
  the time limit, the job requeues itself and resumes, and ends as an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from lumi_files import (
    GATED_CHAIN,
    LUMI_CONFIG,
    LUMI_PROFILE,
    RANK_SH,
    RANKED,
    REFERENCE_CONFIG,
    REPO,
    derive,
    rule_resources,
)

from aqnet.config import validate_config, variant_config
from aqnet.train.cost import finetune_projection
from aqnet.train.length import start_times_in_cache
from aqnet.train.measured import measured_from_report
from aqnet.train.network import gradient_numel

# Every test here runs Snakemake, srun or the Slurm daemons' tools.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _snakemake_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `aqnet` in the rules' shells
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_")):
            env.pop(key)  # a test started inside a Slurm job must not leak its job into ours
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------------
# The dry run
# ---------------------------------------------------------------------------------------------


def _parse_dry_run(text: str) -> dict[str, dict[str, Any]]:
    """``{rule: {"resources": {...}, "shell": str | None, "local": bool}}`` from ``-n -p``."""
    jobs: dict[str, dict[str, Any]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        head = re.match(r"(local)?rule (\w+):", block)
        if not head:
            continue
        res_line = re.search(r"^\s+resources: (.*)$", block, re.M)
        resources: dict[str, str] = {}
        if res_line:
            for item in re.split(r", (?=\w+=)", res_line.group(1)):
                key, _, value = item.partition("=")
                resources[key] = value
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs[head.group(2)] = {
            "resources": resources,
            "shell": None if not shell or shell.group(1) == "None" else shell.group(1),
            "local": bool(head.group(1)),
        }
    return jobs


@pytest.fixture(scope="module")
def lumi_dry_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The output of ``snakemake --profile profiles/lumi -n -p`` (run once here).

    The LUMI config's data files and baseline do not exist here, so an overlay config points them
    at empty stand-in files (a dry run only needs them to exist); everything else is LUMI's.
    """
    tmp = tmp_path_factory.mktemp("lumi_dry_run")
    with LUMI_CONFIG.open() as fh:
        lumi = yaml.safe_load(fh)
    stand = tmp / "stand_ins"
    stand.mkdir()
    files = {}
    for year in lumi["data"]["files"]:
        files[year] = str(stand / f"aq_{year}.zarr")
        Path(files[year]).touch()
    for name in ("baseline.ckpt", "wind_orders.npz"):
        (stand / name).touch()
    overlay = tmp / "stand_ins.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "results_dir": str(tmp / "results"),
                "data": {"files": files},
                "baseline": {
                    "checkpoint": str(stand / "baseline.ckpt"),
                    "wind_orders": str(stand / "wind_orders.npz"),
                },
            }
        )
    )
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile", str(REPO / "Snakefile"),
        "--profile", str(LUMI_PROFILE.parent),
        "--configfile", str(REPO / "config.yaml"), str(REFERENCE_CONFIG), str(LUMI_CONFIG),
        str(overlay),
        "-n", "-p",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp, env=_snakemake_env(), capture_output=True, text=True, timeout=180
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"the LUMI dry run failed:\n{out[-4000:]}"
    return out


def test_lumi_profile_dry_run_prints_resources_and_commands(
    lumi_dry_run: str, lumi_profile: dict[str, Any]
) -> None:
    out = lumi_dry_run
    assert "This was a dry-run" in out
    assert re.search(r"projected cost: finetune .*GPU-h", out), "no projected cost printed"
    jobs = _parse_dry_run(out)
    # The LUMI DAG: data and baseline are given, so nothing is generated or trained.
    assert set(GATED_CHAIN) <= set(jobs), sorted(jobs)
    assert "make_demo_data" not in jobs and "train_baseline" not in jobs
    for rule in GATED_CHAIN:
        res, shell = jobs[rule]["resources"], jobs[rule]["shell"]
        want = rule_resources(lumi_profile, rule)
        assert not jobs[rule]["local"], f"{rule} would run on the login node"
        assert shell and "aqnet " in shell, f"{rule}: no command printed"
        for key in ("slurm_account", "slurm_partition", "runtime", "mem_mb", "cpus_per_task"):
            if rule == "finetune" and key == "runtime":
                continue  # derived from the projection (tests/train/test_cost.py)
            assert res.get(key) == str(want[key]), (rule, key, res.get(key), want[key])
        for key in ("nodes", "tasks_per_node", "gres", "mpi", "slurm_extra"):
            if key in want:
                assert res.get(key) == str(want[key]), (rule, key, res.get(key), want[key])
    for rule in RANKED:
        want = rule_resources(lumi_profile, rule)
        shell = jobs[rule]["shell"]
        geometry = (
            f"{want['mpi']} --nodes={want['nodes']} --ntasks-per-node={want['tasks_per_node']} "
            f"--cpus-per-task={want['cpus_per_task']}"
        )
        assert geometry in shell, f"{rule}: ranks not started as {geometry!r}: {shell}"
        assert f"--world-size {want['nodes'] * want['tasks_per_node']}" in shell
    assert "--world-size 400" in jobs["finetune"]["shell"]


def test_lumi_stages_run_behind_the_rank_wrapper(
    lumi_dry_run: str, lumi_profile: dict[str, Any]
) -> None:
    """Every stage that runs on a compute node uses the container and per-rank environment."""
    jobs = _parse_dry_run(lumi_dry_run)
    wrapper = derive.unquote(lumi_profile["default-resources"]["rank_wrapper"])
    missing = [
        rule for rule in GATED_CHAIN if f"{wrapper} aqnet " not in (jobs[rule]["shell"] or "")
    ]
    assert not missing, (
        f"on LUMI the stages {missing} would run outside the container: their command must be "
        "`{params.launcher}aqnet ...` with the launcher ending in resources.rank_wrapper"
    )


# ---------------------------------------------------------------------------------------------
# The pipeline on the localhost Slurm
# ---------------------------------------------------------------------------------------------


def _slurm_skip_reason() -> str | None:
    """Why the localhost Slurm cannot be used here, or None when it can."""
    for tool in ("sinfo", "sbatch", "srun", "sacct", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not found: bring up the localhost Slurm with `bash .ci/slurm.sh up`"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        parts = subprocess.run(
            ["sinfo", "-h", "-o", "%P %a %D %t"], capture_output=True, text=True, timeout=15
        )
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "the Slurm controller does not answer (scontrol/sinfo/sacct time out)"
    if ping.returncode or "UP" not in ping.stdout:
        said = (ping.stdout.strip() or ping.stderr.strip()).splitlines()
        return (
            f"the Slurm controller is not up ({said[0] if said else 'scontrol ping failed'}): "
            "bring it up with `bash .ci/slurm.sh up` (as root)"
        )
    up = {}
    for line in parts.stdout.splitlines():
        name, avail, count, state = line.split()
        if avail == "up" and state in ("idle", "mix"):
            up[name.rstrip("*")] = up.get(name.rstrip("*"), 0) + int(count)
    need = {"small": 1, "small-g": 1, "standard-g": 2}
    short = {p: n for p, n in need.items() if up.get(p, 0) < n}
    if short:
        return f"the localhost Slurm lacks idle nodes in {short} (sinfo: {parts.stdout.strip()})"
    if acct.returncode:
        return "sacct does not work (no slurmdbd): run `.ci/slurm.sh up` with CI_SLURM_DBD=1"
    return None


def _minutes(limit: str) -> int:
    """Slurm's ``[D-]HH:MM:SS`` as minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def _tres(spec: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in spec.split(",") if "=" in item)


def _mem_mb(value: str) -> float:
    """sacct's memory (``64000M``, ``62.50G``, ``1T``) in MB."""
    m = re.fullmatch(r"([\d.]+)([KMGT])", value)
    assert m, f"cannot read the memory {value!r}"
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]


def _sacct(name: str) -> list[dict[str, str]]:
    fields = (
        "JobID,JobName,Comment,Partition,Account,State,NNodes,NTasks,NodeList,ReqTRES,Timelimit,"
        "SubmitLine"
    )
    proc = subprocess.run(
        ["sacct", "--name", name, "--parsable2", "--noheader", f"--format={fields}%4000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    keys = fields.split(",")
    rows = [
        dict(zip(keys, line.split("|", len(keys) - 1), strict=True))
        for line in proc.stdout.splitlines()
    ]
    return rows


_BASELINE_TRAIN = {
    "steps": 4,
    "val_every": 4,
    "checkpoint_every": 4,
    "batch_size": 4,
}
"""The tiny baseline's training (validated on :data:`_VALIDATION`, as the gates below are)."""

_VALIDATION = {"samples": 8, "batch_size": 4}
"""The validation subset of every validation pass: 8 samples, evenly spaced over the val year."""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip (before any data is built) unless the localhost Slurm of .ci/slurm.sh is up."""
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def trained_baseline(
    tiny_config: dict[str, Any], tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny baseline (checkpoint + the wind orders it trained with), as LUMI has one."""
    from aqnet.train import run_training

    cfg = copy.deepcopy(tiny_config)
    cfg["baseline"]["train"].update(_BASELINE_TRAIN)
    cfg["validation"].update(_VALIDATION)
    out = tmp_path_factory.mktemp("baseline")
    run_training(
        variant_config(validate_config(cfg), "default"),
        stage="baseline",
        cache_dir=tiny_cache,
        out_dir=out,
        state_dir=out / "state",
    )
    return out


def _reduced_config(
    tiny_config: dict[str, Any], demo_files: dict[int, Path], baseline: Path, results: Path
) -> dict[str, Any]:
    """The LUMI config's shape (files + a given baseline) at the tiny test size, 2 x 2 ranks."""
    cfg = copy.deepcopy(tiny_config)
    cfg["results_dir"] = str(results)
    cfg["data"]["source"] = "files"
    cfg["data"]["files"] = {str(year): str(path) for year, path in demo_files.items()}
    cfg["baseline"].update(
        checkpoint=str(baseline / "baseline.ckpt"), wind_orders=str(baseline / "wind_orders.npz")
    )
    cfg["baseline"]["train"].update(_BASELINE_TRAIN)
    # The baseline's validation subset (every validation pass uses it), so the gates compare like
    # with like; global batch 4 = 2 nodes x 2 ranks x 1.
    cfg["validation"].update(_VALIDATION)
    cfg["gates"].update(validate_short_steps=2)
    cfg["finetune"].update(steps=4, val_every=2, checkpoint_every=2, batch_size=4)
    cfg["launch"].update(nodes=2, tasks_per_node=2)
    cfg["report"].update(eval_batches=1, bootstrap_samples=100, control=None)  # one chain
    cfg["variants"] = {"default": {}}
    return validate_config(cfg, source="tests/workflow/test_slurm.py")


SLURM_RUN_TIMEOUT_S = 420


@pytest.mark.slurm
@pytest.mark.slow
def test_pipeline_on_localhost_slurm(
    slurm_cluster: None,
    tmp_path: Path,
    tiny_config: dict[str, Any],
    demo_files: dict[int, Path],
    trained_baseline: Path,
    lumi_profile: dict[str, Any],
) -> None:
    cfg = _reduced_config(tiny_config, demo_files, trained_baseline, tmp_path / "results")
    cfg_path = tmp_path / "slurm_test_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    profile = derive.derive_test_profile(
        lumi_profile,
        configfile=cfg_path,
        logdir=tmp_path / "slurm_logs",
        nodes=cfg["launch"]["nodes"],
        tasks_per_node=cfg["launch"]["tasks_per_node"],
    )
    profile_dir = tmp_path / "profile"
    derive.write_profile(profile, profile_dir)

    log_path = tmp_path / "snakemake.out"
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(profile_dir),
    ]
    env = _snakemake_env({"MIOPEN_USER_DB_PATH": str(tmp_path / "miopen")})
    start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=SLURM_RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # snakemake and only what it started
            proc.wait(timeout=60)
            rc = None
    elapsed = time.monotonic() - start
    out = log_path.read_text()
    run_id = re.search(r"SLURM run ID: (\S+)", out)
    if rc is None:
        if run_id:
            subprocess.run(["scancel", "--name", run_id.group(1)], timeout=30, check=False)
        pytest.fail(f"the Slurm run took over {SLURM_RUN_TIMEOUT_S} s; its output:\n{out[-4000:]}")
    assert rc == 0, f"snakemake failed ({elapsed:.0f} s):\n{out[-6000:]}"
    assert run_id, "no SLURM run ID in snakemake's output"
    print(f"pipeline on the localhost Slurm: {elapsed:.0f} s")

    # --- read back from Slurm what ran -------------------------------------------------------
    jobs: dict[str, dict[str, str]] = {}
    steps: list[dict[str, str]] = []
    for _ in range(20):  # step records reach slurmdbd a moment after the job ends
        rows = _sacct(run_id.group(1))
        jobs = {r["JobID"]: r for r in rows if "." not in r["JobID"]}
        steps = [r for r in rows if re.fullmatch(r"\d+\.\d+", r["JobID"])]
        if len(jobs) >= len(GATED_CHAIN) and all(
            any(s["JobID"].startswith(f"{j}.") for s in steps) for j in jobs
        ):
            break
        time.sleep(1)
    by_rule: dict[str, dict[str, str]] = {}
    for job in jobs.values():
        comment = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", job["Comment"])
        assert comment, f"job {job['JobID']}: no rule_<name> comment ({job['Comment']!r})"
        rule = comment.group(1)
        assert rule not in by_rule, f"{rule} was submitted twice (retries must be 0)"
        by_rule[rule] = job
    assert set(by_rule) == set(GATED_CHAIN), f"Slurm ran {sorted(by_rule)}"

    for rule in GATED_CHAIN:
        job, want = by_rule[rule], rule_resources(profile, rule)
        lumi = rule_resources(lumi_profile, rule)
        where = f"{rule} (job {job['JobID']})"
        assert job["State"] == "COMPLETED", f"{where}: {job['State']}"
        # Partition, account, wall time, CPUs, GPUs and memory as the LUMI profile maps them.
        assert job["Partition"] == want["slurm_partition"] == lumi["slurm_partition"], where
        assert job["Account"] == want["slurm_account"] == derive.CI_ACCOUNT, where
        if rule == "finetune":  # derived from validate_short's measured step time
            measured = json.loads(
                (tmp_path / "results/variants/default/validate_short.json").read_text()
            )
            derived = finetune_projection(
                cfg,
                start_times=start_times_in_cache(
                    json.loads((tmp_path / "results/cache/meta.json").read_text())
                ),
                measured=measured_from_report(measured),
            )["request"]["minutes"]
            assert _minutes(job["Timelimit"]) == derived, (where, job["Timelimit"], derived)
        else:
            assert _minutes(job["Timelimit"]) == want["runtime"] == lumi["runtime"], where
        nodes = want.get("nodes", 1)
        tasks = want.get("tasks_per_node", 1)
        tres = _tres(job["ReqTRES"])
        assert int(job["NNodes"]) == nodes, where
        assert int(tres["cpu"]) == nodes * tasks * want["cpus_per_task"], (where, tres)
        assert want["cpus_per_task"] == lumi["cpus_per_task"], where
        mem_mb = _mem_mb(tres["mem"])
        assert mem_mb == pytest.approx(want["mem_mb"] * nodes, rel=1e-3), (where, tres)
        assert want["mem_mb"] == lumi["mem_mb"], where
        if "gres" in want:
            per_node = int(want["gres"].split(":")[-1])
            assert int(tres["gres/gpu"]) == per_node * nodes, (where, tres)
            assert want["gres"] == lumi["gres"], where
        else:
            assert "gres/gpu" not in tres, where
        submit = job["SubmitLine"]
        assert f"--cpus-per-task={want['cpus_per_task']}" in submit, where
        if "slurm_extra" in want:
            assert want["slurm_extra"] in submit, where

    # The ranked stages ran nodes x tasks_per_node ranks across the nodes: one srun step each.
    for rule in RANKED:
        job, want = by_rule[rule], rule_resources(profile, rule)
        assert f"--ntasks-per-node={want['tasks_per_node']}" in job["SubmitLine"], rule
        ranked_steps = [
            s for s in steps if s["JobID"].startswith(f"{job['JobID']}.") and int(s["NTasks"]) > 1
        ]
        assert len(ranked_steps) == 1, (rule, ranked_steps)
        step = ranked_steps[0]
        assert int(step["NTasks"]) == want["nodes"] * want["tasks_per_node"], (rule, step)
        assert int(step["NNodes"]) == want["nodes"], (rule, step)
        assert step["NodeList"] == job["NodeList"], (rule, step)
        assert step["State"] == "COMPLETED", (rule, step)
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", by_rule["finetune"]["NodeList"]],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout.split()
    assert len(set(hosts)) == cfg["launch"]["nodes"], hosts

    # ... and the training saw that world (it refuses any other).
    results = Path(cfg["results_dir"]) / "variants" / "default"
    short = json.loads((results / "validate_short.json").read_text())
    assert short["passed"] and short["world_size"] == 2 and short["launcher"] == "slurm"
    summary = json.loads((results / "finetune" / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["steps"] == cfg["finetune"]["steps"]

    # The network check ran the fine-tune's geometry over 2 Slurm nodes with gloo: measured, and
    # only the provider check skipped (no RCCL on CPUs), with the reason in the report. Each rank
    # saw one GPU, its local rank's: Slurm's ROCR_VISIBLE_DEVICES narrowed by rank.sh, as on LUMI.
    network = json.loads((Path(cfg["results_dir"]) / "gates" / "check_network.json").read_text())
    assert network["passed"] and network["world_size"] == 4 and network["backend"] == "gloo"
    assert len(network["nodes"]) == 2, network["nodes"]
    assert network["provider_check"]["status"] == "skipped"
    assert network["provider_check"]["reason"].startswith(
        "backend gloo: the ranks run on the CPU without RCCL"
    )
    assert network["allreduce"]["measured"] and network["allreduce"]["busbw_gbps"] > 0
    assert network["gradient"]["params"] == gradient_numel(cfg)["params"]
    for r in network["ranks"]:
        rocr = re.search(r"ROCR_VISIBLE_DEVICES=([\d,]+)", r["visible"])
        assert rocr and rocr.group(1) == str(r["rank"] % 2), r
    assert "provider check skipped: backend gloo" in network["reason"]

    # Every stage ran behind the LUMI rank wrapper (here without container): it made the MIOpen
    # cache folder the test pointed it to.
    assert (tmp_path / "miopen").is_dir(), "profiles/lumi/rank.sh did not run in the jobs"

    # The chain completed: the report exists.
    assert (Path(cfg["results_dir"]) / "report" / "verdict.json").is_file()


_WORLD_CHECK = """
import sys
from aqnet.train.distributed import LaunchError, init_distributed
try:
    init_distributed(backend="gloo", device="cpu", expected_world_size=int(sys.argv[1]))
except LaunchError as exc:
    print(f"REFUSED: {exc}", flush=True)
    raise SystemExit(3)
print("STARTED", flush=True)
"""


@pytest.mark.slurm
def test_bare_srun_in_a_cleared_job_starts_one_rank_per_node_and_is_refused(
    slurm_cluster: None, tmp_path: Path
) -> None:
    """Why the launcher writes the geometry out: the plugin's SLURM_* clearing, on a real Slurm."""
    check = tmp_path / "world_check.py"
    check.write_text(_WORLD_CHECK)
    job = tmp_path / "job.sh"
    job.write_text(
        "#!/bin/bash\n"
        "# What the Slurm executor plugin does before an mpi rule's shell: keep only the job's\n"
        "# identity among the SLURM_* variables.\n"
        "for v in $(compgen -e | grep '^SLURM_'); do\n"
        "  case $v in SLURM_JOB_ID | SLURM_JOBID | SLURM_CLUSTER_NAME | SLURM_SUBMIT_DIR) ;;\n"
        '  *) unset "$v" ;;\n'
        "  esac\n"
        "done\n"
        f"srun --kill-on-bad-exit=0 {sys.executable} {check} 4\n"
    )
    log = tmp_path / "job.log"
    proc = subprocess.run(
        [
            "sbatch", "--parsable", "--wait", "-A", derive.CI_ACCOUNT, "-p", "standard-g",
            "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=2000", "-t", "5",
            "-o", str(log), str(job),
        ],
        capture_output=True, text=True, timeout=180, env=_snakemake_env(),
    )  # fmt: skip
    out = log.read_text() if log.exists() else ""
    assert proc.returncode != 0, f"the job should fail:\n{out}"
    job_id = proc.stdout.strip().split(";")[0]
    # 2 ranks (one per node) instead of 2 x 2, and each refuses to start with the wrong world.
    assert out.count("REFUSED: started 2 ranks but the run is configured for 4") == 2, out
    assert "STARTED" not in out
    steps = subprocess.run(
        ["sacct", "-j", f"{job_id}.0", "-n", "-P", "--format=NTasks,NNodes"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert steps[:1] == ["2|2"], steps


_NARROWED_GPU_CHECK = """
import os, sys
from types import SimpleNamespace
import torch
from aqnet.train.distributed import (
    LaunchError, _check_ranks, gpu_identity, init_distributed, rank_record,
)
# The PCI buses of a LUMI-G node's eight GCDs. The fake GPUs of the localhost Slurm cannot be
# queried, so torch's device properties are stood in for: visible index i resolves through this
# rank's ROCR_VISIBLE_DEVICES (as the ROCm runtime does) to the physical GCD and its bus.
BUS = (0xC1, 0xC6, 0xC9, 0xCE, 0xD1, 0xD6, 0xD9, 0xDE)
def properties(index):
    physical = int(os.environ["ROCR_VISIBLE_DEVICES"].split(",")[index])
    return SimpleNamespace(pci_bus_id=BUS[physical], pci_domain_id=0, pci_device_id=0, uuid=None)
ctx = init_distributed(backend="gloo", device="cpu", expected_world_size=int(sys.argv[1]))
visible = os.environ["ROCR_VISIBLE_DEVICES"].split(",")
me = rank_record(
    ctx.info, torch.device("cuda", 0), host=os.environ["SLURMD_NODENAME"],
    identity=lambda i: gpu_identity(i, properties=properties),
)
ranks = ctx.all_gather_object(me)
ctx.close()
if ctx.rank == 0:
    try:
        _check_ranks(ranks, ctx.world_size)
    except LaunchError as exc:
        print(f"REFUSED: {exc}", flush=True)
        raise SystemExit(3)
    print("GPUS " + " ".join(f"{r['host']}/{r['rank']}={r['gpu']}" for r in ranks), flush=True)
print(f"RANK {ctx.rank} sees {len(visible)} GPU(s): {','.join(visible)}", flush=True)
"""


def _narrowed_job(tmp_path: Path, pin: str | None) -> subprocess.CompletedProcess[str]:
    """2 nodes x 2 ranks with 2 (fake) GPUs each, every rank started by profiles/lumi/rank.sh.

    ``pin`` exports ROCR_VISIBLE_DEVICES before the wrapper (every rank bound to that one GPU).
    """
    check = tmp_path / "narrowed_gpu_check.py"
    check.write_text(_NARROWED_GPU_CHECK)
    pre = f"export ROCR_VISIBLE_DEVICES={pin}; " if pin is not None else ""
    return subprocess.run(
        [
            "srun", "-A", derive.CI_ACCOUNT, "-p", "standard-g", "--nodes=2",
            "--ntasks-per-node=2", "--gres=gpu:2", "--cpus-per-task=1", "--mem=2000", "-t", "3",
            "--kill-on-bad-exit=1", "bash", "-c",
            f'{pre}exec bash {RANK_SH} --container none -- "$@"', "rank",
            sys.executable, str(check), "4",
        ],
        capture_output=True, text=True, timeout=180,
        env=_snakemake_env({"MIOPEN_USER_DB_PATH": str(tmp_path / "miopen")}),
    )  # fmt: skip


@pytest.mark.slurm
def test_lumi_gpu_narrowing_on_localhost_slurm(slurm_cluster: None, tmp_path: Path) -> None:
    """Slurm gives each task the node's GPUs (ROCR_VISIBLE_DEVICES=0,1) and rank.sh narrows every
    rank to its own, which it then sees as cuda:0: the check after the rendezvous (real gloo
    ranks on two Slurm nodes) passes because the physical GPUs differ."""
    proc = _narrowed_job(tmp_path, pin=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    seen = sorted(re.findall(r"RANK (\d) sees (\d) GPU\(s\): (\S+)", out))
    assert seen == [("0", "1", "0"), ("1", "1", "1"), ("2", "1", "0"), ("3", "1", "1")], out
    gpus = dict(item.split("=") for item in re.search(r"GPUS (.*)", out).group(1).split())
    hosts = sorted({key.split("/")[0] for key in gpus})
    assert len(hosts) == 2, gpus  # two Slurm nodes, each rank on cuda:0 of its own GCD
    assert gpus == {
        f"{hosts[0]}/0": "pci:0000:c1:00",
        f"{hosts[0]}/1": "pci:0000:c6:00",
        f"{hosts[1]}/2": "pci:0000:c1:00",
        f"{hosts[1]}/3": "pci:0000:c6:00",
    }


@pytest.mark.slurm
def test_two_ranks_bound_to_one_gpu_on_localhost_slurm_are_refused(
    slurm_cluster: None, tmp_path: Path
) -> None:
    proc = _narrowed_job(tmp_path, pin="1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert re.search(r"REFUSED: ranks 0 and 1 on nid\d+ both use the GPU pci:0000:c6:00", out), out


REQUEUE_SCRIPT = REPO / "workflow" / "scripts" / "requeue_on_tempfail.sh"
_REQUEUE_STEPS = 12
_REQUEUE_TIMING = ("samples_per_s", "step_time_s", "val_time_s")


def _sacct_allocations(job_id: str) -> list[dict[str, str]]:
    """Every allocation of a job, requeued ones included (``sacct --duplicates``)."""
    proc = subprocess.run(
        ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-P", "--format=JobID,State,ExitCode"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    keys = ("JobID", "State", "ExitCode")
    return [dict(zip(keys, line.split("|"), strict=True)) for line in proc.stdout.splitlines()]


def _squeue_state(job_id: str) -> str:
    proc = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=15
    )
    return proc.stdout.strip()


@pytest.mark.slurm
@pytest.mark.slow
def test_finetune_requeues_itself_on_localhost_slurm(
    slurm_cluster: None,
    tmp_path: Path,
    tiny_config: dict[str, Any],
    tiny_cache: Path,
    trained_baseline: Path,
) -> None:
    """USR1 before the time limit: the fine-tune saves, its job requeues itself (the rule's own
    workflow/scripts/requeue_on_tempfail.sh), resumes from the state and ends exactly where an
    uninterrupted run ends. Evidence from Slurm (sacct's allocations of the job), the state folder
    and the training's own "resumed" line, not from Slurm's output file (a requeued job's output
    file is rewritten from the start)."""
    import torch

    from aqnet.checkpoint import read_checkpoint
    from aqnet.config import dump_config
    from aqnet.train.metrics import read_metrics
    from aqnet.train.state import STATE_FILE

    cfg = copy.deepcopy(tiny_config)
    cfg["validation"].update(_VALIDATION)
    cfg["finetune"].update(
        steps=_REQUEUE_STEPS, val_every=6, checkpoint_every=2, batch_size=4, device="cpu"
    )
    config = tmp_path / "config.yaml"
    dump_config(variant_config(validate_config(cfg), "default"), config)

    def finetune(out: Path, state: Path) -> list[str]:
        return [
            str(BIN / "aqnet"), "finetune", "--config", str(config), "--cache", str(tiny_cache),
            "--init", str(trained_baseline / "baseline.ckpt"), "--out-dir", str(out),
            "--state-dir", str(state), "--world-size", "1",
        ]  # fmt: skip

    # The uninterrupted reference, outside Slurm.
    ref = subprocess.run(
        finetune(tmp_path / "ref", tmp_path / "ref_state"),
        capture_output=True, text=True, timeout=180, env=_snakemake_env(),
    )  # fmt: skip
    assert ref.returncode == 0, ref.stdout + ref.stderr

    # The same fine-tune as the rule runs it on LUMI: the requeue script around srun and rank.sh.
    out, state, log = tmp_path / "out", tmp_path / "state", tmp_path / "finetune.log"
    job = tmp_path / "job.sh"
    job.write_text(
        "#!/bin/bash\n"
        f"exec bash {REQUEUE_SCRIPT} {log} -- srun --ntasks=1 --kill-on-bad-exit=1 "
        f"bash {RANK_SH} --container none -- {' '.join(finetune(out, state))}\n"
    )
    submit = subprocess.run(
        [
            "sbatch", "--parsable", "-A", derive.CI_ACCOUNT, "-p", "small", "--ntasks=1",
            "--cpus-per-task=1", "--mem=2000", "-t", "2", "--requeue",
            "-o", str(tmp_path / "slurm-%j.out"), str(job),
        ],
        capture_output=True, text=True, timeout=30,
        env=_snakemake_env({"MIOPEN_USER_DB_PATH": str(tmp_path / "miopen")}),
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip().split(";")[0]
    try:
        # The early signal: once the first checkpoint exists, freeze the training step, queue
        # USR1 (Slurm's warning before the time limit) and let it go on, so the signal lands
        # mid-run however fast this machine trains.
        deadline = time.monotonic() + 60
        while not (state / STATE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (state / STATE_FILE).exists(), f"no checkpoint within 60 s:\n{log.read_text()}"
        for sig in ("STOP", "USR1", "CONT"):
            subprocess.run(["scancel", f"--signal={sig}", job_id], timeout=15, check=True)
        # The job requeues itself; a requeued job waits for its begin time (about 2 minutes on
        # LUMI). Once the old allocation has been cleaned up for a few seconds (starting it while
        # slurmstepd still tears it down fails the launch), make the begin time now.
        deadline = time.monotonic() + 60
        while "requeueing Slurm job" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"the job did not requeue:\n{log.read_text()}"
            time.sleep(0.2)
        deadline, pending_since, released = time.monotonic() + 90, None, False
        while (state_now := _squeue_state(job_id)) not in ("", "COMPLETED"):
            assert time.monotonic() < deadline, f"job {job_id}: {state_now}"
            if state_now == "PENDING" and not released:
                pending_since = pending_since or time.monotonic()
                if time.monotonic() - pending_since > 5:
                    subprocess.run(
                        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                        capture_output=True, timeout=15,
                    )  # fmt: skip
                    released = True
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=15)

    # Slurm: two allocations of the one job, the first requeued, the second completed.
    allocations: list[dict[str, str]] = []
    for _ in range(20):  # the final record reaches slurmdbd a moment after the job ends
        allocations = _sacct_allocations(job_id)
        if [a["State"] for a in allocations][-1:] == ["COMPLETED"]:
            break
        time.sleep(1)
    states = [a["State"] for a in allocations]
    assert states == ["REQUEUED", "COMPLETED"], allocations
    # The stage log (appended by the requeue script) keeps both allocations' parts.
    text = log.read_text()
    saved = re.search(r"SIGUSR1 received; state saved at step (\d+)", text)
    assert saved, text
    step = int(saved.group(1))
    assert 0 < step < _REQUEUE_STEPS
    assert f"finetune: requeueing Slurm job {job_id} to resume" in text
    assert re.search(rf"resumed finetune from \S+ at step {step}\b", text), text

    # ... and the same result as the uninterrupted run: metrics (timing aside) and weights.
    def rows(path: Path) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.items() if k not in _REQUEUE_TIMING} for r in read_metrics(path)
        ]

    assert rows(out / "metrics.csv") == rows(tmp_path / "ref" / "metrics.csv")
    got = read_checkpoint(out / "final.ckpt").state_dict
    want = read_checkpoint(tmp_path / "ref" / "final.ckpt").state_dict
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

"""What stops a run from wasting its allocation: the step-time watchdog, the heartbeat that names
a dead rank, fresh start versus resume, and checkpoint writes that fail (full disk).

The runs use the tiny model, config and cache of ``tests/conftest.py`` (4 optimizer steps of a
global batch of 4 unless a test says otherwise, a checkpoint every 2 steps).
"""

from __future__ import annotations

import copy
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import aqnet.train.state as state_module
import aqnet.train.step as step_module
from aqnet.config import dump_config, load_resolved, variant_config
from aqnet.provenance import gate_digest
from aqnet.stage import StageFailure, write_json
from aqnet.train import run_training
from aqnet.train.heartbeat import PEER_LOST_EXIT_CODE, PeerMonitor
from aqnet.train.metrics import read_metrics
from aqnet.train.resume import COMPLETE_FILE, FRESH_ENV
from aqnet.train.state import STATE_FILE, ResumeError, load_state
from aqnet.train.watchdog import SLOW_EXIT_CODE, RunTooSlow, StepWatchdog, expected_step_time

STEPS = 4
SMALL: dict[str, Any] = {
    "steps": STEPS,
    "batch_size": 4,
    "val_every": 2,
    "checkpoint_every": 2,
    "warmup_steps": 2,
    "log_every": 0,
    "dist_timeout_s": 60,
}


def _config(tiny_config: dict[str, Any], **train: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(tiny_config)
    for section in (cfg["baseline"]["train"], cfg["finetune"]):
        section.update(copy.deepcopy({**SMALL, **train}))
    cfg["validation"].update(samples=4, batch_size=2)
    return variant_config(cfg, "default")


@pytest.fixture(scope="module")
def cfg(tiny_config: dict[str, Any]) -> dict[str, Any]:
    return _config(tiny_config)


def _baseline(cfg: dict[str, Any], cache: Path, root: Path, **kw: Any) -> dict[str, Any]:
    return run_training(
        cfg,
        stage="baseline",
        cache_dir=cache,
        out_dir=root / "out",
        state_dir=root / "state",
        **kw,
    )


# --------------------------------------------------------------------------------------------
# Step-time watchdog
# --------------------------------------------------------------------------------------------


def test_step_watchdog_trips_on_the_median_not_on_one_slow_step() -> None:
    dog = StepWatchdog(expected_step_time_s=1.0, window_steps=3, max_slowdown=2.0)
    assert dog.limit_s == 2.0
    for t in (1.0, 1.1):
        dog.observe(t)
    assert dog.median_s() is None and not dog.tripped()  # window not full yet
    dog.observe(50.0)  # one outlier: the median is 1.1
    assert dog.median_s() == pytest.approx(1.1) and not dog.tripped()
    dog.observe(2.5)  # window (1.1, 50, 2.5): median 2.5 > 2.0
    assert dog.median_s() == pytest.approx(2.5) and dog.tripped()
    with pytest.raises(ValueError, match="max_slowdown > 1"):
        StepWatchdog(expected_step_time_s=1.0, window_steps=3, max_slowdown=1.0)
    assert expected_step_time({"measured_step_time_s": 0.25}) == 0.25
    with pytest.raises(ValueError, match="records no step time"):
        expected_step_time({"passed": False})


def test_watchdog_saves_and_stops_a_run_with_an_injected_slow_step(
    tiny_config: dict[str, Any], tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps from the 4th on take 1.5 s more; with an expected step time of 0.25 s and
    max_slowdown 4 (a limit of 1 s), a window of 3 trips once two slow steps are in it (the
    first step of a process is not counted). The step's clock is a virtual one (each reading
    0.05 s after the last, plus the injected delay), so the outcome does not depend on how busy
    the machine is."""
    cfg = _config(
        tiny_config, steps=12, checkpoint_every=100, watchdog={"window_steps": 3, "max_slowdown": 4}
    )
    real_mse = step_module.masked_mse
    calls = {"n": 0}
    clock = {"now": 0.0}

    def perf_counter() -> float:
        clock["now"] += 0.05
        return clock["now"]

    def slow_mse(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1  # one call per micro-batch of a training step
        if calls["n"] >= 4:
            clock["now"] += 1.5  # a slow step, without sleeping
        return real_mse(*args, **kwargs)

    monkeypatch.setattr(step_module, "masked_mse", slow_mse)
    monkeypatch.setattr(step_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    with pytest.raises(RunTooSlow) as err:
        _baseline(cfg, tiny_cache, tmp_path, expected_step_time_s=0.25)
    exc = err.value
    # Steps 4 and 5 are slow; the flag set after step 5 stops every rank after step 6.
    assert exc.step == 6 and exc.expected_s == 0.25 and exc.measured_s > 1.5
    msg = str(exc)
    assert "stopped by the step-time watchdog at step 6" in msg
    assert f"{exc.measured_s:.3g} s" in msg and "the 0.25 s validate_short measured" in msg
    assert "limit 4x = 1 s" in msg and "rerun to resume" in msg
    assert load_state(tmp_path / "state" / STATE_FILE)["step"] == 6  # saved before stopping
    assert not (tmp_path / "out" / "baseline.ckpt").exists()

    # The rerun (the fabric healthy again) resumes at step 6 and finishes.
    monkeypatch.setattr(step_module, "masked_mse", real_mse)
    done = _baseline(cfg, tiny_cache, tmp_path, expected_step_time_s=60.0)
    assert done["resumed_from"] == 6 and done["completed"]


def test_no_step_time_watchdog_when_max_slowdown_is_null(
    tiny_config: dict[str, Any], tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's setting: every step 100x slower than expected, and the run still finishes."""
    cfg = _config(tiny_config, steps=6, watchdog={"window_steps": 1, "max_slowdown": None})
    clock = {"now": 0.0}

    def perf_counter() -> float:
        clock["now"] += 5.0  # each step 5 s on the step's clock
        return clock["now"]

    monkeypatch.setattr(step_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    done = _baseline(cfg, tiny_cache, tmp_path, expected_step_time_s=0.05)
    assert done["completed"] and done["steps_done"] == 6


def test_the_cli_exits_with_the_watchdog_code_reading_validate_shorts_report(
    tiny_config: dict[str, Any], tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aqnet.cli import main

    cfg = _config(tiny_config, steps=6, watchdog={"window_steps": 1, "max_slowdown": 1.5})
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)
    report = tmp_path / "validate_short.json"
    made_under = {"config_digest": gate_digest(load_resolved(config))}
    write_json(report, {"measured_step_time_s": 1e-6, **made_under})  # any real step is slower
    args = ["train", "--stage", "baseline", "--config", str(config), "--cache", str(tiny_cache)]
    args += ["--out-dir", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]
    for key in [k for k in os.environ if k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))]:
        monkeypatch.delenv(key)
    assert main([*args, "--expected-step-time-from", str(report)]) == SLOW_EXIT_CODE
    write_json(report, {"passed": False, **made_under})
    assert main([*args, "--expected-step-time-from", str(report)]) == 1


def test_the_fine_tune_refuses_a_step_time_measured_under_another_config(
    tiny_config: dict[str, Any],
    tiny_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aqnet.cli import main

    cfg = _config(tiny_config, steps=6)
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)
    other = copy.deepcopy(load_resolved(config))
    other["finetune"]["batch_size"] = int(other["finetune"]["batch_size"]) * 2
    report = tmp_path / "validate_short.json"
    write_json(
        report,
        {"passed": True, "measured_step_time_s": 0.5, **{"config_digest": gate_digest(other)}},
    )
    args = ["train", "--stage", "baseline", "--config", str(config), "--cache", str(tiny_cache)]
    args += ["--out-dir", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]
    assert main([*args, "--expected-step-time-from", str(report)]) == 1
    err = capsys.readouterr().err
    assert f"{report}: the validate_short report was made under config {gate_digest(other)}" in err
    assert "its step time is not this run's; rerun validate_short" in err
    assert not (tmp_path / "state").exists()  # refused before any training


# --------------------------------------------------------------------------------------------
# Heartbeat
# --------------------------------------------------------------------------------------------


def test_peer_monitor_names_a_dead_rank_and_a_stuck_one() -> None:
    hosts = ["nid001", "nid001", "nid002"]
    mon = PeerMonitor(watched=[1, 2], hosts=hosts, peer_timeout_s=30, stall_timeout_s=60, now=0.0)
    for t in range(0, 50, 10):
        mon.observe(1, t, 1 + t, float(t))  # rank 1 beats and progresses
        mon.observe(0, t, 1 + t, float(t))
        if t < 20:
            mon.observe(2, t, 1 + t, float(t))  # rank 2 stops beating after t = 10
    assert mon.verdict(35.0) is None
    msg = mon.verdict(41.0)
    assert msg is not None and msg.startswith("rank 2 (host nid002, last 31 s ago)")
    assert "no heartbeat for more than 30 s" in msg

    # A stuck rank keeps beating but makes no progress; everyone waits on it.
    mon = PeerMonitor(watched=[1, 2], hosts=hosts, peer_timeout_s=30, stall_timeout_s=60, now=0.0)
    for t in range(0, 110, 10):
        for r in (0, 1, 2):
            # rank 1 hangs at 41 ticks; the others then wait on it, stuck at 60 from t = 60
            mon.observe(r, t, min(6 + t, 41 if r == 1 else 60), float(t))
    assert mon.verdict(110.0) is None
    msg = mon.verdict(125.0)
    assert msg is not None and "no rank made progress for 65 s" in msg
    assert "the least progress (41 ticks) is on rank 1 (host nid001)" in msg
    # A rank never seen at all is dead too; before the first step no stall is declared.
    mon = PeerMonitor(watched=[1], hosts=hosts, peer_timeout_s=30, stall_timeout_s=60, now=0.0)
    mon.observe(0, 1, 0, 0.0)
    assert "rank 1 (host nid001, never seen" in (mon.verdict(31.0) or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_is_named_and_the_other_exits_within_the_timeout(
    killed: int, tiny_config: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    """2 gloo ranks; one is killed (SIGKILL) mid-run. The other must exit with
    PEER_LOST_EXIT_CODE within peer_timeout_s (+ a heartbeat and slack), naming the dead rank -
    also when it is rank 0, which hosts the rendezvous store the heartbeat goes through.
    """
    peer_timeout_s = 6.0
    cfg = _config(
        tiny_config,
        steps=5000,
        checkpoint_every=1000,
        val_every=1000,
        watchdog={"heartbeat_s": 1.0, "peer_timeout_s": peer_timeout_s, "stall_timeout_s": 30},
        dist_timeout_s=120,
    )
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)
    port = str(_free_port())
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    procs = []
    for rank in (0, 1):
        env = {
            **base_env,
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NTASKS": "2",
            "SLURM_NODEID": "0",
            "SLURM_STEP_ID": "0",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": "2",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        cmd = [sys.executable, "-m", "aqnet", "train", "--stage", "baseline"]
        cmd += ["--config", str(config), "--cache", str(tiny_cache), "--world-size", "2"]
        cmd += ["--out-dir", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    # Kill rank 1 once training is under way (metrics.csv exists after the step-0 validation).
    deadline = time.monotonic() + 180
    while not (tmp_path / "out" / "metrics.csv").exists() and time.monotonic() < deadline:
        assert procs[0].poll() is None and procs[1].poll() is None, procs[0].communicate()[0]
        time.sleep(0.05)
    time.sleep(1.0)
    survivor = procs[1 - killed]
    procs[killed].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    out = survivor.communicate(timeout=120)[0]
    elapsed = time.monotonic() - killed_at
    procs[killed].wait(timeout=30)
    assert survivor.returncode == PEER_LOST_EXIT_CODE, out
    assert elapsed < peer_timeout_s + 15, (elapsed, out)
    assert f"rank {killed} (host " in out and f"rank {1 - killed}: " in out, out
    if killed == 1:
        assert "no heartbeat for more than 6 s" in out, out


# --------------------------------------------------------------------------------------------
# Fresh start versus resume
# --------------------------------------------------------------------------------------------


def _archived(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.iterdir() if p.name not in (STATE_FILE, COMPLETE_FILE))


def test_a_finished_run_rerun_starts_afresh_and_keeps_the_old_state(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    first = _baseline(cfg, tiny_cache, tmp_path)
    state_dir = tmp_path / "state"
    assert first["completed"] and (state_dir / COMPLETE_FILE).is_file()
    # What `snakemake --forcerun` does: the same job again over a finished, delivered state.
    again = _baseline(cfg, tiny_cache, tmp_path)
    assert again["resumed_from"] is None and again["steps_done"] == STEPS
    rows = read_metrics(tmp_path / "out" / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # trained again from step 0
    archived = _archived(state_dir)
    assert len(archived) == 2, archived
    old_state = next(n for n in archived if n.startswith("last.") and n.endswith("Z.pt"))
    assert next(n for n in archived if n.startswith("complete.") and n.endswith("Z.json"))
    assert load_state(state_dir / old_state)["step"] == STEPS  # kept, not deleted


def test_a_crash_after_the_last_save_resumes_and_only_writes_the_outputs(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    _baseline(cfg, tiny_cache, tmp_path)
    (tmp_path / "state" / COMPLETE_FILE).unlink()  # as if killed while writing the outputs
    (tmp_path / "out" / "baseline.ckpt").unlink()
    again = _baseline(cfg, tiny_cache, tmp_path)
    assert again["resumed_from"] == STEPS and again["completed"]
    assert (tmp_path / "out" / "baseline.ckpt").is_file()
    assert _archived(tmp_path / "state") == []


def test_fresh_archives_an_unfinished_state_unless_it_is_this_jobs_own(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    _baseline(cfg, tiny_cache, tmp_path, stop_after_step=3)  # state at step 2
    # Requeued (same job id), with AQNET_FRESH=1 still in its environment: resumes.
    monkeypatch.setenv(FRESH_ENV, "1")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    resumed = _baseline(cfg, tiny_cache, tmp_path, stop_after_step=3)
    assert resumed["resumed_from"] == 2
    # Another job asking for a fresh start: the unfinished state is archived, training restarts.
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    fresh = _baseline(cfg, tiny_cache, tmp_path)
    assert fresh["resumed_from"] is None and fresh["completed"]
    archived = _archived(tmp_path / "state")
    assert len(archived) == 1 and load_state(tmp_path / "state" / archived[0])["step"] == 2

    # A state of other settings is refused without --fresh, naming the way out.
    monkeypatch.delenv(FRESH_ENV)
    _baseline(cfg, tiny_cache, tmp_path, stop_after_step=3)
    with pytest.raises(ResumeError, match=f"start the stage afresh with {FRESH_ENV}=1"):
        _baseline(_config(cfg, batch_size=8), tiny_cache, tmp_path)


# --------------------------------------------------------------------------------------------
# Checkpoint writes that fail
# --------------------------------------------------------------------------------------------


def test_a_full_disk_at_a_checkpoint_names_file_space_and_the_last_good_one(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    saves = {"n": 0}

    def save_then_fill_the_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        saves["n"] += 1
        if saves["n"] == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"x" * 4096)  # part of the zip, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_module.torch, "save", save_then_fill_the_disk)
    state_dir = tmp_path / "state"
    with pytest.raises(StageFailure) as err:
        _baseline(cfg, tiny_cache, tmp_path)
    msg = str(err.value)
    last = state_dir / STATE_FILE
    assert msg.startswith("baseline: checkpoint at step 4 failed: could not write " + str(last))
    assert "No space left on device (ENOSPC) after 4.0 KiB written" in msg
    assert "free of " in msg and f"on {state_dir}" in msg
    assert f"the previous {STATE_FILE} (written " in msg and ") is intact" in msg
    assert f"last good checkpoint: step 2, in {last}" in msg
    monkeypatch.setattr(state_module.torch, "save", real_save)
    # The previous checkpoint is intact and loads; no temporary file is left behind.
    assert load_state(last)["step"] == 2
    assert sorted(p.name for p in state_dir.iterdir()) == [STATE_FILE]
    assert _baseline(cfg, tiny_cache, tmp_path)["resumed_from"] == 2


def test_the_watchdog_stop_names_the_slowest_rank_and_its_host() -> None:
    dog = StepWatchdog(expected_step_time_s=1.0, window_steps=2, max_slowdown=1.5)
    stop = dog.stop(
        medians_s=[1.1, 2.5, 0.0],
        hosts=["nid001", "nid002", "nid002"],
        stage="finetune",
        step=40,
        state_path="/s/last.pt",
    )
    assert isinstance(stop, RunTooSlow) and (stop.step, stop.measured_s) == (40, 2.5)
    assert "2.5 s (slowest rank 1 on nid002), 2.5x the 1 s validate_short measured" in str(stop)
    single = dog.stop(medians_s=[3.0], hosts=["x"], stage="finetune", step=5, state_path="/s")
    assert "(a single process)" in str(single) and single.expected_s == 1.0

"""The training loop on the tiny cache: stage outputs, exact resumption, NaN stop, the
``validate_short`` gate, and multi-process runs (2-rank DDP, SIGKILL, SIGUSR1 requeue).

All runs use the tiny model and config of ``tests/conftest.py`` with 4 optimizer steps of a global
batch of 4, validation on the pipeline's validation subset (4 samples of the val year, in batches
of 2) at steps 0, 2 and 4, and a checkpoint every 2 steps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aqnet.checkpoint import load_weights, read_checkpoint
from aqnet.config import dump_config, variant_config
from aqnet.orders import load_orders, orders_digest
from aqnet.stage import read_json, run_stage
from aqnet.train import REQUEUE_EXIT_CODE, TrainingDiverged, run_training
from aqnet.train.metrics import read_metrics
from aqnet.train.sampling import ResumableDistributedSampler
from aqnet.train.state import STATE_FILE, ResumeError, load_state
from aqnet.train.validate_short import validate_short

STEPS = 4
TIMING = ("samples_per_s", "step_time_s", "val_time_s")
SMALL_TRAIN: dict[str, Any] = {
    "steps": STEPS,
    "batch_size": 4,
    "val_every": 2,
    "checkpoint_every": 2,
    "warmup_steps": 2,
    "lr": 2e-3,
    "lr_new": 0.05,
    "log_every": 0,
    "dist_timeout_s": 60,
}


def _train_config(tiny_config: dict[str, Any], **train: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(tiny_config)
    cfg["baseline"]["train"].update({**SMALL_TRAIN, **train})
    cfg["finetune"].update({**SMALL_TRAIN, **train})
    cfg["gates"]["validate_short_steps"] = 2
    cfg["validation"].update(samples=4, batch_size=2)
    return variant_config(cfg, "default")


def _without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).state_dict


@pytest.fixture(scope="module")
def cfg(tiny_config: dict[str, Any]) -> dict[str, Any]:
    return _train_config(tiny_config)


@pytest.fixture(scope="module")
def baseline(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One uninterrupted single-process baseline run: the reference of the other tests."""
    root = tmp_path_factory.mktemp("baseline")
    result = run_training(
        cfg,
        stage="baseline",
        cache_dir=tiny_cache,
        out_dir=root / "out",
        state_dir=root / "state",
    )
    return {**result, "root": root, "out": root / "out", "state": root / "state"}


# --------------------------------------------------------------------------------------------
# Stage outputs
# --------------------------------------------------------------------------------------------


def test_baseline_outputs_and_the_audit_reads_them(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any]
) -> None:
    from aqnet.gates.audit import audit_checkpoint, build_model

    out = baseline["out"]
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(STEPS + 1))
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [0, 2, 4]
    assert rows[0]["train_loss"] is None and all(r["train_loss"] > 0 for r in rows[1:])
    assert rows[1]["lr"] == pytest.approx(2e-3 / 2)  # first warm-up step
    assert all(r["step_time_s"] > 0 and r["samples_per_s"] > 0 for r in rows[1:])
    assert "alpha_block0" not in rows[0]  # the baseline has no TopoFlow block
    # The overall validation loss is the mean over pollutants of the per-pollutant losses.
    per_pollutant = [rows[2][f"val_loss_{p}"] for p in ("pm25", "pm10", "so2", "no2", "co", "o3")]
    assert rows[2]["val_loss"] == pytest.approx(float(np.mean(per_pollutant)), rel=1e-9)

    # Lightning layout, the best validation loss recorded with the weights that reached it.
    contents = read_checkpoint(out / "baseline.ckpt")
    best = min(r["val_loss"] for r in rows if r["val_loss"] is not None)
    assert contents.layout == "lightning"
    assert all(k.startswith("model.") for k in contents.state_dict)
    assert contents.val_loss == pytest.approx(best, rel=1e-12)
    assert contents.hyper_parameters["model_config"]["topoflow_blocks"] == []
    assert baseline["best_val_loss"] == contents.val_loss

    # Read back by the audit's loader into the fine-tune model: only TopoFlow keys missing.
    model = build_model(cfg, tiny_cache)
    report = load_weights(model, out / "baseline.ckpt")
    assert sorted(report.missing) == sorted(model.topoflow_keys())
    assert sorted(report.missing) == ["blocks.0.attn.H_scale", "blocks.0.attn.elevation_alpha"]
    assert not report.unexpected and not report.shape_mismatched
    audit = audit_checkpoint(cfg, out / "baseline.ckpt", cache_dir=tiny_cache)  # the real gate
    assert "missing exactly the 2 expected new parameter(s)" in audit["reason"]
    assert audit["baseline_val_loss"] == contents.val_loss

    # The orders the baseline trained with are the cache's.
    orders, params, stored = load_orders(out / "wind_orders.npz")
    assert stored == orders_digest(orders, params)
    cache_orders, cache_params, _ = load_orders(tiny_cache / "wind_orders.npz")
    assert orders_digest(orders, params) == orders_digest(cache_orders, cache_params)


def test_smoke_gate_gives_back_the_recorded_loss_of_the_best_weights(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    """The baseline checkpoint holds the weights of its best validation and that loss, and the
    smoke gate evaluates the same validation items: it reproduces the loss to float error."""
    from aqnet.gates.smoke import smoke_forward

    hot = _train_config(cfg, lr=0.05)  # a rate at which the later steps validate worse
    result = run_training(
        hot, stage="baseline", cache_dir=tiny_cache, out_dir=tmp_path, state_dir=tmp_path / "s"
    )
    best, final = result["best_val_loss"], result["final_val_loss"]
    assert result["best_step"] < STEPS and abs(final - best) > 1e-2 * best  # best is not last
    assert result["validation_samples"] == 4
    recorded = read_checkpoint(tmp_path / "baseline.ckpt").val_loss
    assert recorded == best
    gate = copy.deepcopy(hot)
    gate["validation"]["batch_size"] = 3  # other batches, the same items
    report = smoke_forward(gate, tiny_cache, tmp_path / "baseline.ckpt", recorded, device="cpu")
    assert report["validation_samples"] == 4 and report["batches"] == 2
    assert abs(report["val_loss_rel_diff"]) < 1e-4
    assert abs(report["val_loss"] - final) > 1e-2 * final  # not the last weights' loss


def test_finetune_outputs_and_learning_alpha(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    from aqnet.gates.audit import build_model

    result = run_training(
        cfg,
        stage="finetune",
        cache_dir=tiny_cache,
        out_dir=tmp_path / "ft",
        state_dir=tmp_path / "state",
        init_checkpoint=baseline["out"] / "baseline.ckpt",
    )
    assert result["completed"] and result["init"]["missing"] == [
        "blocks.0.attn.elevation_alpha",
        "blocks.0.attn.H_scale",
    ]
    rows = read_metrics(tmp_path / "ft" / "metrics.csv")
    # Step 0 is the baseline itself (alpha = 0): same validation samples, same loss.
    assert rows[0]["alpha_block0"] == 0.0
    assert rows[0]["val_loss"] == pytest.approx(baseline["best_val_loss"], rel=1e-5)
    assert rows[1]["lr_new"] == pytest.approx(0.05 / 2) and rows[1]["lr"] == pytest.approx(1e-3)
    assert rows[-1]["alpha_block0"] != 0.0  # gradients reach alpha and it trains
    summary = read_json(tmp_path / "ft" / "summary.json")
    assert summary["steps"] == STEPS and summary["final_val_loss"] == rows[-1]["val_loss"]
    assert summary["final"]["alpha_block0"] == rows[-1]["alpha_block0"]
    contents = read_checkpoint(tmp_path / "ft" / "final.ckpt")
    assert contents.layout == "lightning" and contents.val_loss == rows[-1]["val_loss"]
    # The fine-tuned checkpoint is a complete fine-tune model: nothing missing.
    load_weights(build_model(cfg, tiny_cache), tmp_path / "ft" / "final.ckpt", expected_missing=[])

    with pytest.raises(ValueError, match="needs --init"):
        run_training(
            cfg, stage="finetune", cache_dir=tiny_cache, out_dir=tmp_path, state_dir=tmp_path
        )


# --------------------------------------------------------------------------------------------
# Resumption, NaN
# --------------------------------------------------------------------------------------------


def test_stop_and_resume_equals_an_uninterrupted_run(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    kw = {"stage": "baseline", "cache_dir": tiny_cache, "out_dir": tmp_path / "out"}
    first = run_training(cfg, **kw, state_dir=tmp_path / "state", stop_after_step=3)
    assert not first["completed"] and first["stopped_after_step"] == 3
    assert not (tmp_path / "out" / "baseline.ckpt").exists()
    assert load_state(tmp_path / "state" / STATE_FILE)["step"] == 2  # last checkpoint: step 2
    second = run_training(cfg, **kw, state_dir=tmp_path / "state")
    assert second["resumed_from"] == 2 and second["completed"]
    # Exactly equal (CPU, same thread count): metrics and the final weights.
    assert _without_timing(read_metrics(tmp_path / "out" / "metrics.csv")) == _without_timing(
        read_metrics(baseline["out"] / "metrics.csv")
    )
    a, b = (
        _state_dict(tmp_path / "out" / "baseline.ckpt"),
        _state_dict(baseline["out"] / "baseline.ckpt"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A state written by a different run is refused, naming the difference.
    changed = _train_config(cfg, batch_size=8)
    with pytest.raises(ResumeError, match=r"global_batch: 4 \(state\) vs 8 \(now\)"):
        run_training(changed, **kw, state_dir=tmp_path / "state")


def test_nan_in_a_batch_stops_the_run_naming_step_and_checkpoint(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path
) -> None:
    from aqnet.data import CacheDataset

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    ds = CacheDataset(cache, "train", lead_times_h=cfg["lead_times_h"])
    batch = cfg["baseline"]["train"]["batch_size"]
    spe = len(ds) // batch
    sampler = ResumableDistributedSampler(ds, num_replicas=1, rank=0, seed=0)

    def first_step_using(time_index: int) -> int:
        """The first step whose batch has its inputs ``x`` at time ``time_index``."""
        for step in range(1, STEPS + 1):
            epoch, pos = divmod(step - 1, spe)
            sampler.set_position(epoch=epoch, start=0)
            for i in list(sampler)[pos * batch : (pos + 1) * batch]:
                if ds.sample_info(i)[1] == time_index:
                    return step
        return STEPS + 1

    candidates = {
        t: first_step_using(t) for t in range(int(ds.meta["per_year"]["2013"]["n_times"]))
    }
    bad_t, bad_step = next((t, s) for t, s in candidates.items() if 3 <= s <= STEPS)
    year = np.load(cache / "year_2013.npy", mmap_mode="r+")
    year[bad_t, 0, 5, 7] = np.nan  # one grid cell of `u` at one time
    year.flush()
    del year

    with pytest.raises(TrainingDiverged) as err:
        run_training(
            cfg,
            stage="baseline",
            cache_dir=cache,
            out_dir=tmp_path / "out",
            state_dir=tmp_path / "state",
        )
    msg = str(err.value)
    assert f"non-finite training loss (nan) at step {bad_step}" in msg
    last = 2 * ((bad_step - 1) // 2)  # checkpoints every 2 steps
    assert f"the last good checkpoint is {tmp_path / 'state' / STATE_FILE} (step {last})" in msg
    assert load_state(tmp_path / "state" / STATE_FILE)["step"] == last
    # The message names the sample(s) and the variable holding the NaN.
    assert f"(year 2013, time index {bad_t}, lead" in msg and ": x:u" in msg
    assert "fix the cache" in msg
    assert all(
        math.isfinite(r["train_loss"] or 0) for r in read_metrics(tmp_path / "out" / "metrics.csv")
    )


# --------------------------------------------------------------------------------------------
# validate_short
# --------------------------------------------------------------------------------------------


def _gate(cfg: dict[str, Any], cache: Path, ckpt: Path, tmp: Path, world: int | None) -> dict:
    report_path = tmp / "validate_short.json"
    code = run_stage(
        "validate_short",
        lambda rep: validate_short(
            cfg,
            cache_dir=cache,
            out_dir=tmp / "vs",
            state_dir=tmp / "state",
            init_checkpoint=ckpt,
            expected_world_size=world,
            report=rep,
        ),
        report_path,
    )
    report = json.loads(report_path.read_text())
    assert (code == 0) == report["passed"]
    return report


def test_validate_short_passes_and_projects_the_cost(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    lumi = copy.deepcopy(cfg)
    # A 2-node full run of 270 steps; the short run is 1 rank with the full run's per-rank batch.
    lumi["launch"].update(nodes=2, tasks_per_node=1, gpu_hours_per_node_hour=4.0)
    lumi["finetune"].update(steps=270, val_every=25)
    report = _gate(lumi, tiny_cache, baseline["out"] / "baseline.ckpt", tmp_path, 1)
    assert report["passed"], report["reason"]
    assert report["world_size"] == 1 and report["ranks"][0]["rank"] == 0
    # alpha = 0 at step 0 and the same validation samples: the baseline's loss, to float error.
    assert report["step0_val_loss"] == pytest.approx(baseline["best_val_loss"], rel=1e-5)
    assert report["steps"] == 2 and len(report["train_losses"]) == 2
    # The short run used the full run's per-rank batch (4 / 2 ranks) and its schedule.
    assert report["batch"]["micro_batch"] == 2 and report["batch"]["schedule_steps"] == 270
    cost = report["projected_cost"]
    step = report["measured_step_time_s"]
    assert step > 0 and cost["steps"] == 270 and cost["nodes"] == 2
    # 12 validation passes (0, 25, ..., 250, 270), each split over twice the ranks.
    wall = 270 * step + 12 * report["measured_val_time_s"] / 2
    assert cost["wall_time_s"] == pytest.approx(wall)
    assert cost["node_hours"] == pytest.approx(wall / 3600 * 2)
    assert cost["gpu_hours"] == pytest.approx(wall / 3600 * 2 * 4)
    assert "GPU-hours" in report["reason"]


def test_validate_short_fails_on_a_baseline_mismatch_and_a_wrong_world(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    ckpt = baseline["out"] / "baseline.ckpt"
    off = copy.deepcopy(cfg)
    off["baseline"]["val_loss"] = 2.5 * baseline["best_val_loss"]
    report = _gate(off, tiny_cache, ckpt, tmp_path, 1)
    assert not report["passed"]
    assert (
        "step-0 val_loss" in report["reason"] and "differs from the baseline's" in report["reason"]
    )
    assert "gates.val_loss_rtol" in report["reason"]
    assert report["projected_cost"]["gpu_hours"] > 0  # measured even on failure

    report = _gate(cfg, tiny_cache, ckpt, tmp_path / "w", 4)
    assert not report["passed"]
    assert report["reason"].startswith("started 1 rank but the run is configured for 4")


def test_cli_refuses_a_wrong_world_size(
    cfg: dict[str, Any], tiny_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aqnet.cli import main

    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    args = ["--config", str(path), "--cache", str(tiny_cache), "--out-dir", str(tmp_path / "o")]
    args += ["--state-dir", str(tmp_path / "s"), "--init", str(tmp_path / "none.ckpt")]
    assert main(["finetune", *args, "--world-size", "4"]) == 1
    out = capsys.readouterr().out
    assert "finetune: FAIL - started 1 rank but the run is configured for 4" in out


# --------------------------------------------------------------------------------------------
# Multi-process runs
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))
    }
    env.update(extra)
    return env


def _train_cmd(config: Path, cache: Path, out: Path, state: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aqnet",
        "train",
        "--stage",
        "baseline",
        "--config",
        str(config),
        "--cache",
        str(cache),
        "--out-dir",
        str(out),
        "--state-dir",
        str(state),
        *more,
    ]


@pytest.mark.slow
def test_two_rank_ddp_equals_one_rank_with_the_same_global_batch(
    tiny_config: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    """2 ranks started as srun would (SLURM_* variables), gloo, x 2 accumulation steps of 1
    sample = the single-process run with 1 x 4 samples. Tolerance: 1e-5 relative on every loss,
    learning rate and gradient norm of the 4 steps (summation order differs, nothing else)."""
    cfg = _train_config(tiny_config, grad_accum=2)
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _cli_env(
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2",
            SLURM_NODEID="0",
            SLURM_STEP_ID="0",
            SLURM_JOB_ID="12345",
            SLURM_JOB_NODELIST="localhost",
            SLURM_STEP_TASKS_PER_NODE="2",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        cmd = _train_cmd(
            config, tiny_cache, tmp_path / "out", tmp_path / "state", "--world-size", "2"
        )
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert "2 ranks x 1 x 2 accumulation" in outputs[0]

    ddp = read_metrics(tmp_path / "out" / "metrics.csv")
    ref = read_metrics(baseline["out"] / "metrics.csv")
    assert len(ddp) == len(ref)
    for a, b in zip(ddp, ref, strict=True):
        for key in ("train_loss", "val_loss", "val_loss_pm25", "val_loss_96h", "lr", "grad_norm"):
            if b[key] is None:
                assert a[key] is None
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    a_sd, b_sd = (
        _state_dict(tmp_path / "out" / "baseline.ckpt"),
        _state_dict(baseline["out"] / "baseline.ckpt"),
    )
    for key in b_sd:
        torch.testing.assert_close(a_sd[key], b_sd[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_sigkill_then_sigusr1_then_resume_equals_an_uninterrupted_run(
    cfg: dict[str, Any], tiny_cache: Path, baseline: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    dump_config(cfg, config)
    out, state = tmp_path / "out", tmp_path / "state"
    cmd = _train_cmd(config, tiny_cache, out, state)
    env = _cli_env()
    last = state / STATE_FILE

    # 1. kill -9 as soon as the first checkpoint (step 2) exists.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_state(last)["step"]
    assert killed_at < STEPS and not (out / "baseline.ckpt").exists()

    # 2. resume; SIGUSR1 (Slurm's warning before the time limit) once it has resumed.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "resumed baseline from" in line:
            proc.send_signal(signal.SIGUSR1)
    proc.wait(timeout=60)
    text = "".join(lines)
    assert proc.returncode == REQUEUE_EXIT_CODE, text
    requeued_at = load_state(last)["step"]
    assert killed_at < requeued_at < STEPS
    assert f"state saved at step {requeued_at}" in text

    # 3. the requeued job finishes the run.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"at step {requeued_at}" in done.stderr
    assert _without_timing(read_metrics(out / "metrics.csv")) == _without_timing(
        read_metrics(baseline["out"] / "metrics.csv")
    )
    a, b = _state_dict(out / "baseline.ckpt"), _state_dict(baseline["out"] / "baseline.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in b)

"""A training stage's outputs (:mod:`aqnet.train.outputs`): the median step time, the
checkpoint's hyper-parameters and the fine-tune's summary."""

from __future__ import annotations

import pytest

from aqnet.train.outputs import hyper_parameters, median_step_time, run_summary


def test_median_step_time_leaves_out_the_first_step() -> None:
    rows = [
        {"step": 0, "val_loss": 1.0},
        {"step": 1, "step_time_s": 30.0},
        {"step": 2, "step_time_s": 2.0},
        {"step": 3, "step_time_s": 4.0},
    ]
    assert median_step_time(rows) == 3.0
    assert median_step_time(rows[:2]) == 30.0  # one step: that one
    assert median_step_time(rows[:1]) is None


def test_hyper_parameters_and_summary() -> None:
    best = {"val_loss": 0.3, "step": 4, "model": None}
    hp = hyper_parameters(
        model_config={"depth": 2},
        stage="finetune",
        variant="default",
        steps=6,
        global_batch=8,
        lr=1e-4,
        lr_new=1e-2,
        lead_times_h=(12, 24),
        best=best,
    )
    assert hp["best_val_loss"] == 0.3 and hp["best_val_step"] == 4
    assert hp["lead_times_h"] == [12, 24] and hp["model_config"] == {"depth": 2}
    rows = [
        {"step": 0, "val_loss": 0.5},
        {"step": 5, "step_time_s": 9.0},
        {"step": 6, "step_time_s": 1.0, "val_loss": 0.35, "alpha_block0": 0.01, "lr": 1e-5},
    ]
    summary = run_summary(
        stage="finetune",
        variant="default",
        steps=6,
        world_size=2,
        global_batch=8,
        train_start_times=16,
        validation_samples=4,
        rows=rows,
        best=best,
        init_report={"val_loss": 0.5},
        resumed_from=None,
        model_config={"depth": 2},
    )
    assert summary["samples_seen"] == 48 and summary["epochs"] == pytest.approx(3.0)
    assert summary["step0_val_loss"] == 0.5 and summary["final_val_loss"] == 0.35
    assert summary["final"] == {"val_loss": 0.35, "alpha_block0": 0.01}
    assert summary["baseline_val_loss"] == 0.5 and summary["step_time_s"] == 1.0

"""validate_short's cost projection (:func:`aqnet.train.validate_short.short_run_cost`) from a
metrics file."""

from __future__ import annotations

from pathlib import Path

import pytest

from aqnet.train.measured import measured_times
from aqnet.train.metrics import metric_columns, write_metrics
from aqnet.train.validate_short import short_run_cost


def test_cost_projection_from_a_constructed_metrics_file(tmp_path: Path) -> None:
    cols = metric_columns(out_variables=["pm25"], lead_times_h=[12], topoflow_blocks=[0])
    # Step 1 carries start-up work (left out); the median of the rest is 2.0 s. Validation passes
    # at steps 0 and 4 took 8 s each on the short run's 8 ranks.
    rows = [
        {"step": 0, "val_loss": 0.4, "val_time_s": 8.0},
        {"step": 1, "train_loss": 0.4, "step_time_s": 30.0},
        {"step": 2, "train_loss": 0.4, "step_time_s": 2.0},
        {"step": 3, "train_loss": 0.4, "step_time_s": 2.5},
        {"step": 4, "train_loss": 0.4, "step_time_s": 1.5, "val_loss": 0.39, "val_time_s": 8.0},
        {"step": 5, "train_loss": 0.4, "step_time_s": 2.0},
    ]
    path = tmp_path / "metrics.csv"
    write_metrics(path, rows, cols)
    times = measured_times(path)
    assert times["step_time_s"] == 2.0 and times["val_time_s"] == 8.0
    cfg = {
        "launch": {
            "nodes": 50,
            "tasks_per_node": 8,
            "gpu_hours_per_node_hour": 4.0,
            "step_time_estimate_s": 10.0,
            "walltime_margin": 1.5,
            "walltime_startup_min": 15.0,
            "partition_time_limit_min": 2880,
        },
        "finetune": {"steps": 270, "epochs": None, "batch_size": 800, "val_every": 25},
    }
    cost = short_run_cost(path, cfg, measured_world_size=8, start_times=35_000)
    # Validation is split over 400 ranks instead of 8: 8 s x 8 / 400 = 0.16 s per pass, 12 passes.
    wall = 270 * 2.0 + 12 * 0.16
    assert cost["wall_time_s"] == pytest.approx(wall)
    assert cost["node_hours"] == pytest.approx(wall / 3600 * 50)
    assert cost["gpu_hours"] == pytest.approx(wall / 3600 * 50 * 4)
    assert cost["full_world_size"] == 400
    with pytest.raises(ValueError, match="no optimizer step"):
        measured_times([{"step": 0, "val_loss": 1.0}])

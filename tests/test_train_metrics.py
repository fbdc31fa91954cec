"""The metrics file (:mod:`aqnet.train.metrics`): columns and a bit-for-bit round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from aqnet.train.metrics import metric_columns, read_metrics, write_metrics


def test_metrics_round_trip(tmp_path: Path) -> None:
    cols = metric_columns(out_variables=["pm25"], lead_times_h=[12], topoflow_blocks=[0])
    assert cols[:4] == ["step", "epoch", "train_loss", "val_loss"]
    assert {"val_loss_pm25", "val_loss_12h", "alpha_block0", "lr_new"} <= set(cols)
    rows = [{"step": 0, "val_loss": 0.1 + 0.2}, {"step": 1, "train_loss": 1 / 3, "lr": math.nan}]
    write_metrics(tmp_path / "m.csv", rows, cols)
    back = read_metrics(tmp_path / "m.csv")
    assert back[0]["val_loss"] == 0.1 + 0.2  # bit for bit
    assert back[1]["train_loss"] == 1 / 3 and back[1]["lr"] is None and back[1]["step"] == 1
    with pytest.raises(ValueError, match="not in"):
        write_metrics(tmp_path / "m.csv", [{"bogus": 1}], cols)

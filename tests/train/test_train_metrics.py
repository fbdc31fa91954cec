"""The metrics file (:mod:`aqnet.train.metrics`): columns and a bit-for-bit round trip; the
progress display (a bar on a terminal, plain log lines elsewhere)."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import pytest

from aqnet.train.metrics import Progress, metric_columns, read_metrics, write_metrics


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


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logs_plain_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    progress = Progress(total=4, enabled=True, every=2, stream=stream)
    assert progress.bar is None
    with caplog.at_level(logging.INFO, logger="aqnet.train"):
        progress.update({"step": 0, "val_loss": 0.5})
        progress.update({"step": 1, "train_loss": 0.41234, "lr": 1e-3, "samples_per_s": 12.0})
        progress.update({"step": 2, "train_loss": 0.4, "lr": math.nan})
        progress.update({"step": 3, "train_loss": 0.39})
        progress.update({"step": 4, "train_loss": 0.38, "val_loss": 0.45})
    assert caplog.messages == [
        "step 0/4, val_loss 0.5000",
        "step 2/4, train_loss 0.4000",
        "step 4/4, train_loss 0.3800, val_loss 0.4500",
    ]
    assert stream.getvalue() == ""  # no bar, no carriage returns in a batch log


def test_progress_draws_a_bar_on_a_terminal_and_keeps_validation_lines() -> None:
    stream = _Terminal()
    progress = Progress(total=4, enabled=True, every=0, stream=stream)
    progress.update({"step": 0, "val_loss": 0.5})
    progress.update({"step": 3, "train_loss": 0.25})
    shown = stream.getvalue()
    assert "step 0/4, val_loss 0.5000\n" in shown
    assert "3/4" in shown and "train_loss 0.2500" in shown
    progress.update({"step": 4, "train_loss": 0.2, "val_loss": 0.3})
    assert progress.bar is not None and progress.bar.disable  # closed at the last step
    assert stream.getvalue().endswith("\n")


def test_progress_of_other_ranks_prints_nothing(caplog: pytest.LogCaptureFixture) -> None:
    stream = _Terminal()
    progress = Progress(total=2, enabled=False, every=1, stream=stream)
    with caplog.at_level(logging.INFO, logger="aqnet.train"):
        progress.update({"step": 2, "val_loss": 0.1})
    assert progress.bar is None and stream.getvalue() == "" and caplog.messages == []

"""The metrics file of a training stage and the progress display.

``metrics.csv`` (pandas-readable, written by rank 0 only) has one row for step 0 (the validation
before any update) and one per optimizer step; the validation columns are filled on the steps that
validate (step 0, every ``val_every`` steps and the last step) and empty otherwise:

* ``step``, ``epoch`` (fractional: optimizer steps / steps per epoch),
* ``train_loss`` - masked MSE of the step's global batch (mean over ranks and accumulation),
* ``val_loss``, ``val_loss_<pollutant>``, ``val_loss_<lead>h`` - masked MSE in normalised units,
* ``lr``, ``lr_new`` - the rates the step's update used for the pre-trained and the new TopoFlow
  parameters,
* ``alpha_block<i>`` - ``elevation_alpha`` of each TopoFlow block after the step,
* ``grad_norm`` - the global gradient norm before clipping,
* ``samples_per_s``, ``step_time_s`` - throughput and wall time of the step (rank 0's clock,
  after the step's collectives), ``val_time_s`` - wall time of the validation pass.

The file is rewritten atomically from the rows kept in memory (and in the resume state), so after
a resume it holds exactly the rows of an uninterrupted run. Floats are written with ``repr`` so
they read back bit for bit.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from aqnet.atomic import atomic_write_bytes

__all__ = ["Progress", "metric_columns", "read_metrics", "write_metrics"]

log = logging.getLogger("aqnet.train")


def metric_columns(
    *, out_variables: Sequence[str], lead_times_h: Sequence[int], topoflow_blocks: Iterable[int]
) -> list[str]:
    """The columns of ``metrics.csv``, in order."""
    return [
        "step",
        "epoch",
        "train_loss",
        "val_loss",
        *(f"val_loss_{v}" for v in out_variables),
        *(f"val_loss_{int(h)}h" for h in lead_times_h),
        "lr",
        "lr_new",
        *(f"alpha_block{int(i)}" for i in topoflow_blocks),
        "grad_norm",
        "samples_per_s",
        "step_time_s",
        "val_time_s",
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def write_metrics(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Write ``rows`` (dicts; missing keys are empty cells) as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"metrics row has columns {sorted(unknown)} not in {list(columns)}")
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_bytes(path, buf.getvalue().encode())


def read_metrics(path: str | Path) -> list[dict[str, float | int | None]]:
    """Read a ``metrics.csv`` back: ``step`` as int, other cells as float, empty cells as None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, float | int | None] = {}
            for key, cell in raw.items():
                if cell in ("", None):
                    row[key] = None
                    continue
                try:
                    row[key] = int(cell) if key == "step" else float(cell)
                except ValueError as exc:
                    raise ValueError(
                        f"{path}, line {line}: column {key!r} holds {cell!r}, not a number"
                    ) from exc
            rows.append(row)
    return rows


def _describe(row: Mapping[str, Any]) -> str:
    """The losses, learning rate and throughput of a metrics row, e.g. ``train_loss 0.4121``."""
    parts = []
    for key, fmt in (("train_loss", "{:.4f}"), ("val_loss", "{:.4f}"), ("lr", "{:.2e}")):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key} {fmt.format(value)}")
    if row.get("samples_per_s"):
        parts.append(f"{row['samples_per_s']:.1f} samples/s")
    return ", ".join(parts)


class Progress:
    """A tqdm progress bar on an interactive terminal, plain log lines in batch logs.

    On a TTY the bar shows the step, the elapsed time and the row's losses; each validation row
    is also written as a line above it, so the validation history stays on screen. Elsewhere
    (Slurm and Snakemake logs) there is no bar: a log line every ``every`` steps, on every
    validation and at the last step.

    Args:
        total: the last step of the run.
        enabled: print at all (rank 0 only).
        every: in plain mode, log every ``every`` steps (validation steps are always logged).
        stream: where the bar goes (default ``sys.stderr``); a bar only when it is a TTY.
    """

    def __init__(
        self, *, total: int, enabled: bool, every: int, stream: TextIO | None = None
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.every = max(0, every)
        self.stream = stream if stream is not None else sys.stderr
        tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: tqdm | None = (
            tqdm(total=total, file=self.stream, unit="step", dynamic_ncols=True, leave=True)
            if tty
            else None
        )

    def update(self, row: Mapping[str, Any]) -> None:
        """Show one metrics row."""
        if not self.enabled:
            return
        step = int(row["step"])
        text = f"step {step}/{self.total}"
        described = _describe(row)
        if described:
            text += f", {described}"
        validated = row.get("val_loss") is not None
        if self.bar is not None:
            if validated:
                self.bar.write(text, file=self.stream)
            self.bar.n = step  # absolute: a resumed run continues from its step
            self.bar.set_postfix_str(described, refresh=False)
            self.bar.refresh()
            if step >= self.total:
                self.bar.close()
        elif validated or step >= self.total or (self.every and step % self.every == 0):
            log.info("%s", text)

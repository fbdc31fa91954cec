"""The running state of one training run on one rank: what the loop advances and a resume restores.

:class:`RunState` holds the optimizer steps done, the metrics rows so far, the best validation
(its loss, its step and, for the baseline, its weights), the step of the last saved resume state,
the step a resumed run started from and the warm start's report. The loop
(:mod:`aqnet.train.loop`) advances it, :mod:`aqnet.train.best` keeps its best validation, and
:mod:`aqnet.train.writer` saves it in ``last.pt`` and in the stage's outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["RunState"]


def _no_best() -> dict[str, Any]:
    return {"val_loss": None, "step": None, "model": None}


@dataclasses.dataclass(kw_only=True)
class RunState:
    """The state a training run carries from step to step (see the module docstring)."""

    step: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] = dataclasses.field(default_factory=_no_best)
    last_checkpoint_step: int | None = None
    resumed_from: int | None = None
    init_report: dict[str, Any] | None = None

    @classmethod
    def restored(cls, state: Mapping[str, Any]) -> RunState:
        """The running state saved in a resume state (``last.pt``), at its step."""
        step = int(state["step"])
        return cls(
            step=step,
            rows=[dict(r) for r in state["metrics"]],
            best=dict(state["best"]),
            last_checkpoint_step=step,
            resumed_from=step,
            init_report=state.get("init"),
        )

    def val_rows(self) -> list[dict[str, Any]]:
        """The metrics rows with a validation loss, in step order."""
        return [r for r in self.rows if r.get("val_loss") is not None]

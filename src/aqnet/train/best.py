"""The training loop's validation passes and the best validation so far.

:class:`ValidationTracker` runs one pass over the validation subset
(:func:`aqnet.train.validation.validate`), stops the run on a non-finite loss
(:class:`~aqnet.train.divergence.TrainingDiverged`), and keeps the best loss in the run's
:class:`~aqnet.train.run_state.RunState`: its step and, for the baseline (whose checkpoint holds
the weights of its best validation), a CPU copy of the weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from aqnet.train.divergence import TrainingDiverged
from aqnet.train.run_state import RunState
from aqnet.train.step import autocast
from aqnet.train.validation import validate

__all__ = ["ValidationTracker"]


@dataclasses.dataclass(kw_only=True)
class ValidationTracker:
    """Validation of one run on one rank (a collective: every rank calls it at the same steps).

    ``diverged(what, value, step, last_checkpoint_step=...)`` is the message of a non-finite loss
    (:meth:`aqnet.train.guard.RunGuard.diverged`).
    """

    model: nn.Module
    loader: Iterable[Any]
    stage: str
    lead_times_h: Sequence[int]
    device: torch.device
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    n_samples: int
    bf16: bool
    diverged: Callable[..., str]

    def validate(
        self,
        *,
        step: int,
        last_checkpoint_step: int | None,
        after_batch: Callable[[], None] | None,
    ) -> dict[str, Any]:
        """One pass at ``step``; raises :class:`TrainingDiverged` on a non-finite loss, naming
        the last good checkpoint (``last_checkpoint_step``)."""
        out = validate(
            self.model,
            self.loader,
            stage=self.stage,
            lead_times_h=self.lead_times_h,
            device=self.device,
            all_reduce_sum=self.all_reduce_sum,
            n_samples=self.n_samples,
            autocast=lambda: autocast(self.bf16),
            after_batch=after_batch,
        )
        if not math.isfinite(out["val_loss"]):
            message = self.diverged(
                "validation loss", out["val_loss"], step, last_checkpoint_step=last_checkpoint_step
            )
            raise TrainingDiverged(message)
        return out

    def record(
        self, row: dict[str, Any], state: RunState, *, after_batch: Callable[[], None] | None
    ) -> None:
        """Validate at ``state.step`` into ``row``; a better loss becomes ``state.best``."""
        row.update(
            self.validate(
                step=state.step,
                last_checkpoint_step=state.last_checkpoint_step,
                after_batch=after_batch,
            )
        )
        val = row["val_loss"]
        if state.best["val_loss"] is None or val < state.best["val_loss"]:
            state.best = {"val_loss": val, "step": state.step, "model": None}
            if self.stage == "baseline":
                state.best["model"] = {
                    k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                }

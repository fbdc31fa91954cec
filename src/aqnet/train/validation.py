"""Validation during training: one pass over the pipeline's validation subset.

The subset (``validation.samples`` items evenly spaced over the split,
:func:`aqnet.data.validation_indices`, the same items ``smoke_forward`` evaluates) is split over
the ranks in micro-batches of ``validation.batch_size``. Squared errors are summed per pollutant
and lead time (:class:`aqnet.evaluation.ErrorSums`, the pass the smoke gate and ``evaluate``
share) and reduced across ranks before dividing, so the loss depends neither on the number of
ranks nor on the batch size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from aqnet.config import POLLUTANTS
from aqnet.data.dataset import batch_to_device
from aqnet.evaluation import ErrorSums

__all__ = ["validate"]


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    stage: str,
    lead_times_h: Sequence[int],
    device: torch.device,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    n_samples: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    after_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The validation losses of ``model`` over this rank's ``batches``, reduced over the ranks.

    Args:
        model: maps ``x (B, V, H, W), lead_time_h (B,), elevation_m (B, H, W)`` to
            ``(B, C, H, W)``; it is put in eval mode.
        batches: this rank's share of the validation subset (5-item batches).
        stage: the training stage, for messages.
        lead_times_h: the lead times the batches hold.
        device: the model's device.
        all_reduce_sum: sums a tensor over the ranks (the identity on one rank).
        n_samples: the size of the subset, for messages.
        autocast: the context each forward pass runs in (bf16 autocast on GPUs).
        after_batch: called after each batch (the heartbeat's stall check).

    Returns:
        ``{"val_loss", "val_loss_<pollutant>", "val_loss_<h>h", "val_time_s"}``; a non-finite
        loss is returned as it is (the caller decides it diverged).

    Raises:
        ValueError: no grid cell with a finite target was selected (mask weight 0).
    """
    model.eval()
    t0 = time.perf_counter()
    sums = ErrorSums(lead_times_h=lead_times_h, pollutants=POLLUTANTS, device=device)
    for batch in batches:
        x, y, lead, elev, mask = batch_to_device(batch, device, stage=stage, non_blocking=True)
        with autocast():
            pred = model(x, lead, elev)  # (B, C, H, W)
        sums.add(pred.float(), y, mask, lead)
        if after_batch is not None:
            after_batch()
    sums.all_reduce(all_reduce_sum)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not sums.total_weight > 0:
        raise ValueError(
            f"validation over {n_samples} samples selected no grid cell with a finite "
            "target (mask weight 0)"
        )
    out: dict[str, Any] = dict(sums.metrics("val_loss"))
    out["val_time_s"] = time.perf_counter() - t0
    return out

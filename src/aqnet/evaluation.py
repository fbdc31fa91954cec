"""The one masked evaluation pass: squared-error sums by lead time and pollutant.

Training validation (:func:`aqnet.train.validation.validate`), the smoke gate
(:func:`aqnet.gates.smoke.smoke_forward`) and the evaluation of the report
(:func:`aqnet.report.evaluate.evaluate`) all score predictions through :class:`ErrorSums`, so the
gate's promise that the fine-tune's first validation equals the baseline's to float error, and
the report's per-sample losses, are one computation and not three copies that must agree.

Per batch, :func:`aqnet.losses.masked_error_sums` gives ``sq (B, C)`` and ``weight (B, C)`` (the
domain mask times ``isfinite(target)``: a NaN target is masked where it occurs, not by a static
mask). :class:`ErrorSums` adds them into ``(L, C)`` float64 tables by each sample's lead time;
summed over batches and ranks and divided once, the losses are independent of the batch size
and the number of ranks::

    val_loss        = sum(sq) / sum(weight)
    val_loss_<p>    = sum_L sq[:, p] / sum_L weight[:, p]
    val_loss_<h>h   = sum_C sq[h] / sum_C weight[h]

With finite targets these are exactly the masked MSE over every cell, channel and sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from aqnet.losses import masked_error_sums

__all__ = ["ErrorSums", "sample_mse"]


class ErrorSums:
    """Masked squared-error sums and weights by lead time and pollutant, float64.

    Args:
        lead_times_h: ``(L,)`` the lead times a batch may hold, in hours.
        pollutants: ``(C,)`` names of the predicted channels, in channel order.
        device: where the tables live (the model's device, so no per-batch copy).
    """

    def __init__(
        self,
        *,
        lead_times_h: Sequence[int],
        pollutants: Sequence[str],
        device: torch.device | str = "cpu",
    ) -> None:
        self.lead_times_h = [int(h) for h in lead_times_h]
        self.pollutants = [str(p) for p in pollutants]
        n_l, n_c = len(self.lead_times_h), len(self.pollutants)
        self.sq = torch.zeros(n_l, n_c, dtype=torch.float64, device=device)  # (L, C)
        self.weight = torch.zeros(n_l, n_c, dtype=torch.float64, device=device)  # (L, C)
        self._leads = torch.tensor(self.lead_times_h, dtype=torch.float32, device=device)  # (L,)

    def lead_index(self, lead_time_h: torch.Tensor) -> torch.Tensor:
        """``(B,)`` index into ``lead_times_h`` of each sample's lead time.

        Raises:
            ValueError: naming the lead times that are not among ``lead_times_h``.
        """
        lead = lead_time_h.to(self._leads.device).float().reshape(-1)  # (B,)
        match = lead[:, None] == self._leads[None, :]  # (B, L)
        if not bool(match.any(dim=1).all()):
            found = sorted({int(h) for h in lead.tolist()})
            raise ValueError(
                f"evaluation batch has lead times {found} not among lead_times_h "
                f"{self.lead_times_h}"
            )
        return match.to(torch.int64).argmax(dim=1)  # (B,)

    def add(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        lead_time_h: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score one batch and add it to the tables.

        Args:
            pred: ``(B, C, H, W)``.
            target: ``(B, C, H, W)``, NaN where unobserved.
            mask: ``(B, H, W)`` or ``(H, W)``.
            lead_time_h: ``(B,)`` each sample's lead time in hours.

        Returns:
            The batch's ``(sq (B, C), weight (B, C))`` (float32, or float64 for float64 input).
        """
        if pred.shape[1] != len(self.pollutants):
            raise ValueError(
                f"evaluation: the prediction has {pred.shape[1]} channels, expected "
                f"{len(self.pollutants)} ({self.pollutants})"
            )
        sq, weight = masked_error_sums(pred, target, mask)  # (B, C), (B, C)
        idx = self.lead_index(lead_time_h)
        self.sq.index_add_(0, idx.to(self.sq.device), sq.to(self.sq.device, torch.float64))
        self.weight.index_add_(0, idx.to(self.sq.device), weight.to(self.sq.device, torch.float64))
        return sq, weight

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], object]) -> None:
        """Sum the tables over ranks in place with ``reduce_sum`` (e.g. ``all_reduce_sum``)."""
        reduce_sum(self.sq)
        reduce_sum(self.weight)

    @property
    def total_weight(self) -> float:
        """Sum of the weights over every lead time and pollutant."""
        return float(self.weight.sum())

    def loss(self) -> float:
        """The masked MSE over everything added (``nan`` when nothing was scored)."""
        w = self.total_weight
        return float(self.sq.sum()) / w if w > 0 else math.nan

    def metrics(self, prefix: str = "val_loss") -> dict[str, float]:
        """``{prefix, prefix_<pollutant>, prefix_<h>h}`` (module docstring); NaN where empty.

        Raises:
            ValueError: when nothing was scored (every weight is 0).
        """
        if not self.total_weight > 0:
            raise ValueError(
                "evaluation selected no grid cell with a finite target (mask weight 0)"
            )
        sq, weight = self.sq.cpu(), self.weight.cpu()
        out = {prefix: self.loss()}
        for c, name in enumerate(self.pollutants):
            w = float(weight[:, c].sum())
            out[f"{prefix}_{name}"] = float(sq[:, c].sum()) / w if w > 0 else math.nan
        for i, h in enumerate(self.lead_times_h):
            w = float(weight[i].sum())
            out[f"{prefix}_{h}h"] = float(sq[i].sum()) / w if w > 0 else math.nan
        return out


def sample_mse(sq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel MSE ``sq / weight`` as float64, NaN where the weight is 0.

    Args:
        sq: ``(B, C)``; weight: ``(B, C)`` (from :meth:`ErrorSums.add`).

    Returns:
        ``(B, C)`` float64.
    """
    sq, weight = sq.double(), weight.double()
    out = sq / weight.clamp_min(1e-300)
    return torch.where(weight > 0, out, torch.full_like(out, math.nan))

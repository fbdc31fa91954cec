"""Which token order was the baseline trained with? The same batches under every scan order.

A baseline evaluated with another token order than the one it was trained with gives a
validation loss far from its recorded one (0.964 where 0.356 is expected). When ``smoke_forward``
misses the recorded loss, :func:`evaluate_scan_orders` evaluates the baseline's weights on the same
validation batches under each candidate order - the researchers' rule (``reference``), none
(``off``, also the reference code's fallback when its reorder raised) and aqnet's ``global`` and
``regional`` scans - and names the one, if any, that reproduces the recorded loss within the
gate's tolerance. It is the investigation of a wrong order, automated.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from aqnet.data.dataset import batch_to_device
from aqnet.evaluation import ErrorSums

CANDIDATES: tuple[str, ...] = ("reference", "off", "global", "regional")
"""The scan orders tried, in this order."""


@torch.no_grad()
def evaluate_scan_orders(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    checkpoint: str | Path,
    batches: Iterable[Iterable[torch.Tensor]],
    *,
    baseline_val_loss: float,
    rtol: float,
    device: torch.device,
) -> dict[str, Any]:
    """The baseline's validation loss under each scan order of :data:`CANDIDATES`.

    Args:
        cfg: the resolved config (its ``model.wind_scan`` is replaced per candidate).
        cache_dir: the cache (statistics for the model).
        checkpoint: the baseline checkpoint (loaded as in ``smoke_forward``).
        batches: the validation batches ``(x, y, lead_time_h, elevation_m, mask)``; iterated once
            per candidate (a DataLoader).
        baseline_val_loss: the recorded loss to reproduce.
        rtol: relative tolerance (``gates.val_loss_rtol``).
        device: where to evaluate.

    Returns:
        ``{"candidates": {mode: {"val_loss", "rel_diff", "reproduces"}}, "reproduced_by": [modes],
        "summary": str}``.
    """
    from aqnet.checkpoint import CheckpointError, load_weights
    from aqnet.gates.audit import build_model

    out: dict[str, Any] = {"candidates": {}, "reproduced_by": []}
    for mode in CANDIDATES:
        variant = copy.deepcopy(dict(cfg))
        variant["model"] = {**variant["model"], "wind_scan": mode}
        entry: dict[str, Any]
        try:
            model = build_model(variant, cache_dir, baseline=True)
            load_weights(
                model,
                checkpoint,
                expected_missing=list(model.topoflow_keys()),
                checkpoint_variables=cfg.get("baseline", {}).get("variables"),
            )
        except (CheckpointError, ValueError) as exc:
            out["candidates"][mode] = {"error": str(exc), "reproduces": False}
            continue
        model.to(device).eval()
        sums = ErrorSums(
            lead_times_h=cfg["lead_times_h"],
            pollutants=list(model.config.out_variables),
            device=device,
        )
        for batch in batches:
            x, y, lead, elev, mask = batch_to_device(batch, device, stage="smoke_forward")
            sums.add(model(x, lead, elev).float(), y, mask, lead)  # pred: (B, n_out, H, W)
        val_loss = sums.loss()
        rel = (val_loss - baseline_val_loss) / max(abs(baseline_val_loss), 1e-12)
        entry = {"val_loss": val_loss, "rel_diff": rel, "reproduces": abs(rel) <= rtol}
        out["candidates"][mode] = entry
        if entry["reproduces"]:
            out["reproduced_by"].append(mode)
    losses = ", ".join(
        f"{m} {c['val_loss']:.3f}" if "val_loss" in c else f"{m} (not built: {c['error']})"
        for m, c in out["candidates"].items()
    )
    if out["reproduced_by"]:
        best = min(out["reproduced_by"], key=lambda m: abs(out["candidates"][m]["rel_diff"]))
        out["summary"] = (
            f"under each scan order the baseline gives {losses}: wind_scan {best!r} reproduces "
            f"the recorded {baseline_val_loss:.3f}, so the baseline was trained with that order"
        )
    else:
        out["summary"] = (
            f"under each scan order the baseline gives {losses}: none reproduces the recorded "
            f"{baseline_val_loss:.3f}, so the token order is not what is wrong"
        )
    return out

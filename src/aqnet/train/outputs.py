"""What a training stage leaves in its ``out_dir`` (rank 0), besides ``metrics.csv``.

==================  ==========================================================================
stage               files
==================  ==========================================================================
``baseline``        ``baseline.ckpt`` (Lightning layout, the weights of the best validation and
                    that loss) and ``wind_orders.npz`` (the orders it trained with)
``validate_short``  ``final.ckpt`` (what the ``rehearse_report`` gate evaluates)
``finetune``        ``final.ckpt`` (the final weights and their validation loss) and
                    ``summary.json`` (:func:`run_summary`)
==================  ==========================================================================

Every checkpoint carries the run's ``hyper_parameters`` (:func:`hyper_parameters`), among them
the model config that ``evaluate`` rebuilds the architecture from.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "OUTPUT_FILES",
    "hyper_parameters",
    "median_step_time",
    "run_summary",
    "write_checkpoint",
]

OUTPUT_FILES = {
    "baseline": ("baseline.ckpt", "wind_orders.npz", "metrics.csv"),
    "validate_short": ("final.ckpt", "metrics.csv"),
    "finetune": ("final.ckpt", "metrics.csv", "summary.json"),
}


def median_step_time(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Median ``step_time_s`` of the metrics rows, the first step left out (start-up) when there
    are others; ``None`` without any step."""
    times = [r["step_time_s"] for r in rows if r.get("step_time_s") is not None]
    times = times[1:] or times
    return statistics.median(times) if times else None


def hyper_parameters(
    *,
    model_config: Mapping[str, Any],
    stage: str,
    variant: str,
    steps: int,
    global_batch: int,
    lr: float,
    lr_new: float,
    lead_times_h: Sequence[int],
    best: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``hyper_parameters`` stored in a stage's checkpoint."""
    return {
        "model_config": dict(model_config),
        "stage": stage,
        "variant": variant,
        "steps": steps,
        "global_batch": global_batch,
        "lr": float(lr),
        "lr_new": float(lr_new),
        "lead_times_h": list(lead_times_h),
        "best_val_loss": best["val_loss"],
        "best_val_step": best["step"],
    }


def write_checkpoint(
    stage: str,
    out_dir: Path,
    model: nn.Module,
    *,
    hyper_parameters: Mapping[str, Any],
    best: Mapping[str, Any],
    final_val_loss: float | None,
    step: int,
) -> dict[str, str]:
    """Write the stage's checkpoint (and the baseline's wind orders); returns their paths by key.

    The baseline's checkpoint holds the weights of its best validation (``best["model"]``,
    loaded into ``model`` first) and that loss; the other stages' hold the final weights.
    """
    from aqnet.checkpoint import save_lightning_checkpoint
    from aqnet.orders import save_orders

    if stage == "baseline":
        path = out_dir / "baseline.ckpt"
        if best["model"] is not None:
            model.load_state_dict(best["model"])
        save_lightning_checkpoint(
            path,
            model,
            hyper_parameters=dict(hyper_parameters),
            val_loss=best["val_loss"],
            global_step=int(best["step"] or 0),
        )
        orders_path = out_dir / "wind_orders.npz"
        save_orders(orders_path, model.wind_orders(), model.orders_params())
        return {"checkpoint": str(path), "wind_orders": str(orders_path)}
    path = out_dir / "final.ckpt"
    save_lightning_checkpoint(
        path,
        model,
        hyper_parameters=dict(hyper_parameters),
        val_loss=final_val_loss,
        global_step=step,
    )
    return {"checkpoint": str(path)}


def run_summary(
    *,
    stage: str,
    variant: str,
    steps: int,
    world_size: int,
    global_batch: int,
    train_start_times: int,
    validation_samples: int,
    rows: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any],
    init_report: Mapping[str, Any] | None,
    resumed_from: int | None,
    model_config: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of the fine-tune's ``summary.json``: its length in the study's terms (samples
    seen, passes over the training start times), the validation losses, the final alphas."""
    final = rows[-1]
    val_rows = [r for r in rows if r.get("val_loss") is not None]
    return {
        "stage": stage,
        "variant": variant,
        "steps": steps,
        "world_size": world_size,
        "global_batch": global_batch,
        "samples_seen": steps * global_batch,
        "train_start_times": train_start_times,
        "epochs": steps * global_batch / train_start_times,
        "validation_samples": validation_samples,
        "step0_val_loss": val_rows[0]["val_loss"] if val_rows else None,
        "final_val_loss": final.get("val_loss"),
        "final": {k: v for k, v in final.items() if k.startswith(("val_loss", "alpha_"))},
        "best_val_loss": best["val_loss"],
        "best_step": best["step"],
        "baseline_val_loss": (init_report or {}).get("val_loss"),
        "step_time_s": median_step_time(rows),
        "resumed_from": resumed_from,
        "model_config": dict(model_config),
    }

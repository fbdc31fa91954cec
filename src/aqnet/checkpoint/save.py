"""Writing checkpoints in PyTorch Lightning's layout, readable with ``weights_only=True``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.atomic import atomic_save
from aqnet.checkpoint.load import model_config_dict, unwrap_model

LIGHTNING_VERSION = "2.4.0"
"""The ``pytorch-lightning_version`` written by :func:`save_lightning_checkpoint`."""

MODEL_CHECKPOINT_KEY = (
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)
"""The ``callbacks`` key under which Lightning stores its ``ModelCheckpoint`` state."""


def check_plain(value: Any, where: str) -> Any:
    """Hyper-parameters must load under ``weights_only=True``: plain containers and scalars."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(check_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return {str(k): check_plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(
        f"hyper-parameter {where} is a {type(value).__name__}; only dicts, lists, tuples, str, "
        "int, float, bool and None can be stored (a weights_only load refuses other types)"
    )


def save_lightning_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    hyper_parameters: Mapping[str, Any] | None = None,
    val_loss: float | None = None,
    global_step: int = 0,
) -> Path:
    """Write ``model`` in PyTorch Lightning's checkpoint layout, atomically.

    The file holds ``state_dict`` (keys prefixed ``model.``, tensors on the CPU),
    ``hyper_parameters`` (with ``model_config`` = ``model.config.to_dict()`` unless given),
    Lightning's ``ModelCheckpoint`` callback state with ``best_model_score``, ``best_val_loss``,
    ``global_step``, ``epoch`` and ``pytorch-lightning_version``. It reads back with
    :func:`read_checkpoint` (``weights_only=True``).

    Raises:
        ValueError: a hyper-parameter that a ``weights_only`` load could not read back.
    """
    path = Path(path)
    target = unwrap_model(model)
    hp = check_plain(dict(hyper_parameters or {}), "hyper_parameters")
    if "model_config" not in hp and (cfg := model_config_dict(target)) is not None:
        hp["model_config"] = check_plain(cfg, "model_config")
    score = None if val_loss is None else torch.tensor(float(val_loss), dtype=torch.float64)
    checkpoint = {
        "epoch": 0,
        "global_step": int(global_step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in target.state_dict().items()},
        "hyper_parameters": hp,
        "callbacks": {
            MODEL_CHECKPOINT_KEY: {
                "monitor": "val_loss",
                "best_model_score": score,
                "best_model_path": str(path),
                "current_score": score,
                "dirpath": str(path.parent),
                "best_k_models": {},
                "kth_best_model_path": "",
                "kth_value": score,
                "last_model_path": "",
            }
        },
        "best_val_loss": None if val_loss is None else float(val_loss),
        "optimizer_states": [],
        "lr_schedulers": [],
        "loops": {},
    }
    atomic_save(lambda tmp: torch.save(checkpoint, tmp), path)
    return path


__all__ = ["LIGHTNING_VERSION", "MODEL_CHECKPOINT_KEY", "check_plain", "save_lightning_checkpoint"]

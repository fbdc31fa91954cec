"""Reading checkpoints without executing anything in them.

* ``torch.load(path, map_location="cpu", weights_only=True)``: only tensors and plain containers are
  unpickled; a file whose pickle would import or call anything is refused with
  :class:`CheckpointError` and nothing in it runs. Truncated or corrupt files and non-dict content
  are refused the same way, naming the file.
* File layouts: PyTorch Lightning (``state_dict``, ``hyper_parameters``, ``callbacks``, ...), a dict
  wrapping a state dict under ``state_dict`` / ``model_state_dict`` / ``model``, or a plain state
  dict (every value a tensor). Which *key* layout the state dict is in (aqnet's own, the
  researchers' training code, their published release) is decided later, from the keys alone, by
  :func:`aqnet.checkpoint.adapters.detect_adapter`.
* The recorded validation loss is taken from, in this order: ``best_val_loss``, ``val_loss``,
  Lightning's ``ModelCheckpoint`` callback state (``best_model_score``),
  ``hyper_parameters["val_loss"]``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aqnet.stage import first_items

if TYPE_CHECKING:
    from aqnet.checkpoint.report import LoadReport

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file.

    Attributes:
        report: the :class:`LoadReport` of a load that was refused (``None`` for unreadable files).
    """

    def __init__(self, message: str, *, report: LoadReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class CheckpointContents:
    """What :func:`read_checkpoint` found in a file.

    Attributes:
        state_dict: parameter name -> tensor, keys as stored (prefixes not yet removed).
        hyper_parameters: Lightning's ``hyper_parameters`` (``{}`` when absent).
        val_loss: the recorded validation loss, or ``None``.
        layout: ``"lightning"``, ``"wrapped:<key>"`` or ``"plain"``.
        path: the file read.
        val_loss_source: where ``val_loss`` was found (``None`` when absent).
        global_step: the recorded optimizer step, or ``None``.
        top_level_keys: the file's top-level entries (``("<plain state dict>",)`` for a plain one).
    """

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    val_loss: float | None
    layout: str
    path: str = ""
    val_loss_source: str | None = None
    global_step: int | None = None
    top_level_keys: tuple[str, ...] = ()


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Read a checkpoint without executing anything in it.

    Raises:
        CheckpointError: missing, truncated or corrupt file; a pickle that would import or call
            code; content that is not a dict or holds no state dict of tensors. The message names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path} was refused: loading it would import or call "
                f"{unsafe.group(1)}, which weights_only=True forbids; nothing in it was run. "
                "Re-save only its tensors and plain hyper-parameters from a trusted environment."
            ) from exc
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size:,} bytes) is unreadable - truncated, "
            "corrupt, or using pickle features a weights_only load refuses: "
            f"{found.group(1) if found else text.strip().splitlines()[0]}"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/EOFError/OSError/... on corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size:,} bytes) is unreadable - truncated or "
            f"corrupt? {type(exc).__name__}: {first_line}"
        ) from exc
    return _interpret(obj, path)


def _interpret(obj: Any, path: Path) -> CheckpointContents:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict (a state dict or a "
            "Lightning checkpoint)"
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        layout, raw = "plain", obj
    else:
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(map(repr, first_items(obj, 8))) or "none"
            raise CheckpointError(
                f"checkpoint {path} holds no state dict: neither all its values are tensors nor "
                f"does it have a {'/'.join(_WRAPPER_KEYS)} entry (top-level keys: {keys})"
            )
        raw = obj[key]
        lightning = "pytorch-lightning_version" in obj or "callbacks" in obj
        layout = "lightning" if key == "state_dict" and lightning else f"wrapped:{key}"
    state_dict: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: state dict entry {k!r} is a {type(v).__name__}, not a tensor"
            )
        state_dict[k] = v
    if not state_dict:
        raise CheckpointError(f"checkpoint {path} holds an empty state dict")

    hp = obj.get("hyper_parameters", {}) if layout != "plain" else {}
    if not isinstance(hp, Mapping):
        raise CheckpointError(
            f"checkpoint {path}: hyper_parameters is a {type(hp).__name__}, not a dict"
        )
    val_loss, source = (None, None) if layout == "plain" else _find_val_loss(obj, hp)
    step = obj.get("global_step") if layout != "plain" else None
    return CheckpointContents(
        state_dict=state_dict,
        hyper_parameters=dict(hp),
        val_loss=val_loss,
        layout=layout,
        path=str(path),
        val_loss_source=source,
        global_step=int(step) if isinstance(step, (int, torch.Tensor)) else None,
        top_level_keys=("<plain state dict>",) if layout == "plain" else tuple(map(str, obj)),
    )


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    return None


def _find_val_loss(
    obj: Mapping[str, Any], hp: Mapping[str, Any]
) -> tuple[float | None, str | None]:
    for key in ("best_val_loss", "val_loss"):
        if (value := _as_float(obj.get(key))) is not None:
            return value, key
    callbacks = obj.get("callbacks")
    if isinstance(callbacks, Mapping):
        for name, state in callbacks.items():
            if not (str(name).startswith("ModelCheckpoint") and isinstance(state, Mapping)):
                continue
            monitor = str(state.get("monitor", "val_loss")).lower()
            if "val" not in monitor or "loss" not in monitor:
                continue  # a callback that tracked another metric
            if (value := _as_float(state.get("best_model_score"))) is not None:
                return value, "callbacks.ModelCheckpoint.best_model_score"
    if (value := _as_float(hp.get("val_loss"))) is not None:
        return value, "hyper_parameters.val_loss"
    return None, None


__all__ = ["CheckpointContents", "CheckpointError", "read_checkpoint"]

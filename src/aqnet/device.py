"""The device of a single-process stage (``smoke_forward``, ``evaluate``) from its setting.

Training ranks choose theirs from the launcher's local rank instead
(:func:`aqnet.train.distributed.select_device`).
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str, *, stage: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible (ROCm included), else ``cpu``; ``cpu``,
    ``cuda`` and ``cuda:<i>`` as given.

    Raises:
        ValueError: an unknown name, or a GPU asked for where none is visible (``stage`` names
            who asked).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"{stage}: unknown device {device!r} (auto, cpu, cuda, cuda:<i>)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{stage}: device {device!r} requested but no GPU is visible")
    return torch.device(device)

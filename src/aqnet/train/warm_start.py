"""The starting weights of the fine-tune and ``validate_short``: the baseline checkpoint.

They are loaded only through :func:`aqnet.checkpoint.load_weights` (the audited path), with the
keys the variant adds (:func:`aqnet.gates.audit.expected_missing_keys`) as the only ones allowed
to be missing; a load that is not clean raises ``CheckpointError``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

log = logging.getLogger("aqnet.train")

__all__ = ["load_init_checkpoint"]


def load_init_checkpoint(
    cfg: Mapping[str, Any], model: nn.Module, path: Path, *, is_main: bool
) -> dict[str, Any]:
    """Load ``path`` into ``model``; the record the run's summary and resume state keep.

    Returns:
        ``{"path", "loaded", "loaded_parameters", "missing", "val_loss"}``.
    """
    from aqnet.checkpoint import load_weights
    from aqnet.gates.audit import expected_missing_keys

    expected = expected_missing_keys(cfg, model)
    report = load_weights(
        model,
        path,
        expected_missing=expected,
        checkpoint_variables=cfg.get("baseline", {}).get("variables"),
    )
    if is_main:
        log.info(
            "loaded %d tensors (%d parameters) from %s; new: %s",
            len(report.loaded),
            report.loaded_parameters,
            path,
            ", ".join(report.missing) or "none",
        )
    return {
        "path": str(path),
        "loaded": len(report.loaded),
        "loaded_parameters": report.loaded_parameters,
        "missing": list(report.missing),
        "val_loss": report.val_loss,
    }

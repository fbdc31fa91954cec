"""The resumable training state: ``<state_dir>/last.pt``.

One file, written atomically by rank 0 (temporary file, fsync, rename, fsync of the folder:
a kill, a full disk or a lost write during the save leaves the previous state intact, and the
failure names the file and the free space - :class:`aqnet.atomic.WriteFailure`), holding
everything needed to continue a run exactly:

=================  ============================================================================
key                content
=================  ============================================================================
``format``         :data:`STATE_FORMAT`
``stage``          ``baseline`` / ``validate_short`` / ``finetune``
``fingerprint``    the settings that must not change across a resume (model, batch, schedule)
``step``           optimizer updates done
``sampler``        ``{"epoch", "step_in_epoch", "seed"}``: where the data order continues
``model``          the bare model's ``state_dict`` (CPU tensors)
``optimizer``      AdamW ``state_dict``
``scheduler``      ``LambdaLR`` ``state_dict``
``rng``            per rank: Python, NumPy, torch CPU and (where present) CUDA generator states
``metrics``        the metrics rows so far (what ``metrics.csv`` is rewritten from)
``best``           ``{"val_loss", "step", "model"}``: the best validation so far (the baseline
                   stage keeps those weights)
=================  ============================================================================

It is read with ``torch.load(weights_only=True)``: tensors and plain containers only (the NumPy
generator state is stored as a tensor and plain numbers for that reason).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aqnet.atomic import atomic_save

__all__ = [
    "STATE_FILE",
    "STATE_FORMAT",
    "ResumeError",
    "capture_rng",
    "fingerprint_differences",
    "load_state",
    "restore_rng",
    "save_state",
    "seed_everything",
]

STATE_FILE = "last.pt"
STATE_FORMAT = 1


class ResumeError(ValueError):
    """A resume state that cannot be used (unreadable, or written by a different run)."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's global and torch's generators (a run's start, before the model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator other code may use
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's generator states (Python, NumPy, torch CPU, CUDA when present)."""
    # The legacy global generator is what third-party code draws from: save it as it is.
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(value: Any) -> Any:
    """``random.setstate`` needs tuples where a round trip may have produced lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


def save_state(path: str | Path, state: Mapping[str, Any]) -> None:
    """Write the resume state atomically (``torch.save`` to a temporary file, fsync, rename).

    ``torch.save`` writes through a Python file object so that a full disk surfaces as
    ``OSError(ENOSPC)`` rather than as the zip writer's ``unexpected pos``.

    Raises:
        WriteFailure: the write failed; the message names the file, the error and the free space,
            and the previous state at ``path`` is intact.
    """
    payload = {"format": STATE_FORMAT, **state}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            torch.save(payload, fh)

    atomic_save(write, path)


def load_state(path: str | Path) -> dict[str, Any] | None:
    """Read a resume state; ``None`` when there is none.

    Raises:
        ResumeError: the file exists but cannot be read, or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ResumeError(
            f"resume state {path} is unreadable ({type(exc).__name__}: {exc}); move it away to "
            "start the stage afresh"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ResumeError(
            f"resume state {path} has format {found!r}, this code writes {STATE_FORMAT}; move it "
            "away to start the stage afresh"
        )
    return state


def fingerprint_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for every setting that differs."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}

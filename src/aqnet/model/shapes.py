"""Shape checks where stages meet.

A wrong shape raises ``ValueError`` naming the stage, the expected layout and the received shape,
e.g. ``block 0 attention expects (B, N, C=64), got a 4-D tensor of shape (2, 8, 16, 64)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DimSpec = str | int | tuple[str, int]
"""One dimension: a free name (``"B"``), a fixed size (``6``) or a named size (``("C", 64)``)."""


def _render(spec: Sequence[DimSpec]) -> str:
    parts = []
    for dim in spec:
        if isinstance(dim, tuple):
            parts.append(f"{dim[0]}={dim[1]}")
        else:
            parts.append(str(dim))
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def check_shape(x: torch.Tensor, spec: Sequence[DimSpec], *, stage: str) -> None:
    """Raise ``ValueError`` unless ``x`` has ``len(spec)`` dimensions matching ``spec``.

    Free names (``"B"``) match any size; ints and ``(name, size)`` pairs must match exactly.
    """
    ok = x.ndim == len(spec)
    if ok:
        for size, dim in zip(x.shape, spec, strict=True):
            want = dim[1] if isinstance(dim, tuple) else dim
            if isinstance(want, int) and size != want:
                ok = False
                break
    if not ok:
        raise ValueError(
            f"{stage} expects {_render(spec)}, got a {x.ndim}-D tensor of shape {tuple(x.shape)}"
        )


def record(shapes: dict[str, tuple[int, ...]] | None, key: str, x: torch.Tensor) -> None:
    """Store ``tuple(x.shape)`` under ``key`` when ``shapes`` is a dict (the forward's recorder)."""
    if shapes is not None:
        shapes[key] = tuple(x.shape)

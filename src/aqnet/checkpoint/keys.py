"""Key naming shared by the adapters: wrapper prefixes, variable names and orders, and
:class:`Adapted`, what an adapter made of a state dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch

PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.", "PyTorch Lightning module attribute"),
    ("module.", "DistributedDataParallel wrapper"),
    ("_orig_mod.", "torch.compile wrapper"),
)
"""Key prefixes removed when every key of a state dict carries them, and where they come from."""

VARIABLE_ALIASES: Mapping[str, str] = {"lat2d": "lat", "lon2d": "lon"}
"""The researchers' variable names that aqnet spells differently."""

DATA_BUFFERS: tuple[str, ...] = ("china_mask", "target_indices")
"""Buffers of the researchers' modules that are data (a mask, output indices), not weights."""


class AdapterError(ValueError):
    """A checkpoint whose layout was recognised but whose content contradicts it (variable lists,
    per-variable tensor sizes); the message names the key or the variables."""


@dataclasses.dataclass
class Adapted:
    """What an adapter made of a state dict.

    Attributes:
        adapter: the adapter's name (``aqnet``, ``training-code``, ``release``).
        state_dict: aqnet key -> tensor, in aqnet's shapes and the model's variable order; keys the
            adapter did not explain are passed through unchanged.
        rules: one line per transformation applied (prefixes, renames, reshapes, permutations).
        prefix_notes: prefixes carried by only some keys (never removed), with a key lacking it.
        dropped: checkpoint key -> why it is not loaded (only keys the adapter explains).
        buffers: checkpoint key -> tensor taken as data (``china_mask``, ``target_indices``).
        topoflow: aqnet keys of TopoFlow parameters the checkpoint carried (loaded, not "new").
        checkpoint_variables: the checkpoint's channel order (aqnet names), when known.
        variables_source: where that order came from.
        target_variables: the variables ``target_indices`` selects, when present.
        unexplained: checkpoint keys outside the layout (e.g. lacking its prefix): never loaded,
            even when their name happens to be one of the model's, and reported as unexpected.
    """

    adapter: str
    state_dict: dict[str, torch.Tensor]
    rules: list[str] = dataclasses.field(default_factory=list)
    prefix_notes: list[str] = dataclasses.field(default_factory=list)
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    topoflow: list[str] = dataclasses.field(default_factory=list)
    checkpoint_variables: list[str] | None = None
    variables_source: str | None = None
    target_variables: list[str] | None = None
    unexplained: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view (tensors described by shape and dtype)."""
        return {
            "adapter": self.adapter,
            "rules": list(self.rules),
            "prefix_notes": list(self.prefix_notes),
            "dropped": dict(self.dropped),
            "buffers": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                for k, v in self.buffers.items()
            },
            "topoflow_loaded": list(self.topoflow),
            "checkpoint_variables": self.checkpoint_variables,
            "variables_source": self.variables_source,
            "target_variables": self.target_variables,
            "unexplained": list(self.unexplained),
        }


# ---------------------------------------------------------------------------------------------
# Prefixes
# ---------------------------------------------------------------------------------------------


def strip_prefixes(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the ``model.`` / ``module.`` / ``_orig_mod.`` prefixes that **all** keys carry.

    Applied repeatedly, in any nesting order (``model.module._orig_mod.x`` -> ``x``).

    Returns:
        ``(state_dict, rules)``: the renamed state dict (same tensors) and one line per removal,
        e.g. ``"removed 'model.' from all 42 keys (PyTorch Lightning module attribute)"``.
    """
    sd = dict(state_dict)
    rules: list[str] = []
    changed = bool(sd)
    while changed:
        changed = False
        for prefix, origin in PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                rules.append(f"removed {prefix!r} from all {len(sd)} keys ({origin})")
                changed = True
    return sd, rules


def partial_prefix_notes(keys: Collection[str]) -> list[str]:
    """One note per wrapper prefix that some but not all keys carry, naming a key that lacks it."""
    notes = []
    for prefix, origin in PREFIXES:
        carrying = [k for k in keys if k.startswith(prefix)]
        if carrying and len(carrying) < len(keys):
            lacking = next(k for k in keys if not k.startswith(prefix))
            notes.append(
                f"{len(carrying)} of {len(keys)} keys start with {prefix!r} ({origin}) but "
                f"{lacking!r} does not, so the prefix was not removed (two models saved into one "
                "file, or a key added by hand?)"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# Variable order
# ---------------------------------------------------------------------------------------------


def aqnet_names(names: Sequence[str]) -> list[str]:
    """The researchers' variable names in aqnet's spelling (``lat2d`` -> ``lat``)."""
    return [VARIABLE_ALIASES.get(str(n), str(n)) for n in names]


def hyper_parameter_variables(hp: Mapping[str, Any]) -> list[str] | None:
    """``hyper_parameters["config"]["data"]["variables"]``, else ``["variables"]``, else None."""
    config = hp.get("config")
    data = config.get("data") if isinstance(config, Mapping) else None
    found = data.get("variables") if isinstance(data, Mapping) else hp.get("variables")
    if isinstance(found, (list, tuple)) and all(isinstance(v, str) for v in found):
        return list(found)
    return None


def variable_permutation(source: Sequence[str], target: Sequence[str]) -> list[int]:
    """``perm`` with ``target[i] == source[perm[i]]``: where each target variable sits in source.

    Raises:
        AdapterError: the two lists are not the same set of distinct names (naming the difference).
    """
    if len(set(source)) != len(source):
        raise AdapterError(f"the checkpoint's variable list has duplicates: {list(source)}")
    only_ckpt = [v for v in source if v not in target]
    only_model = [v for v in target if v not in source]
    if only_ckpt or only_model:
        raise AdapterError(
            f"the checkpoint's variables {list(source)} and the model's {list(target)} differ: "
            f"only in the checkpoint {only_ckpt}, only in the model {only_model}"
        )
    return [list(source).index(v) for v in target]


def permute_head_rows(weight: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """Reorder the variables of the head's last layer (rows ``(pi, qi, v)``, ``v`` fastest).

    ClimaX's ``unpatchify`` reshapes the head output ``(B, L, p * p * V)`` to ``(B, Hp, Wp, p, p,
    V)`` (arch.py, commit ce169dc, lines 159-174), as aqnet's does; so row ``k * V + v`` of the
    weight (or bias) belongs to variable ``v``.

    Args:
        weight: ``(p * p * V, D)`` weight or ``(p * p * V,)`` bias.
        perm: ``new variable i = old variable perm[i]``.
    """
    v = len(perm)
    rows = weight.shape[0]
    index = torch.tensor(perm, dtype=torch.long)
    shaped = weight.reshape(rows // v, v, *weight.shape[1:])  # (p * p, V, ...)
    return shaped.index_select(1, index).reshape(weight.shape)


__all__ = [
    "DATA_BUFFERS",
    "PREFIXES",
    "VARIABLE_ALIASES",
    "Adapted",
    "AdapterError",
    "aqnet_names",
    "hyper_parameter_variables",
    "partial_prefix_notes",
    "permute_head_rows",
    "strip_prefixes",
    "variable_permutation",
]

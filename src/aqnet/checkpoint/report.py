"""The outcome of matching a checkpoint against a model: :class:`LoadReport` and its problems.

The load is clean when the model's keys missing from the checkpoint are **exactly** the expected
new parameters, nothing in the checkpoint is unexpected and no shape differs; :func:`problems`
turns anything else into sentences that name the modules, the keys and the shapes (and, for a
wrapper prefix carried by only some keys, a key that lacks it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

TOPOFLOW_FIELDS: frozenset[str] = frozenset(
    {
        "topoflow_blocks",
        "h_scale_m",
        "elevation_bias",
        "elevation_bias_direction",
        "rel_pos_bias",
        "attention_impl",
    }
)
"""ModelConfig fields that only configure the TopoFlow additions: a baseline checkpoint's values
legitimately differ, so they are reported in ``config_differences`` but left out of the message."""

_MAX_LISTED = 5


@dataclasses.dataclass
class ModuleGroup:
    """Load outcome of one top-level module (``head``, ``patch_embed``, ``blocks.0``, ...).

    ``new`` holds the missing keys that were expected (new parameters), ``missing`` the others.
    """

    name: str
    model_linear_layers: int = 0
    checkpoint_linear_layers: int = 0
    model_parameters: int = 0
    loaded_parameters: int = 0
    loaded: list[str] = dataclasses.field(default_factory=list)
    new: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    shape_mismatched: list[str] = dataclasses.field(default_factory=list)

    @property
    def summary(self) -> str:
        """E.g. ``"head: 3 linear layers, 12,582 parameters loaded"``."""
        n = self.model_linear_layers
        layers = f"{n} linear layer{'s' * (n != 1)}, " if n else ""
        text = f"{self.name}: {layers}{self.loaded_parameters:,} parameters loaded"
        extra = [
            f"{len(v)} {k}"
            for k, v in (
                ("new, expected missing", self.new),
                ("missing", self.missing),
                ("unexpected", self.unexpected),
                ("shape-mismatched", self.shape_mismatched),
            )
            if v
        ]
        return text + (f" ({', '.join(extra)})" if extra else "")


@dataclasses.dataclass
class LoadReport:
    """Everything :func:`load_weights` found when matching a checkpoint against a model.

    ``ok`` is true when ``missing == expected_missing`` exactly, ``unexpected`` is empty and
    ``shape_mismatched`` is empty; ``problems`` lists the reasons otherwise. ``adapter`` names the
    key layout the checkpoint was recognised as (:mod:`aqnet.checkpoint.adapters`), ``adaptation``
    says what its adapter did, ``topoflow_loaded`` lists the TopoFlow parameters the checkpoint
    itself carried (loaded, not new).
    """

    path: str
    layout: str
    prefix_rules: list[str]
    prefix_notes: list[str]
    loaded: list[str]
    missing: list[str]
    expected_missing: list[str]
    unexpected: list[str]
    shape_mismatched: list[dict[str, Any]]
    groups: dict[str, ModuleGroup]
    loaded_parameters: int
    model_parameters: int
    checkpoint_keys: int
    val_loss: float | None
    val_loss_source: str | None
    global_step: int | None
    hyper_parameters: dict[str, Any]
    config_differences: dict[str, dict[str, Any]]
    problems: list[str]
    applied: bool = False
    adapter: str = "aqnet"
    adaptation: dict[str, Any] = dataclasses.field(default_factory=dict)
    topoflow_loaded: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        """One line per module group, e.g. ``"head: 3 linear layers, N parameters loaded"``."""
        return [g.summary for g in self.groups.values()]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (groups as dicts with their summary line)."""
        out = dataclasses.asdict(self)
        out["groups"] = {
            name: {**dataclasses.asdict(g), "summary": g.summary} for name, g in self.groups.items()
        }
        out["ok"] = self.ok
        out["summary"] = self.summary_lines()
        return out


def listing(keys: Sequence[str], n: int = _MAX_LISTED) -> str:
    """The first ``n`` keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:n])
    shown = ", ".join(keys[:n])
    return shown + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


_HINTS: dict[str, str] = {
    "pos_embed": "the checkpoint has a learned position embedding; set model.pos_embed: learned",
    "patch_embed.norm.weight": "the checkpoint normalises its patch tokens; set "
    "model.patch_embed_norm: true",
}
_UNHINTS: dict[str, str] = {
    "pos_embed": "the model learns its position embedding but the checkpoint has none; set "
    "model.pos_embed: sincos",
    "patch_embed.norm.weight": "the model normalises its patch tokens but the checkpoint does "
    "not; set model.patch_embed_norm: false",
}


def problems(report: LoadReport, model_keys: set[str]) -> list[str]:
    """Why ``report`` is not a clean load (an empty list when it is)."""
    found: list[str] = []
    missing, expected = set(report.missing), set(report.expected_missing)
    explained: set[str] = set()  # keys already named by a per-module sentence

    if report.model_parameters and not report.loaded and report.unexpected:
        found.append(
            f"none of the checkpoint's {report.checkpoint_keys} keys match the model's "
            f"{len(model_keys)} (checkpoint key e.g. {report.unexpected[0]!r}, model key e.g. "
            f"{sorted(model_keys)[0]!r})"
            + (f"; {'; '.join(report.prefix_notes)}" if report.prefix_notes else "")
        )
        explained |= set(report.unexpected) | missing
    elif report.prefix_notes and report.unexpected:
        found.append("; ".join(report.prefix_notes))
    for g in report.groups.values():
        trouble = g.missing + g.unexpected + g.shape_mismatched
        if not trouble or set(trouble) <= explained:
            continue
        if g.checkpoint_linear_layers != g.model_linear_layers:
            parts = [
                f"the checkpoint's {g.name} has {g.checkpoint_linear_layers} linear layer(s) but "
                f"the model's has {g.model_linear_layers}"
            ]
        else:
            parts = [f"{g.name} does not match"]
        if g.missing:
            parts.append(f"keys {listing(g.missing)} missing")
        if g.unexpected:
            parts.append(f"keys {listing(g.unexpected)} unexpected")
        shapes = [m for m in report.shape_mismatched if m["key"] in g.shape_mismatched]
        if shapes:
            parts.append(
                "shapes differ: "
                + ", ".join(
                    f"{m['key']} {tuple(m['checkpoint'])} in the checkpoint vs "
                    f"{tuple(m['model'])} in the model"
                    for m in shapes[:_MAX_LISTED]
                )
                + (f" ... ({len(shapes) - _MAX_LISTED} more)" if len(shapes) > _MAX_LISTED else "")
            )
        found.append(parts[0] + ": " + ", ".join(parts[1:]))
        explained |= set(trouble)

    for key, hint in _HINTS.items():
        if key in report.unexpected:
            found.append(f"{key!r} is in the checkpoint but not in the model: {hint}")
        elif key in report.missing and key not in expected and not report.prefix_notes:
            found.append(f"{key!r} is in the model but not in the checkpoint: {_UNHINTS[key]}")

    not_in_model = sorted(expected - model_keys)
    if not_in_model:
        found.append(
            f"expected new parameter(s) {listing(not_in_model)} are not parameters of the model "
            "at all (check gates.expected_missing_keys and model.topoflow_blocks)"
        )
    present = sorted((expected & model_keys) - missing - set(report.topoflow_loaded))
    if present:
        found.append(
            f"expected new parameter(s) {listing(present)} are already in the checkpoint "
            "(a fine-tuned checkpoint? then nothing is expected to be missing)"
        )
    telling = {k: d for k, d in report.config_differences.items() if k not in TOPOFLOW_FIELDS}
    if telling and found:
        found.append(
            "the checkpoint was saved from a different model config: "
            + ", ".join(
                f"{field} {d['checkpoint']} (checkpoint) vs {d['model']} (model)"
                for field, d in telling.items()
            )
        )
    return found


__all__ = ["TOPOFLOW_FIELDS", "LoadReport", "ModuleGroup", "listing", "problems"]

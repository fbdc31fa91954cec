"""Checkpoint compatibility: reading checkpoints safely, key prefixes, and auditable weight loading.

Every stage that loads weights goes through :func:`load_weights` (the ``audit_checkpoint`` gate,
``smoke_forward``, ``validate_short`` and the fine-tune), so what was audited is what trains.

Reading (:func:`read_checkpoint`):

* ``torch.load(path, map_location="cpu", weights_only=True)``: only tensors and plain containers are
  unpickled; a file whose pickle would import or call anything is refused with
  :class:`CheckpointError` and nothing in it runs. Truncated or corrupt files and non-dict content
  are refused the same way, naming the file.
* Layouts: PyTorch Lightning (``state_dict``, ``hyper_parameters``, ``callbacks``, ...), a dict
  wrapping a state dict under ``state_dict`` / ``model_state_dict`` / ``model``, or a plain state
  dict (every value a tensor).
* The recorded validation loss is taken from, in this order: ``best_val_loss``, ``val_loss``,
  Lightning's ``ModelCheckpoint`` callback state (``best_model_score``),
  ``hyper_parameters["val_loss"]``.

Prefix rules (:func:`strip_prefixes`): Lightning saves keys as ``model.<key>``, DDP as
``module.<key>``, ``torch.compile`` as ``_orig_mod.<key>``. A prefix is removed only when **all**
keys carry it, and the rule is applied repeatedly (``model._orig_mod.`` -> both removed); each
removal is reported. A prefix carried by only some keys is never removed, and is reported as a
note, since it usually means two models were saved into one file.

Loading (:func:`load_weights`): the load is clean when the model's keys missing from the
checkpoint are **exactly** the expected new parameters (by default ``model.topoflow_keys()``),
nothing in the checkpoint is unexpected and no shape differs. Otherwise :class:`CheckpointError`
is raised before any weight is copied, with a message that names the modules, the keys and the
shapes, and carries the full :class:`LoadReport` as ``.report``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.stage import atomic_save, first_items

PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.", "PyTorch Lightning module attribute"),
    ("module.", "DistributedDataParallel wrapper"),
    ("_orig_mod.", "torch.compile wrapper"),
)
"""Key prefixes removed when every key of a state dict carries them, and where they come from."""

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

LIGHTNING_VERSION = "2.4.0"
"""The ``pytorch-lightning_version`` written by :func:`save_lightning_checkpoint`."""

_MODEL_CHECKPOINT_KEY = (
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_LISTED = 5


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
    """

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    val_loss: float | None
    layout: str
    path: str = ""
    val_loss_source: str | None = None
    global_step: int | None = None


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
    ``shape_mismatched`` is empty; ``problems`` lists the reasons otherwise.
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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


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


def _listing(keys: Sequence[str], n: int = _MAX_LISTED) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" ... ({len(keys) - n} more)" if len(keys) > n else "")


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


def _partial_prefix_notes(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    notes = []
    for prefix, origin in PREFIXES:
        carrying = [k for k in state_dict if k.startswith(prefix)]
        if carrying and len(carrying) < len(state_dict):
            notes.append(
                f"{len(carrying)} of {len(state_dict)} keys start with {prefix!r} ({origin}) - "
                f"not removed because not all keys carry it (e.g. {carrying[0]})"
            )
    return notes


# ---------------------------------------------------------------------------------------------
# Matching and loading
# ---------------------------------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """``model.config.to_dict()`` of a :class:`~aqnet.model.forecaster.Forecaster` (else None)."""
    config = getattr(unwrap_model(model), "config", None)
    to_dict = getattr(config, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else None


def _list_children(model: nn.Module) -> frozenset[str]:
    """Top-level children that are ``nn.ModuleList``s (their items are grouped one by one)."""
    return frozenset(n for n, m in model.named_children() if isinstance(m, nn.ModuleList))


def _group_of(key: str, lists: frozenset[str] = frozenset()) -> str:
    """``blocks.0`` for an item of a top-level ModuleList, else the top-level module's name."""
    parts = key.split(".")
    if len(parts) > 2 and parts[0] in lists and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0] if len(parts) > 1 else "(top level)"


def _is_linear_weight(key: str, tensor: torch.Tensor) -> bool:
    return key.rsplit(".", 1)[-1] == "weight" and tensor.ndim == 2


def _linear_layers(sd: Mapping[str, torch.Tensor], group: str, lists: frozenset[str]) -> list[str]:
    """Names of the linear layers (2-D ``*.weight`` tensors) of one group of a state dict."""
    return [
        k.removesuffix(".weight")
        for k, v in sd.items()
        if _group_of(k, lists) == group and _is_linear_weight(k, v)
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_differences(
    checkpoint_config: Mapping[str, Any] | None, model_config: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Fields whose values differ: ``{field: {"checkpoint": a, "model": b}}`` (lists == tuples)."""
    if not checkpoint_config or not model_config:
        return {}
    diffs = {}
    for key in sorted(set(checkpoint_config) | set(model_config)):
        a, b = _plain(checkpoint_config.get(key)), _plain(model_config.get(key))
        if a != b:
            diffs[key] = {"checkpoint": a, "model": b}
    return diffs


def compare_state_dicts(
    model: nn.Module,
    contents: CheckpointContents,
    *,
    expected_missing: Iterable[str] | None = None,
) -> LoadReport:
    """Match a checkpoint's tensors against ``model`` without changing the model.

    Args:
        model: the target model (DDP / ``torch.compile`` wrappers are looked through).
        contents: from :func:`read_checkpoint`.
        expected_missing: keys the checkpoint may (and must) lack; ``None`` means
            ``model.topoflow_keys()`` (an empty list for models without that method).
    """
    target = unwrap_model(model)
    if expected_missing is None:
        topoflow_keys = getattr(target, "topoflow_keys", None)
        expected_missing = topoflow_keys() if callable(topoflow_keys) else []
    expected = sorted(set(expected_missing))
    path = contents.path
    ckpt_sd, rules = strip_prefixes(contents.state_dict)
    notes = _partial_prefix_notes(ckpt_sd)
    model_sd = target.state_dict()

    loaded, missing, unexpected, mismatched = [], [], [], []
    for key, tensor in model_sd.items():
        if key not in ckpt_sd:
            missing.append(key)
        elif tuple(ckpt_sd[key].shape) != tuple(tensor.shape):
            mismatched.append(
                {
                    "key": key,
                    "checkpoint": list(ckpt_sd[key].shape),
                    "model": list(tensor.shape),
                }
            )
        else:
            loaded.append(key)
    unexpected = [k for k in ckpt_sd if k not in model_sd]

    groups: dict[str, ModuleGroup] = {}
    lists = _list_children(target)

    def group(key: str) -> ModuleGroup:
        name = _group_of(key, lists)
        if name not in groups:
            groups[name] = ModuleGroup(
                name=name,
                model_linear_layers=len(_linear_layers(model_sd, name, lists)),
                checkpoint_linear_layers=len(_linear_layers(ckpt_sd, name, lists)),
            )
        return groups[name]

    for key, tensor in model_sd.items():
        group(key).model_parameters += tensor.numel()
    for key in loaded:
        g = group(key)
        g.loaded.append(key)
        g.loaded_parameters += model_sd[key].numel()
    for key in missing:
        g = group(key)
        (g.new if key in expected else g.missing).append(key)
    for key in unexpected:
        group(key).unexpected.append(key)
    for item in mismatched:
        group(item["key"]).shape_mismatched.append(item["key"])

    hp = contents.hyper_parameters
    ckpt_cfg = hp.get("model_config") if isinstance(hp.get("model_config"), Mapping) else None
    diffs = config_differences(ckpt_cfg, model_config_dict(target))

    report = LoadReport(
        path=path,
        layout=contents.layout,
        prefix_rules=rules,
        prefix_notes=notes,
        loaded=loaded,
        missing=missing,
        expected_missing=expected,
        unexpected=unexpected,
        shape_mismatched=mismatched,
        groups=groups,
        loaded_parameters=sum(model_sd[k].numel() for k in loaded),
        model_parameters=sum(t.numel() for t in model_sd.values()),
        checkpoint_keys=len(ckpt_sd),
        val_loss=contents.val_loss,
        val_loss_source=contents.val_loss_source,
        global_step=contents.global_step,
        hyper_parameters=_plain(hp),
        config_differences=diffs,
        problems=[],
    )
    report.problems = _problems(report, set(model_sd))
    return report


def _problems(report: LoadReport, model_keys: set[str]) -> list[str]:
    problems: list[str] = []
    missing, expected = set(report.missing), set(report.expected_missing)
    explained: set[str] = set()  # keys already named by a per-module sentence

    if report.model_parameters and not report.loaded and report.unexpected:
        problems.append(
            f"none of the checkpoint's {report.checkpoint_keys} keys match the model's "
            f"{len(model_keys)} (checkpoint key e.g. {report.unexpected[0]!r}, model key e.g. "
            f"{sorted(model_keys)[0]!r})"
            + (f"; {'; '.join(report.prefix_notes)}" if report.prefix_notes else "")
        )
        explained |= set(report.unexpected) | missing
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
            parts.append(f"keys {_listing(g.missing)} missing")
        if g.unexpected:
            parts.append(f"keys {_listing(g.unexpected)} unexpected")
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
        problems.append(parts[0] + ": " + ", ".join(parts[1:]))
        explained |= set(trouble)

    not_in_model = sorted(expected - model_keys)
    if not_in_model:
        problems.append(
            f"expected new parameter(s) {_listing(not_in_model)} are not parameters of the model "
            "at all (check gates.expected_missing_keys and model.topoflow_blocks)"
        )
    present = sorted((expected & model_keys) - missing)
    if present:
        problems.append(
            f"expected new parameter(s) {_listing(present)} are already in the checkpoint "
            "(a fine-tuned checkpoint? then nothing is expected to be missing)"
        )
    telling = {k: d for k, d in report.config_differences.items() if k not in TOPOFLOW_FIELDS}
    if telling and problems:
        problems.append(
            "the checkpoint was saved from a different model config: "
            + ", ".join(
                f"{field} {d['checkpoint']} (checkpoint) vs {d['model']} (model)"
                for field, d in telling.items()
            )
        )
    return problems


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    expected_missing: Iterable[str] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model``, refusing anything but a clean load.

    Args:
        model: the target model (DDP / ``torch.compile`` wrappers are looked through).
        path: a Lightning checkpoint, a wrapped or a plain state dict.
        expected_missing: the keys the checkpoint must lack (new parameters); ``None`` means
            ``model.topoflow_keys()``. Pass ``[]`` to load a checkpoint of the same model.

    Returns:
        The :class:`LoadReport` (``applied`` true).

    Raises:
        CheckpointError: unreadable or unsafe file (see :func:`read_checkpoint`), or missing keys
            other than ``expected_missing``, unexpected keys or shape mismatches. No weight is
            copied then; the error's ``report`` attribute holds the :class:`LoadReport`.
    """
    contents = read_checkpoint(path)
    report = compare_state_dicts(model, contents, expected_missing=expected_missing)
    if not report.ok:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: " + "; ".join(report.problems),
            report=report,
        )
    ckpt_sd, _ = strip_prefixes(contents.state_dict)
    result = unwrap_model(model).load_state_dict(
        {k: ckpt_sd[k] for k in report.loaded}, strict=False
    )
    if sorted(result.missing_keys) != sorted(report.missing) or result.unexpected_keys:
        raise CheckpointError(  # cannot happen unless state_dict() and load_state_dict() disagree
            f"checkpoint {path}: load_state_dict reported missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}, not the audited {report.missing}"
        )
    report.applied = True
    return report


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _check_plain(value: Any, where: str) -> Any:
    """Hyper-parameters must load under ``weights_only=True``: plain containers and scalars."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_check_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        return {str(k): _check_plain(v, f"{where}.{k}") for k, v in value.items()}
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
    hp = _check_plain(dict(hyper_parameters or {}), "hyper_parameters")
    if "model_config" not in hp and (cfg := model_config_dict(target)) is not None:
        hp["model_config"] = _check_plain(cfg, "model_config")
    score = None if val_loss is None else torch.tensor(float(val_loss), dtype=torch.float64)
    checkpoint = {
        "epoch": 0,
        "global_step": int(global_step),
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in target.state_dict().items()},
        "hyper_parameters": hp,
        "callbacks": {
            _MODEL_CHECKPOINT_KEY: {
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


__all__ = [
    "PREFIXES",
    "TOPOFLOW_FIELDS",
    "CheckpointContents",
    "CheckpointError",
    "LoadReport",
    "ModuleGroup",
    "compare_state_dicts",
    "config_differences",
    "load_weights",
    "model_config_dict",
    "read_checkpoint",
    "save_lightning_checkpoint",
    "strip_prefixes",
    "unwrap_model",
]

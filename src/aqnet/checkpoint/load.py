"""Auditable weight loading: every stage that loads weights goes through :func:`load_weights`.

The ``audit_checkpoint`` gate, ``smoke_forward``, ``validate_short``, the fine-tune and the
evaluation all load through it, so what was audited is what trains.

A checkpoint's state dict first goes through the adapter of its key layout
(:mod:`aqnet.checkpoint.adapters`, recognised from the keys alone): aqnet's own, the researchers'
training code or their published release. The adapted state dict is then matched against the
model: the load is clean when the model's keys missing from the checkpoint are **exactly** the
expected new parameters (by default ``model.topoflow_keys()``, less the TopoFlow parameters the
checkpoint itself carries), nothing is unexpected and no shape differs. Otherwise
:class:`~aqnet.checkpoint.read.CheckpointError` is raised before any weight is copied, with a
message that names the modules, the keys and the shapes, and carries the full
:class:`~aqnet.checkpoint.report.LoadReport` as ``.report``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.checkpoint.adapters import adapt_state_dict
from aqnet.checkpoint.keys import Adapted, AdapterError
from aqnet.checkpoint.read import CheckpointContents, CheckpointError, read_checkpoint
from aqnet.checkpoint.report import LoadReport, ModuleGroup, problems


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


def model_variables(model: nn.Module) -> tuple[str, ...]:
    """The model's input variables in channel order (``model.config.in_variables``).

    Raises:
        CheckpointError: a model without ``config.in_variables`` (adapters permute by name).
    """
    names = getattr(getattr(unwrap_model(model), "config", None), "in_variables", None)
    if names is None:
        raise CheckpointError(
            f"{type(model).__name__} has no config.in_variables: a checkpoint's per-variable "
            "tensors cannot be matched to its channels by name"
        )
    return tuple(names)


def adapt(
    model: nn.Module,
    contents: CheckpointContents,
    *,
    checkpoint_variables: Sequence[str] | None = None,
) -> Adapted:
    """The checkpoint's state dict through the adapter of its layout, for ``model``'s variables.

    Raises:
        CheckpointError: the layout's content contradicts itself (the adapter's message, naming
            the file and the key).
    """
    target = unwrap_model(model)
    has_names = hasattr(getattr(target, "config", None), "in_variables")
    names = model_variables(target) if has_names else ()
    try:
        return adapt_state_dict(
            contents.state_dict,
            hyper_parameters=contents.hyper_parameters,
            model_variables=names,
            config_variables=checkpoint_variables,
        )
    except AdapterError as exc:
        raise CheckpointError(f"checkpoint {contents.path} does not fit the model: {exc}") from exc


def compare_state_dicts(
    model: nn.Module,
    contents: CheckpointContents,
    *,
    expected_missing: Iterable[str] | None = None,
    checkpoint_variables: Sequence[str] | None = None,
    adapted: Adapted | None = None,
) -> LoadReport:
    """Match a checkpoint's tensors against ``model`` without changing the model.

    Args:
        model: the target model (DDP / ``torch.compile`` wrappers are looked through).
        contents: from :func:`read_checkpoint`.
        expected_missing: keys the checkpoint may (and must) lack; ``None`` means
            ``model.topoflow_keys()`` (an empty list for models without that method). TopoFlow
            parameters the checkpoint carries itself (the release layout's ``alpha``) are
            loaded and not required to be missing.
        checkpoint_variables: the checkpoint's channel order when its hyper-parameters do not
            record it (``baseline.variables`` of the pipeline config).
        adapted: the result of :func:`adapt` when the caller already has it.

    Raises:
        CheckpointError: the checkpoint's layout was recognised but contradicts itself (its
            variables, a per-variable tensor's size), naming the key.
    """
    target = unwrap_model(model)
    if expected_missing is None:
        topoflow_keys = getattr(target, "topoflow_keys", None)
        expected_missing = topoflow_keys() if callable(topoflow_keys) else []
    expected = sorted(set(expected_missing))
    path = contents.path
    if adapted is None:
        adapted = adapt(target, contents, checkpoint_variables=checkpoint_variables)
    ckpt_sd = adapted.state_dict
    rules, notes = adapted.rules, adapted.prefix_notes
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
    unexpected = [k for k in ckpt_sd if k not in model_sd] + list(adapted.unexplained)

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
        checkpoint_keys=len(ckpt_sd) + len(adapted.unexplained),
        val_loss=contents.val_loss,
        val_loss_source=contents.val_loss_source,
        global_step=contents.global_step,
        hyper_parameters=_plain(hp),
        config_differences=diffs,
        problems=[],
        adapter=adapted.adapter,
        adaptation=adapted.summary(),
        topoflow_loaded=[k for k in adapted.topoflow if k in loaded],
    )
    report.problems = problems(report, set(model_sd))
    outputs = getattr(getattr(target, "config", None), "out_variables", None)
    targets = adapted.target_variables
    if targets is not None and outputs is not None and list(targets) != list(outputs):
        report.problems.append(
            f"the checkpoint predicts {targets} (target_indices) but the model predicts "
            f"{list(outputs)}: their losses would not compare"
        )
    return report


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    expected_missing: Iterable[str] | None = None,
    checkpoint_variables: Sequence[str] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model``, refusing anything but a clean load.

    Args:
        model: the target model (DDP / ``torch.compile`` wrappers are looked through).
        path: a Lightning checkpoint, a wrapped or a plain state dict.
        expected_missing: the keys the checkpoint must lack (new parameters); ``None`` means
            ``model.topoflow_keys()``. Pass ``[]`` to load a checkpoint of the same model.
        checkpoint_variables: the checkpoint's channel order when its hyper-parameters do not
            record it (see :func:`compare_state_dicts`).

    Returns:
        The :class:`LoadReport` (``applied`` true).

    Raises:
        CheckpointError: unreadable or unsafe file (see :func:`read_checkpoint`), or missing keys
            other than ``expected_missing``, unexpected keys or shape mismatches. No weight is
            copied then; the error's ``report`` attribute holds the :class:`LoadReport`.
    """
    contents = read_checkpoint(path)
    adapted = adapt(unwrap_model(model), contents, checkpoint_variables=checkpoint_variables)
    report = compare_state_dicts(
        model, contents, expected_missing=expected_missing, adapted=adapted
    )
    if not report.ok:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: " + "; ".join(report.problems),
            report=report,
        )
    ckpt_sd = adapted.state_dict
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


__all__ = [
    "adapt",
    "compare_state_dicts",
    "config_differences",
    "load_weights",
    "model_config_dict",
    "model_variables",
    "unwrap_model",
]

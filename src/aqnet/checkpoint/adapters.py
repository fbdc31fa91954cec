"""Key adapters: one per known checkpoint layout, each recognised from the keys alone.

An adapter turns the state dict of a checkpoint into aqnet's key names, shapes and variable order,
and says what it did (``rules``), what it kept out on purpose and why (``dropped``) and which
tensors it took as data rather than as weights (``buffers``). It never explains a key it does not
know: such a key is passed through unchanged, so the load that follows reports it as unexpected,
naming it. The layouts (:data:`ADAPTERS`, tried in order):

* ``training-code`` - the researchers' PyTorch Lightning training code, ``aq_net2_baseline``
  src/model_multipollutants.py (``MultiPollutantLightningModule`` holds ``model =
  MultiPollutantModel``, which holds ``climax = ClimaX``; commit 4b08a7c, lines 27-60 and 66-79)
  with src/climax_core/arch.py (commit ce169dc, lines 55-109: ``token_embeds.proj_weights``
  ``[V, D, 1, p, p]`` / ``proj_biases`` ``[V, D]``, ``var_embed`` ``[1, V, D]``, ``var_query``,
  ``var_agg``, a learned ``pos_embed``, ``lead_time_embed`` = ``nn.Linear(1, D)``, timm blocks,
  ``norm``, ``head`` = Linear-GELU-Linear-GELU-Linear with ``V * p * p`` outputs). The Lightning
  module's own buffer ``china_mask`` ``[H, W]`` has no ``model.`` prefix; ``model.target_indices``
  is a buffer of the inner model. Recognised by ``climax.token_embeds.`` in the keys.
* ``release`` - the published TopoFlow release (``AmmarKheder/TopoFlow`` topoflow/model.py and
  topoflow/wind_embed.py, commit 1ab24d8; topoflow/topoflow.py, commit 8a5eb9f): no ``climax.``
  level, ``patch_embed.proj_weights`` / ``proj_biases`` and a ``patch_embed.norm`` LayerNorm, and in
  block 0 ``attn.alpha`` (aqnet's ``attn.elevation_alpha``, stored as ``[1]`` or 0-d) and
  ``attn.rel_pos_bias.bias_table`` ``[num_buckets**2, heads]`` (T5-style buckets of scaled
  coordinates, topoflow/topoflow.py lines 7-52; aqnet's relative-position bias is a per-head
  ``(17, 17)`` table over patch offsets, so that table has no counterpart: kept out, reported).
  Recognised by ``patch_embed.proj_weights`` in the keys.
* ``aqnet`` - this project's own checkpoints; only the wrapper prefixes are removed
  (:func:`strip_prefixes`). The fallback when no other layout is recognised.

Per-variable tensors (patch weights and biases, ``var_embed``) and the head's output rows are
permuted **by variable name** from the checkpoint's channel order to the model's. The checkpoint's
order is ``hyper_parameters["config"]["data"]["variables"]`` (their ``save_hyperparameters()`` of
the whole config, model_multipollutants.py line 68) when present, else the order the caller gives
(``baseline.variables`` of the pipeline config), else the model's own. Their names for the
coordinate channels (``lat2d``, ``lon2d``) are aqnet's ``lat`` and ``lon``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar

import torch

from aqnet.checkpoint.keys import (
    DATA_BUFFERS,
    Adapted,
    AdapterError,
    aqnet_names,
    hyper_parameter_variables,
    partial_prefix_notes,
    permute_head_rows,
    strip_prefixes,
    variable_permutation,
)

# ---------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------


class StateDictAdapter:
    """Base: recognise a layout from its keys and adapt its state dict to aqnet's."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        raise NotImplementedError

    def adapt(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        hyper_parameters: Mapping[str, Any],
        model_variables: Sequence[str],
        config_variables: Sequence[str] | None = None,
    ) -> Adapted:
        """Adapt ``state_dict`` to aqnet's keys for a model with ``model_variables`` channels.

        Raises:
            AdapterError: a contradiction in the checkpoint (variables, per-variable sizes).
        """
        raise NotImplementedError


class AqnetAdapter(StateDictAdapter):
    """aqnet's own checkpoints: only the wrapper prefixes are removed."""

    name = "aqnet"
    description = "aqnet's own layout (Forecaster state dict, wrapper prefixes removed)"

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return True

    def adapt(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        hyper_parameters: Mapping[str, Any],
        model_variables: Sequence[str],
        config_variables: Sequence[str] | None = None,
    ) -> Adapted:
        sd, rules = strip_prefixes(state_dict)
        notes = partial_prefix_notes(sd)
        return Adapted(adapter=self.name, state_dict=sd, rules=rules, prefix_notes=notes)


# Renames shared by both reference layouts (after their prefix is removed): regex -> replacement.
_COMMON_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^var_embed$", "aggregate.var_embed"),
    (r"^var_query$", "aggregate.var_query"),
    (r"^var_agg\.", "aggregate.var_agg."),
    (r"^lead_time_embed\.(weight|bias)$", r"lead_time_embed.proj.\1"),
)


class _ReferenceAdapter(StateDictAdapter):
    """The shared work of the researchers' two layouts."""

    prefix: ClassVar[str] = ""
    patch_module: ClassVar[str] = ""
    renames: ClassVar[tuple[tuple[str, str], ...]] = ()

    def adapt(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        hyper_parameters: Mapping[str, Any],
        model_variables: Sequence[str],
        config_variables: Sequence[str] | None = None,
    ) -> Adapted:
        out = Adapted(adapter=self.name, state_dict={})
        weights: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            if key.rsplit(".", 1)[-1] in DATA_BUFFERS:
                out.buffers[key] = tensor
            else:
                weights[key] = tensor
        if out.buffers:
            out.rules.append(f"took {', '.join(sorted(out.buffers))} as data, not as weights")
        # Their wrapper prefix: a key without it is outside the layout, reported as unexpected
        # (and the partial prefix named), never loaded even when its name matches the model's.
        out.unexplained = [k for k in weights if not k.startswith(self.prefix)]
        if out.unexplained:
            out.prefix_notes.append(
                f"{len(weights) - len(out.unexplained)} of {len(weights)} weight keys start with "
                f"{self.prefix!r} but {out.unexplained[0]!r} does not, so it is not part of the "
                f"{self.name} layout and was not loaded"
            )
        out.rules.append(f"removed {self.prefix!r} from the weight keys")
        sd = {
            k.removeprefix(self.prefix): v for k, v in weights.items() if k.startswith(self.prefix)
        }

        ckpt_vars, source = self._checkpoint_variables(hyper_parameters, config_variables)
        if ckpt_vars is None:
            ckpt_vars, source = list(model_variables), "the model's own order (none recorded)"
        out.checkpoint_variables, out.variables_source = ckpt_vars, source
        perm = variable_permutation(ckpt_vars, model_variables)
        if perm != list(range(len(perm))):
            out.rules.append(
                f"permuted the {len(perm)} variables by name from the checkpoint's order "
                f"({source}) to the model's"
            )
        self._targets(out, ckpt_vars)

        renamed: dict[str, torch.Tensor] = {}
        for key, tensor in sd.items():
            new_key, new_tensor = self._convert(key, tensor, perm, out)
            if new_key is not None:
                renamed[new_key] = new_tensor
        head = sorted(
            (k for k in renamed if re.fullmatch(r"head\.\d+\.weight", k)),
            key=lambda k: int(k.split(".")[1]),
        )
        if head and perm != list(range(len(perm))):
            last = head[-1].removesuffix(".weight")
            for suffix in ("weight", "bias"):
                key = f"{last}.{suffix}"
                if key in renamed and renamed[key].shape[0] % len(perm) == 0:
                    renamed[key] = permute_head_rows(renamed[key], perm)
            out.rules.append(f"permuted the output rows of {last} by variable")
        out.state_dict = renamed
        out.rules.append(
            f"renamed {self.patch_module}.proj_weights [V, D, 1, p, p] / proj_biases [V, D] to "
            "patch_embed.proj.weight [V*D, 1, p, p] / bias [V*D], var_embed/var_query/var_agg to "
            "aggregate.*, lead_time_embed.* to lead_time_embed.proj.*"
        )
        return out

    @staticmethod
    def _checkpoint_variables(
        hp: Mapping[str, Any], config_variables: Sequence[str] | None
    ) -> tuple[list[str] | None, str | None]:
        recorded = hyper_parameter_variables(hp)
        if recorded is not None:
            return aqnet_names(recorded), "hyper_parameters config.data.variables"
        if config_variables:
            return aqnet_names(config_variables), "the config's baseline.variables"
        return None, None

    @staticmethod
    def _targets(out: Adapted, ckpt_vars: Sequence[str]) -> None:
        key = next((k for k in out.buffers if k.endswith("target_indices")), None)
        if key is None:
            return
        idx = out.buffers[key]
        if idx.ndim != 1 or idx.dtype.is_floating_point:
            raise AdapterError(
                f"{key} must be a 1-D integer tensor, got {tuple(idx.shape)} {idx.dtype}"
            )
        bad = [int(i) for i in idx if not 0 <= int(i) < len(ckpt_vars)]
        if bad:
            raise AdapterError(
                f"{key} {idx.tolist()} points outside the checkpoint's {len(ckpt_vars)} variables"
            )
        out.target_variables = [ckpt_vars[int(i)] for i in idx]

    def _per_variable(
        self, key: str, tensor: torch.Tensor, perm: Sequence[int], dim: int
    ) -> torch.Tensor:
        if tensor.ndim <= dim or tensor.shape[dim] != len(perm):
            raise AdapterError(
                f"{key} has shape {tuple(tensor.shape)}, but the checkpoint's {len(perm)} "
                f"variables need size {len(perm)} in dimension {dim}"
            )
        return tensor.index_select(dim, torch.tensor(perm, dtype=torch.long))

    def _convert(
        self, key: str, tensor: torch.Tensor, perm: Sequence[int], out: Adapted
    ) -> tuple[str | None, torch.Tensor]:
        """One checkpoint key (prefix removed) -> (aqnet key or None when dropped, tensor)."""
        if key == f"{self.patch_module}.proj_weights":
            w = self._per_variable(key, tensor, perm, 0)  # (V, D, 1, p, p)
            return "patch_embed.proj.weight", w.reshape(-1, *w.shape[2:])  # (V * D, 1, p, p)
        if key == f"{self.patch_module}.proj_biases":
            return "patch_embed.proj.bias", self._per_variable(key, tensor, perm, 0).reshape(-1)
        if key == "var_embed":
            return "aggregate.var_embed", self._per_variable(key, tensor, perm, 1)
        for pattern, replacement in (*_COMMON_RENAMES, *self.renames):
            if re.search(pattern, key):
                return re.sub(pattern, replacement, key), tensor
        return key, tensor


class TrainingCodeAdapter(_ReferenceAdapter):
    """The researchers' training code (``aq_net2_baseline``, Lightning around ClimaX)."""

    name = "training-code"
    description = (
        "the researchers' training code (aq_net2_baseline MultiPollutantLightningModule: "
        "model.climax.*, china_mask, model.target_indices)"
    )
    prefix = "model.climax."
    patch_module = "token_embeds"

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return any("climax.token_embeds." in k for k in keys)


class ReleaseAdapter(_ReferenceAdapter):
    """The published TopoFlow release (``AmmarKheder/TopoFlow`` topoflow/ package)."""

    name = "release"
    description = (
        "the published TopoFlow release (model.patch_embed.proj_weights, patch_embed.norm, "
        "blocks.0.attn.alpha, blocks.0.attn.rel_pos_bias.bias_table)"
    )
    prefix = "model."
    patch_module = "patch_embed"

    @classmethod
    def recognises(cls, keys: Collection[str]) -> bool:
        return any(k.endswith("patch_embed.proj_weights") and "climax." not in k for k in keys)

    def _convert(
        self, key: str, tensor: torch.Tensor, perm: Sequence[int], out: Adapted
    ) -> tuple[str | None, torch.Tensor]:
        alpha = re.fullmatch(r"blocks\.(\d+)\.attn\.alpha", key)
        if alpha:
            new_key = f"blocks.{alpha.group(1)}.attn.elevation_alpha"
            if tensor.numel() != 1:
                raise AdapterError(f"{key} has shape {tuple(tensor.shape)}; alpha is one number")
            out.topoflow.append(new_key)
            out.rules.append(f"renamed {key} {list(tensor.shape)} to {new_key} [1]")
            return new_key, tensor.reshape(1)
        if re.fullmatch(r"blocks\.\d+\.attn\.rel_pos_bias\.bias_table", key):
            out.dropped[key] = (
                f"the release's T5-bucketed relative-position table {list(tensor.shape)} has no "
                "counterpart in aqnet (a per-head 17 x 17 table over patch offsets, "
                "model.rel_pos_bias); not loaded"
            )
            return None, tensor
        return super()._convert(key, tensor, perm, out)


ADAPTERS: tuple[type[StateDictAdapter], ...] = (TrainingCodeAdapter, ReleaseAdapter, AqnetAdapter)
"""The known layouts, tried in order; the first that recognises the keys adapts them."""


def detect_adapter(keys: Collection[str]) -> StateDictAdapter:
    """The adapter of the first layout in :data:`ADAPTERS` that recognises ``keys``."""
    for cls in ADAPTERS:
        if cls.recognises(keys):
            return cls()
    raise AssertionError("AqnetAdapter recognises every layout")  # pragma: no cover


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    hyper_parameters: Mapping[str, Any],
    model_variables: Sequence[str],
    config_variables: Sequence[str] | None = None,
) -> Adapted:
    """Detect the layout of ``state_dict`` and adapt it (see :class:`StateDictAdapter.adapt`)."""
    adapter = detect_adapter(list(state_dict))
    return adapter.adapt(
        state_dict,
        hyper_parameters=hyper_parameters,
        model_variables=model_variables,
        config_variables=config_variables,
    )


__all__ = [
    "ADAPTERS",
    "AqnetAdapter",
    "ReleaseAdapter",
    "StateDictAdapter",
    "TrainingCodeAdapter",
    "adapt_state_dict",
    "detect_adapter",
]

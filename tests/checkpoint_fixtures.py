"""Checkpoints in the researchers' layouts, written by the tests themselves (random weights).

The key tables follow the issue's description of the layouts and the researchers' code:

* training code: ``aq_net2_baseline`` src/model_multipollutants.py (commit 4b08a7c, lines 27-79:
  ``model.climax.*``, the buffers ``model.target_indices`` and ``china_mask``) and
  src/climax_core/arch.py (commit ce169dc, lines 55-109), with their
  configs/config_all_pollutants.yaml (commit 4b08a7c) giving the variable and target lists;
* the published release: ``AmmarKheder/TopoFlow`` topoflow/model.py and topoflow/wind_embed.py
  (commit 1ab24d8), topoflow/topoflow.py (commit 8a5eb9f).

Top-level entries are Lightning's (epoch, global_step, pytorch-lightning_version, state_dict, loops,
callbacks with EarlyStopping and ModelCheckpoint, optimizer_states, lr_schedulers, hparams_name,
hyper_parameters with the whole config under ``config``). ``paper`` sizes are built as shapes only
(or meta tensors): nothing of 52 M parameters is allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REFERENCE_VARIABLES: tuple[str, ...] = (
    "u", "v", "temp", "rh", "psfc", "pm10", "so2", "no2", "co", "o3",
    "lat2d", "lon2d", "pm25", "elevation", "population",
)  # fmt: skip
"""The training code's input channels, in order (config_all_pollutants.yaml data.variables)."""

REFERENCE_TARGETS: tuple[str, ...] = ("pm25", "pm10", "so2", "no2", "co", "o3")

AQNET_REFERENCE_ORDER: tuple[str, ...] = tuple(
    {"lat2d": "lat", "lon2d": "lon"}.get(v, v) for v in REFERENCE_VARIABLES
)
"""The same order in aqnet's names."""

PAPER = {"img_size": (128, 256), "patch_size": 2, "embed_dim": 768, "depth": 6, "num_heads": 8}
TINY = {"img_size": (16, 32), "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 4}


def _block_shapes(prefix: str, d: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.norm1.weight": (d,),
        f"{prefix}.norm1.bias": (d,),
        f"{prefix}.attn.qkv.weight": (3 * d, d),
        f"{prefix}.attn.qkv.bias": (3 * d,),
        f"{prefix}.attn.proj.weight": (d, d),
        f"{prefix}.attn.proj.bias": (d,),
        f"{prefix}.norm2.weight": (d,),
        f"{prefix}.norm2.bias": (d,),
        f"{prefix}.mlp.fc1.weight": (hidden, d),
        f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (d, hidden),
        f"{prefix}.mlp.fc2.bias": (d,),
    }


def _backbone_shapes(
    root: str, patch: str, *, n_vars: int, size: Mapping[str, Any], head_layers: int
) -> dict[str, tuple[int, ...]]:
    d, p = size["embed_dim"], size["patch_size"]
    h, w = size["img_size"]
    shapes: dict[str, tuple[int, ...]] = {
        f"{root}{patch}.proj_weights": (n_vars, d, 1, p, p),
        f"{root}{patch}.proj_biases": (n_vars, d),
        f"{root}var_embed": (1, n_vars, d),
        f"{root}var_query": (1, 1, d),
        f"{root}var_agg.in_proj_weight": (3 * d, d),
        f"{root}var_agg.in_proj_bias": (3 * d,),
        f"{root}var_agg.out_proj.weight": (d, d),
        f"{root}var_agg.out_proj.bias": (d,),
        f"{root}pos_embed": (1, (h // p) * (w // p), d),
        f"{root}lead_time_embed.weight": (d, 1),
        f"{root}lead_time_embed.bias": (d,),
    }
    for i in range(size["depth"]):
        shapes.update(_block_shapes(f"{root}blocks.{i}", d, 4 * d))
    shapes[f"{root}norm.weight"] = (d,)
    shapes[f"{root}norm.bias"] = (d,)
    for k in range(head_layers):
        out = n_vars * p * p if k == head_layers - 1 else d
        shapes[f"{root}head.{2 * k}.weight"] = (out, d)
        shapes[f"{root}head.{2 * k}.bias"] = (out,)
    return shapes


def training_code_shapes(
    size: Mapping[str, Any] = TINY,
    *,
    variables: Sequence[str] = REFERENCE_VARIABLES,
    n_targets: int = len(REFERENCE_TARGETS),
    head_layers: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the training code's Lightning state dict (buffers included)."""
    shapes = _backbone_shapes(
        "model.climax.", "token_embeds", n_vars=len(variables), size=size, head_layers=head_layers
    )
    shapes["model.target_indices"] = (n_targets,)
    shapes["china_mask"] = tuple(size["img_size"])
    return shapes


def release_shapes(
    size: Mapping[str, Any] = TINY,
    *,
    variables: Sequence[str] = REFERENCE_VARIABLES,
    topoflow: bool = True,
    head_layers: int = 3,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published release's Lightning state dict."""
    shapes = _backbone_shapes(
        "model.", "patch_embed", n_vars=len(variables), size=size, head_layers=head_layers
    )
    d = size["embed_dim"]
    shapes["model.patch_embed.norm.weight"] = (d,)
    shapes["model.patch_embed.norm.bias"] = (d,)
    if topoflow:
        shapes["model.blocks.0.attn.alpha"] = ()  # their TopoFlow checkpoints: a 0-d tensor
        shapes["model.blocks.0.attn.rel_pos_bias.bias_table"] = (32 * 32, size["num_heads"])
    return shapes


def tensors(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    seed: int = 0,
    variables: Sequence[str] = REFERENCE_VARIABLES,
    targets: Sequence[str] = REFERENCE_TARGETS,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Random weights of the given shapes (``meta`` tensors when ``device="meta"``); the buffers
    as the training code makes them (``target_indices`` of ``targets`` in ``variables``, a 0/1
    float mask)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.endswith("target_indices"):
            out[key] = torch.tensor([list(variables).index(t) for t in targets], dtype=torch.long)
        elif device == "meta":
            out[key] = torch.empty(shape, device="meta")
        elif key.endswith("china_mask"):
            out[key] = (torch.rand(shape, generator=gen) > 0.3).float()
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.05
    return out


def lightning_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    *,
    variables: Sequence[str] | None = REFERENCE_VARIABLES,
    targets: Sequence[str] = REFERENCE_TARGETS,
    val_loss: float = 0.3557,
) -> dict[str, Any]:
    """A dict with Lightning's top-level entries around ``state_dict``; ``variables=None`` leaves
    the variable list out of the hyper-parameters."""
    data: dict[str, Any] = {"target_variables": list(targets), "val_years": [2017]}
    if variables is not None:
        data["variables"] = list(variables)
    score = torch.tensor(val_loss)
    return {
        "epoch": 3,
        "global_step": 20000,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": dict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 0,
                "stopped_epoch": 0,
                "best_score": score,
                "patience": 10,
            },
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}": {
                "monitor": "val_loss",
                "best_model_score": score,
                "best_model_path": "best.ckpt",
                "current_score": score,
            },
        },
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3}],
        "hparams_name": "config",
        "hyper_parameters": {"config": {"data": data, "model": {"patch_size": 2}}},
    }


def write(path: Path, checkpoint: Mapping[str, Any]) -> Path:
    torch.save(dict(checkpoint), path)
    return path


def parameter_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Elements of every tensor except the two data buffers."""
    total = 0
    for key, shape in shapes.items():
        if key.endswith(("china_mask", "target_indices")):
            continue
        n = 1
        for s in shape:
            n *= s
        total += n
    return total

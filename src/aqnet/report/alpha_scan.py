"""Does the data reward the elevation bias? The loss of fixed weights at fixed ``elevation_alpha``.

A fine-tune can only learn a bias the data rewards. With every other weight held at the
baseline's, the masked loss at ``alpha = a`` (every TopoFlow block alike) against ``alpha = 0``
tells whether, and how much, the configured bias (its direction and ``H_scale``) can lower the
loss on its own; the gradient at 0 tells which way a fine-tune starts to move it. A curve that is
flat or rising means the effect in the data is not one this bias represents at this model and
resolution, whatever the steps and learning rate.

Usage::

    python -m aqnet.report.alpha_scan --config results/variants/default/config.yaml \\
        --cache results/cache --checkpoint results/baseline/baseline.ckpt --split test \\
        --alphas 0 0.5 1 2 4 8 --samples 48
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from aqnet.losses import masked_mse


def _alphas_of(model: nn.Module) -> list[nn.Parameter]:
    found = [p for n, p in model.named_parameters() if n.endswith("elevation_alpha")]
    if not found:
        raise ValueError("alpha_scan: the model has no TopoFlow block (no elevation_alpha)")
    return found


def loss_at_alphas(
    model: nn.Module, batch: Sequence[torch.Tensor], alphas: Sequence[float]
) -> dict[str, Any]:
    """The masked loss of ``model`` on ``batch`` with every ``elevation_alpha`` set to each value.

    Args:
        model: a :class:`aqnet.model.Forecaster` with at least one TopoFlow block.
        batch: ``(x (B, V, H, W), y (B, C, H, W), lead_time_h (B,), elevation_m (B, H, W),
            mask (B, H, W))``, as the cache's DataLoader yields them.
        alphas: the values to try.

    Returns:
        ``alphas``, ``loss`` (one per alpha), ``grad_at_zero`` (d loss / d alpha at 0, summed
        over the blocks) and ``best_alpha``, ``best_gain_pct`` (the lowest loss's alpha and its
        gain over alpha = 0, in percent). The model's alphas are restored afterwards.
    """
    params = _alphas_of(model)
    saved = [p.detach().clone() for p in params]
    x, y, lead, elev, mask = batch
    was_training = model.training
    model.eval()
    try:
        losses = []
        with torch.no_grad():
            for a in alphas:
                for p in params:
                    p.fill_(float(a))
                losses.append(float(masked_mse(model(x, lead, elev), y, mask)))
            for p in params:
                p.zero_()
        for p in params:
            p.grad = None
        masked_mse(model(x, lead, elev), y, mask).backward()
        # no gradient reaches alpha when the bias is switched off: 0
        grad = float(sum(0.0 if p.grad is None else float(p.grad.sum()) for p in params))
        with torch.no_grad():
            base = float(masked_mse(model(x, lead, elev), y, mask))
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
                p.grad = None
        model.train(was_training)
    k = int(np.argmin(losses))
    return {
        "alphas": [float(a) for a in alphas],
        "loss": losses,
        "loss_at_zero": base,
        "grad_at_zero": grad,
        "best_alpha": float(alphas[k]),
        "best_gain_pct": 100.0 * (base - losses[k]) / base if base > 0 else float("nan"),
    }


def baseline_and_batch(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    checkpoint: str | Path,
    *,
    split: str,
    samples: int,
) -> tuple[nn.Module, list[torch.Tensor]]:
    """The pipeline model of ``cfg`` with the baseline ``checkpoint``'s weights (the TopoFlow keys
    missing, as a fine-tune starts: every ``elevation_alpha`` 0) and one batch of ``samples``
    items spread evenly over ``split`` of the cache (the DataLoader's five tensors)."""
    from aqnet.checkpoint import load_weights
    from aqnet.config import POLLUTANTS
    from aqnet.data import CacheDataset, load_stats
    from aqnet.gates.audit import expected_missing_keys
    from aqnet.model import Forecaster, from_pipeline_config
    from aqnet.model.presets import input_variables

    model = Forecaster(from_pipeline_config(cfg, stats=load_stats(cache_dir)))
    load_weights(model, checkpoint, expected_missing=expected_missing_keys(cfg, model))
    ds = CacheDataset(
        cache_dir,
        split,
        lead_times_h=tuple(int(h) for h in cfg["lead_times_h"]),
        out_variables=POLLUTANTS,
        in_variables=input_variables(cfg),
    )
    idx = np.unique(np.linspace(0, len(ds) - 1, min(samples, len(ds))).astype(int))
    items = [ds[int(i)] for i in idx]
    return model, [torch.stack([torch.as_tensor(it[k]) for it in items]) for k in range(5)]


def scan_checkpoint(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    checkpoint: str | Path,
    *,
    split: str,
    alphas: Sequence[float],
    samples: int,
) -> dict[str, Any]:
    """:func:`loss_at_alphas` of the baseline of :func:`baseline_and_batch` on its batch."""
    model, batch = baseline_and_batch(cfg, cache_dir, checkpoint, split=split, samples=samples)
    return {"split": split, "n_samples": len(batch[0]), **loss_at_alphas(model, batch, alphas)}


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a resolved variant config.yaml")
    parser.add_argument("--cache", required=True)
    parser.add_argument(
        "--checkpoint", required=True, help="the baseline: the weights a fine-tune starts from"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--samples", type=int, default=48)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cfg = yaml.safe_load(Path(args.config).read_text())
    out = scan_checkpoint(
        cfg, args.cache, args.checkpoint, split=args.split, alphas=args.alphas, samples=args.samples
    )
    mcfg = cfg["model"]
    print(
        f"alpha_scan: {mcfg.get('elevation_bias_direction', 'uphill')}, H_scale "
        f"{mcfg.get('h_scale_m')} m, {out['split']} ({out['n_samples']} samples): "
        + ", ".join(
            f"alpha {a:g}: {v:.5f}" for a, v in zip(out["alphas"], out["loss"], strict=True)
        )
        + f"; d loss / d alpha at 0 = {out['grad_at_zero']:+.3e}; best alpha {out['best_alpha']:g}"
        f" gains {out['best_gain_pct']:+.3f} %"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

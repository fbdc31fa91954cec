"""How much of the TopoFlow bias could the baseline's own attention already express?

The elevation bias adds ``-alpha * relu(s * (z_j - z_i))`` to the logit of query token ``i`` and
key token ``j`` (``z = elevation / H_scale``; ``s`` is +1 for ``uphill``, -1 for ``downhill``,
:mod:`aqnet.model.elevation_attention`). A softmax ignores whatever is the same along a row, so
only the *row-centred* bias matters. Elevation is one of the model's input channels (every
``in_variables`` order holds it; the researchers' baseline too: ``config/reference.yaml``). A head
whose queries and keys read it linearly can form ``q_i . k_j = (a + b z_i) z_j``: a *bilinear*
form of the two elevations, two numbers of its query and one of its key. This is an idealised
guide, not a bound: the block sees the elevation through the patch embedding, the variable
aggregation and a LayerNorm (on the demo's baseline a linear read-out of block 0's input tokens
recovers it with R^2 0.94), and a head has more than one dimension. Two measures:

* :func:`terrain_share` (the terrain alone): the fraction of the row-centred bias's variance, over
  every token pair of the run's terrain, that the best bilinear form reproduces (``bilinear``);
  of it, the part that needs no query elevation at all (``key_only``, ``-b z_j``: "prefer lower
  keys"); and what a free slope per query reproduces (``per_query``, ``c_i z_j``, which a head
  could also form from the lat/lon channels on one fixed terrain). ``new = 1 - bilinear`` is the
  part a linear elevation read-out cannot form: the relu's kink. The pattern, and so every share,
  does not depend on ``alpha`` while ``alpha * max(relu) <= 10`` (the clamp). And
  ``lowest_tied``: the share of tokens tied (within :data:`TIE_M`) at the lowest height (on a
  coast, the sea at 0 m). ``uphill`` penalises each of them for attending every token above;
  ``downhill``, every token above for attending them. In a demo trial, taking the sea away (19.5 %
  of the demo's tokens tied at 0 m) removed most of what the bias cost a trained baseline
  (docs/known_answer.md, "A tracer of the mask's own shape").
* :func:`learned_alpha` (a trained baseline): each head's row-centred logits ``q k^T / sqrt(d)``
  in a TopoFlow block, projected on the row-centred bias pattern of the same samples: ``gamma``,
  the elevation bias the head applies, in the units of ``elevation_alpha`` (``gamma > 0`` in the
  configured direction), and ``r2``, the share of that head's logit variance the pattern
  explains. A TopoFlow ``alpha`` adds its bias to every head; ``gamma`` is one head's.

Usage::

    python -m aqnet.report.bias_share --config results/variants/default/config.yaml \\
        --cache results/cache --checkpoint results/baseline/baseline.ckpt --split test
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aqnet.model.elevation_attention import TopoFlowAttention, direction_sign


def token_elevations(elevation_m: np.ndarray, patch_size: int) -> np.ndarray:
    """``(Hp * Wp,)`` each patch's mean elevation, as the forecaster forms its ``elevation_tokens``
    (``F.avg_pool2d`` over the patches, row-major; :mod:`aqnet.model.forecaster`)."""
    e = torch.as_tensor(np.asarray(elevation_m, dtype=np.float64))
    if e.ndim != 2 or e.shape[0] % patch_size or e.shape[1] % patch_size:
        raise ValueError(
            f"bias_share: elevation of shape {tuple(e.shape)} is not a grid of whole "
            f"{patch_size} x {patch_size} patches"
        )
    return F.avg_pool2d(e[None, None], patch_size).flatten().numpy()


TIE_M = 1.0
"""Tokens within this many metres of the lowest token count as tied with it (``lowest_tied``): a
difference the bias scales to ``alpha * TIE_M / H_scale``, nothing at the scales in use."""


def terrain_share(
    z: np.ndarray, *, direction: str = "uphill", chunk: int = 1024, tie: float = 0.0
) -> dict[str, float]:
    """Shares of the row-centred bias ``relu(s (z_j - z_i))`` over all token pairs of ``z (N,)``.

    Rows are formed ``chunk`` at a time (memory ``chunk x N``), so a paper-size grid (8192 tokens)
    needs no ``N x N`` array.

    Returns:
        ``n_tokens``; ``bilinear``, ``key_only`` and ``per_query``: the explained fractions
        described in the module docstring, each in ``[0, 1]`` (``bilinear`` is 1 on a terrain of
        two levels ``l < h``, where ``relu(z_j - z_i) = (z_j - l)(h - z_i) / (h - l)``); ``new =
        1 - bilinear``; ``lowest_tied``, the share of tokens within ``tie`` (units of ``z``; and
        float noise, ``1e-9`` of the range) of the lowest. A flat terrain (no bias at all) raises
        ``ValueError``.
    """
    if chunk < 1:
        raise ValueError(f"bias_share: chunk must be >= 1 rows, got {chunk}")
    z = np.asarray(z, dtype=np.float64).ravel()
    s = direction_sign(direction, who="bias_share", key="direction")
    n = z.size
    if n < 2 or float(np.ptp(z)) <= 0:
        raise ValueError("bias_share: the terrain is flat, so the elevation bias is 0 everywhere")
    zc = z - z.mean()
    szz = float(zc @ zc)
    total = 0.0
    slope = np.empty(n)  # t_i: the best per-query slope of row i on the centred key elevations
    for lo in range(0, n, chunk):
        rows = np.maximum(s * (z[None, :] - z[lo : lo + chunk, None]), 0.0)  # (c, N)
        mean = rows.mean(axis=1)
        total += float((rows * rows).sum() - n * (mean * mean).sum())  # sum of centred squares
        slope[lo : lo + chunk] = rows @ zc / szz
    # Row i with slope c_i explains szz * (t_i^2 - (t_i - c_i)^2); c_i = t_i gives per_query, and
    # c_i = a + b z_i fitted by least squares on the t_i gives the bilinear form.
    per_query = szz * float(slope @ slope)
    design = np.stack([np.ones(n), z], axis=1)
    coef, *_ = np.linalg.lstsq(design, slope, rcond=None)
    resid = slope - design @ coef
    bilinear = per_query - szz * float(resid @ resid)
    key_only = szz * n * float(slope.mean()) ** 2  # the same slope for every query: c_i = mean t

    def frac(x: float) -> float:  # rounding can step a hair outside [0, 1]
        return min(1.0, max(0.0, x / total))

    return {
        "n_tokens": float(n),
        "bilinear": frac(bilinear),
        "key_only": frac(key_only),
        "per_query": frac(per_query),
        "new": 1.0 - frac(bilinear),
        "lowest_tied": float(np.mean(z <= z.min() + tie + 1e-9 * float(np.ptp(z)))),
    }


def config_share(
    config: Mapping[str, Any] | None, cache_dir: str | Path, elevation_m: np.ndarray
) -> dict[str, Any] | None:
    """:func:`terrain_share` of a variant's bias (its ``model`` section: patch size, ``H_scale``,
    direction) on ``elevation_m``, with its ``direction``, ``h_scale_m`` and ``lowest_m`` (the
    lowest token's elevation, metres); ``None`` when the config is not given, it has no elevation
    bias, or every token lies at one height (no bias to share). What the report's ``bias_share``
    holds."""
    from aqnet.data import load_stats
    from aqnet.model import from_pipeline_config

    if not config:
        return None
    mcfg = from_pipeline_config(config, stats=load_stats(cache_dir))
    if not mcfg.elevation_bias or not mcfg.topoflow_blocks:
        return None
    z = token_elevations(elevation_m, mcfg.patch_size) / mcfg.h_scale_m
    if float(np.ptp(z)) <= 0:
        return None
    share = terrain_share(z, direction=mcfg.elevation_bias_direction, tie=TIE_M / mcfg.h_scale_m)
    return {
        "direction": mcfg.elevation_bias_direction,
        "h_scale_m": mcfg.h_scale_m,
        "lowest_m": float(z.min() * mcfg.h_scale_m),
        **share,
        "n_tokens": int(share["n_tokens"]),
    }


def learned_alpha(
    model: nn.Module, batch: Sequence[torch.Tensor], *, chunk: int = 1024
) -> list[dict[str, Any]]:
    """Each TopoFlow block's heads: the elevation bias their logits already carry.

    Args:
        model: a :class:`aqnet.model.Forecaster` (its TopoFlow blocks give the tokens and their
            elevations in the order the block sees them, after the wind scan).
        batch: ``(x, y, lead_time_h, elevation_m, mask)`` as the cache's DataLoader yields them.
        chunk: queries per step of the projection (a few float64 arrays of ``heads x chunk x N``).

    Returns:
        One entry per TopoFlow block: ``block`` (module name), ``direction``, ``alpha`` (its
        ``elevation_alpha``), and per head ``gamma`` (the least-squares coefficient of the
        row-centred logits on the row-centred ``-relu(s (z_j - z_i))``, summed over the batch) and
        ``r2`` (the share of the row-centred logit variance it explains).
    """
    if chunk < 1:
        raise ValueError(f"bias_share: chunk must be >= 1 queries, got {chunk}")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []

    def keep(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen[name] = (args[0].detach(), kwargs["elevation_m"].detach())

        return hook

    blocks = {n: m for n, m in model.named_modules() if isinstance(m, TopoFlowAttention)}
    if not blocks:
        raise ValueError("bias_share: the model has no TopoFlow block")
    for name, module in blocks.items():
        handles.append(module.register_forward_pre_hook(keep(name), with_kwargs=True))
    x, _y, lead, elev, _mask = batch
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x, lead, elev)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = []
    with torch.no_grad():
        for name, module in blocks.items():
            tokens, elev_tokens = seen[name]
            z = elev_tokens.double() / float(module.H_scale)  # (B, N)
            s = module.direction_sign
            heads_n = module.num_heads
            pp = 0.0
            lp = torch.zeros(heads_n, dtype=torch.float64)
            ll = torch.zeros(heads_n, dtype=torch.float64)
            for b in range(tokens.shape[0]):  # one sample and `chunk` queries at a time
                q, k, _v = module._split_heads(tokens[b : b + 1])  # (1, h, N, hd)
                q, k = q[0], k[0]
                for lo in range(0, q.shape[1], chunk):
                    logits = (q[:, lo : lo + chunk] @ k.transpose(-1, -2)).double()
                    logits = logits * module.head_dim**-0.5  # (h, c, N)
                    logits = logits - logits.mean(dim=-1, keepdim=True)
                    pattern = -torch.relu(s * (z[b, None, :] - z[b, lo : lo + chunk, None]))
                    pattern = pattern - pattern.mean(dim=-1, keepdim=True)  # (c, N)
                    pp += float(pattern.square().sum())
                    lp += (logits * pattern).sum(dim=(1, 2))
                    ll += logits.square().sum(dim=(1, 2))
            heads = [
                {
                    "gamma": float(lp[h]) / pp if pp > 0 else 0.0,
                    "r2": float(lp[h] ** 2 / (pp * ll[h])) if pp > 0 and ll[h] > 0 else 0.0,
                }
                for h in range(heads_n)
            ]
            out.append(
                {
                    "block": name,
                    "direction": module.elevation_bias_direction,
                    "alpha": float(module.elevation_alpha.detach()),
                    "heads": heads,
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    from aqnet.data import load_static
    from aqnet.report.alpha_scan import baseline_and_batch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a resolved variant config.yaml")
    parser.add_argument("--cache", required=True)
    parser.add_argument(
        "--checkpoint", help="a trained baseline: also measure the bias its heads already carry"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    share = config_share(cfg, args.cache, load_static(args.cache)["elevation_m"])
    if share is None:
        print(f"bias_share: {args.config} has no elevation bias on this terrain: nothing to share")
    else:
        print(
            f"bias_share: {share['direction']}, H_scale {share['h_scale_m']:g} m, "
            f"{share['n_tokens']} tokens: a bilinear form of the two elevations (a head's "
            f"q . k reading the elevation linearly) reproduces {100 * share['bilinear']:.1f} % of "
            f"the row-centred bias ({100 * share['key_only']:.1f} % with no query elevation at "
            f"all: 'prefer lower keys'), a free slope per query {100 * share['per_query']:.1f} %; "
            f"the part no linear read-out forms: {100 * share['new']:.1f} %"
        )
    if args.checkpoint:
        torch.manual_seed(0)
        model, batch = baseline_and_batch(
            cfg, args.cache, args.checkpoint, split=args.split, samples=args.samples
        )
        for blk in learned_alpha(model, batch):
            heads = ", ".join(
                f"head {i}: gamma {h['gamma']:+.3f} (r2 {h['r2']:.3f})"
                for i, h in enumerate(blk["heads"])
            )
            mean = float(np.mean([h["gamma"] for h in blk["heads"]]))
            print(
                f"bias_share: {blk['block']} of {args.checkpoint} ({args.split}, {len(batch[0])} "
                f"samples), the bias its logits already carry: {heads}; mean over the heads "
                f"{mean:+.3f} (alpha {blk['alpha']:g})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

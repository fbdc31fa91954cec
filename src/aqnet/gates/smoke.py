"""Gate ``smoke_forward``: real validation batches through the real DataLoader and the model.

On whatever device is there, with the weights loaded through
:func:`aqnet.checkpoint.load_weights` (the audited path):

0. the cache is normalised as the baseline's data was
   (:func:`aqnet.data.reference.check_cache_normalization`), else it fails before any batch;
1. the model's wind scan orders are the cache's (canonical digest of ``model.wind_orders()`` /
   ``model.orders_params()`` against the cache's ``wind_orders.npz``) and its ``wind_scan`` mode is
   the config's (the orders are compared in the ``global`` / ``regional`` modes, whose tables are
   what runs; the ``reference`` mode recomputes each sample's order and uses no table);
2. the first batch goes through the model with the shape after every stage recorded
   (``Forecaster.forward(..., shapes=...)``); a wrong shape - the 4-D-into-attention bug - fails
   naming the stage, and the prediction must have the target's shape;
3. the loss is finite, and with ``alpha = 0`` the fine-tune model's loss equals the baseline
   model's (``baseline_of`` the same config, the same weights) on every batch within
   ``gates.smoke_equal_rtol``;
4. the masked MSE (normalised units, squared errors summed over all items and divided once) over
   the pipeline's one validation subset - ``validation.samples`` items evenly spaced over the
   validation split (:func:`aqnet.data.validation_indices`; ``all`` is the whole year) in batches of
   ``validation.batch_size`` - is within ``gates.val_loss_rtol`` of the baseline's recorded
   validation loss: a checkpoint that "loads" but gives 0.964 where 0.356 is expected fails here.
   The training loop validates on the same items, so a baseline trained by ``train_baseline``
   (whose checkpoint holds the weights of its best validation and that loss) gives back its
   recorded loss to float error; the tolerance is for a baseline whose loss came from another
   evaluation. When the loss is missed, the same batches are evaluated under each scan order
   (:mod:`aqnet.gates.scan_candidates`) and the report and message name the one that reproduces
   the recorded loss, if any (``scan_orders``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aqnet.checkpoint import CheckpointError, load_weights
from aqnet.data.dataset import batch_to_device
from aqnet.device import resolve_device
from aqnet.evaluation import ErrorSums
from aqnet.gates.audit import build_model, expected_missing_keys
from aqnet.gates.wind_order import ORDERS_FILE
from aqnet.orders import OrdersFileError, load_orders, orders_digest
from aqnet.stage import StageFailure

SEED = 0
"""Seed of the smoke run's model construction (every weight is then loaded from the checkpoint)."""


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _check_orders(model: nn.Module, cfg: Mapping[str, Any], cache_dir: Path) -> dict[str, Any]:
    """The model's wind orders and scan mode against the cache's orders file and the config."""
    path = cache_dir / ORDERS_FILE
    try:
        cache_orders, cache_params, stored = load_orders(path)
    except OrdersFileError as exc:
        raise StageFailure(f"smoke_forward: {exc}") from exc
    cache_digest = orders_digest(cache_orders, cache_params)
    model_digest = orders_digest(model.wind_orders(), model.orders_params())
    mode = model.config.wind_scan
    info = {
        "cache_file": str(path),
        "cache_digest": cache_digest,
        "cache_stored_digest": stored,
        "model_digest": model_digest,
        "digests_equal": model_digest == cache_digest,
        "model_wind_scan": mode,
        "config_wind_scan": cfg["model"]["wind_scan"],
    }
    if stored != cache_digest:
        raise StageFailure(
            f"smoke_forward: {path} was modified after it was written (stored digest "
            f"{stored[:12]}, orders give {cache_digest[:12]})"
        )
    if mode != cfg["model"]["wind_scan"]:
        raise StageFailure(
            f"smoke_forward: the model scans in mode {mode!r} but the config's model.wind_scan "
            f"is {cfg['model']['wind_scan']!r}"
        )
    info["tables_used"] = mode in ("global", "regional")  # reference: per-sample orders
    if info["tables_used"] and model_digest != cache_digest:
        raise StageFailure(
            f"smoke_forward: the model's wind scan orders (digest {model_digest[:12]}, params "
            f"{model.orders_params()}) are not the cache's (digest {cache_digest[:12]}, params "
            f"{cache_params}): the model would scan patches in another order than verified"
        )
    return info


def _load(
    model: nn.Module,
    checkpoint: str | Path,
    expected: list[str],
    which: str,
    variables: list[str] | None = None,
) -> Any:
    """``variables``: the checkpoint's channel order when it does not record one
    (``baseline.variables``, as the audit used)."""
    try:
        return load_weights(
            model, checkpoint, expected_missing=expected, checkpoint_variables=variables
        )
    except CheckpointError as exc:
        raise StageFailure(f"smoke_forward: loading the {which} model failed: {exc}") from exc


def _scan_orders_tried(
    cfg: Mapping[str, Any],
    cache_dir: Path,
    checkpoint: str | Path,
    loader: Iterable[Any],
    baseline_val_loss: float,
    tol: float,
    dev: torch.device,
) -> dict[str, Any]:
    """The same batches under each scan order (:mod:`aqnet.gates.scan_candidates`)."""
    from aqnet.gates.scan_candidates import evaluate_scan_orders

    return evaluate_scan_orders(
        cfg,
        cache_dir,
        checkpoint,
        loader,
        baseline_val_loss=baseline_val_loss,
        rtol=tol,
        device=dev,
    )


def _last_stage(shapes: Mapping[str, Any]) -> str:
    return next(reversed(list(shapes)), "none") if shapes else "none"


def smoke_forward(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    checkpoint: str | Path,
    baseline_val_loss: float | None,
    *,
    device: str = "auto",
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the smoke test of the fine-tune model of ``cfg`` (see the module docstring).

    Args:
        cfg: a resolved pipeline config (``aqnet.config.load_resolved``).
        cache_dir: the training cache (``CacheDataset(cache_dir, "val")``, ``wind_orders.npz``).
        checkpoint: the baseline checkpoint.
        baseline_val_loss: the baseline's recorded validation loss (``None`` fails at once).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        report: a dict to fill (``aqnet.stage.run_stage`` passes its report); a new one if None.

    Returns:
        The report: ``device``, ``wind_orders``, ``batch_shapes``, ``shapes`` (stage -> shape),
        ``validation_samples``, ``batches``, ``batch_losses`` / ``baseline_batch_losses``,
        ``max_rel_diff``, ``val_loss``, ``baseline_val_loss``, ``val_loss_rel_diff``, ``alpha``,
        ``reason``.

    Raises:
        StageFailure: naming the stage and the numbers.
    """
    from aqnet.data import CacheDataset, make_validation_loader, validation_samples
    from aqnet.data.reference import PreprocessingError, check_cache_normalization
    from aqnet.provenance import gate_digest

    report = {} if report is None else report
    report["config_digest"] = gate_digest(cfg)  # what reads this report checks it
    gates = cfg["gates"]
    cache_dir = Path(cache_dir)
    if baseline_val_loss is None:
        raise StageFailure(
            "smoke_forward: the baseline's validation loss is not recorded (set baseline.val_loss "
            "in the config or use a checkpoint that records it), so the weights cannot be checked"
        )
    dev = resolve_device(device, stage="smoke_forward")
    report.update(
        checkpoint=str(checkpoint),
        cache=str(cache_dir),
        variant=cfg.get("variant", "default"),
        device=str(dev),
        tolerances={k: gates[k] for k in ("smoke_equal_rtol", "val_loss_rtol")},
    )

    torch.manual_seed(SEED)
    model = build_model(cfg, cache_dir)
    base = build_model(cfg, cache_dir, baseline=True)
    variables = cfg.get("baseline", {}).get("variables")
    load = _load(model, checkpoint, expected_missing_keys(cfg, model), "fine-tune", variables)
    _load(base, checkpoint, list(base.topoflow_keys()), "baseline", variables)
    report["load"] = {"module_summary": load.summary_lines(), "new_parameters": load.missing}
    report["alpha"] = {
        k: v.item() if v.numel() == 1 else v.cpu().tolist()
        for k, v in model.state_dict().items()
        if k.endswith("elevation_alpha")
    }
    report["wind_orders"] = _check_orders(model, cfg, cache_dir)

    dataset = CacheDataset(
        cache_dir,
        "val",
        lead_times_h=tuple(cfg["lead_times_h"]),
        in_variables=model.config.in_variables,
    )
    # The items every validation pass of the pipeline evaluates (the baseline's recorded loss
    # included), spread evenly over the validation split.
    try:  # like with like: the cache must be normalised as the baseline's training data was
        report["normalization"] = check_cache_normalization(cfg, dataset.stats, dataset.meta)
    except PreprocessingError as exc:
        raise StageFailure(f"smoke_forward: {exc}") from exc
    n_samples = validation_samples(cfg, len(dataset))
    loader = make_validation_loader(
        dataset,
        n_samples=n_samples,
        batch_size=int(cfg["validation"]["batch_size"]),
        pin_memory=dev.type == "cuda",
    )
    report["validation_samples"] = n_samples
    model.to(dev).eval()
    base.to(dev).eval()

    rtol = gates["smoke_equal_rtol"]
    losses: list[float] = []
    base_losses: list[float] = []
    # The one evaluation pass (aqnet.evaluation) of both models, as training validation does it.
    lead_times = [int(h) for h in cfg["lead_times_h"]]
    outs = list(model.config.out_variables)
    sums = {
        role: ErrorSums(lead_times_h=lead_times, pollutants=outs, device=dev)
        for role in ("finetune", "baseline")
    }
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            x, y, lead, elev, mask = batch_to_device(batch, dev, stage="smoke_forward")
            shapes: dict[str, Any] | None = None
            if i == 0:
                report["batch_shapes"] = {
                    "x": list(x.shape),
                    "y": list(y.shape),
                    "lead_time_h": list(lead.shape),
                    "elevation_m": list(elev.shape),
                    "mask": list(mask.shape),
                }
                shapes = {}
                report["shapes"] = shapes
            try:
                pred = model(x, lead, elev, shapes=shapes)  # (B, n_out, H, W)
            except (ValueError, RuntimeError) as exc:
                last = _last_stage(shapes or {})
                raise StageFailure(
                    f"smoke_forward: the fine-tune model failed on validation batch {i} "
                    f"(x {tuple(x.shape)}) after stage {last!r}: {exc}"
                ) from exc
            if pred.shape != y.shape:
                raise StageFailure(
                    f"smoke_forward: the model's output has shape {tuple(pred.shape)}, the target "
                    f"{tuple(y.shape)} (stage 'output')"
                )
            report.setdefault("output_shape", list(pred.shape))
            pred_base = base(x, lead, elev)
            sq, weight = sums["finetune"].add(pred, y, mask, lead)  # (B, C), (B, C)
            sq_base, _ = sums["baseline"].add(pred_base, y, mask, lead)
            w = float(weight.sum())
            if not w > 0:
                raise StageFailure(
                    f"smoke_forward: validation batch {i} has an empty mask (no grid cell with a "
                    "finite target to score)"
                )
            loss = float(sq.sum()) / w
            loss_base = float(sq_base.sum()) / w
            losses.append(loss)
            base_losses.append(loss_base)
            report["batch_losses"], report["baseline_batch_losses"] = losses, base_losses
            if not math.isfinite(loss):
                raise StageFailure(
                    f"smoke_forward: the loss of validation batch {i} is {loss} (not finite); "
                    f"input x has {int((~torch.isfinite(x)).sum())} non-finite values, the "
                    f"prediction {int((~torch.isfinite(pred)).sum())}"
                )
            if _rel(loss, loss_base) > rtol:
                raise StageFailure(
                    f"smoke_forward: on validation batch {i} the fine-tune model's loss "
                    f"{loss:.6g} differs from the baseline model's {loss_base:.6g} with the same "
                    f"weights (relative difference {_rel(loss, loss_base):.2e} > {rtol:.0e}): the "
                    f"TopoFlow additions change the output before training (alpha "
                    f"{report['alpha']})"
                )
    report["forward_s"] = round(time.perf_counter() - t0, 3)
    if not losses:
        raise StageFailure(f"smoke_forward: the validation split of {cache_dir} yields no batch")
    report["batches"] = len(losses)
    report["max_rel_diff"] = max(_rel(a, b) for a, b in zip(losses, base_losses, strict=True))
    val_loss = sums["finetune"].loss()
    report["val_loss"] = val_loss
    report["baseline_model_val_loss"] = sums["baseline"].loss()
    report["baseline_val_loss"] = baseline_val_loss

    rel = (val_loss - baseline_val_loss) / max(abs(baseline_val_loss), 1e-12)
    report["val_loss_rel_diff"] = rel
    tol = gates["val_loss_rtol"]
    if abs(rel) > tol:
        orders = _scan_orders_tried(cfg, cache_dir, checkpoint, loader, baseline_val_loss, tol, dev)
        report["scan_orders"] = orders
        cause = (
            f"the baseline was trained with another token order than wind_scan "
            f"{cfg['model']['wind_scan']!r}"
            if orders["reproduced_by"]
            else "the weights are not the baseline's, or the cache (data, normalisation, "
            "variables) differs from the one the baseline was trained on"
        )
        raise StageFailure(
            f"smoke_forward: validation loss {val_loss:.3f} vs the baseline's "
            f"{baseline_val_loss:.3f} ({rel:+.0%}, tolerance {tol:.0%}) over {n_samples} "
            f"validation samples: {cause}; {orders['summary']}"
        )
    report["reason"] = (
        f"{n_samples} validation samples in {len(losses)} batch(es) on {dev}: output "
        f"{tuple(report['output_shape'])}, loss finite and equal to the baseline model's (max "
        f"rel diff {report['max_rel_diff']:.1e}); val_loss {val_loss:.4g} vs baseline "
        f"{baseline_val_loss:.4g} (rel diff {rel:+.1e}, tolerance {tol:.0%})"
    )
    return report

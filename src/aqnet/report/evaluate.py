"""Evaluate the baseline and the fine-tuned model on the same samples of one split.

:func:`evaluate` runs both models over the same items of one split of the cache (``report.split``,
the test year by default) and writes ``evaluation.nc``: per sample, lead time and pollutant the
masked MSE (normalised units) and RMSE (physical units), the squared error per pixel, and the
error over each named region and each wind-scan tile. The file's layout, coordinates and
attributes are :mod:`aqnet.report.evaluation_file`'s.

Physical units come from the cache's ``meta.json`` (``units``), else from the ``units`` attributes
of the source files it lists (:func:`pollutant_units`).

When ``report.eval_batches`` is set, ``eval_batches x report.eval_batch_size`` items are
evaluated: that many whole forecast start times (all lead times each), spread evenly over the
split so the blocks of the paired tests cover all of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from aqnet.config import POLLUTANTS
from aqnet.data.dataset import batch_to_device
from aqnet.device import resolve_device
from aqnet.report.analysis import BASELINE, FINETUNED, MODELS
from aqnet.report.evaluation_file import evaluation_dataset, write_evaluation
from aqnet.report.regions import REGION_NAMES, named_region_codes

log = logging.getLogger("aqnet.report")

SEED = 0
"""Seed of model construction (the weights are then replaced by the checkpoints')."""


def build_models(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    baseline_ckpt: str | Path,
    finetuned_ckpt: str | Path,
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The baseline and the fine-tuned model with their checkpoints' weights loaded.

    Each model takes the architecture stored in its checkpoint (``hyper_parameters.model_config``,
    written by every aqnet training stage) so a variant that changes e.g. the wind scanning still
    compares against the baseline as it was trained; a checkpoint without one takes the config's
    model (``baseline_of`` it for the baseline). The attention implementation always follows the
    config (it is a choice of kernel, not of weights). Both loads go through
    :func:`aqnet.checkpoint.load_weights` and must be clean: nothing missing, nothing unexpected.

    Returns:
        ``(baseline, finetuned, info)``, ``info`` saying where each configuration came from and
        the baseline checkpoint's recorded val_loss.
    """
    from aqnet.checkpoint import load_weights, read_checkpoint
    from aqnet.data import load_stats
    from aqnet.model import Forecaster, ModelConfig, baseline_of, from_pipeline_config

    pipeline_mcfg = from_pipeline_config(cfg, stats=load_stats(cache_dir))
    info: dict[str, Any] = {}
    models: list[nn.Module] = []
    for role, path in ((BASELINE, baseline_ckpt), (FINETUNED, finetuned_ckpt)):
        contents = read_checkpoint(path)
        stored = contents.hyper_parameters.get("model_config")
        if isinstance(stored, Mapping):
            mcfg = ModelConfig.from_dict(stored).replace(
                attention_impl=pipeline_mcfg.attention_impl
            )
            source = f"checkpoint {path}"
        else:
            mcfg = baseline_of(pipeline_mcfg) if role == BASELINE else pipeline_mcfg
            source = "pipeline config" + (" (baseline_of)" if role == BASELINE else "")
        if mcfg.img_size != pipeline_mcfg.img_size or mcfg.out_variables != tuple(POLLUTANTS):
            raise ValueError(
                f"evaluate: the {role} checkpoint {path} was saved for grid {mcfg.img_size} and "
                f"outputs {mcfg.out_variables}; the config's are {pipeline_mcfg.img_size} and "
                f"{tuple(POLLUTANTS)}"
            )
        torch.manual_seed(SEED)
        model = Forecaster(mcfg)
        load_weights(
            model,
            path,
            expected_missing=[],
            checkpoint_variables=cfg.get("baseline", {}).get("variables"),
        )
        model.eval()
        models.append(model)
        info[f"{role}_model_config_source"] = source
        info[f"{role}_topoflow_blocks"] = list(mcfg.topoflow_blocks)
        if role == BASELINE:
            info["baseline_checkpoint_val_loss"] = contents.val_loss
    info["patch_size"] = int(pipeline_mcfg.patch_size)
    info["region_cells"] = [
        int(r) * int(pipeline_mcfg.patch_size) for r in pipeline_mcfg.region_patches
    ]
    return models[0], models[1], info


def select_items(
    infos: Sequence[tuple[int, int, float, Any]],
    *,
    n_items: int | None,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Dataset item indices to evaluate, grouped by whole forecast start times.

    Args:
        infos: ``sample_info(i)`` of every item ``i`` of the split: ``(year, time_index,
            lead_time_h, valid_time)``.
        n_items: items wanted (``eval_batches x eval_batch_size``); ``None`` takes all.

    Returns:
        ``(item indices in dataset order, the selected (year, time_index) start times in order)``.
    """
    starts: dict[tuple[int, int], list[int]] = {}
    for i, (year, tindex, _, _) in enumerate(infos):
        starts.setdefault((int(year), int(tindex)), []).append(i)
    keys = list(starts)
    if not keys:
        raise ValueError("evaluate: the split holds no sample")
    if n_items is not None:
        per_start = max(1, round(len(infos) / len(keys)))
        n_starts = min(len(keys), max(1, n_items // per_start))
        picks = np.unique(np.round(np.linspace(0, len(keys) - 1, n_starts)).astype(int))
        keys = [keys[int(p)] for p in picks]
    items = [i for key in keys for i in starts[key]]
    return items, keys


def evaluated_start_days(
    cfg: Mapping[str, Any], cache_dir: str | Path, *, split: str | None = None
) -> int:
    """Calendar days (UTC) of the forecast start times :func:`evaluate` would take from ``split``
    (default ``report.split``) with the config's ``report.eval_batches`` and
    ``report.eval_batch_size``: the ``n`` of the daily loss differences of the calibrated tests.
    Reads only the cache's time axis; no model runs."""
    from aqnet.data import CacheDataset

    rcfg = cfg["report"]
    split = str(rcfg.get("split", "test")) if split is None else split
    dataset = CacheDataset(
        cache_dir, split, lead_times_h=tuple(int(h) for h in cfg["lead_times_h"])
    )
    infos, items, _ = evaluation_items(dataset, rcfg)
    return start_days(infos, items)


def evaluation_items(
    dataset: Any, rcfg: Mapping[str, Any]
) -> tuple[list[tuple[int, int, float, Any]], list[int], list[tuple[int, int]]]:
    """``(sample_info of every item, the items evaluated, their start times)`` of ``dataset``
    under ``report.eval_batches`` x ``report.eval_batch_size`` (:func:`select_items`)."""
    infos = [dataset.sample_info(i) for i in range(len(dataset))]
    batch_size = int(rcfg["eval_batch_size"])
    n_items = None if rcfg["eval_batches"] is None else int(rcfg["eval_batches"]) * batch_size
    items, starts = select_items(infos, n_items=n_items)
    return infos, items, starts


def start_days(infos: Sequence[tuple[int, int, float, Any]], items: Sequence[int]) -> int:
    """Calendar days (UTC) of the start times (valid time - lead time) of ``items``."""
    days = {
        (np.datetime64(infos[i][3], "h") - np.timedelta64(int(infos[i][2]), "h")).astype(
            "datetime64[D]"
        )
        for i in items
    }
    return len(days)


def pollutant_units(meta: Mapping[str, Any], names: Sequence[str] = POLLUTANTS) -> list[str]:
    """Physical units of ``names``: ``meta["units"]`` of the cache, else the ``units``
    attributes of the source files ``meta["sources"]`` lists (read without loading data).

    Raises:
        ValueError: when neither records the units of every name.
    """
    recorded = meta.get("units")
    if isinstance(recorded, Mapping) and all(n in recorded for n in names):
        return [str(recorded[n]) for n in names]
    sources = meta.get("sources") or {}
    tried: list[str] = []
    for info in sources.values():
        path = Path(info["path"] if isinstance(info, Mapping) else info)
        tried.append(str(path))
        if not path.exists():
            continue
        opener = xr.open_zarr if path.is_dir() else xr.open_dataset
        with opener(path, decode_times=False) as src:
            found = {n: src[n].attrs.get("units") for n in names if n in src}
        if all(found.get(n) for n in names):
            log.info("evaluate: units from the source file %s (meta.json records none)", path)
            return [str(found[n]) for n in names]
    raise ValueError(
        f"evaluate: no units for {list(names)}: the cache's meta.json has no 'units' entry and "
        f"no readable source file records them (tried: {', '.join(tried) or 'none listed'})"
    )


@torch.no_grad()
def evaluate(
    cfg: Mapping[str, Any],
    cache_dir: str | Path,
    baseline_ckpt: str | Path,
    finetuned_ckpt: str | Path,
    out: str | Path | None,
    *,
    split: str | None = None,
    device: str | None = None,
) -> xr.Dataset:
    """Evaluate both models on the same items of ``split`` and write ``out`` (module docstring).

    Args:
        cfg: a resolved pipeline config (``lead_times_h``, ``model``, ``grid``, ``report``).
        cache_dir: the cache (``CacheDataset``, ``stats.json``, ``meta.json``, ``static.npz``).
        baseline_ckpt: the baseline checkpoint.
        finetuned_ckpt: the fine-tune's ``final.ckpt``.
        out: the netCDF file to write (atomically); ``None`` only returns the dataset.
        split: ``"val"`` or ``"test"``; default ``report.split`` of the config (the test year:
            the validation year selects checkpoints and monitors the fine-tune).
        device: ``auto``/``cpu``/``cuda``; default ``finetune.device`` of the config.

    Returns:
        The evaluation dataset (as written).
    """
    from aqnet.data import CacheDataset, load_static, load_stats, make_loader, read_meta
    from aqnet.evaluation import ErrorSums, sample_mse

    cache_dir = Path(cache_dir)
    rcfg = cfg["report"]
    split = str(rcfg.get("split", "test")) if split is None else split
    lead_times = [int(h) for h in cfg["lead_times_h"]]
    dev = resolve_device(device or cfg["finetune"].get("device", "auto"), stage="evaluate")
    stats = load_stats(cache_dir)
    meta = read_meta(cache_dir)
    static = load_static(cache_dir)
    std = np.array([float(stats[p]["std"]) for p in POLLUTANTS])  # (C,)
    units = pollutant_units(meta)

    base, fine, info = build_models(cfg, cache_dir, baseline_ckpt, finetuned_ckpt)
    base.to(dev)
    fine.to(dev)

    dataset = CacheDataset(
        cache_dir, split, lead_times_h=tuple(lead_times), in_variables=base.config.in_variables
    )
    infos, items, starts = evaluation_items(dataset, rcfg)
    batch_size = int(rcfg["eval_batch_size"])
    start_index = {key: s for s, key in enumerate(starts)}
    lead_index = {h: j for j, h in enumerate(lead_times)}
    loader = make_loader(
        torch.utils.data.Subset(dataset, items), batch_size=batch_size, shuffle=False, seed=SEED
    )

    n_s, n_l, n_c = len(starts), len(lead_times), len(POLLUTANTS)
    ny, nx = int(cfg["grid"]["ny"]), int(cfg["grid"]["nx"])
    mse = np.full((2, n_s, n_l, n_c), np.nan)
    valid_time = np.full((n_s, n_l), np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    init_time = np.full(n_s, np.datetime64("NaT", "ns"), dtype="datetime64[ns]")
    sq_map = torch.zeros((2, n_c, ny, nx), dtype=torch.float64)
    w_map = torch.zeros((n_c, ny, nx), dtype=torch.float64)  # mask x finite target, per pollutant
    # The one evaluation pass (aqnet.evaluation), as training validation and smoke_forward do it.
    sums = [ErrorSums(lead_times_h=lead_times, pollutants=POLLUTANTS, device=dev) for _ in MODELS]
    # named regions (terrain classes of the wind-scan tiles): per-sample errors in each
    codes = named_region_codes(np.asarray(static["elevation_m"]), info["region_cells"])  # (H, W)
    onehot = torch.stack(
        [torch.as_tensor(codes == r, dtype=torch.float64) for r in range(len(REGION_NAMES))]
    ).to(dev)  # (R, H, W)
    region_mse = np.full((2, n_s, n_l, len(REGION_NAMES)), np.nan)
    tile_rows, tile_cols = (int(c) for c in info["region_cells"])
    n_tiles = (ny // tile_rows) * (nx // tile_cols)
    tile_mse = np.full((2, n_s, n_l, n_tiles), np.nan)

    done = 0
    for batch in loader:
        x, y, lead, elev, mask = batch_to_device(batch, dev, stage="evaluate")
        b = x.shape[0]
        for m, model in enumerate((base, fine)):
            pred = model(x, lead, elev)  # (B, C, H, W)
            if pred.shape != y.shape:
                raise ValueError(
                    f"evaluate: the {MODELS[m]} model returned {tuple(pred.shape)} for a target "
                    f"of shape {tuple(y.shape)}"
                )
            sq, weight = sums[m].add(pred, y, mask, lead)  # (B, C), (B, C)
            per = sample_mse(sq, weight).cpu().numpy()  # (B, C), NaN where nothing to score
            finite = torch.isfinite(y)  # (B, C, H, W)
            w4 = mask.to(torch.float64)[:, None] * finite  # (B, C, H, W)
            err = torch.where(finite, pred.double() - y.double(), 0.0)  # (B, C, H, W)
            sq_map[m] += (err.square() * w4).sum(0).cpu()  # (C, H, W)
            r_sq = torch.einsum("bchw,rhw->br", err.square() * w4, onehot)  # (B, R)
            r_w = torch.einsum("bchw,rhw->br", w4, onehot)  # (B, R)
            per_region = sample_mse(r_sq, r_w).cpu().numpy()  # (B, R), NaN where empty
            t_sq = _tile_sums((err.square() * w4).sum(1), tile_rows, tile_cols)  # (B, T)
            t_w = _tile_sums(w4.sum(1), tile_rows, tile_cols)  # (B, T)
            per_tile = sample_mse(t_sq, t_w).cpu().numpy()  # (B, T), NaN where empty
            if m == 0:
                w_map += w4.sum(0).cpu()  # (C, H, W)
            for k in range(b):
                year, tindex, lead_h, vt = infos[items[done + k]]
                s, j = start_index[(int(year), int(tindex))], lead_index[int(round(lead_h))]
                mse[m, s, j] = per[k]
                region_mse[m, s, j] = per_region[k]
                tile_mse[m, s, j] = per_tile[k]
                if m == 0:
                    valid_time[s, j] = np.datetime64(vt, "ns")
                    init_time[s] = np.datetime64(vt, "ns") - np.timedelta64(int(lead_h), "h")
        done += b
        log.info("evaluate: %d / %d items", done, len(items))

    with np.errstate(invalid="ignore", divide="ignore"):
        maps = (sq_map / w_map).numpy()  # (2, C, H, W)
    maps[:, w_map.numpy() <= 0] = np.nan  # (2, C, H, W) NaN where nothing was scored
    ds = evaluation_dataset(
        mse=mse,
        std=std,
        sq_err_map=maps,
        init_time=init_time,
        valid_time=valid_time,
        starts=starts,
        lead_times_h=lead_times,
        units=units,
        lat=np.asarray(static["lat"], dtype=np.float64),
        lon=np.asarray(static["lon"], dtype=np.float64),
        region_cells=info["region_cells"],
        region_mse=region_mse,
        tile_mse=tile_mse,
        attrs={
            "variant": str(cfg.get("variant", "default")),
            "split": split,
            "cache": str(cache_dir),
            "baseline_checkpoint": str(baseline_ckpt),
            "finetuned_checkpoint": str(finetuned_ckpt),
            "baseline_checkpoint_val_loss": _finite_or_nan(info["baseline_checkpoint_val_loss"]),
            "baseline_model_config_source": info[f"{BASELINE}_model_config_source"],
            "finetuned_model_config_source": info[f"{FINETUNED}_model_config_source"],
            "finetuned_topoflow_blocks": np.array(
                info[f"{FINETUNED}_topoflow_blocks"], dtype=np.int32
            ),
            "patch_size": info["patch_size"],
            "eval_batches": "all" if rcfg["eval_batches"] is None else int(rcfg["eval_batches"]),
            "eval_batch_size": batch_size,
            "n_items": len(items),
            "n_items_in_split": len(infos),
            "device": str(dev),
        },
    )
    if out is not None:
        write_evaluation(ds, out)
    return ds


def _tile_sums(values: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``values (B, H, W)`` summed over tiles of ``rows x cols`` cells -> ``(B, T)``, row-major."""
    b, h, w = values.shape
    tiles = values.reshape(b, h // rows, rows, w // cols, cols)  # (B, Ry, rows, Rx, cols)
    return tiles.sum((2, 4)).reshape(b, -1)


def _finite_or_nan(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan

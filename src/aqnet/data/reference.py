"""The preprocessing choices a baseline depends on: normalisation, coordinates and the loss mask.

* **Normalisation** (``data.normalization``): ``source: training_years`` takes each channel's mean
  and std over the training years (aqnet's default); ``source: table`` takes them from a YAML table
  (``table: config/reference_normalization.yaml`` holds the researchers' constants).
* **Coordinates** (``data.coordinates``): ``normalized`` treats ``lat``/``lon`` like every channel;
  ``degrees`` keeps them in raw degrees (mean 0, std 1), as the researchers' loader does.
* **Loss and evaluation mask** (``data.mask``): ``source: data`` is the input files' domain mask;
  ``checkpoint`` the baseline checkpoint's ``china_mask`` buffer; ``file`` a ``.npy`` of the grid's
  shape. Cells above 0.5 are inside (the researchers' rule), always intersected with the data's own
  mask, so ocean and no-data cells stay excluded.

The cache records what it used (``meta.json`` ``normalization`` and ``mask``), and
:func:`check_cache_normalization` refuses a cache whose statistics are not the baseline's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aqnet.config import MODEL_VARIABLES

COORDINATES = ("lat", "lon")


class PreprocessingError(ValueError):
    """A normalisation table, mask or cache that does not fit the configuration; names the file."""


def load_table(path: str | Path) -> dict[str, dict[str, float]]:
    """``{var: {"mean", "std"}}`` from a YAML table ``{variables: {var: {mean, std}}}``.

    Raises:
        PreprocessingError: unreadable file, a model channel missing (coordinates may be left out
            when they stay in degrees), an unknown variable, or a std that is not > 0.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PreprocessingError(f"normalisation table {path} is unreadable: {exc}") from exc
    table = raw.get("variables") if isinstance(raw, Mapping) else None
    if not isinstance(table, Mapping):
        raise PreprocessingError(f"normalisation table {path} has no 'variables' mapping")
    unknown = sorted(set(table) - set(MODEL_VARIABLES))
    if unknown:
        raise PreprocessingError(
            f"normalisation table {path}: unknown variable(s) {unknown} (known: "
            f"{list(MODEL_VARIABLES)})"
        )
    out: dict[str, dict[str, float]] = {}
    for name, entry in table.items():
        try:
            mean, std = float(entry["mean"]), float(entry["std"])
        except (TypeError, KeyError, ValueError) as exc:
            raise PreprocessingError(
                f"normalisation table {path}: {name} needs numbers 'mean' and 'std', got {entry!r}"
            ) from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise PreprocessingError(
                f"normalisation table {path}: {name} needs a finite mean and a std > 0, got "
                f"mean {mean}, std {std}"
            )
        out[str(name)] = {"mean": mean, "std": std}
    return out


def table_path(cfg: Mapping[str, Any]) -> Path:
    """``data.normalization.table``; relative paths are taken from the working directory."""
    path = cfg["data"]["normalization"].get("table")
    if not path:
        raise PreprocessingError(
            "data.normalization.source is 'table' but data.normalization.table is not set"
        )
    return Path(path)


def baseline_stats(
    cfg: Mapping[str, Any], training_stats: Mapping[str, Mapping[str, float]] | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """The statistics a cache of ``cfg`` normalises with, and the record of where they came from.

    Args:
        cfg: a validated pipeline config (``data.normalization``, ``data.coordinates``).
        training_stats: the training years' statistics (needed for ``source: training_years``).

    Returns:
        ``(stats, record)``: ``{var: {"mean", "std"}}`` for every model channel, and ``{"source",
        "table", "coordinates", "digest"}`` for ``meta.json``.

    Raises:
        PreprocessingError: a table without a model channel, or no training statistics.
    """
    norm = cfg["data"]["normalization"]
    coordinates = cfg["data"]["coordinates"]
    record: dict[str, Any] = {"source": norm["source"], "table": None, "coordinates": coordinates}
    if norm["source"] == "table":
        path = table_path(cfg)
        stats = load_table(path)
        record["table"] = str(path)
        needed = [v for v in MODEL_VARIABLES if coordinates == "normalized" or v not in COORDINATES]
        lacking = [v for v in needed if v not in stats]
        if lacking:
            raise PreprocessingError(
                f"normalisation table {path} lacks {lacking} (every model channel needs a mean "
                "and std; lat/lon only when data.coordinates is 'normalized')"
            )
    elif training_stats is None:
        raise PreprocessingError(
            "data.normalization.source is 'training_years' but no training statistics exist yet "
            "(they come from build_cache)"
        )
    else:
        stats = {k: dict(v) for k, v in training_stats.items()}
    if coordinates == "degrees":
        for name in COORDINATES:
            stats[name] = {"mean": 0.0, "std": 1.0}
    stats = {
        v: {"mean": float(stats[v]["mean"]), "std": float(stats[v]["std"])} for v in MODEL_VARIABLES
    }
    record["digest"] = stats_digest(stats)
    return stats, record


def stats_digest(stats: Mapping[str, Mapping[str, float]]) -> str:
    """SHA-256 prefix of the statistics, rounded to 9 significant digits (float noise ignored)."""
    canon = {
        v: [float(f"{stats[v]['mean']:.9g}"), float(f"{stats[v]['std']:.9g}")]
        for v in sorted(stats)
    }
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]


def check_cache_normalization(
    cfg: Mapping[str, Any], stats: Mapping[str, Mapping[str, float]], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Refuse a cache whose normalisation is not the one ``cfg`` says the baseline used.

    Args:
        cfg: the pipeline config (``data.normalization``, ``data.coordinates``).
        stats: the cache's ``stats.json``.
        meta: the cache's ``meta.json``.

    Returns:
        ``{"source", "coordinates", "digest", "checked"}``.

    Raises:
        PreprocessingError: naming the first channels whose mean/std differ, or the cache's
            recorded source / coordinates when they differ from the config's.
    """
    recorded = meta.get("normalization") or {
        "source": "training_years",
        "coordinates": "normalized",
    }
    wanted_source = cfg["data"]["normalization"]["source"]
    wanted_coords = cfg["data"]["coordinates"]
    if recorded.get("coordinates") != wanted_coords:
        raise PreprocessingError(
            f"the cache keeps lat/lon {recorded.get('coordinates')!r} but the baseline used "
            f"{wanted_coords!r} (data.coordinates): rebuild the cache"
        )
    if wanted_source == "table":
        expected, _ = baseline_stats(cfg)
        differ = [
            f"{v} mean {stats[v]['mean']:.6g} vs {expected[v]['mean']:.6g}, std "
            f"{stats[v]['std']:.6g} vs {expected[v]['std']:.6g}"
            for v in MODEL_VARIABLES
            if v not in stats
            or not np.isclose(stats[v]["mean"], expected[v]["mean"], rtol=1e-6, atol=1e-9)
            or not np.isclose(stats[v]["std"], expected[v]["std"], rtol=1e-6, atol=1e-9)
        ]
        if differ:
            raise PreprocessingError(
                f"the cache's normalisation differs from the baseline's table "
                f"{table_path(cfg)} (cache vs table): {'; '.join(differ[:3])}"
                + (f" ... ({len(differ) - 3} more)" if len(differ) > 3 else "")
                + ": rebuild the cache with data.normalization.source: table"
            )
    elif recorded.get("source") != wanted_source:
        raise PreprocessingError(
            f"the cache was normalised from {recorded.get('source')!r} but the baseline used "
            f"{wanted_source!r} (data.normalization.source): rebuild the cache"
        )
    return {
        "source": wanted_source,
        "coordinates": wanted_coords,
        "digest": stats_digest(stats) if all(v in stats for v in MODEL_VARIABLES) else None,
        "checked": True,
    }


def loss_mask(cfg: Mapping[str, Any], data_mask: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The loss/evaluation mask ``(H, W)`` bool of ``cfg`` and the record for ``meta.json``.

    ``data.mask.source``: ``data`` (``data_mask`` itself), ``checkpoint`` (the ``china_mask``
    buffer of ``baseline.checkpoint``) or ``file`` (``data.mask.file``, a ``.npy``); values above
    0.5 are inside, and the result is always intersected with ``data_mask``.

    Raises:
        PreprocessingError: no mask in the checkpoint or file, a shape that is not the grid's, or
            a mask that leaves no cell.
    """
    source = cfg["data"]["mask"]["source"]
    record: dict[str, Any] = {"source": source}
    if source == "data":
        return data_mask.astype(bool), record
    if source == "checkpoint":
        from aqnet.checkpoint import read_checkpoint

        path = cfg["baseline"].get("checkpoint")
        if not path:
            raise PreprocessingError(
                "data.mask.source is 'checkpoint' but baseline.checkpoint is null"
            )
        contents = read_checkpoint(path)
        key = next((k for k in contents.state_dict if k.rsplit(".", 1)[-1] == "china_mask"), None)
        if key is None:
            raise PreprocessingError(
                f"data.mask.source is 'checkpoint' but {path} has no china_mask"
            )
        values, where = contents.state_dict[key].float().numpy(), f"{path} {key}"
    else:
        path = cfg["data"]["mask"].get("file")
        if not path:
            raise PreprocessingError("data.mask.source is 'file' but data.mask.file is not set")
        try:
            values, where = np.load(path), str(path)
        except (OSError, ValueError) as exc:
            raise PreprocessingError(f"mask file {path} is unreadable: {exc}") from exc
    if values.shape != data_mask.shape:
        raise PreprocessingError(
            f"the mask {where} has shape {tuple(values.shape)}, the grid is {data_mask.shape}"
        )
    mask = (values > 0.5) & data_mask.astype(bool)
    if not mask.any():
        raise PreprocessingError(f"the mask {where} and the data's domain leave no cell")
    record.update(
        where=where,
        fraction_given=float((values > 0.5).mean()),
        excluded_by_data=int(((values > 0.5) & ~data_mask.astype(bool)).sum()),
    )
    return mask, record


__all__ = [
    "PreprocessingError",
    "baseline_stats",
    "check_cache_normalization",
    "load_table",
    "loss_mask",
    "stats_digest",
    "table_path",
]

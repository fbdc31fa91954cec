"""How long a training run is in the study's terms: forecast start times, steps, epochs and
samples seen (one epoch is one pass over the training split's start times)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["estimated_start_times", "run_length", "start_times_in_cache"]


def _max_lead_steps(lead_times_h: Sequence[int], time_step_h: float) -> int:
    return int(round(max(int(h) for h in lead_times_h) / float(time_step_h)))


def start_times_in_cache(meta: Mapping[str, Any], *, split: str = "train") -> int:
    """Forecast start times of a cache's split: per year, its time steps minus the longest lead.

    The same count :class:`aqnet.data.CacheDataset` indexes (its items are these start times x the
    lead times).

    Args:
        meta: the cache's ``meta.json`` (``split``, ``per_year[year].n_times``, ``time_step_h``,
            ``lead_times_h``).
        split: ``train``, ``val`` or ``test``.
    """
    lead_steps = _max_lead_steps(meta["lead_times_h"], meta["time_step_h"])
    years = meta["split"][split]
    return sum(max(int(meta["per_year"][str(y)]["n_times"]) - lead_steps, 0) for y in years)


def estimated_start_times(cfg: Mapping[str, Any]) -> int:
    """Forecast start times of the training split, before the cache exists to count them.

    Hourly data is assumed: the demo's ``data.demo.hours`` per year, a real year's calendar hours
    (8784 in a leap year, else 8760); minus the longest lead time in hours, per year.
    """
    lead_h = max(int(h) for h in cfg["lead_times_h"])
    total = 0
    for year in cfg["data"]["split"]["train"]:
        if cfg["data"]["source"] == "demo":
            hours = int(cfg["data"]["demo"]["hours"])
        else:
            leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
            hours = 8784 if leap else 8760
        total += max(hours - lead_h, 0)
    return total


def run_length(tcfg: Mapping[str, Any], *, start_times: int) -> dict[str, Any]:
    """Steps, epochs and samples seen of a training run.

    One epoch is one pass over the training split's forecast start times - the study's unit
    ("1 epoch = 270 steps" at about 128 samples per step over the ~35,000 hourly start times of
    2013-2016, issue 14). With ``epochs`` set, ``steps = ceil(epochs x start times / batch_size)``
    and ``steps`` is not used; without it, ``steps`` is the length and the epochs follow from it.

    Args:
        tcfg: a ``definitions/train`` section (``finetune``): ``steps``, ``epochs``,
            ``batch_size`` (global).
        start_times: forecast start times of the training split.

    Returns:
        ``{"steps", "epochs", "samples_seen", "start_times", "global_batch", "derived_from"}``;
        ``derived_from`` is ``"epochs"`` or ``"steps"``.

    Raises:
        ValueError: no start time to train on.
    """
    if start_times < 1:
        raise ValueError(f"the training split has {start_times} forecast start times; need >= 1")
    batch = int(tcfg["batch_size"])
    epochs = tcfg.get("epochs")
    if epochs is not None:
        steps = max(1, math.ceil(float(epochs) * start_times / batch))
        source = "epochs"
    else:
        steps, source = int(tcfg["steps"]), "steps"
    return {
        "steps": steps,
        "epochs": steps * batch / start_times,
        "samples_seen": steps * batch,
        "start_times": int(start_times),
        "global_batch": batch,
        "derived_from": source,
    }

"""The Dataset and DataLoader over a cache folder (no xarray in the hot path).

``CacheDataset(cache_dir, split)`` memory-maps ``year_<year>.npy`` of the split's years (opened
lazily in each process, so DataLoader workers share the page cache instead of pickled arrays).
Item ``i`` enumerates ``(year, time, lead time)`` in that order, over the base times of each year
from which every lead time still lies inside the year::

    i = (offset[year] + t) * n_leads + k,   0 <= t < n_times[year] - max_lead_steps

and returns ``(x (V, H, W), y (n_out, H, W), lead_time_h () float32, elevation_m (H, W),
mask (H, W) float32)``: ``x`` the normalised channels at ``t``, ``y`` the normalised
``out_variables`` at ``t + lead``, elevation in metres and the domain mask of the cache's
``static.npz``.

``make_loader`` always uses a ``DistributedSampler`` (one rank is ``world_size=1``), so the global
sample order for a seed and epoch is the same however many ranks share it.

Every validation pass of the pipeline (the baseline's training, ``smoke_forward``,
``validate_short``, the fine-tune) evaluates the same items: :func:`validation_indices` spreads
``validation.samples`` of them evenly over the validation split, and
:func:`make_validation_loader` splits them over the ranks. The callers sum squared errors over
items and ranks and divide once (:class:`aqnet.evaluation.ErrorSums`), so a validation loss
depends neither on the number of ranks nor on the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aqnet.config import POLLUTANTS
from aqnet.data.layout import load_static, load_stats, read_meta, year_file

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
BATCH_ITEMS = ("x", "y", "lead_time_h", "elevation_m", "mask")
"""The items of a sample and of a batch, in order."""


class CacheDataset(Dataset):
    """Samples of one split of a cache (see the module docstring for the item layout).

    Args:
        cache_dir: a folder written by :func:`aqnet.data.cache.build_cache`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        lead_times_h: forecast lead times in hours (multiples of the cache's time step).
        out_variables: target channels, by name, in output order.
        in_variables: the channels of ``x``, by name, in the model's input order
            (``model.in_variables``); ``None`` keeps the cache's order.

    Attributes:
        stats: ``{var: {"mean", "std"}}`` of the cache.
        meta: the cache's ``meta.json``.
        variables: the cache's channel names (``meta["variables"]``).
        in_variables: the channel names of ``x``, in order.
        out_variables, lead_times_h, years: as given / resolved.

    Raises:
        FileNotFoundError: not a complete cache.
        ValueError: unknown split, a split without years, unknown variables, a lead time that is
            not a multiple of the time step or longer than a year.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        split: str,
        *,
        lead_times_h: Sequence[int] = (12, 24, 48, 96),
        out_variables: Sequence[str] = POLLUTANTS,
        in_variables: Sequence[str] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.meta: dict[str, Any] = read_meta(self.cache_dir)
        self.stats: dict[str, dict[str, float]] = load_stats(self.cache_dir)
        self.variables: tuple[str, ...] = tuple(self.meta["variables"])
        self.split = split
        splits = self.meta["split"]
        if split not in splits:
            raise ValueError(
                f"CacheDataset: unknown split {split!r}; the cache {self.cache_dir} has "
                f"{sorted(splits)}"
            )
        self.years: tuple[int, ...] = tuple(int(y) for y in splits[split])
        if not self.years:
            raise ValueError(f"CacheDataset: split {split!r} of {self.cache_dir} has no years")
        self.out_variables = tuple(out_variables)
        unknown = [v for v in self.out_variables if v not in self.variables]
        if unknown or not self.out_variables:
            raise ValueError(
                f"CacheDataset: out_variables {unknown or '()'} not among the cache's variables "
                f"{self.variables}"
            )
        self.out_index = np.array([self.variables.index(v) for v in self.out_variables])
        self.in_variables = self.variables if in_variables is None else tuple(in_variables)
        if sorted(self.in_variables) != sorted(self.variables):
            raise ValueError(
                f"CacheDataset: in_variables {list(self.in_variables)} must order the cache's "
                f"channels {list(self.variables)} exactly once each"
            )
        # None when x keeps the cache's order (a view, no copy per item).
        self.in_index = (
            None
            if self.in_variables == self.variables
            else np.array([self.variables.index(v) for v in self.in_variables])
        )
        self.time_step_h = float(self.meta["time_step_h"])
        self.lead_times_h = tuple(int(h) for h in lead_times_h)
        if not self.lead_times_h:
            raise ValueError("CacheDataset: lead_times_h is empty")
        steps = [h / self.time_step_h for h in self.lead_times_h]
        bad = [h for h, s in zip(self.lead_times_h, steps, strict=True) if s != round(s) or s < 1]
        if bad:
            raise ValueError(
                f"CacheDataset: lead_times_h {bad} are not positive multiples of the cache's "
                f"time step {self.time_step_h:g} h"
            )
        self.lead_steps = np.array([int(round(s)) for s in steps])
        max_steps = int(self.lead_steps.max())
        per_year = self.meta["per_year"]
        self.n_base: list[int] = []
        for year in self.years:
            n = int(per_year[str(year)]["n_times"]) - max_steps
            if n <= 0:
                raise ValueError(
                    f"CacheDataset: year {year} has {per_year[str(year)]['n_times']} steps, not "
                    f"more than the longest lead time {max(self.lead_times_h)} h"
                )
            self.n_base.append(n)
        self._offsets = np.concatenate([[0], np.cumsum(self.n_base)])
        self._time_start = [np.datetime64(per_year[str(y)]["time_start"], "s") for y in self.years]
        static = load_static(self.cache_dir)
        self.elevation_m = torch.from_numpy(np.asarray(static["elevation_m"], dtype=np.float32))
        self.mask = torch.from_numpy(np.asarray(static["mask"], dtype=np.float32))
        self._arrays: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps are reopened in each worker process
        return state

    def __len__(self) -> int:
        return int(self._offsets[-1]) * len(self.lead_times_h)

    def _array(self, year: int) -> np.ndarray:
        arr = self._arrays.get(year)
        if arr is None:
            arr = np.load(self.cache_dir / year_file(year), mmap_mode="r")
            expected = (len(self.variables), *self.elevation_m.shape)
            if arr.ndim != 4 or arr.shape[1:] != expected:
                raise ValueError(
                    f"CacheDataset: {self.cache_dir / year_file(year)} has shape {arr.shape}; "
                    f"expected (T, {expected[0]}, {expected[1]}, {expected[2]})"
                )
            self._arrays[year] = arr
        return arr

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(year position, time index, lead position)`` of item ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"CacheDataset index {index} out of range for {n} samples")
        index %= n
        base, k = divmod(index, len(self.lead_times_h))
        y = int(np.searchsorted(self._offsets, base, side="right") - 1)
        return y, base - int(self._offsets[y]), k

    def sample_info(self, index: int) -> tuple[int, int, int, np.datetime64]:
        """``(year, time_index, lead_time_h, valid_time)`` of item ``index``."""
        y, t, k = self.locate(index)
        step = np.timedelta64(int(round(self.time_step_h * 3600)), "s")
        valid = self._time_start[y] + step * (t + int(self.lead_steps[k]))
        return self.years[y], t, self.lead_times_h[k], valid

    def __getitem__(self, index: int) -> Sample:
        """Item ``index`` -> ``(x (V, H, W), y (n_out, H, W), lead_time_h (), elevation_m (H, W),
        mask (H, W))``, all float32."""
        y, t, k = self.locate(index)
        arr = self._array(self.years[y])
        fields = arr[t] if self.in_index is None else arr[t, self.in_index]
        x = torch.from_numpy(np.array(fields, dtype=np.float32))  # (V, H, W), model order
        target = np.array(arr[t + int(self.lead_steps[k]), self.out_index], dtype=np.float32)
        return (
            x,
            torch.from_numpy(target),  # (n_out, H, W)
            torch.tensor(float(self.lead_times_h[k]), dtype=torch.float32),
            self.elevation_m,
            self.mask,
        )


def batch_to_device(
    batch: Iterable[torch.Tensor],
    device: torch.device,
    *,
    stage: str,
    non_blocking: bool = False,
) -> list[torch.Tensor]:
    """A batch of :class:`CacheDataset` items on ``device``: ``[x (B, V, H, W), y (B, n_out, H,
    W), lead_time_h (B,), elevation_m (B, H, W), mask (B, H, W)]``.

    Raises:
        ValueError: the batch does not hold the five items (``stage`` names who asked).
    """
    items = list(batch)
    if len(items) != len(BATCH_ITEMS):
        raise ValueError(
            f"{stage}: a data batch has {len(items)} items, expected {len(BATCH_ITEMS)} "
            f"({', '.join(BATCH_ITEMS)})"
        )
    return [t.to(device, non_blocking=non_blocking) for t in items]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    epoch: int = 0,
) -> DataLoader:
    """A DataLoader over ``dataset`` for one rank, always through a ``DistributedSampler``.

    ``batch_size`` is per rank. The sampler's permutation depends on ``seed + epoch`` only, and
    rank ``r`` takes every ``world_size``-th sample of it, so one rank and N ranks see the same
    global order (with ``drop_last=False`` the sampler pads by repeating samples so every rank
    has as many; with ``drop_last=True`` it drops the tail, and incomplete batches are dropped).

    Raises:
        ValueError: a rank outside ``[0, world_size)`` or a batch size below 1.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"make_loader: rank {rank} is not in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"make_loader: batch_size must be >= 1, got {batch_size}")
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def validation_samples(cfg: Mapping[str, Any], n_items: int) -> int:
    """``validation.samples`` of ``cfg`` as a count: ``"all"`` (or more than there are) is
    ``n_items``, the whole validation split."""
    wanted = cfg["validation"]["samples"]
    return n_items if wanted == "all" else min(int(wanted), n_items)


def validation_indices(n_items: int, n_samples: int, *, group: int = 1) -> list[int]:
    """The validation subset: ``n_samples`` of ``n_items`` items, evenly spaced, sorted.

    Deterministic: a function of its arguments only (no seed, rank or batch size), so every
    validation pass that calls it with the same split evaluates the same items. Item ``i`` of the
    subset is the item nearest to the middle of the ``i``-th of ``n_samples`` equal slices of the
    split. With ``group > 1`` the items come in consecutive groups of that size (a
    :class:`CacheDataset` item is ``(time, lead time)``: pass ``group=len(lead_times_h)``); the
    subset then keeps the group (forecast start time) of each evenly spaced item but takes the
    positions within a group in turn, so every lead time is equally represented (a spacing that
    is a multiple of the group size would otherwise pick a single lead time).

    Args:
        n_items: items in the validation split (``len(dataset)``).
        n_samples: items wanted (``validation.samples``); ``n_samples >= n_items`` takes them all.
        group: size of the consecutive groups of items (1: no grouping).

    Returns:
        ``min(n_samples, n_items)`` distinct, increasing indices in ``[0, n_items)``.

    Raises:
        ValueError: ``n_items``, ``n_samples`` or ``group`` below 1, or ``n_items`` not a multiple
            of ``group``.
    """
    if n_items < 1:
        raise ValueError(f"validation_indices: the validation split is empty (n_items {n_items})")
    if n_samples < 1:
        raise ValueError(f"validation_indices: n_samples must be >= 1, got {n_samples}")
    if group < 1 or n_items % group:
        raise ValueError(
            f"validation_indices: n_items {n_items} is not a whole number of groups of {group}"
        )
    if n_samples >= n_items:
        return list(range(n_items))
    # Middle of slice i: floor((2i + 1) * n_items / (2 n_samples)); exact integer arithmetic.
    # Consecutive middles are at least floor(n_items / n_samples) >= 1 apart, and those of
    # samples i and i + group at least group apart, so the indices below are distinct.
    middles = [(2 * i + 1) * n_items // (2 * n_samples) for i in range(n_samples)]
    return sorted((m // group) * group + i % group for i, m in enumerate(middles))


def make_validation_loader(
    dataset: Dataset,
    *,
    n_samples: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader of one rank's share of the validation subset (:func:`validation_indices`).

    Rank ``r`` takes the subset's items ``r, r + world_size, ...`` in order; a rank may receive
    none when ``n_samples < world_size``. The union over the ranks is the subset whatever the
    world size, so summing squared errors over ranks gives the same loss on 1 rank and on N. For a
    :class:`CacheDataset` the items are grouped by forecast start time (``group`` = its number of
    lead times).

    Args:
        dataset: the validation split (``CacheDataset(cache_dir, "val", ...)``).
        n_samples: ``validation.samples``.
        batch_size: ``validation.batch_size``: items per forward pass on this rank.
        rank, world_size: this rank and the number of ranks.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory (for a GPU).

    Raises:
        ValueError: a rank outside ``[0, world_size)``, a batch size below 1, or an argument
            :func:`validation_indices` refuses.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"make_validation_loader: rank {rank} is not in [0, world_size={world_size})"
        )
    if batch_size < 1:
        raise ValueError(f"make_validation_loader: batch_size must be >= 1, got {batch_size}")
    lead_times = getattr(dataset, "lead_times_h", None)
    group = len(lead_times) if lead_times else 1
    subset = validation_indices(len(dataset), n_samples, group=group)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=subset[rank::world_size],
        num_workers=num_workers,
        pin_memory=pin_memory,
    )

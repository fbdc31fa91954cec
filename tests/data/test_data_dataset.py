"""CacheDataset and make_loader: item contents and order, the mask, distributed sampling; the one
validation subset (validation_indices, make_validation_loader)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aqnet.config import MODEL_VARIABLES, POLLUTANTS
from aqnet.data import (
    CacheDataset,
    load_static,
    make_loader,
    make_validation_loader,
    validation_indices,
)
from aqnet.data.dataset import batch_to_device


@pytest.fixture(scope="module")
def train(tiny_cache: Path) -> CacheDataset:
    return CacheDataset(tiny_cache, "train")


def test_length_and_item_order(train: CacheDataset) -> None:
    # 120 hourly steps, longest lead 96 h: 24 base times x 4 lead times
    assert len(train) == 24 * 4
    assert train.variables == MODEL_VARIABLES and train.years == (2013,)
    infos = [train.sample_info(i) for i in range(8)]
    assert [(i[1], i[2]) for i in infos] == [
        (0, 12), (0, 24), (0, 48), (0, 96), (1, 12), (1, 24), (1, 48), (1, 96)
    ]  # fmt: skip
    year, t, lead, valid = train.sample_info(len(train) - 1)
    assert (year, t, lead) == (2013, 23, 96)
    assert valid == np.datetime64("2013-01-01T00:00") + np.timedelta64(23 + 96, "h")
    assert train.sample_info(-1) == train.sample_info(len(train) - 1)
    with pytest.raises(IndexError):
        train[len(train)]


def test_item_contents(train: CacheDataset, tiny_cache: Path) -> None:
    arr = np.load(tiny_cache / "year_2013.npy")
    static = load_static(tiny_cache)
    i = 4 * 7 + 2  # time 7, lead 48 h
    x, y, lead, elev, mask = train[i]
    assert x.shape == (15, 16, 32) and y.shape == (6, 16, 32)
    assert lead.shape == () and lead.item() == 48.0
    assert all(t.dtype == torch.float32 for t in (x, y, lead, elev, mask))
    np.testing.assert_array_equal(x.numpy(), arr[7])
    idx = [MODEL_VARIABLES.index(v) for v in POLLUTANTS]
    np.testing.assert_array_equal(y.numpy(), arr[7 + 48, idx])
    np.testing.assert_array_equal(elev.numpy(), static["elevation_m"])
    assert elev.max() > 500.0  # metres, not normalised
    np.testing.assert_array_equal(mask.numpy(), static["mask"].astype(np.float32))
    assert 0.0 < mask.mean().item() < 1.0  # from the data's land mask, not all ones


def test_out_variables_by_name_and_lead_times(tiny_cache: Path) -> None:
    ds = CacheDataset(tiny_cache, "val", lead_times_h=(6,), out_variables=("o3", "no2"))
    arr = np.load(tiny_cache / "year_2014.npy")
    x, y, lead, _, _ = ds[10]
    assert len(ds) == 120 - 6 and lead.item() == 6.0
    o3, no2 = MODEL_VARIABLES.index("o3"), MODEL_VARIABLES.index("no2")
    np.testing.assert_array_equal(y.numpy(), arr[16, [o3, no2]])
    np.testing.assert_array_equal(x.numpy(), arr[10])


def test_bad_arguments(tiny_cache: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'training'"):
        CacheDataset(tiny_cache, "training")
    with pytest.raises(ValueError, match=r"out_variables \['pm1'\] not among"):
        CacheDataset(tiny_cache, "train", out_variables=("pm25", "pm1"))
    with pytest.raises(ValueError, match=r"year 2013 has 120 steps, not more than .* 200 h"):
        CacheDataset(tiny_cache, "train", lead_times_h=(12, 200))
    with pytest.raises(FileNotFoundError, match="not a complete cache"):
        CacheDataset(tiny_cache.parent / "nowhere", "train")


def test_loader_batches(train: CacheDataset) -> None:
    loader = make_loader(train, batch_size=5, shuffle=True, seed=3)
    x, y, lead, elev, mask = next(iter(loader))
    assert x.shape == (5, 15, 16, 32) and y.shape == (5, 6, 16, 32)
    assert lead.shape == (5,) and elev.shape == (5, 16, 32) and mask.shape == (5, 16, 32)
    assert len(loader) == -(-len(train) // 5)


def test_one_rank_and_n_ranks_see_the_same_global_order(train: CacheDataset) -> None:
    kwargs = {"batch_size": 4, "shuffle": True, "seed": 7, "epoch": 2}
    one = list(make_loader(train, **kwargs).sampler)
    ranks = [list(make_loader(train, rank=r, world_size=3, **kwargs).sampler) for r in range(3)]
    interleaved = [ranks[k % 3][k // 3] for k in range(len(one))]
    assert interleaved == one
    assert sorted(one) == list(range(len(train)))
    again = list(make_loader(train, batch_size=4, shuffle=True, seed=7, epoch=2).sampler)
    other_epoch = list(make_loader(train, batch_size=4, shuffle=True, seed=7, epoch=3).sampler)
    assert again == one and other_epoch != one
    plain = list(make_loader(train, batch_size=4, shuffle=False, seed=0).sampler)
    assert plain == list(range(len(train)))
    with pytest.raises(ValueError, match=r"rank 3 is not in \[0, world_size=3\)"):
        make_loader(train, batch_size=4, shuffle=True, seed=0, rank=3, world_size=3)


def test_validation_indices_are_evenly_spaced_and_deterministic() -> None:
    # The middle of each of 4 slices of 10 items: 1.25, 3.75, 6.25, 8.75.
    assert validation_indices(10, 4) == [1, 3, 6, 8]
    assert validation_indices(100, 10) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert validation_indices(7, 1) == [3]
    # As many as the split holds, or more: the whole split.
    assert validation_indices(5, 5) == validation_indices(5, 9) == [0, 1, 2, 3, 4]
    for n_items, n_samples in [(96, 64), (576, 64), (34656, 800), (13, 12), (3, 2)]:
        idx = validation_indices(n_items, n_samples)
        # item i is the one nearest the middle of the i-th of n_samples equal slices
        middles = (np.arange(n_samples) + 0.5) * n_items / n_samples
        assert np.all(np.abs(np.asarray(idx) + 0.5 - middles) <= 0.5 + 1e-9)
        assert len(idx) == len(set(idx)) == n_samples and idx == sorted(idx)
        assert idx[0] >= 0 and idx[-1] < n_items
        gaps = np.diff(idx)
        assert gaps.max() - gaps.min() <= 1  # evenly spaced, to the nearest item
        # centred: as far from the start as from the end, to one item
        assert abs(idx[0] - (n_items - 1 - idx[-1])) <= 1
    with pytest.raises(ValueError, match=r"n_samples must be >= 1, got 0"):
        validation_indices(10, 0)
    with pytest.raises(ValueError, match=r"the validation split is empty \(n_items 0\)"):
        validation_indices(0, 4)
    with pytest.raises(ValueError, match=r"n_items 10 is not a whole number of groups of 4"):
        validation_indices(10, 4, group=4)


def test_validation_indices_take_every_lead_time_in_turn() -> None:
    """A spacing that is a multiple of the group (4 lead times) would pick one lead time only."""
    plain = validation_indices(256, 64)  # spacing 4: every item is the third of its group
    assert {i % 4 for i in plain} == {2}
    grouped = validation_indices(256, 64, group=4)
    assert [i // 4 for i in grouped] == [i // 4 for i in plain]  # the same start times
    assert np.bincount([i % 4 for i in grouped]).tolist() == [16, 16, 16, 16]
    for n_items, n_samples in [(96, 64), (96, 95), (576, 64), (34656, 800), (40, 9)]:
        idx = validation_indices(n_items, n_samples, group=4)
        assert len(set(idx)) == n_samples and idx == sorted(idx) and idx[-1] < n_items
        counts = np.bincount([i % 4 for i in idx], minlength=4)
        assert counts.max() - counts.min() <= 1
        starts = np.diff([i // 4 for i in idx[::4]])
        assert starts.min() >= 1  # start times spread over the split, never bunched
    assert validation_indices(96, 200, group=4) == list(range(96))


def test_validation_loader_splits_the_subset_over_ranks(tiny_cache: Path) -> None:
    val = CacheDataset(tiny_cache, "val")
    assert len(val) == 96 and val.lead_times_h == (12, 24, 48, 96)
    subset = validation_indices(96, 10, group=4)
    one = make_validation_loader(val, n_samples=10, batch_size=4)
    assert list(one.sampler) == subset and [len(b[0]) for b in one] == [4, 4, 2]
    # Every lead time and start times spread over the whole year.
    infos = [val.sample_info(i) for i in subset]
    assert {lead for _, _, lead, _ in infos} == {12, 24, 48, 96}
    assert infos[0][1] <= 2 and infos[-1][1] >= 21
    # N ranks: disjoint shares whose union is the subset, whatever the batch size.
    for world in (2, 3, 16):  # 16 ranks: 6 of them get no item
        loaders = [
            make_validation_loader(val, n_samples=10, batch_size=3, rank=r, world_size=world)
            for r in range(world)
        ]
        assert sorted(i for loader in loaders for i in loader.sampler) == subset
        assert sum(len(b[0]) for loader in loaders for b in loader) == 10
    x = torch.cat([b[0] for b in one])  # (10, V, H, W)
    expected = torch.stack([val[i][0] for i in subset])
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, world_size=2\)"):
        make_validation_loader(val, n_samples=10, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        make_validation_loader(val, n_samples=10, batch_size=0)


def test_worker_processes_give_the_same_batches(train: CacheDataset) -> None:
    kwargs = {"batch_size": 8, "shuffle": True, "seed": 1}
    serial = [b[0] for b in make_loader(train, num_workers=0, **kwargs)]
    workers = [b[0] for b in make_loader(train, num_workers=2, **kwargs)]
    assert len(serial) == len(workers)
    for a, b in zip(serial, workers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_xarray_in_the_hot_path(tiny_cache: Path) -> None:
    code = (
        "import sys; from aqnet.data.dataset import CacheDataset; "
        f"ds = CacheDataset({str(tiny_cache)!r}, 'test'); ds[0]; ds[len(ds) - 1]; "
        "assert 'xarray' not in sys.modules, 'xarray imported'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_batch_to_device_names_the_items_a_malformed_batch_lacks() -> None:
    batch = [torch.zeros(2, 3, 4, 4), torch.zeros(2, 6, 4, 4), torch.zeros(2)]
    with pytest.raises(
        ValueError,
        match=r"^evaluate: a data batch has 3 items, expected 5 "
        r"\(x, y, lead_time_h, elevation_m, mask\)$",
    ):
        batch_to_device(batch, torch.device("cpu"), stage="evaluate")
    full = [*batch, torch.zeros(2, 4, 4), torch.ones(2, 4, 4)]
    moved = batch_to_device(full, torch.device("cpu"), stage="evaluate")
    assert [t.shape for t in moved] == [t.shape for t in full]
    assert all(torch.equal(a, b) for a, b in zip(moved, full, strict=True))

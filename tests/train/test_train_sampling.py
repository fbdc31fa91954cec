"""The resumable distributed sampler (:mod:`aqnet.train.sampling`)."""

from __future__ import annotations

import pytest

from aqnet.train.sampling import ResumableDistributedSampler


def test_resumable_sampler_skips_exactly_and_matches_one_rank() -> None:
    data = list(range(23))
    one = ResumableDistributedSampler(data, num_replicas=1, rank=0, seed=5)
    one.set_position(epoch=2, start=0)
    full = list(one)
    one.set_position(epoch=2, start=8)
    assert list(one) == full[8:]
    # Two ranks: rank r takes positions r, r + 2, ... of the same permutation.
    ranks = [ResumableDistributedSampler(data, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_position(epoch=2, start=2)
    r0, r1 = list(ranks[0]), list(ranks[1])
    assert r0[:3] == full[4:10:2] and r1[:3] == full[5:11:2]
    with pytest.raises(ValueError, match="outside this rank's"):
        one.set_position(epoch=0, start=99)

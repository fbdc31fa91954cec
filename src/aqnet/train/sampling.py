"""The training data order: a seeded ``DistributedSampler`` that can start mid-epoch.

``DistributedSampler`` shuffles the indices of epoch ``e`` with the generator seeded ``seed + e``,
pads them to a multiple of the world size, and gives rank ``r`` the positions ``r, r + W, r + 2W,
...``. Optimizer step ``k`` of an epoch therefore uses the global positions ``[k * G, (k + 1) * G)``
of that permutation (``G`` the global batch) whatever the number of ranks: one rank and N ranks
train on the same global batches.

Resuming at step ``k`` of epoch ``e`` must not read (and throw away) the ``k * G`` samples before
it: :class:`ResumableDistributedSampler` skips them in the index list instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` whose iteration can start at a position within the epoch.

    Args:
        dataset: the training dataset.
        num_replicas: world size.
        rank: this rank.
        seed: the shuffle seed (``train.seed``).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.start = 0

    def set_position(self, *, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from this rank's ``start``-th index on."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(
                f"sampler position {start} is outside this rank's {self.num_samples} samples"
            )
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start

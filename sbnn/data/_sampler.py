"""A shuffling sampler whose order depends only on ``(seed, epoch)``: resumable runs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import RandomSampler

__all__ = ["EpochSeededSampler"]


class EpochSeededSampler(RandomSampler):
    """Shuffle with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every training epoch, so a run resumed from a checkpoint
    sees the same order as the uninterrupted run (a plain ``RandomSampler`` with a seeded generator
    would restart the sequence of permutations). Under DDP Lightning replaces any
    ``RandomSampler`` by a ``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``, which also
    shuffles by ``seed + epoch``.
    """

    def __init__(self, data_source: Any, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator().manual_seed(seed))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        # reseed on every iteration, so iterating twice within one epoch gives the same order
        self.set_epoch(self.epoch)
        return super().__iter__()

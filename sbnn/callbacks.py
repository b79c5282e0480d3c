"""Lightning callbacks for reproducible, resumable SBNN training runs.

:class:`EpochSeed` makes every training epoch's random draws a function of ``(seed, epoch, rank)``
only. SBNN training draws its noise (LRT samples, neuron noise) from torch's global RNG, and
Lightning does not put RNG states in checkpoints. Saving the state at checkpoint time would not be
enough either: between the save and the next epoch an uninterrupted run and a resumed one make
different draws (the resumed run's sanity-check validation, each DataLoader iterator's base seed).
Reseeding at the first batch of every epoch removes that dependence, so a run resumed with
``--ckpt_path`` from an end-of-epoch checkpoint repeats the uninterrupted run's metrics exactly
(together with an epoch-seeded shuffle, e.g. :class:`sbnn.data.events.EpochSeededSampler`).
"""

from __future__ import annotations

import os
import random

import lightning as L
import numpy as np
import torch

__all__ = ["EpochSeed", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for ``(seed, epoch, rank)`` (distinct triples give distinct streams).

    Example:
        >>> epoch_seed(0, 1) != epoch_seed(0, 2) != epoch_seed(1, 1)
        True
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("rank", rank)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"epoch_seed: {name} must be a non-negative integer, got {value!r}")
    # SplitMix64-style mixing: nearby triples give unrelated seeds
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB + 1) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) >> 1


class EpochSeed(L.Callback):
    """Reseed torch, numpy and ``random`` at the first batch of every training epoch.

    Args:
        seed: base seed; ``None`` (default) uses the run's ``seed_everything`` value
            (``PL_GLOBAL_SEED``), or 0 when none was set.

    The seed of epoch ``e`` on global rank ``r`` is :func:`epoch_seed` ``(seed, e, r)``: ranks draw
    different noise, and any epoch can be replayed alone.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"EpochSeed: seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed

    def _base(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) % 2**63

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # at the first batch rather than at epoch start: Lightning creates the epoch's DataLoader
        # iterator (which may draw from the global RNG) before or after the epoch-start hooks
        # depending on whether the epoch is a resumed one
        if batch_idx != 0:
            return
        s = epoch_seed(self._base(), trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)

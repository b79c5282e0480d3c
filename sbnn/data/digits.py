"""scikit-learn's 8x8 handwritten digits, spike-encoded (rate or latency), as a DataModule.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images, 10 classes, pixel
intensities 0..16), so this dataset works offline and in tests.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import TensorDataset

from sbnn.data._common import SpikeDataModule, check_int

__all__ = ["DigitsDataModule", "rate_encode", "latency_encode"]

_N_DIGITS = 1797  # size of load_digits, fixed by the scikit-learn release data
_MAX_INTENSITY = 16.0


def rate_encode(intensity: Tensor, n_steps: int, generator: torch.Generator) -> Tensor:
    """Bernoulli rate code: each step spikes with probability ``intensity``.

    Args:
        intensity: firing probabilities in [0, 1].
        n_steps: number of time steps ``T``.
        generator: source of the Bernoulli draws (seeded by the caller for reproducibility).

    Returns:
        float32 spikes in {0,1}.

    Shape:
        - intensity: ``[S, N]``
        - output: ``[S, T, N]`` (sample-major, as stored in a dataset)

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> rate_encode(torch.tensor([[0.0, 1.0]]), 3, g)[0].tolist()
        [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """
    probs = intensity.unsqueeze(1).expand(-1, n_steps, -1)
    return torch.bernoulli(probs, generator=generator).float()


def latency_encode(intensity: Tensor, n_steps: int) -> Tensor:
    """Latency code: one spike at ``round((1 - intensity) * (T - 1))``, none where intensity is 0.

    Brighter inputs fire earlier (full intensity at step 0); a zero input carries no information
    about "when", so it stays silent rather than firing at the last step.

    Args:
        intensity: values in [0, 1].
        n_steps: number of time steps ``T``.

    Returns:
        float32 spikes in {0,1}, at most one per channel.

    Shape:
        - intensity: ``[S, N]``
        - output: ``[S, T, N]``

    Example:
        >>> latency_encode(torch.tensor([[1.0, 0.5, 0.0]]), 3)[0].tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    times = torch.round((1.0 - intensity) * (n_steps - 1)).long().clamp(0, n_steps - 1)
    steps = torch.arange(n_steps).view(1, n_steps, 1)
    spikes = (steps == times.unsqueeze(1)) & (intensity > 0).unsqueeze(1)
    return spikes.float()


class DigitsDataModule(SpikeDataModule):
    """Spike-encoded scikit-learn digits (8x8 -> 64 channels, 10 classes).

    The split is stratified with a fixed seed; the spike code is drawn once per sample in
    :meth:`setup` (seeded), so every epoch sees the same spikes and the dataset is deterministic.

    Args:
        encoding: ``"rate"`` (Bernoulli spikes with probability intensity/16 per step) or
            ``"latency"`` (one spike, earlier for brighter pixels, none for 0 pixels).
        n_steps: time steps per sample.
        n_val: validation examples (stratified).
        n_test: test examples (stratified); the remaining ``1797 - n_val - n_test`` train.
        batch_size: examples per batch.
        seed: seeds the split, the rate code and the training shuffle order.
        num_workers: DataLoader worker processes.
        input_format: ``"dense"`` (default) or ``"indices"``: batches hold the
            :class:`~sbnn.functional.sparse.SpikeIndices` of the spikes (:mod:`sbnn.data.spike_index`).

    Shape:
        batches ``(x, y)``: x ``[T, B, 64]`` float32 in {0,1} (or its ``SpikeIndices``), y ``[B]`` int64.

    Raises:
        ValueError: if an argument is out of range; the message names it.

    Example:
        >>> dm = DigitsDataModule(encoding="latency", n_steps=10, batch_size=8)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.n_train, dm.num_classes, dm.input_size
        ((10, 8, 64), 1257, 10, 64)
    """

    def __init__(
        self,
        encoding: Literal["rate", "latency"] = "rate",
        n_steps: int = 20,
        n_val: int = 180,
        n_test: int = 360,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int = 0,
        input_format: Literal["dense", "indices"] = "dense",
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers, input_format=input_format)
        if encoding not in ("rate", "latency"):
            raise ValueError(
                f"encoding must be 'rate' or 'latency', got {encoding!r}; pick one of those."
            )
        self.encoding = encoding
        self.num_classes = 10
        self.input_size = 64
        self.n_steps = check_int("n_steps", n_steps)
        # Stratification needs at least one example of each class in every split.
        self.n_val = check_int("n_val", n_val, minimum=self.num_classes)
        self.n_test = check_int("n_test", n_test, minimum=self.num_classes)
        if _N_DIGITS - n_val - n_test < self.num_classes:
            raise ValueError(
                f"n_val + n_test must leave at least {self.num_classes} of the {_N_DIGITS} "
                f"digits for training, got n_val={n_val}, n_test={n_test}; lower them."
            )
        self.n_train = _N_DIGITS - n_val - n_test
        self.split_indices: dict[str, np.ndarray] = {}
        self.save_hyperparameters()

    def _encode(self, images: np.ndarray, generator: torch.Generator) -> Tensor:
        intensity = torch.from_numpy(images).float() / _MAX_INTENSITY
        if self.encoding == "rate":
            return rate_encode(intensity, self.n_steps, generator)
        return latency_encode(intensity, self.n_steps)

    def setup(self, stage: str | None = None) -> None:
        """Load, split (stratified, seeded) and encode all three splits; idempotent."""
        if self.train_set is not None:
            return
        images, labels = load_digits(return_X_y=True)
        index = np.arange(len(labels))
        rest, test = train_test_split(
            index, test_size=self.n_test, stratify=labels, random_state=self.seed
        )
        train, val = train_test_split(
            rest, test_size=self.n_val, stratify=labels[rest], random_state=self.seed
        )
        # Row indices into load_digits per split, kept so users (and tests) can trace samples.
        self.split_indices = {"train": train, "val": val, "test": test}
        generator = torch.Generator().manual_seed(self.seed)
        for split, idx in self.split_indices.items():
            spikes = self._encode(images[idx], generator)
            targets = torch.from_numpy(labels[idx]).long()
            setattr(self, f"{split}_set", TensorDataset(spikes, targets))

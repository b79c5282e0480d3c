"""scikit-learn's two moons as a DataModule (BayesBiNN's uncertainty setting, Meng et al. 2020).

``make_moons`` with ``n_per_class`` points per class and Gaussian noise ``noise`` (BayesBiNN,
table 3: 100 per class, 0.1). The real-valued points are repeated over ``n_steps`` time steps so
spiking networks see a constant input current; ``n_steps = 1`` is one pass of a non-spiking
(binary-weight) MLP such as :class:`sbnn.models.BinaryMLP`.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import make_moons
from torch import Tensor
from torch.utils.data import TensorDataset

from sbnn.data._common import SpikeDataModule, check_float, check_int

__all__ = ["MoonsDataModule", "moons_tensors"]


def moons_tensors(n_per_class: int, noise: float, seed: int, n_steps: int = 1) -> tuple[Tensor, Tensor]:
    """Two-moons points, sample-major and repeated over time.

    Args:
        n_per_class: points per class.
        noise: standard deviation of the Gaussian noise added to each point (``≥ 0``).
        seed: seeds ``make_moons``.
        n_steps: time steps ``T`` (the point is repeated).

    Returns:
        ``(x, y)``: x ``[2·n_per_class, T, 2]`` float32, y ``[2·n_per_class]`` int64 (0 = upper moon).

    Example:
        >>> x, y = moons_tensors(5, 0.1, seed=0, n_steps=3)
        >>> tuple(x.shape), int(y.sum()), bool((x[:, 0] == x[:, 2]).all())
        ((10, 3, 2), 5, True)
    """
    check_int("n_per_class", n_per_class)
    check_float("noise", noise, minimum=0.0, inclusive=True)
    check_int("seed", seed, minimum=0)
    check_int("n_steps", n_steps)
    points, labels = make_moons(n_samples=(n_per_class, n_per_class), noise=noise, random_state=seed)
    x = torch.from_numpy(points.astype(np.float32)).unsqueeze(1).expand(-1, n_steps, -1).contiguous()
    return x, torch.from_numpy(labels).long()


class MoonsDataModule(SpikeDataModule):
    """Two moons: train, validation and test sets drawn independently (seeds ``seed``, +1, +2).

    Args:
        n_per_class: training points per class (BayesBiNN: 100).
        noise: Gaussian noise standard deviation (BayesBiNN: 0.1).
        n_steps: time steps ``T`` the real-valued point is repeated over (1: non-spiking MLP).
        n_val_per_class: validation points per class.
        n_test_per_class: test points per class.
        batch_size: examples per batch.
        seed: seeds the three draws and the training shuffle order.
        num_workers: DataLoader worker processes.

    Shape:
        batches ``(x, y)``: x ``[T, B, 2]`` float32 (real values, not spikes), y ``[B]`` int64.

    Example:
        >>> dm = MoonsDataModule(n_steps=4, batch_size=8)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.n_train, dm.num_classes, dm.input_size
        ((4, 8, 2), 200, 2, 2)
    """

    def __init__(
        self,
        n_per_class: int = 100,
        noise: float = 0.1,
        n_steps: int = 1,
        n_val_per_class: int = 100,
        n_test_per_class: int = 500,
        batch_size: int = 50,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.n_per_class = check_int("n_per_class", n_per_class)
        self.noise = check_float("noise", noise, minimum=0.0, inclusive=True)
        self.n_steps = check_int("n_steps", n_steps)
        self.n_val_per_class = check_int("n_val_per_class", n_val_per_class)
        self.n_test_per_class = check_int("n_test_per_class", n_test_per_class)
        self.num_classes, self.input_size = 2, 2
        self.n_train = 2 * n_per_class
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Draw the three splits (seeded); idempotent."""
        if self.train_set is not None:
            return
        sizes = {"train": self.n_per_class, "val": self.n_val_per_class, "test": self.n_test_per_class}
        for offset, (split, n) in enumerate(sizes.items()):
            x, y = moons_tensors(n, self.noise, self.seed + offset, self.n_steps)
            setattr(self, f"{split}_set", TensorDataset(x, y))

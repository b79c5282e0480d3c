"""Randman-style spike-timing dataset, generated offline and deterministically from a seed.

The task follows the idea of Zenke & Vogels (2021), "The remarkable robustness of surrogate
gradient learning for instilling complex function in spiking neural networks", Neural Computation
33(4), doi:10.1162/neco_a_01367: each class is a random smooth manifold embedded in spike-time
space, and a sample is one point of its class manifold written as one spike per input channel.
The generator below is our own implementation from that description, not a port of the
reference code, so its numbers are not comparable one-to-one with the paper's.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from sbnn.data._common import SpikeDataModule, check_float, check_int

__all__ = ["make_randman", "RandmanDataModule"]

# Points per class used to min-max normalise each channel of each class map. Fixed (not an
# argument) so that the maps, and hence the task, depend only on the map parameters and seed.
_N_REFERENCE = 4096
_CHUNK = 1024


class _RandmanMaps(NamedTuple):
    """Parameters of the class maps ``f_c: [0,1]^D -> [0,1]^N`` (arrays over ``[C, N, D, K]``)."""

    amplitude: np.ndarray  # a_{cndk} * k^-alpha
    frequency: np.ndarray  # cycles over [0, 1]
    phase: np.ndarray  # radians
    low: np.ndarray  # [C, N] reference minimum
    span: np.ndarray  # [C, N] reference max - min


def _raw_values(maps: _RandmanMaps, labels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Un-normalised map values ``[S, N]`` of ``points`` ``[S, D]`` on the maps of ``labels``."""
    out = np.empty((labels.shape[0], maps.amplitude.shape[1]))
    # Chunks bound the [chunk, N, D, K] temporaries to a few MB whatever S is.
    for start in range(0, labels.shape[0], _CHUNK):
        sl = slice(start, start + _CHUNK)
        amp, freq, phase = (a[labels[sl]] for a in maps[:3])  # each [chunk, N, D, K]
        arg = 2.0 * np.pi * freq * points[sl, None, :, None] + phase
        # A sum over dims and harmonics: smooth in x, roughness set by the 1/k^alpha spectrum.
        out[sl] = (amp * np.sin(arg)).sum(axis=(2, 3))
    return out


def _build_maps(
    rng: np.random.Generator,
    n_classes: int,
    n_channels: int,
    manifold_dim: int,
    n_harmonics: int,
    alpha: float,
) -> _RandmanMaps:
    shape = (n_classes, n_channels, manifold_dim, n_harmonics)
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    amplitude = rng.uniform(0.0, 1.0, shape) * k**-alpha
    # Harmonic k sits near k cycles per unit; the random scale keeps channels from sharing one
    # grid of frequencies, so no two channels are phase-shifted copies of each other.
    frequency = k * rng.uniform(0.5, 1.5, shape)
    phase = rng.uniform(0.0, 2.0 * np.pi, shape)
    maps = _RandmanMaps(amplitude, frequency, phase, np.zeros(0), np.zeros(0))

    # Min-max over a fixed reference sample so that every channel of every class spans the whole
    # time window; without it low-amplitude channels would crowd the middle time steps.
    ref_labels = np.repeat(np.arange(n_classes), _N_REFERENCE)
    ref_points = rng.uniform(0.0, 1.0, (n_classes * _N_REFERENCE, manifold_dim))
    ref = _raw_values(maps, ref_labels, ref_points).reshape(n_classes, _N_REFERENCE, n_channels)
    low, high = ref.min(axis=1), ref.max(axis=1)
    return maps._replace(low=low, span=np.maximum(high - low, 1e-12))


def _spike_raster(
    maps: _RandmanMaps,
    labels: np.ndarray,
    rng: np.random.Generator,
    n_steps: int,
    jitter: float,
) -> Tensor:
    """Draw one latent point per label and write it as one spike per channel, ``[S, T, N]``."""
    n_samples, manifold_dim = labels.shape[0], maps.amplitude.shape[2]
    points = rng.uniform(0.0, 1.0, (n_samples, manifold_dim))
    values = (_raw_values(maps, labels, points) - maps.low[labels]) / maps.span[labels]
    # Points outside the reference sample's range may overshoot [0, 1] slightly.
    times = np.rint(np.clip(values, 0.0, 1.0) * (n_steps - 1))
    if jitter > 0:
        times = times + np.rint(rng.normal(0.0, jitter, times.shape))
    # Clipping (not dropping) jittered spikes keeps exactly one spike per channel.
    times = np.clip(times, 0, n_steps - 1).astype(np.int64)

    raster = torch.zeros(n_samples, n_steps, times.shape[1], dtype=torch.float32)
    raster.scatter_(1, torch.from_numpy(times).unsqueeze(1), 1.0)
    return raster


def _balanced_labels(n_samples: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    # Counts differ by at most one between classes; the permutation avoids class-sorted data.
    return rng.permutation(np.arange(n_samples) % n_classes)


def _check_args(
    n_classes: int,
    n_channels: int,
    n_steps: int,
    manifold_dim: int,
    alpha: float,
    n_harmonics: int,
    jitter: float,
    seed: int,
) -> float:
    check_int("n_classes", n_classes, minimum=2)
    check_int("n_channels", n_channels)
    check_int("n_steps", n_steps, minimum=2)
    check_int("manifold_dim", manifold_dim)
    check_int("n_harmonics", n_harmonics)
    check_int("seed", seed, minimum=0)
    check_float("jitter", jitter, inclusive=True)
    return check_float("alpha", alpha)


def make_randman(
    n_classes: int = 10,
    n_channels: int = 50,
    n_steps: int = 50,
    manifold_dim: int = 2,
    alpha: float = 2.0,
    n_harmonics: int = 4,
    n_samples_per_class: int = 100,
    jitter: float = 0.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""Generate a Randman-style spike-timing classification set.

    Each class ``c`` has a random smooth map :math:`f_c: [0,1]^D \to [0,1]^N`,

    .. math::
        f_{c,n}(x) = \operatorname{minmax}_{c,n}\Big(\sum_{d=1}^{D}\sum_{k=1}^{K}
            a_{cndk}\,k^{-\alpha}\sin(2\pi\,k\,\nu_{cndk}\,x_d + \phi_{cndk})\Big),

    with :math:`a \sim U[0,1]`, :math:`\nu \sim U[0.5, 1.5]`, :math:`\phi \sim U[0, 2\pi]`, and
    ``minmax`` rescaling each channel to [0, 1] over a fixed reference sample of the class.
    A sample draws :math:`x \sim U[0,1]^D` and emits, on each channel ``n``, exactly one spike at
    step ``round(f_{c,n}(x) * (T - 1))`` (plus rounded Gaussian ``jitter``, clipped to the window).
    Smaller ``alpha``, more ``n_harmonics``, a larger ``manifold_dim`` and more ``jitter`` make
    the task harder.

    .. note:: Our own generator after Zenke & Vogels (2021), doi:10.1162/neco_a_01367; the exact
       map family of the reference code differs.

    Args:
        n_classes: number of classes (one manifold each), at least 2.
        n_channels: input channels ``N``, one spike each per sample.
        n_steps: time steps ``T``, at least 2.
        manifold_dim: intrinsic dimension ``D`` of each class manifold.
        alpha: spectral decay; amplitude of harmonic ``k`` scales as ``k**-alpha``. Must be > 0.
        n_harmonics: harmonics ``K`` per channel and dimension.
        n_samples_per_class: examples drawn per class.
        jitter: standard deviation (in time steps) of Gaussian spike-time noise; 0 disables it.
        seed: seeds both the class maps and the sampled points.

    Returns:
        ``(spikes, labels)``: spikes float32 in {0,1}, labels int64, in a seeded random order
        with exactly ``n_samples_per_class`` examples per class.

    Shape:
        - spikes: ``[S, T, N]`` with ``S = n_classes * n_samples_per_class`` (sample-major, as
          stored in a dataset; loaders built with :func:`time_major_collate` give ``[T, B, N]``)
        - labels: ``[S]``

    Raises:
        ValueError: if an argument is out of range; the message names it.

    Example:
        >>> x, y = make_randman(n_classes=3, n_channels=8, n_steps=20, n_samples_per_class=4)
        >>> tuple(x.shape), tuple(y.shape)
        ((12, 20, 8), (12,))
        >>> bool((x.sum(dim=1) == 1).all())  # one spike per channel per sample
        True
    """
    alpha = _check_args(
        n_classes, n_channels, n_steps, manifold_dim, alpha, n_harmonics, jitter, seed
    )
    check_int("n_samples_per_class", n_samples_per_class)
    map_rng, sample_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    maps = _build_maps(map_rng, n_classes, n_channels, manifold_dim, n_harmonics, alpha)
    labels = _balanced_labels(n_classes * n_samples_per_class, n_classes, sample_rng)
    spikes = _spike_raster(maps, labels, sample_rng, n_steps, jitter)
    return spikes, torch.from_numpy(labels).long()


class RandmanDataModule(SpikeDataModule):
    """Randman spike-timing classification (see :func:`make_randman`) as a LightningDataModule.

    Train, validation and test sets are disjoint draws of latent points on the *same* class
    manifolds (one map seed), each class-balanced to within one example. Data are generated in
    :meth:`setup`, never in ``__init__``.

    Args:
        n_classes: number of classes.
        n_channels: input channels (= ``input_size``).
        n_steps: time steps per sample.
        manifold_dim: intrinsic dimension of each class manifold.
        alpha: spectral decay of the class maps (smaller is rougher, harder).
        n_harmonics: harmonics per channel and dimension.
        jitter: Gaussian spike-time noise in time steps (0 disables it).
        n_train: training examples.
        n_val: validation examples.
        n_test: test examples.
        batch_size: examples per batch.
        seed: seeds the maps, the sampled points and the training shuffle order.
        num_workers: DataLoader worker processes.
        input_format: ``"dense"`` (default) or ``"indices"``: batches hold the
            :class:`~sbnn.functional.sparse.SpikeIndices` of the spikes (:mod:`sbnn.data.spike_index`).

    Shape:
        batches ``(x, y)``: x ``[T, B, n_channels]`` float32 in {0,1} (or its ``SpikeIndices``), y ``[B]`` int64.

    Raises:
        ValueError: if an argument is out of range; the message names it.

    Example:
        >>> dm = RandmanDataModule(n_train=20, n_val=10, n_test=10, batch_size=4)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), dm.num_classes, dm.input_size
        ((50, 4, 50), (4,), 10, 50)
    """

    def __init__(
        self,
        n_classes: int = 10,
        n_channels: int = 50,
        n_steps: int = 50,
        manifold_dim: int = 2,
        alpha: float = 2.0,
        n_harmonics: int = 4,
        jitter: float = 0.0,
        n_train: int = 1000,
        n_val: int = 200,
        n_test: int = 500,
        batch_size: int = 32,
        seed: int = 42,
        num_workers: int = 0,
        input_format: Literal["dense", "indices"] = "dense",
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers, input_format=input_format)
        self.alpha = _check_args(
            n_classes, n_channels, n_steps, manifold_dim, alpha, n_harmonics, jitter, seed
        )
        self.num_classes = n_classes
        self.input_size = n_channels
        self.n_steps = n_steps
        self.manifold_dim = manifold_dim
        self.n_harmonics = n_harmonics
        self.jitter = float(jitter)
        self.n_train = check_int("n_train", n_train)
        self.n_val = check_int("n_val", n_val, minimum=0)
        self.n_test = check_int("n_test", n_test, minimum=0)
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Generate all three splits (idempotent; cheap, so every stage builds all of them)."""
        if self.train_set is not None:
            return
        map_ss, sample_ss = np.random.SeedSequence(self.seed).spawn(2)
        maps = _build_maps(
            np.random.default_rng(map_ss),
            self.num_classes,
            self.input_size,
            self.manifold_dim,
            self.n_harmonics,
            self.alpha,
        )
        # One sample stream drawn split after split: the splits are independent draws from the
        # same manifolds, and changing n_test never changes the training set.
        rng = np.random.default_rng(sample_ss)
        for split in ("train", "val", "test"):
            labels = _balanced_labels(getattr(self, f"n_{split}"), self.num_classes, rng)
            spikes = _spike_raster(maps, labels, rng, self.n_steps, self.jitter)
            setattr(self, f"{split}_set", TensorDataset(spikes, torch.from_numpy(labels).long()))

"""CIFAR-10 from the standard python pickle batches, as time-major frames, without torchvision.

The data set is read from ``<root>/cifar-10-batches-py/`` (or ``root`` itself), the layout of
``cifar-10-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html once extracted:
``data_batch_1`` … ``data_batch_5`` (training, 10 000 images each), ``test_batch`` and
``batches.meta``. Each batch is a pickled dict with ``b"data"`` (``uint8 [N, 3072]``, the red,
green and blue 32×32 planes in row-major order) and ``b"labels"`` (``N`` ints in 0..9);
``batches.meta`` holds ``b"label_names"``. Nothing is downloaded.

Pickles can run code when loaded; this module unpickles with an allow-list (numpy arrays and
plain containers only), so a tampered file fails with an ``UnpicklingError`` instead.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sbnn.data._common import SpikeDataModule, check_int

__all__ = ["CIFAR10DataModule", "CIFAR10Frames", "load_cifar10_batch", "find_cifar10_dir", "random_crop_flip"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
_SHAPE = (3, 32, 32)

# the only globals a CIFAR-10 pickle needs: numpy's array reconstruction (numpy 1 and 2 names)
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"CIFAR-10 batch refers to {module}.{name}, which a CIFAR-10 pickle never needs; refusing to load it"
        )


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _RestrictedUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def find_cifar10_dir(root: str | Path) -> Path:
    """The folder holding the batches: ``root/cifar-10-batches-py`` or ``root`` itself.

    Raises:
        FileNotFoundError: naming the missing files and where to get them.
    """
    root = Path(root)
    for folder in (root / "cifar-10-batches-py", root):
        if all((folder / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return folder
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (root / "cifar-10-batches-py" / n).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 batches not found under {root}: expected {root / 'cifar-10-batches-py'}/ with "
        f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} (missing: {', '.join(missing)}); download "
        "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it into data.root"
    )


def load_cifar10_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickle batch.

    Returns:
        ``(images, labels)``: ``uint8 [N, 3, 32, 32]`` and ``int64 [N]``.

    Raises:
        ValueError: if the batch is not in the CIFAR-10 format (the message says what differs).
    """
    path = Path(path)
    batch = _unpickle(path)
    if b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch has keys b'data' and b'labels', got {sorted(batch)}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{path}: b'labels' must hold {data.shape[0]} integers in 0..9")
    return data.reshape(-1, *_SHAPE), labels


def random_crop_flip(image: Tensor, padding: int = 4) -> Tensor:
    """A random ``H×W`` crop of ``image`` zero-padded by ``padding`` pixels, mirrored left-right with probability ½.

    The standard CIFAR-10 augmentation (torchvision's ``RandomCrop(32, padding=4)`` +
    ``RandomHorizontalFlip()``, as the SBNN paper's ``train_cifar.py`` uses): the padding is black
    (intensity 0), applied before normalisation. Draws from torch's global generator.

    Shape:
        ``image``: ``[C, H, W]``; returns the same shape.
    """
    h, w = image.shape[-2:]
    dy, dx = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    crop = padded[..., dy : dy + h, dx : dx + w]
    return crop.flip(-1) if bool(torch.rand(()) < 0.5) else crop


class CIFAR10Frames(Dataset):
    """CIFAR-10 images as ``T``-step frame sequences.

    Args:
        images: ``uint8 [N, 3, 32, 32]``.
        labels: ``[N]``.
        n_steps: ``T``.
        encoding: ``"direct"`` (the normalised image, the same at every step: the first
            Bernoulli layer's input current) or ``"rate"`` (per step, each pixel spikes with
            probability ``intensity/255``; a fresh draw at every access).
        mean, std: per-channel statistics for ``"direct"`` (``[3]``, intensities in [0, 1]).
        augment: a fresh :func:`random_crop_flip` of the image at every access.

    Shape:
        item: ``x [T, 3, 32, 32]`` float32, ``y`` int64 scalar.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        n_steps: int,
        encoding: Literal["direct", "rate"],
        mean: Tensor,
        std: Tensor,
        augment: bool = False,
    ) -> None:
        self.images, self.labels, self.n_steps, self.encoding = images, labels, n_steps, encoding
        self.augment = bool(augment)
        self.mean, self.std = mean.reshape(3, 1, 1), std.reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        intensity = self.images[i].float() / 255.0
        if self.augment:
            intensity = random_crop_flip(intensity)
        if self.encoding == "rate":
            x = torch.bernoulli(intensity.expand(self.n_steps, *_SHAPE))
        else:
            x = ((intensity - self.mean) / self.std).expand(self.n_steps, *_SHAPE)
        return x, self.labels[i]


def _channel_stats(images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of ``uint8 [N, 3, H, W]`` images scaled to [0, 1] (in chunks)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


class CIFAR10DataModule(SpikeDataModule):
    """CIFAR-10 (10 classes, 32×32 RGB) as time-major frames for :class:`sbnn.models.SpikingResNet`.

    The validation split is ``n_val`` images drawn (seeded) from the 50 000 training images; the
    test split is ``test_batch``. ``"direct"`` encoding normalises with the training split's
    per-channel mean and standard deviation.

    Args:
        root: folder with ``cifar-10-batches-py/`` (or the batches themselves).
        n_steps: time steps ``T`` per image.
        encoding: ``"direct"`` or ``"rate"`` (see :class:`CIFAR10Frames`).
        n_val: validation images taken from the training batches (``≥ 1``, leaving ``≥ 1``).
        batch_size, seed, num_workers: as the other sbnn data modules.
        augment: random crops of the 4-pixel zero-padded image and horizontal flips on the
            training split (:func:`random_crop_flip`; default off).

    Shape:
        batches ``(x, y)``: x ``[T, B, 3, 32, 32]`` float32, y ``[B]`` int64.

    Raises:
        ValueError: for a bad argument or a malformed batch; FileNotFoundError (in ``setup``)
            when the batches are missing.
    """

    def __init__(
        self,
        root: str = "data/cifar10",
        n_steps: int = 4,
        encoding: Literal["direct", "rate"] = "direct",
        n_val: int = 5000,
        batch_size: int = 64,
        seed: int = 42,
        num_workers: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, seed=seed, num_workers=num_workers)
        self.augment = bool(augment)
        if encoding not in ("direct", "rate"):
            raise ValueError(f"encoding must be 'direct' or 'rate', got {encoding!r}; pick one of those.")
        self.root, self.encoding = str(root), encoding
        self.n_steps = check_int("n_steps", n_steps)
        self.n_val = check_int("n_val", n_val)
        self.num_classes, self.in_channels, self.frame_size = 10, 3, (32, 32)
        self.input_size = 3 * 32 * 32
        self.n_train: int | None = None
        self.class_names: list[str] = []
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        """Read, split (seeded) and wrap all three splits; idempotent."""
        if self.train_set is not None:
            return
        folder = find_cifar10_dir(self.root)
        parts = [load_cifar10_batch(folder / name) for name in TRAIN_BATCHES]
        images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        test_images, test_labels = (torch.from_numpy(a) for a in load_cifar10_batch(folder / TEST_BATCH))
        if self.n_val >= len(labels):
            raise ValueError(
                f"n_val={self.n_val} must leave training images: the batches hold {len(labels)}; lower n_val"
            )
        if (folder / META).is_file():
            meta = _unpickle(folder / META)
            self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[: self.n_val], order[self.n_val :]
        mean, std = _channel_stats(images[train_idx])
        self.channel_mean, self.channel_std = mean, std

        def frames(x: Tensor, y: Tensor, augment: bool = False) -> CIFAR10Frames:
            return CIFAR10Frames(x, y, self.n_steps, self.encoding, mean, std, augment)

        self.train_set = frames(images[train_idx], labels[train_idx], self.augment)
        self.val_set = frames(images[val_idx], labels[val_idx])
        self.test_set = frames(test_images, test_labels)
        self.n_train = len(train_idx)

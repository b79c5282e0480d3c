"""Image data for HyBNN: scikit-learn digits (built in) and MNIST in its IDX format.

Both return float images ``[N, 1, H, W]`` in ``[0, 1]`` and int64 labels ``[N]``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

__all__ = ["ImageSplit", "PAIR_TASKS", "digits_split", "read_idx", "mnist_split", "pair_task", "write_idx"]

#: the HyBNN paper's five two-class tasks
PAIR_TASKS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class ImageSplit(NamedTuple):
    """Train and test images ``[N, 1, H, W]`` in ``[0, 1]`` with labels ``[N]``."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def digits_split(test_fraction: float = 0.3, seed: int = 0) -> ImageSplit:
    """scikit-learn's 8x8 digits (1797 images), a stratified train/test split."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=data.target)
    return ImageSplit(x[tr], y[tr], x[te], y[te])


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (MNIST's format; ``.gz`` accepted) as a numpy array.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the magic number or the size does not match the IDX format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} not found")
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header promises dims {dims} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw[header:], dtype=dtype).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file (used to make test fixtures in the real format)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    Path(path).write_bytes(header + array.tobytes())


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz", root / "MNIST" / "raw" / name, root / "MNIST" / "raw" / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file {name}[.gz] not found under {root} (nor {root}/MNIST/raw); put the four IDX files there"
    )


def mnist_split(root: str | Path) -> ImageSplit:
    """MNIST from the four IDX files under ``root`` (as distributed, optionally gzipped)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST root {root} is not a directory")
    out = []
    for split in ("train", "test"):
        images, labels = (read_idx(_find(root, n)) for n in _MNIST_FILES[split])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"MNIST {split}: images {images.shape} and labels {labels.shape} do not match")
        out += [torch.tensor(images / 255.0, dtype=torch.float32).unsqueeze(1), torch.tensor(labels, dtype=torch.int64)]
    return ImageSplit(*out)


def pair_task(x: Tensor, y: Tensor, pair: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The images of the two digits in ``pair``, relabelled 0 (first) and 1 (second)."""
    keep = (y == pair[0]) | (y == pair[1])
    if not bool(keep.any()):
        raise ValueError(f"no images of digits {pair} in the data")
    return x[keep], (y[keep] == pair[1]).long()

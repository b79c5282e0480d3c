"""A dense binned cache of SHD: ``[N, T, C]`` frames built once from the ``.h5`` file, then memory-mapped.

tonic's ``SHD`` reopens the HDF5 file for every sample; this cache reads each split's file once
(all vlen arrays in one read), frames every sample with the data module's own
:class:`~sbnn.data.events.EventFramer` (so the frames equal those of the tonic path exactly),
and stores them as one ``.npy`` per split, keyed by the framing (bins, window, duration,
down-sampling), ``binary`` and the source file's size and modification time. Files are written
under a temporary name and renamed into place; a file that cannot be memory-mapped with the
expected shape (e.g. truncated) is rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sbnn.data.events import EventFramer

__all__ = ["DenseSHD", "dense_cache_key", "build_dense_shd"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dense_cache_key(h5_path: Path, framer: EventFramer, binary: bool) -> str:
    """Hash of everything the cached frames depend on."""
    stat = h5_path.stat()
    settings = dict(framer=asdict(framer), binary=bool(binary), file=h5_path.name, size=stat.st_size, mtime=stat.st_mtime_ns)
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def build_dense_shd(h5_path: Path, framer: EventFramer, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Frame every sample of an SHD file: ``(x [N, T, C] uint8 or uint16, y [N] int64)``.

    Events are built as tonic's ``SHD`` builds them (``t = times·10⁶`` µs cast to int, ``x`` =
    unit, ``p = 1``). ``binary`` clamps to {0, 1} (uint8); counts are kept as uint8 when they fit,
    uint16 otherwise. The framing must give every sample the same ``T`` (a ``duration`` or
    ``n_time_bins``).
    """
    import h5py
    from tonic.datasets import SHD

    with h5py.File(h5_path, "r") as f:
        times, units, labels = f["spikes/times"][()], f["spikes/units"][()], np.asarray(f["labels"][()])
    frames = []
    for t, u in zip(times, units):
        events = np.zeros(len(t), dtype=SHD.dtype)
        events["t"], events["x"], events["p"] = t.astype(np.float64) * 1e6, u, 1
        frames.append(framer(events)[:, 0])  # [T, C] (single polarity)
    lengths = {fr.shape[0] for fr in frames}
    if len(lengths) != 1:
        raise ValueError(f"{h5_path}: the framing gives samples of {sorted(lengths)[:5]} steps; a dense cache needs one T (set duration)")
    x = np.stack(frames)
    if binary:
        x = np.minimum(x, 1).astype(np.uint8)
    else:
        x = x.astype(np.uint8 if x.max(initial=0) <= 255 else np.uint16)
    return x, labels.astype(np.int64)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, array)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a cache follows the umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, n: int | None) -> np.ndarray | None:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing or truncated: rebuilt
    if n is not None and array.shape[0] != n:
        return None
    return array


class DenseSHD(Dataset):
    """One SHD split from the dense cache (built on the first use), items ``([T, C] float32, label)``.

    Args:
        h5_path: the split's ``shd_*.h5``.
        framer: the data module's framer (fixed ``T``).
        binary: spikes (clamped) or counts.
        folder: cache folder; files ``<folder>/<split stem>-<key>-{x,y}.npy``.
    """

    def __init__(self, h5_path: Path, framer: EventFramer, binary: bool, folder: Path) -> None:
        key = dense_cache_key(h5_path, framer, binary)
        stem = folder / f"{h5_path.stem}-{key}"
        self.x_path, self.y_path = Path(f"{stem}-x.npy"), Path(f"{stem}-y.npy")
        y = _load(self.y_path, None)
        x = None if y is None else _load(self.x_path, len(y))
        self.built = x is None
        if x is None:
            x_new, y = build_dense_shd(h5_path, framer, binary)
            _save_atomic(self.y_path, y)
            _save_atomic(self.x_path, x_new)
            x = _load(self.x_path, len(y))
            assert x is not None
        self.x, self.y = x, np.asarray(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(np.asarray(self.x[index], dtype=np.float32)), torch.as_tensor(int(self.y[index]))

"""Tiny SHD and DVS Gesture trees in the real on-disk format, for tests and offline docs examples.

The files go through the real ``tonic.datasets`` loaders unchanged (docs/design.md §3): tonic checks only
that the archive file exists (an empty placeholder is enough) and that enough data files are
present, and hashes only when it downloads. The events are class-dependent (each class fires in
its own band of channels or its own image quadrant), so a network can learn them.

Example:
    >>> import tempfile
    >>> root = write_shd(tempfile.mkdtemp(), n_train=8, n_test=4)
    >>> sorted(p.name for p in (root / "SHD").iterdir())
    ['shd_test.h5', 'shd_test.h5.zip', 'shd_train.h5', 'shd_train.h5.zip']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_shd", "write_dvs_gesture", "write_dvs_frames", "LIGHTING"]

#: lighting conditions of the DVS Gesture recordings (folder suffixes ``userNN_<lighting>``)
LIGHTING = ("fluorescent", "fluorescent_led", "lab", "led", "natural")


def _shd_sample(
    rng: np.random.Generator, label: int, n_classes: int, n_channels: int, max_time: float, spikes: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(*spikes))
    band = n_channels // n_classes
    units = (label * band + rng.integers(0, band, n)) % n_channels
    # class-dependent timing too: classes fire at different phases of the recording
    times = np.sort(np.clip(rng.normal((0.2 + 0.6 * label / n_classes) * max_time, 0.1 * max_time, n), 0.0, max_time))
    order = np.argsort(times, kind="stable")
    return times[order].astype(np.float16), units[order].astype(np.uint16)


def write_shd_file(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    seed: int = 0,
    n_channels: int = 700,
    max_time: float = 0.9,
    spikes: tuple[int, int] = (30, 80),
) -> Path:
    """Write one SHD-format HDF5 file (written to a temporary name, then renamed).

    ``spikes``: range of the number of spikes per recording (real SHD recordings hold thousands).

    Datasets: ``spikes/times`` (vlen float16, seconds), ``spikes/units`` (vlen uint16),
    ``labels`` (uint16), ``extra/keys`` (class names), ``extra/speaker`` (uint16).
    """
    import h5py

    path = Path(path)
    rng = np.random.default_rng(seed)
    n_classes = 20
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        times = f.create_dataset("spikes/times", (len(labels),), dtype=h5py.vlen_dtype(np.float16))
        units = f.create_dataset("spikes/units", (len(labels),), dtype=h5py.vlen_dtype(np.uint16))
        for i, label in enumerate(labels):
            t, u = _shd_sample(rng, int(label) % n_classes, n_classes, n_channels, max_time, spikes)
            times[i], units[i] = t, u
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        keys = [f"{lang}-{d}".encode() for lang in ("english", "german") for d in range(10)]
        f.create_dataset("extra/keys", data=np.array(keys))
        f.create_dataset("extra/speaker", data=rng.integers(0, 12, len(labels)).astype(np.uint16))
    os.replace(tmp, path)
    return path


def write_shd(
    root: str | os.PathLike, n_train: int = 40, n_test: int = 20, *, seed: int = 0, spikes: tuple[int, int] = (30, 80)
) -> Path:
    """Write ``root/SHD/shd_{train,test}.h5`` plus the empty ``.zip`` placeholders tonic checks for.

    Labels cycle through the 20 classes. Returns ``root`` as a ``Path``.
    """
    root = Path(root)
    folder = root / "SHD"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        write_shd_file(folder / f"shd_{split}.h5", np.arange(n) % 20, seed=s, spikes=spikes)
        (folder / f"shd_{split}.h5.zip").touch()
    return root


def _dvs_sample(rng: np.random.Generator, label: int, n_events: int) -> np.ndarray:
    # class c fires in its own 32x32 block of a 4x4 grid (11 blocks used) over ~1.5 s
    bx, by = (label % 4) * 32, (label // 4) * 32
    x = bx + rng.integers(0, 32, n_events)
    y = by + rng.integers(0, 32, n_events)
    p = rng.integers(0, 2, n_events)
    t = np.sort(rng.integers(0, 1500, n_events))  # milliseconds, as in tonic's preprocessed files
    return np.stack([x, y, p, t], axis=1).astype(np.int64)


def write_dvs_gesture(
    root: str | os.PathLike, n_users_train: int = 10, n_users_test: int = 10, *, n_events: int = 200, seed: int = 0
) -> Path:
    """Write ``root/DVSGesture/ibmGesture{Train,Test}/userNN_<lighting>/<label>.npy`` and the archives.

    Each user folder holds the 11 classes ``0.npy`` … ``10.npy`` (``[N, 4]``: x, y, p, t in ms),
    so the default 10 users give 110 files per split, above tonic's minimum of 100. The empty
    ``ibmGesture{Train,Test}.tar.gz`` placeholders satisfy tonic's archive check.
    Returns ``root`` as a ``Path``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, n_users, first in (("ibmGestureTrain", n_users_train, 1), ("ibmGestureTest", n_users_test, 24)):
        base = root / "DVSGesture" / folder
        for u in range(n_users):
            sub = base / f"user{first + u:02d}_{LIGHTING[u % len(LIGHTING)]}"
            sub.mkdir(parents=True, exist_ok=True)
            for label in range(11):
                np.save(sub / f"{label}.npy", _dvs_sample(rng, label, n_events))
        (root / "DVSGesture" / f"{folder}.tar.gz").touch()
    return root


def write_dvs_frames(
    root: str | os.PathLike, n_per_class: tuple[int, int, int] = (2, 1, 1), *, n_frames: int = 49,
    classes: tuple[int, ...] = tuple(range(11)), n_events: int = 300, seed: int = 0,
) -> Path:
    """Write a SpikingJelly frame folder ``root/{train,validation,test}/<class>/*.npz``.

    Each file holds ``frames``: float64 event counts ``[n_frames, 2, 128, 128]`` saved with
    ``np.savez_compressed`` (SpikingJelly's format); class ``c`` fires in its own 32×32 block.
    ``n_per_class``: recordings per class in train, validation and test. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "validation", "test"), n_per_class):
        for label in classes:
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ev = _dvs_sample(rng, label, n_events)
                frames = np.zeros((n_frames, 2, 128, 128), dtype=np.float64)
                # equal-event-count slices, as integrate_events_by_fixed_frames_number(..., "number", ...)
                slot = (np.arange(n_events) * n_frames) // n_events
                np.add.at(frames, (slot, ev[:, 2], ev[:, 1], ev[:, 0]), 1.0)
                np.savez_compressed(folder / f"user{24 + i:02d}_{LIGHTING[i % len(LIGHTING)]}_0.npz", frames=frames)
    return root

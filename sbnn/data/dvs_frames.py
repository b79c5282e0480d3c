"""DVS Gesture from SpikingJelly frame folders (``<root>/{train,validation,test}/<class>/*.npz``).

SpikingJelly's ``integrate_events_by_fixed_frames_number(events, "number", T, 128, 128)`` splits
each recording into ``T`` slices holding equal numbers of events and counts the events of every
slice per polarity and pixel; the result is saved with ``np.savez_compressed(path, frames=...)``
as float64 ``[T, 2, 128, 128]``. The frame folder published with the SBNN paper (Walker et al.
2025, arXiv 2505.17962), ``DVSGC_frames_number_49_split_by_number``, holds ``T = 49`` frames per
recording, the recordings of DVS128 Gesture's 23 training users split 80 / 20 by file name into
``train`` (935; users 1–19) and ``validation`` (240; users 19–23), and its 288 ``test`` recordings
(users 24–29).

This module reads such a folder, checks it, sum-pools ``k × k`` pixel blocks (128 → 32 for
``k = 4``: the count of a pooled pixel is the number of events in its block), re-bins time
(frame ``i`` of ``T`` goes to bin ``⌊i·T'/T⌋``, summing), and keeps counts or clamps them to
{0, 1}. The processed splits are cached in one ``.npz`` per split, keyed by the settings and the
files' names, sizes and modification times, written atomically; a cache file that cannot be
read is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sbnn.data._common import SplitLoaders, check_int, time_major_collate
from sbnn.data._sampler import EpochSeededSampler
from sbnn.data.augment import ShiftCollate, check_max_shift
from sbnn.data.events import DataMissingError

__all__ = ["DVSGestureFramesDataModule", "SPLITS", "read_frames_header"]

#: the split folders of a SpikingJelly frame folder, and this module's names for them
SPLITS = {"train": "train", "val": "validation", "test": "test"}
N_CLASSES = 11
SENSOR = (2, 128, 128)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_frames_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``frames`` array in a ``.npz`` without decompressing it.

    Raises:
        ValueError: the file is not a zip archive, lacks ``frames``, or its header is unreadable.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if "frames.npy" not in archive.namelist():
                raise ValueError(f"{path}: no 'frames' array (keys {[n[:-4] for n in archive.namelist()]}); "
                                 "expected SpikingJelly frames saved as np.savez_compressed(path, frames=...)")
            with archive.open("frames.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} cannot be read as .npz ({error}); the file is truncated or corrupt: replace it") from None
    return tuple(shape), np.dtype(dtype)


def _pool_and_rebin(frames: np.ndarray, k: int, n_bins: int) -> np.ndarray:
    """``[T, P, H, W]`` counts -> ``[n_bins, P, H/k, W/k]`` (sum over k×k blocks, then over time bins)."""
    t, p, h, w = frames.shape
    pooled = frames.reshape(t, p, h // k, k, w // k, k).sum(axis=(3, 5))
    out = np.zeros((n_bins, p, h // k, w // k), dtype=np.float64)
    np.add.at(out, (np.arange(t) * n_bins) // t, pooled)
    return out


class DVSGestureFramesDataModule(SplitLoaders, L.LightningDataModule):
    """DVS Gesture from a SpikingJelly frame folder, as time-major frames ``[T', B, 2, 128/k, 128/k]``.

    Args:
        root: the frame folder holding ``train/``, ``validation/`` and ``test/``, each with class
            folders ``0`` … ``10`` of ``.npz`` files (e.g.
            ``DVSGC_frames_number_49_split_by_number``); required.
        n_time_bins: frames per sample after re-binning (``None``: keep the folder's ``T``); must
            not exceed ``T``.
        downsample: sum-pooling factor ``k`` (default 4: 128 → 32); must divide 128.
        binary: clamp the pooled counts to {0, 1}; ``False`` keeps counts.
        cache: keep the processed splits in ``cache_dir`` (default ``<root>/../sbnn_cache``).
        cache_dir: cache folder.
        batch_size: examples per batch.
        seed: seeds the per-epoch shuffle.
        num_workers: DataLoader workers.
        max_shift: training batches only: each recording is translated by ``(dy, dx)`` drawn
            uniformly from ``[-max_shift, max_shift]`` pooled pixels (the same shift for all its
            frames; pixels moved in from outside are 0), a new draw every time it is loaded, from
            torch's global generator (reseeded per epoch by :class:`sbnn.callbacks.EpochSeed`).
            0 (default): no augmentation. Gestures differ by motion, not by position in the frame.

    Shape:
        batches ``(x, y)``: x ``[T', B, 2, 128/k, 128/k]`` float32, y ``[B]`` int64.

    Raises:
        ValueError: bad arguments (at construction); in :meth:`setup`, before anything is written:
            a split folder missing, an empty split or class folder, a class folder not named
            0..10, a file that is not a ``.npz`` with a ``frames`` array, frames of another shape
            than ``[T, 2, 128, 128]`` (or another ``T`` than the other files), a non-numeric
            dtype, negative or non-finite counts; every message names the file.
        sbnn.data.DataMissingError: ``root`` does not exist.
    """

    num_classes = N_CLASSES

    def __init__(
        self,
        root: str | None = None,
        n_time_bins: PositiveInt | None = None,
        downsample: PositiveInt = 4,
        binary: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        batch_size: PositiveInt = 16,
        seed: NonNegativeInt = 42,
        num_workers: NonNegativeInt = 0,
        max_shift: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        if root is None or not str(root).strip():
            raise ValueError(
                "DVSGestureFramesDataModule: data.root is required: the SpikingJelly frame folder holding "
                "train/, validation/ and test/; pass --data.root /path/to/DVSGC_frames_number_49_split_by_number"
            )
        self.root = Path(os.path.expanduser(str(root)))
        self.n_time_bins = None if n_time_bins is None else check_int("n_time_bins", n_time_bins)
        self.downsample = check_int("downsample", downsample)
        if SENSOR[1] % self.downsample:
            raise ValueError(f"DVSGestureFramesDataModule: downsample must divide 128, got {downsample}; use 1, 2, 4, 8, ...")
        self.binary, self.cache = bool(binary), bool(cache)
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        self.batch_size = check_int("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.max_shift = check_max_shift("DVSGestureFramesDataModule", max_shift, SENSOR[1] // self.downsample)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.n_train: int | None = None
        self.n_steps: int | None = None
        self.save_hyperparameters()

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(P, H, W)`` after pooling."""
        k = self.downsample
        return (SENSOR[0], SENSOR[1] // k, SENSOR[2] // k)

    # -- checks ------------------------------------------------------------------------------------
    def _list_split(self, split: str) -> list[tuple[Path, int]]:
        folder = self.root / SPLITS[split]
        if not folder.is_dir():
            raise ValueError(
                f"{folder} is missing: a SpikingJelly frame folder holds train/, validation/ and test/ "
                f"(found {sorted(p.name for p in self.root.iterdir())}); point data.root at the frame folder"
            )
        entries = sorted(folder.iterdir())
        if not entries:
            raise ValueError(f"{folder} is an empty folder; it must hold the class folders 0 .. 10")
        files = []
        for entry in entries:
            if not entry.is_dir() or not entry.name.isdigit() or not 0 <= int(entry.name) < N_CLASSES:
                raise ValueError(
                    f"{entry}: expected only class folders named 0 .. 10 in {folder} (DVS Gesture has 11 classes)"
                )
            npz = sorted(entry.glob("*.npz"))
            if not npz:
                raise ValueError(f"{entry} is an empty folder (no .npz files); remove it or restore its recordings")
            files += [(path, int(entry.name)) for path in npz]
        return files

    def _check_headers(self, files: list[tuple[Path, int]], frames_t: int | None) -> int:
        for path, _ in files:
            shape, dtype = read_frames_header(path)
            if dtype.kind not in "fiu":
                raise ValueError(f"{path}: frames have dtype {dtype}; expected event counts (float64 as SpikingJelly writes them)")
            if len(shape) != 4 or shape[1:] != SENSOR or shape[0] < 1:
                raise ValueError(f"{path}: frames have shape {list(shape)}; expected [T, 2, 128, 128] (DVS128 frames)")
            if frames_t is None:
                frames_t = shape[0]
            elif shape[0] != frames_t:
                raise ValueError(f"{path}: {shape[0]} frames, but the other files have {frames_t}; all samples need the same T")
        assert frames_t is not None
        if self.n_time_bins is not None and self.n_time_bins > frames_t:
            raise ValueError(f"n_time_bins={self.n_time_bins} exceeds the folder's {frames_t} frames per sample; use at most {frames_t}")
        return frames_t

    # -- processing and cache ------------------------------------------------------------------------
    def _key(self, files: list[tuple[Path, int]], frames_t: int) -> str:
        listing = [(str(p.relative_to(self.root)), c, p.stat().st_size, p.stat().st_mtime_ns) for p, c in files]
        settings = dict(T=frames_t, bins=self.n_time_bins or frames_t, k=self.downsample, binary=self.binary, files=listing)
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def _process(self, files: list[tuple[Path, int]], n_bins: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(files), n_bins, *self.input_size), dtype=np.uint8 if self.binary else np.float32)
        for i, (path, _) in enumerate(files):
            with np.load(path, allow_pickle=False) as data:
                frames = data["frames"]
            bad = ~np.isfinite(frames) | (frames < 0)
            if bad.any():
                where = tuple(int(v) for v in np.argwhere(bad)[0])
                raise ValueError(
                    f"{path}: frames{list(where)} = {frames[where].item()!r}; event counts must be finite and non-negative"
                )
            binned = _pool_and_rebin(frames, self.downsample, n_bins)
            out[i] = np.minimum(binned, 1) if self.binary else binned
        return out, np.array([c for _, c in files], dtype=np.int64)

    def _cache_path(self, split: str, key: str) -> Path:
        base = self.cache_dir if self.cache_dir is not None else self.root.parent / "sbnn_cache"
        return base / "dvs_frames" / f"{split}-{key}.npz"

    def _load_cached(self, path: Path, n: int, n_bins: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as data:
                x, y = data["x"], data["y"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # missing, truncated or not ours: rebuilt
        if x.shape != (n, n_bins, *self.input_size) or y.shape != (n,):
            return None
        return x, y

    @staticmethod
    def _write_atomic(path: Path, x: np.ndarray, y: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, x=x, y=y)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a cache follows the umask
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def setup(self, stage: str | None = None) -> None:
        """Check every split, then load (from the cache or the files) all three; idempotent."""
        if self.train_set is not None:
            return
        if not self.root.is_dir():
            raise DataMissingError(
                f"DVSGestureFramesDataModule: {self.root} does not exist; point data.root at a SpikingJelly frame "
                "folder such as DVSGC_frames_number_49_split_by_number (train/, validation/, test/)"
            )
        listed = {split: self._list_split(split) for split in SPLITS}
        frames_t = None
        for split in SPLITS:
            frames_t = self._check_headers(listed[split], frames_t)
        assert frames_t is not None
        n_bins = self.n_time_bins or frames_t
        arrays = {}
        for split, files in listed.items():
            cached, path = None, None
            if self.cache:
                path = self._cache_path(split, self._key(files, frames_t))
                cached = self._load_cached(path, len(files), n_bins)
            to_write = None
            if cached is None:
                cached = self._process(files, n_bins)
                to_write = path  # missing or unreadable (e.g. truncated): replaced below
            arrays[split] = (cached, to_write)
        # everything is checked and processed: only now write the caches that were missing
        for split, ((x, y), path) in arrays.items():
            if path is not None:
                self._write_atomic(path, x, y)
            # sample-major items [T', P, H, W] for time_major_collate
            setattr(self, f"{split}_set", TensorDataset(torch.from_numpy(x), torch.from_numpy(y)))
        self.n_steps = n_bins
        self.n_train = len(self.train_set)

    # -- loaders -----------------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise RuntimeError(f"DVSGestureFramesDataModule.{split}_dataloader() called before setup(); call dm.setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(dataset, self.seed) if split == "train" else None,
            collate_fn=ShiftCollate(_float_collate, self.max_shift) if split == "train" and self.max_shift else _float_collate,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _float_collate(batch):
    x, y = time_major_collate(batch)
    return x.float(), y

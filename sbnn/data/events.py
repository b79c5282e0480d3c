"""Event-camera / cochlea datasets through ``tonic``: framing, checks, caching, splits, loaders.

The concrete modules are :class:`sbnn.data.SHDDataModule` and
:class:`sbnn.data.DVSGestureDataModule`; this module holds what they share.

Pipeline of one sample (all of it picklable, so it also runs in ``spawn`` workers)::

    tonic dataset [i] ──> structured events (t in µs)
      └─ EventFramer: integer down-sampling of x (and y), tonic.transforms.ToFrame
         (by time window or number of bins) ──> int16 counts [T, P, (H,) W]
      └─ (AtomicDiskCache over tonic.DiskCachedDataset: int16 counts cached per split and framing)
      └─ FramesToTensor: float32, clamp to {0, 1} if binary ──> [T, N] (SHD) or [T, P, H, W]
    batch: tonic.collation.PadTensors(batch_first=False) ──> [T_max, B, ...], zero-padded at the end

Everything on disk is checked in :meth:`EventDataModule.setup` before any cache file or folder is
written (docs/design.md §3: tonic itself only checks that the archive file exists and that enough data
files are present, and hashes only when it downloads).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from sbnn.data._common import SplitLoaders, check_float, check_int
from sbnn.data._sampler import EpochSeededSampler

__all__ = ["EventFramer", "FramesToTensor", "AtomicDiskCache", "EpochSeededSampler", "EventDataModule", "DataMissingError"]


class DataMissingError(FileNotFoundError):
    """The dataset files are not where they are expected and could not be downloaded."""


@dataclass(frozen=True)
class EventFramer:
    """Down-sample and frame one structured event array with ``tonic.transforms.ToFrame``.

    Args:
        sensor_size: tonic's ``(W, H, P)`` of the raw sensor.
        time_window: frame length in µs (exactly one of ``time_window`` and ``n_time_bins``).
        n_time_bins: fixed number of frames spread over the recording (tonic's rule: the bin
            width is ``(t_last − t_first) // n_time_bins``, so the last partial bin is dropped).
        duration: with ``time_window``, frame exactly ``[start, start + duration)`` µs, so every
            sample has ``ceil(duration / time_window)`` frames; ``None`` frames up to the last event.
        start_at_zero: with ``time_window``, windows start at ``t = 0`` (SHD: time since stimulus
            onset) instead of at the first event (tonic's default).
        downsample: integer factor applied to ``x`` (and ``y`` if present): ``x // downsample``;
            exact, unlike a float ``tonic.transforms.Downsample`` factor whose products such as
            ``7 · (1/7)`` can truncate to the wrong pixel.

    Shape:
        - events: structured ``[E]`` with fields ``x, (y,) p, t``.
        - output: int16 counts ``[T, P, W']`` (no ``y`` field) or ``[T, P, H', W']``.
    """

    sensor_size: tuple[int, int, int]
    time_window: float | None = None
    n_time_bins: int | None = None
    duration: float | None = None
    start_at_zero: bool = False
    downsample: int = 1

    @property
    def frame_sensor_size(self) -> tuple[int, int, int]:
        """Sensor size after down-sampling (``ceil`` so the last partial block keeps a pixel)."""
        w, h, p = self.sensor_size
        k = self.downsample
        return (math.ceil(w / k), math.ceil(h / k) if h > 1 else 1, p)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        from tonic.transforms import ToFrame

        if len(events) == 0:
            # ToFrame returns float64 zeros of the wrong rank here (docs/design.md §3): callers must decide
            raise ValueError("EventFramer got an empty event array")
        events = events.copy()
        if self.downsample > 1:
            events["x"] = events["x"] // self.downsample
            if "y" in events.dtype.names:
                events["y"] = events["y"] // self.downsample
        kwargs: dict[str, Any] = {}
        if self.time_window is not None:
            start = 0.0 if self.start_at_zero else float(events["t"][0])
            kwargs = dict(time_window=self.time_window, start_time=start, include_incomplete=True)
            if self.duration is not None:
                kwargs["end_time"] = start + self.duration
        else:
            kwargs = dict(n_time_bins=self.n_time_bins)
        frames = ToFrame(sensor_size=self.frame_sensor_size, **kwargs)(events)
        return frames.astype(np.int16, copy=False)


@dataclass(frozen=True)
class FramesToTensor:
    """int16 frame counts (numpy) to a float32 tensor; ``binary`` clamps counts to {0, 1}.

    ``squeeze_polarity`` drops a single polarity axis (SHD: ``[T, 1, 700]`` → ``[T, 700]``).
    """

    binary: bool = True
    squeeze_polarity: bool = False

    def __call__(self, frames: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
        if self.binary:
            x = x.clamp_(max=1.0)
        if self.squeeze_polarity:
            x = x.squeeze(1)
        return x


@dataclass(frozen=True)
class SampleName:
    """Picklable ``index -> description`` for error messages (``spawn`` workers pickle the dataset)."""

    template: str
    files: tuple[str, ...] = ()

    def __call__(self, index: int) -> str:
        return self.template.format(index=index, file=self.files[index] if self.files else "")


class _Framed(Dataset):
    """A tonic dataset whose samples are checked (non-empty, label in range) and framed."""

    def __init__(self, source: Any, framer: EventFramer, num_classes: int, describe: Callable[[int], str]) -> None:
        self.source, self.framer, self.num_classes, self.describe = source, framer, num_classes, describe

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        events, target = self.source[index]
        target = int(target)
        if not 0 <= target < self.num_classes:
            raise ValueError(
                f"{self.describe(index)} has label {target}, outside the class range 0..{self.num_classes - 1}"
            )
        if len(events) == 0:
            raise ValueError(
                f"{self.describe(index)} has no events; remove the sample (or re-extract the archive)"
            )
        return self.framer(events), target


class _Tensorised(Dataset):
    """Apply :class:`FramesToTensor` after an optional cache (which stores numpy counts)."""

    def __init__(self, source: Dataset, to_tensor: FramesToTensor) -> None:
        self.source, self.to_tensor = source, to_tensor

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        frames, target = self.source[index]
        return self.to_tensor(frames), torch.as_tensor(int(np.asarray(target)), dtype=torch.long)


class AtomicDiskCache(Dataset):
    """``tonic.DiskCachedDataset`` whose cache files appear atomically.

    tonic's ``DiskCachedDataset`` writes ``<cache_path>/<index>_0.hdf5`` in place: two processes
    that miss the same sample (DDP ranks, DataLoader workers) then collide on HDF5's file lock,
    and a reader can open a half-written file (seen here: a DDP rank calibrated on garbage
    frames). This wrapper keeps tonic's cache folder, file names and format (its
    ``save_to_disk_cache`` / ``load_from_disk_cache``) but writes each file under a private
    temporary name and renames it into place, so readers only ever see complete files.

    Args:
        dataset: the dataset to cache.
        cache_path: the cache folder (created).
    """

    def __init__(self, dataset: Dataset, cache_path: str | os.PathLike) -> None:
        from tonic import DiskCachedDataset

        # tonic's check-then-makedirs races between DDP ranks; exist_ok does not
        Path(cache_path).mkdir(parents=True, exist_ok=True)
        self.cached = DiskCachedDataset(dataset, cache_path=str(cache_path))

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        from tonic.cached_dataset import load_from_disk_cache, save_to_disk_cache

        folder = self.cached.cache_path
        path = os.path.join(folder, f"{index}_0.hdf5")
        try:
            return load_from_disk_cache(path)
        except (FileNotFoundError, OSError, KeyError):
            pass
        data, target = self.cached.dataset[index]
        fd, tmp = tempfile.mkstemp(prefix=f".{index}_0.", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            save_to_disk_cache(data, target, file_path=tmp, compress=self.cached.compress)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return data, target


def _settings_hash(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class EventDataModule(SplitLoaders, L.LightningDataModule):
    """Base of the tonic-backed DataModules (subclasses fill in the dataset specifics).

    Subclasses set ``name`` (tonic's class name, also the folder under ``root``),
    ``num_classes``, ``sensor_size`` and implement :meth:`expected_files`,
    :meth:`_check_split` (format checks) and :meth:`_tonic_dataset`.

    Shared constructor arguments are documented on the subclasses.
    """

    name: str
    num_classes: int
    sensor_size: tuple[int, int, int]
    squeeze_polarity: bool = False
    start_at_zero: bool = False

    def __init__(
        self,
        root: str | None,
        time_window: float | None,
        n_time_bins: int | None,
        duration: float | None,
        downsample: int,
        binary: bool,
        cache: bool,
        cache_dir: str | None,
        val_fraction: float,
        batch_size: int,
        seed: int,
        num_workers: int,
        download: bool,
        input_format: str = "dense",
    ) -> None:
        from sbnn.data.spike_index import check_input_format

        super().__init__()
        cls = type(self).__name__
        check_input_format(cls, input_format)
        if input_format == "indices" and not binary:
            raise ValueError(
                f"{cls}: input_format='indices' hands the network the active inputs of binary spikes, but binary=False "
                "keeps spike counts; set binary=True or input_format='dense'"
            )
        if root is None or (isinstance(root, str) and not root.strip()):
            raise ValueError(
                f"{cls}: data.root is required: the folder that holds (or will hold) the "
                f"{self.name}/ data folder; pass --data.root /path/to/datasets"
            )
        if (time_window is None) == (n_time_bins is None):
            raise ValueError(
                f"{cls}: give exactly one of time_window (µs per frame) and n_time_bins (frames per "
                f"sample), got time_window={time_window!r}, n_time_bins={n_time_bins!r}"
            )
        if time_window is not None:
            check_float("time_window", time_window)
        if n_time_bins is not None:
            check_int("n_time_bins", n_time_bins)
        if duration is not None:
            if time_window is None:
                raise ValueError(f"{cls}: duration fixes the number of frames only with time_window; drop it or set time_window")
            check_float("duration", duration)
        check_int("downsample", downsample)
        check_float("val_fraction", val_fraction)
        if val_fraction >= 1.0:
            raise ValueError(f"{cls}: val_fraction must lie in (0, 1), got {val_fraction}")
        self.root = Path(os.path.expanduser(str(root)))
        self.framer = EventFramer(
            self.sensor_size,
            time_window=None if time_window is None else float(time_window),
            n_time_bins=n_time_bins,
            duration=None if duration is None else float(duration),
            start_at_zero=self.start_at_zero,
            downsample=downsample,
        )
        self.binary, self.cache, self.download = bool(binary), bool(cache), bool(download)
        self.input_format = input_format
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        self.val_fraction = float(val_fraction)
        self.batch_size = check_int("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.n_train: int | None = None

    # -- what is expected where ------------------------------------------------------------------
    @property
    def location(self) -> Path:
        """tonic's folder for this dataset: ``root/<name>``."""
        return self.root / self.name

    @property
    def input_size(self) -> int | tuple[int, int, int]:
        """Channels per frame (SHD) or ``(P, H, W)`` (DVS Gesture) after down-sampling."""
        w, h, p = self.framer.frame_sensor_size
        return w if self.squeeze_polarity else (p, h, w)

    def expected_files(self, train: bool) -> list[Path]:  # pragma: no cover - interface
        raise NotImplementedError

    def how_to_get(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def _missing(self, train: bool) -> list[Path]:
        return [p for p in self.expected_files(train) if not p.exists()]

    def _check_split(self, train: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _tonic_dataset(self, train: bool) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def _describe(self, dataset: Any, train: bool) -> SampleName:
        return SampleName(f"{self.name} {'train' if train else 'test'} sample {{index}}")

    # -- download --------------------------------------------------------------------------------
    def _missing_message(self, missing: list[Path], reason: str) -> str:
        listing = "\n".join(f"  {p}" for p in missing)
        return f"{type(self).__name__}: {reason}. Missing:\n{listing}\n{self.how_to_get()}"

    def _fetch(self, train: bool) -> None:
        """Download one split through tonic into a temporary folder, then move it into place.

        tonic downloads and extracts into its target folder directly; going through a temporary
        folder means a failed or interrupted download leaves nothing half-written under ``root``.
        """
        missing = self._missing(train)
        if not missing:
            return
        if not self.download:
            raise DataMissingError(self._missing_message(missing, "the data is not on disk and download=False"))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".sbnn-download-", dir=self.root))
        try:
            self._tonic_class()(str(tmp), train=train)
            self.location.mkdir(exist_ok=True)
            for item in (tmp / self.name).iterdir():
                target = self.location / item.name
                if not target.exists():
                    os.replace(item, target)
        except Exception as error:  # noqa: BLE001 - any download failure gets the same guidance
            raise DataMissingError(
                self._missing_message(missing, f"the data is not on disk and tonic's download failed ({error!r})")
            ) from error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _tonic_class(self) -> type:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download missing splits through tonic (rank 0 only; a no-op when the files are there)."""
        for train in (True, False):
            self._fetch(train)

    # -- setup -----------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {"framer": asdict(self.framer), "name": self.name}

    def _build(self, train: bool) -> Dataset:
        source = self._tonic_dataset(train)
        framed: Dataset = _Framed(source, self.framer, self.num_classes, self._describe(source, train))
        if self.cache:
            base = self.cache_dir if self.cache_dir is not None else self.root / "sbnn_cache"
            # one folder per framing: DiskCachedDataset cannot tell that the transform changed
            path = base / self.name / _settings_hash(self._settings()) / ("train" if train else "test")
            framed = AtomicDiskCache(framed, path)
        return _Tensorised(framed, FramesToTensor(self.binary, self.squeeze_polarity))

    def setup(self, stage: str | None = None) -> None:
        """Check the files, build the framed datasets and the seeded validation split; idempotent.

        Raises:
            DataMissingError: files are missing (the message lists them and how to get them).
            ValueError: a file is corrupt, a sample is empty, a label is out of range, or the
                tree has too few files; nothing is written before these checks pass.
        """
        if self.train_set is not None:
            return
        # check both splits before building either, so a bad test file leaves no train cache
        for train in (True, False):
            missing = self._missing(train)
            if missing:
                raise DataMissingError(
                    self._missing_message(missing, "the data is not on disk (prepare_data() downloads it when download=True)")
                )
            self._check_split(train)
        full = self._build(True)
        n = len(full)
        n_val = int(round(self.val_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"{type(self).__name__}: val_fraction={self.val_fraction} of {n} training samples leaves "
                f"{n_val} for validation and {n - n_val} for training; both need at least one"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.split_indices = {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}
        self.train_set = Subset(full, self.split_indices["train"])
        self.val_set = Subset(full, self.split_indices["val"])
        self.test_set = self._build(False)
        self.n_train = len(self.train_set)

    # -- loaders ---------------------------------------------------------------------------------
    def _augment(self, dense: Any) -> Any:
        """The training split's dense collate; subclasses wrap ``dense`` to augment (none here)."""
        return dense

    def _collate(self, dense: Any) -> Any:
        """``dense`` (time-major), or its output's spike indices with ``input_format='indices'``."""
        from sbnn.data.spike_index import IndexCollate

        return IndexCollate(dense) if self.input_format == "indices" else dense

    def _loader(self, split: str) -> DataLoader:
        from tonic.collation import PadTensors

        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.{split}_dataloader() called before setup(); "
                "call dm.setup() first (the Trainer does this for you)."
            )
        dense = PadTensors(batch_first=False)
        workers = {}
        if self.num_workers > 0:
            # 'spawn': Numba's OpenMP threading layer and torch's thread pools are not fork-safe
            workers = dict(num_workers=self.num_workers, multiprocessing_context="spawn", persistent_workers=True)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(dataset, self.seed) if split == "train" else None,
            collate_fn=self._collate(self._augment(dense) if split == "train" else dense),
            # workers' base seed from here, not from torch's global RNG (the model's noise)
            generator=torch.Generator().manual_seed(self.seed),
            **workers,
        )

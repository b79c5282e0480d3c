"""IBM DVS Gesture (Amir et al. 2017, doi:10.1109/CVPR.2017.781) through tonic.

128×128 pixels, 2 polarities, 11 classes. tonic's preprocessed version stores one ``.npy`` file
per gesture sample, ``[N, 4]`` with columns ``x, y, p, t`` (t in ms; tonic converts to µs).

On-disk layout under ``root`` (what tonic downloads from figshare, or what to place by hand)::

    root/DVSGesture/ibmGestureTrain.tar.gz           the archive (tonic only checks it exists)
    root/DVSGesture/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy
    root/DVSGesture/ibmGestureTrain/userNN_<lighting>/<label>.npy
    root/DVSGesture/ibmGestureTest.tar.gz
    root/DVSGesture/ibmGestureTest/userNN_<lighting>/<label>.npy

tonic lists the files with ``os.walk``, whose order depends on the filesystem; this module sorts
the samples by path so the split, the shuffle and the cache indices are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from sbnn.data.augment import ShiftCollate, check_max_shift
from sbnn.data.checks import check_event_array
from sbnn.data.events import EventDataModule, SampleName

__all__ = ["DVSGestureDataModule"]

#: tonic treats a split as extracted only when its folder holds at least this many .npy files
MIN_NPY_FILES = 100


class DVSGestureDataModule(EventDataModule):
    """DVS Gesture as time-major event frames ``[T, B, 2, 128 / k, 128 / k]``.

    Args:
        root: folder that holds (or will hold) ``DVSGesture/``; required.
        time_window: frame length in µs (exactly one of ``time_window`` and ``n_time_bins``;
            giving it while ``n_time_bins`` keeps its default 20 switches the bins off).
        n_time_bins: number of frames spread over each recording (default 20).
        duration: with ``time_window``, frame exactly the first ``duration`` µs of each recording.
        downsample: spatial pooling factor (default 4: 128×128 → 32×32), ``x // k``, ``y // k``.
        binary: clamp counts to {0, 1}; ``False`` keeps event counts per frame and pixel.
        cache: cache the framed samples with ``tonic.DiskCachedDataset`` (one folder per framing).
        cache_dir: cache folder (default ``root/sbnn_cache``).
        val_fraction: share of the training recordings held out for validation (seeded).
        batch_size: examples per batch.
        seed: seeds the validation split and the per-epoch shuffle.
        num_workers: DataLoader workers (``spawn`` start method; 0 loads in-process).
        download: download missing files through tonic (needs network access).
        max_shift: training batches only: each recording is translated by ``(dy, dx)`` drawn
            uniformly from ``[-max_shift, max_shift]`` pixels after down-sampling (the same shift
            for all its frames; pixels moved in from outside are 0; :func:`sbnn.data.augment.random_shift`),
            a new draw every time it is loaded. 0 (default): no augmentation.

    Shape:
        batches ``(x, y)``: x ``[T, B, 2, ceil(128 / k), ceil(128 / k)]`` float32, y ``[B]`` int64.

    Raises:
        ValueError: bad arguments; in :meth:`setup`: fewer than 100 ``.npy`` files in a split,
            a file that is not ``[N, 4]``, an empty recording, a label outside 0..10, and
            (:class:`sbnn.data.checks.CorruptEventsError`) an event with ``x``/``y`` outside
            0..127, a polarity other than 0/1, or a NaN, infinite, negative or int64-overflowing
            time; the message names the file, the event and the field.
        sbnn.data.events.DataMissingError: files missing and not downloadable.
    """

    name = "DVSGesture"
    num_classes = 11
    sensor_size = (128, 128, 2)

    def __init__(
        self,
        root: str | None = None,
        time_window: PositiveFloat | None = None,
        n_time_bins: PositiveInt | None = 20,
        duration: PositiveFloat | None = None,
        downsample: PositiveInt = 4,
        binary: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        val_fraction: float = 0.1,
        batch_size: PositiveInt = 16,
        seed: NonNegativeInt = 42,
        num_workers: NonNegativeInt = 0,
        download: bool = True,
        max_shift: NonNegativeInt = 0,
    ) -> None:
        if time_window is not None and n_time_bins == 20:
            n_time_bins = None  # the default describes bin framing; a time window replaces it
        super().__init__(
            root, time_window, n_time_bins, duration, downsample, binary, cache, cache_dir,
            val_fraction, batch_size, seed, num_workers, download,
        )
        self.max_shift = check_max_shift(type(self).__name__, max_shift, min(self.framer.frame_sensor_size[:2]))
        self.save_hyperparameters()  # the data settings travel with the checkpoints

    def _augment(self, dense: Any) -> Any:
        return ShiftCollate(dense, self.max_shift) if self.max_shift else dense

    def _tonic_class(self) -> type:
        from tonic.datasets import DVSGesture

        return DVSGesture

    @staticmethod
    def _folder(train: bool) -> str:
        return "ibmGestureTrain" if train else "ibmGestureTest"

    def expected_files(self, train: bool) -> list[Path]:
        folder = self._folder(train)
        return [self.location / f"{folder}.tar.gz", self.location / folder]

    def how_to_get(self) -> str:
        return (
            "With network access tonic downloads them (download=True). By hand: get ibmGestureTrain.tar.gz "
            "(https://figshare.com/ndownloader/files/38022171) and ibmGestureTest.tar.gz "
            f"(https://figshare.com/ndownloader/files/38020584), put both in {self.location}/ and extract them "
            "there, giving ibmGestureTrain/userNN_<lighting>/<label>.npy (tonic only checks that the archives "
            f"exist and that each folder holds at least {MIN_NPY_FILES} .npy files)."
        )

    def _files(self, train: bool) -> list[Path]:
        return sorted((self.location / self._folder(train)).glob("**/*.npy"))

    def _check_split(self, train: bool) -> None:
        folder = self.location / self._folder(train)
        files = self._files(train)
        if len(files) < MIN_NPY_FILES:
            raise ValueError(
                f"{folder} holds {len(files)} .npy files; a complete split has hundreds and tonic needs at least "
                f"{MIN_NPY_FILES} (otherwise it tries to download again). The extraction is incomplete: "
                f"delete {folder} and extract {folder.name}.tar.gz again"
            )
        for path in files:
            rel = path.relative_to(folder)
            if len(rel.parts) != 2 or not rel.parts[0].startswith("user") or "_" not in rel.parts[0]:
                raise ValueError(f"{path}: expected the layout {folder}/userNN_<lighting>/<label>.npy")
            try:
                label = int(path.stem)
            except ValueError:
                raise ValueError(f"{path}: the file name must be the class label, e.g. 3.npy") from None
            if not 0 <= label < self.num_classes:
                raise ValueError(
                    f"{path}: label {label} is outside the class range 0..{self.num_classes - 1}; "
                    "the file does not belong to DVS Gesture"
                )
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise ValueError(f"{path} cannot be read as .npy ({error}); extract the archive again") from error
            shape = arr.shape
            if len(shape) != 2 or shape[1] != 4:
                raise ValueError(f"{path}: expected an [N, 4] array (x, y, p, t), got shape {shape}")
            if shape[0] == 0:
                raise ValueError(f"{path} has no events; an empty recording cannot be framed: remove the file")
            # the values tonic will cast to int64 (t in ms -> µs): x/y/p in the sensor, t finite
            events = np.rec.fromarrays(
                [arr[:, 0], arr[:, 1], arr[:, 2], np.asarray(arr[:, 3], dtype=np.float64) * 1000.0], names="x,y,p,t"
            )
            check_event_array(np.asarray(events), self.sensor_size, where=f"DVSGesture recording {path}", require_sorted=False)

    def _tonic_dataset(self, train: bool) -> Any:
        from tonic.datasets import DVSGesture

        dataset = DVSGesture(str(self.root), train=train)
        # os.walk order depends on the filesystem (docs/design.md §3): sort, keeping the parallel lists aligned
        order = sorted(range(len(dataset.data)), key=lambda i: dataset.data[i])
        for attr in ("data", "targets", "users", "lighting"):
            values = getattr(dataset, attr)
            setattr(dataset, attr, [values[i] for i in order])
        return dataset

    def _describe(self, dataset: Any, train: bool) -> SampleName:
        return SampleName("DVSGesture recording {file}", tuple(dataset.data))

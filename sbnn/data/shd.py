"""Spiking Heidelberg Digits (Cramer et al. 2020, doi:10.1109/TNNLS.2020.3044364) through tonic.

700 cochlea channels, 20 classes (English and German digits). ``tonic.datasets.SHD`` reads one
HDF5 file per split; this module frames it into time-major spike tensors ``[T, B, 700 / k]``.

On-disk layout under ``root`` (what tonic downloads from zenkelab.org, or what to place by hand)::

    root/SHD/shd_train.h5.zip   the archive (tonic only checks that it exists; may be empty)
    root/SHD/shd_train.h5       extracted: spikes/times (vlen, s), spikes/units (vlen, 0..699),
                                labels, extra/keys, extra/speaker
    root/SHD/shd_test.h5.zip
    root/SHD/shd_test.h5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from sbnn.data.checks import check_spike_sample
from sbnn.data.events import EventDataModule, SampleName

__all__ = ["SHDDataModule"]

_REQUIRED = ("spikes/times", "spikes/units", "labels", "extra/keys", "extra/speaker")


class SHDDataModule(EventDataModule):
    """SHD as time-major spike frames, with a seeded validation split from the training file.

    Args:
        root: folder that holds (or will hold) ``SHD/``; required.
        time_window: frame length in µs (default 10 000 = 10 ms); frames start at ``t = 0``.
        n_time_bins: instead of ``time_window``: a fixed number of frames per recording
            (tonic's rule, which spreads them from the first to the last spike). Giving it while
            ``time_window`` and ``duration`` keep their defaults switches those two off.
        duration: with ``time_window``, frame exactly the first ``duration`` µs (default
            1 000 000 = 1 s: 100 frames at 10 ms); ``None`` frames up to the last spike and
            pads each batch to its longest sample.
        downsample: merge every ``downsample`` neighbouring channels (``700 → ceil(700 / k)``).
        binary: clamp counts to {0, 1} (spikes); ``False`` keeps spike counts per frame.
        cache: cache the framed samples. With a fixed number of frames (``duration`` or
            ``n_time_bins``) a dense ``[N, T, C]`` cache per split (:mod:`sbnn.data.shd_dense`:
            built once from the ``.h5`` file, memory-mapped, keyed by the framing); otherwise
            ``tonic.DiskCachedDataset`` (one folder per framing).
        cache_dir: cache folder (default ``root/sbnn_cache``).
        val_fraction: share of the training file held out for validation (seeded).
        batch_size: examples per batch.
        seed: seeds the validation split and the per-epoch shuffle.
        num_workers: DataLoader workers; 0 (default) loads in the training process. Workers are
            started with ``spawn``: Numba's OpenMP layer and torch's thread pools are not
            fork-safe.
        download: download missing files through tonic (needs network access).
        input_format: ``"dense"`` (default) or ``"indices"``: batches hold the
            :class:`~sbnn.functional.sparse.SpikeIndices` of the binary spikes, built in the
            loader (:mod:`sbnn.data.spike_index`; needs ``binary=True``), for a network whose
            first layer is linear; it gathers from them below the crossover density
            (``docs/design.md §1.2``), else makes them dense.

    Shape:
        batches ``(x, y)``: x ``[T, B, ceil(700 / downsample)]`` float32 (or its ``SpikeIndices``),
        y ``[B]`` int64.

    Raises:
        ValueError: bad arguments (at construction); corrupt or truncated HDF5 files, empty
            samples, labels outside 0..19, and (:class:`sbnn.data.checks.CorruptEventsError`)
            spike times that are NaN, infinite, negative or unsorted, more times than units, units
            outside 0..699 (in :meth:`setup`, before anything is written; the message names the
            file, the sample and the field).
        sbnn.data.events.DataMissingError: files missing and not downloadable.
    """

    name = "SHD"
    num_classes = 20
    sensor_size = (700, 1, 1)
    squeeze_polarity = True
    start_at_zero = True

    def __init__(
        self,
        root: str | None = None,
        time_window: PositiveFloat | None = 10_000.0,
        n_time_bins: PositiveInt | None = None,
        duration: PositiveFloat | None = 1_000_000.0,
        downsample: PositiveInt = 1,
        binary: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        val_fraction: float = 0.1,
        batch_size: PositiveInt = 32,
        seed: NonNegativeInt = 42,
        num_workers: NonNegativeInt = 0,
        download: bool = True,
        input_format: Literal["dense", "indices"] = "dense",
    ) -> None:
        if n_time_bins is not None and time_window == 10_000.0 and duration == 1_000_000.0:
            # the defaults describe time-window framing; asking for bins switches both off
            time_window, duration = None, None
        super().__init__(
            root, time_window, n_time_bins, duration, downsample, binary, cache, cache_dir,
            val_fraction, batch_size, seed, num_workers, download, input_format=input_format,
        )
        self.save_hyperparameters()  # the data settings travel with the checkpoints

    def _tonic_class(self) -> type:
        from tonic.datasets import SHD

        return SHD

    @staticmethod
    def _filename(train: bool) -> str:
        return f"shd_{'train' if train else 'test'}.h5"

    def expected_files(self, train: bool) -> list[Path]:
        name = self._filename(train)
        return [self.location / f"{name}.zip", self.location / name]

    def how_to_get(self) -> str:
        return (
            "With network access tonic downloads them (download=True). By hand: get shd_train.h5.zip and "
            "shd_test.h5.zip from https://zenkelab.org/datasets/, put both archives in "
            f"{self.location}/ and unzip them there (tonic only checks that the .zip files exist, so an "
            "empty placeholder .zip next to an extracted .h5 also works)."
        )

    def _check_split(self, train: bool) -> None:
        import h5py

        path = self.location / self._filename(train)
        try:
            with h5py.File(path, "r") as f:
                absent = [k for k in _REQUIRED if k not in f]
                if absent:
                    raise ValueError(
                        f"{path} is not an SHD file: it lacks {absent}; expected datasets {list(_REQUIRED)}. "
                        "Replace it with the original shd_*.h5"
                    )
                units = f["spikes/units"][()]
                times = f["spikes/times"][()]
                n_times = len(times)
                labels = np.asarray(f["labels"][()])
        except OSError as error:
            raise ValueError(
                f"{path} cannot be read as HDF5 ({error}); the file is truncated or corrupt: delete it and "
                f"unzip {path.name}.zip again (or download it again)"
            ) from error
        if not (len(units) == n_times == len(labels)):
            raise ValueError(
                f"{path}: spikes/units ({len(units)}), spikes/times ({n_times}) and labels ({len(labels)}) "
                "differ in length; the file is corrupt, replace it"
            )
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if bad.size:
            raise ValueError(
                f"{path}: sample {int(bad[0])} has label {int(labels[bad[0]])}, outside the class range "
                f"0..{self.num_classes - 1} ({bad.size} such samples); the file is not SHD or is corrupt"
            )
        empty = [i for i, u in enumerate(units) if len(u) == 0]
        if empty:
            raise ValueError(
                f"{path}: sample {empty[0]} has no events ({len(empty)} empty samples); an empty recording "
                "cannot be framed: remove those samples from the file"
            )
        # NaN/inf/unsorted times, more times than units, units outside 0..699 (CorruptEventsError)
        for i, (t, u) in enumerate(zip(times, units)):
            check_spike_sample(t, u, self.sensor_size[0], where=f"{path}: sample {i}")

    def _tonic_dataset(self, train: bool) -> Any:
        from tonic.datasets import SHD

        # the files are checked to be in place, so tonic does not try to download
        return SHD(str(self.root), train=train)

    def _build(self, train: bool) -> Any:
        fixed_length = self.framer.n_time_bins is not None or self.framer.duration is not None
        if not (self.cache and fixed_length):
            return super()._build(train)
        from sbnn.data.shd_dense import DenseSHD

        base = self.cache_dir if self.cache_dir is not None else self.root / "sbnn_cache"
        return DenseSHD(self.location / self._filename(train), self.framer, self.binary, base / "SHD-dense")

    def _describe(self, dataset: Any, train: bool) -> SampleName:
        return SampleName(f"SHD sample {{index}} of {self.location / self._filename(train)}")

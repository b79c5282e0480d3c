"""Shared pieces of the built-in DataModules: argument checks, time-major collation, loaders.

Datasets store samples sample-major (``[T, N]`` per item, so a ``TensorDataset`` can index them);
the collate function turns a list of items into the time-major batches the whole library uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sbnn.data._sampler import EpochSeededSampler

__all__ = ["time_major_collate", "SpikeDataModule"]


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int ``>= minimum``, else raise a ValueError naming ``name``."""
    # bool is an int subclass; ``n_steps=True`` is a config mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an int >= {minimum}, got {value!r}; "
            f"pass an integer of at least {minimum}."
        )
    return value


def check_float(
    name: str, value: object, *, minimum: float = 0.0, inclusive: bool = False
) -> float:
    """Return ``float(value)`` if finite and above ``minimum`` (or equal to it, if inclusive)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = value == value and value != float("inf")  # finite (rejects NaN and +inf)
        ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = ">=" if inclusive else ">"
        raise ValueError(
            f"{name} must be a finite number {bound} {minimum}, got {value!r}; "
            f"pass a value {bound} {minimum}."
        )
    return float(value)  # type: ignore[arg-type]


def time_major_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack sample-major ``(x, y)`` items into one time-major batch.

    Args:
        batch: items ``(x, y)`` with ``x`` of shape ``[T, N]`` and ``y`` a scalar label.

    Returns:
        ``(x, y)``: inputs stacked along dim 1 and labels stacked along dim 0.

    Shape:
        - item x: ``[T, N]`` (any trailing feature shape ``[T, ...]`` works)
        - output x: ``[T, B, N]``, y: ``[B]``

    Example:
        >>> import torch
        >>> items = [(torch.zeros(5, 3), torch.tensor(1)), (torch.ones(5, 3), torch.tensor(0))]
        >>> x, y = time_major_collate(items)
        >>> tuple(x.shape), y.tolist()
        ((5, 2, 3), [1, 0])
    """
    if len(batch) == 0:
        raise ValueError("batch must hold at least one (x, y) item, got an empty sequence.")
    xs, ys = zip(*batch)
    # dim=1 puts time first, as snnTorch and every sbnn time loop expect.
    return torch.stack(xs, dim=1), torch.stack([torch.as_tensor(y) for y in ys])


class SplitLoaders:
    """The four Lightning loaders from one ``_loader(split)`` (``"train"``, ``"val"``, ``"test"``).

    Training batches are shuffled by seed and epoch; the others are not. ``sbnn predict`` reads
    the test split.
    """

    def _loader(self, split: str) -> DataLoader:  # pragma: no cover - interface
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        """Shuffled (by seed and epoch) time-major loader over the training split."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Unshuffled time-major loader over the validation split."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Unshuffled time-major loader over the test split."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """``sbnn predict`` reads the test split (unshuffled, as :meth:`test_dataloader`)."""
        return self._loader("test")


class SpikeDataModule(SplitLoaders, L.LightningDataModule):
    """Base for the in-memory spike datasets: three splits, time-major loaders, shared attributes.

    Subclasses set ``num_classes``, ``input_size`` and ``n_steps`` in ``__init__`` and fill
    ``train_set``/``val_set``/``test_set`` in ``setup``.

    ``input_format="indices"`` hands out the :class:`~sbnn.functional.sparse.SpikeIndices` of
    each batch instead of the dense spikes, built in the loader (:mod:`sbnn.data.spike_index`).

    Shape:
        batches ``(x, y)``: x ``[T, B, input_size]`` float32 spikes in {0,1} (or their
        ``SpikeIndices``), y ``[B]`` int64.
    """

    num_classes: int
    input_size: int
    n_steps: int

    def __init__(self, batch_size: int, seed: int, num_workers: int, input_format: str = "dense") -> None:
        from sbnn.data.spike_index import check_input_format

        super().__init__()
        self.batch_size = check_int("batch_size", batch_size)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.input_format = check_input_format(type(self).__name__, input_format)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def prepare_data(self) -> None:
        """Nothing to download: the data is generated or ships with a dependency."""

    def _collate(self):
        from sbnn.data.spike_index import IndexCollate

        return IndexCollate(time_major_collate) if self.input_format == "indices" else time_major_collate

    def _loader(self, split: str) -> DataLoader:
        dataset = getattr(self, f"{split}_set")
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}.{split}_dataloader() called before setup(); "
                "call dm.setup() first (the Trainer does this for you)."
            )
        # The order depends only on (seed, epoch): reproducible without global seeding, and a run
        # resumed from a checkpoint sees the same batches as the uninterrupted one.
        sampler = EpochSeededSampler(dataset, self.seed) if split == "train" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # the iterator draws its workers' base seed from this generator, not from torch's
            # global RNG, whose stream then belongs to the model's noise alone
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

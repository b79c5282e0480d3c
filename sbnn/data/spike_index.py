"""Batches of spike indices: a collate step that hands a network the active inputs of each batch.

A data module built with ``input_format="indices"`` collates every batch as usual (time-major
``[T, B, N]``) and then replaces the dense spikes by their
:class:`~sbnn.functional.sparse.SpikeIndices` (rows ``t·B + b`` of the flattened ``[T·B, N]``
view, the layout the first layer of a time-batched network sees). The indices are built once per
batch, in the loader (in its worker processes when ``num_workers > 0``), so that the network's
first linear layer gathers the weight rows of the active inputs without a pass over the dense
tensor in the training step (:mod:`sbnn.models.index_input`).

Only binary inputs have indices: a batch holding values other than 0 and 1 is refused with an
error, before the network sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbnn.data._common import time_major_collate
from sbnn.functional.sparse import SpikeIndices, binary_indices

__all__ = ["INPUT_FORMATS", "batch_spike_indices", "IndexCollate", "spike_indices_collate", "check_input_format"]

#: the batch layouts a data module can hand out: dense ``[T, B, N]`` or :class:`SpikeIndices`
INPUT_FORMATS = ("dense", "indices")


def check_input_format(owner: str, input_format: Any) -> str:
    """Return ``input_format`` if it is one of :data:`INPUT_FORMATS`, else raise a ValueError naming ``owner``."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"{owner}: input_format must be one of {list(INPUT_FORMATS)}, got {input_format!r}; 'indices' hands the "
            "network the active inputs of each binary batch, 'dense' the [T, B, N] tensor"
        )
    return input_format


def batch_spike_indices(x: Tensor) -> SpikeIndices:
    """The :class:`SpikeIndices` of a binary time-major batch ``x`` ``[T, B, N]``.

    Equal to :func:`sbnn.functional.sparse.spike_indices` of ``x`` (rows ``t·B + b``), with the
    check that the nonzero values are all 1 (:func:`~sbnn.functional.sparse.binary_indices`).

    Raises:
        ValueError: ``x`` is not a 3-D floating tensor, or holds values other than 0 and 1.
    """
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"input_format='indices' needs time-major [T, B, N] float batches, got a {got}")
    idx = binary_indices(x)
    if idx is None:
        raise ValueError(
            "input_format='indices' needs binary spikes (values 0 and 1), but the batch holds other values (spike "
            "counts or real values); clamp the data to spikes (e.g. binary=True) or use input_format='dense'"
        )
    return idx


@dataclass(frozen=True)
class IndexCollate:
    """A collate function: ``collate(batch)`` gives ``(x [T, B, N], y)``; this returns ``(indices of x, y)``.

    A frozen dataclass, so that it pickles into spawned loader workers.

    Args:
        collate: the dense time-major collate (e.g. :func:`~sbnn.data.time_major_collate` or
            tonic's ``PadTensors(batch_first=False)``).
    """

    collate: Callable[[Sequence[Any]], tuple[Tensor, Tensor]] = time_major_collate

    def __call__(self, batch: Sequence[Any]) -> tuple[SpikeIndices, Tensor]:
        x, y = self.collate(batch)
        return batch_spike_indices(x), y


def spike_indices_collate(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[SpikeIndices, Tensor]:
    """:func:`~sbnn.data.time_major_collate`, then the :class:`SpikeIndices` of the binary inputs.

    Args:
        batch: items ``(x, y)`` with ``x`` ``[T, N]`` in {0, 1} and ``y`` a scalar label.

    Returns:
        ``(indices, y)``: the indices of the time-major ``[T, B, N]`` batch, labels ``[B]``.

    Example:
        >>> import torch
        >>> items = [(torch.tensor([[0., 1.], [0., 0.]]), torch.tensor(1)), (torch.tensor([[1., 0.], [0., 1.]]), torch.tensor(0))]
        >>> idx, y = spike_indices_collate(items)
        >>> idx.shape, idx.rows.tolist(), idx.cols.tolist(), idx.offsets.tolist()
        ((2, 2, 2), [0, 1, 3], [1, 0, 1], [0, 1, 2, 2])
    """
    return IndexCollate(time_major_collate)(batch)

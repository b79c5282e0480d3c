r"""Spike inputs given as indices: the checks a model runs on a :class:`~sbnn.functional.sparse.SpikeIndices`.

A binary time-major input ``x ∈ {0, 1}^{T×B×N}`` can reach a model as the indices of its ones
(:class:`~sbnn.functional.sparse.SpikeIndices`, row ``t·B + b`` of the flattened ``[T·B, N]``
view), built once per batch where the data are sparse at the source (the data loaders'
``input_format="indices"``, :mod:`sbnn.data.spike_index`). A model whose first layer is linear
hands them to that layer, which sums the weight-table rows of the active inputs for both LRT
moments (:func:`sbnn.functional.sparse.gather_moments`) instead of finding them in the dense
tensor on every step; everything after the first layer is unchanged.

The first layer gathers only where that pays (:func:`gathers_from_indices`): above the measured
crossover density the indices are made dense and the layer runs its dense matmuls.

The checks here cost ``O(1)``, plus one ``O(nnz)`` range check of the input indices on the CPU
(on an accelerator it would need a host synchronisation); they never build the dense tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import validation_enabled
from ..functional.sparse import SpikeIndices, density_limit

__all__ = ["check_spike_indices", "dense_input", "indices_to", "gathers_from_indices"]


def check_spike_indices(x: SpikeIndices, name: str, in_features: int) -> None:
    """Raise ``ValueError`` unless ``x`` describes a time-major binary input ``[T, B, in_features]``.

    Args:
        x: the indices (:func:`sbnn.functional.sparse.spike_indices` of the dense input).
        name: who receives it, used in messages.
        in_features: the model's input channels ``N``.

    Raises:
        ValueError: for a shape other than ``[T, B, in_features]``, index tensors that are not
            1-D int64 of matching lengths (``offsets``: one entry per row ``T·B``), or, on the
            CPU, input indices outside ``[0, in_features)``.
    """
    shape = tuple(x.shape)
    expected = f"[T, B, {in_features}] (time-major; rows of the flattened [T·B, {in_features}] view ordered t·B + b)"
    if len(shape) != 3 or any(not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"{name}: SpikeIndices of shape {shape} given; expected the shape {expected}")
    if shape[-1] != in_features:
        raise ValueError(
            f"{name}: SpikeIndices of shape {shape} describe {shape[-1]} input channels; expected {expected}: "
            "check the model's in_features against the data"
        )
    tensors = {"rows": x.rows, "cols": x.cols, "offsets": x.offsets}
    for field, t in tensors.items():
        if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype != torch.int64:
            got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name}: SpikeIndices.{field} must be a 1-D int64 tensor, got {got}; build the indices with "
                "sbnn.functional.sparse.spike_indices(x)"
            )
    if x.rows.numel() != x.cols.numel():
        raise ValueError(f"{name}: SpikeIndices has {x.rows.numel()} rows but {x.cols.numel()} cols; they must pair up")
    if x.offsets.numel() != shape[0] * shape[1]:
        raise ValueError(
            f"{name}: SpikeIndices.offsets has {x.offsets.numel()} entries; a shape {shape} has T·B = "
            f"{shape[0] * shape[1]} rows, one offset each"
        )
    if len({t.device for t in tensors.values()}) != 1:
        raise ValueError(f"{name}: the SpikeIndices tensors lie on different devices; move them together")
    if validation_enabled() and x.cols.device.type == "cpu" and x.cols.numel() and not torch.compiler.is_compiling():
        low, high = torch.aminmax(x.cols)
        if int(low) < 0 or int(high) >= in_features:
            raise ValueError(
                f"{name}: SpikeIndices.cols holds input indices in [{int(low)}, {int(high)}], outside [0, {in_features}); "
                "the indices do not belong to this shape"
            )


def dense_input(x: SpikeIndices, like: Tensor) -> Tensor:
    """The binary tensor ``[T, B, N]`` that ``x`` describes, in ``like``'s floating dtype (for once-only uses)."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return x.to_dense(dtype)


def indices_to(x: SpikeIndices, device: torch.device | str) -> SpikeIndices:
    """``x`` with its index tensors on ``device`` (the same object when they are there already)."""
    device = torch.device(device)
    if x.cols.device == device:
        return x
    return SpikeIndices(x.rows.to(device), x.cols.to(device), x.offsets.to(device), tuple(x.shape))


def gathers_from_indices(layer: nn.Module | None, x: SpikeIndices) -> bool:
    """Whether ``layer`` (a model's first layer) should gather from ``x`` rather than multiply the dense input.

    The layer's ``gather`` choice (``"always"``, ``"never"``; :class:`sbnn.layers.gather_path`)
    decides when set; under ``"auto"`` (and for layers without the attribute) the density of
    ``x`` decides: at most the crossover measured for index input and the layer's table size
    (:func:`sbnn.functional.sparse.density_limit` with ``indices=True``; higher than a dense
    input's, which must first find its active inputs), on the CPU and outside ``torch.compile``
    only. Reads ``O(1)`` values of ``x``.
    """
    if layer is None or not callable(getattr(layer, "moments", None)):
        return False
    choice = getattr(layer, "gather", "auto")
    if choice in ("always", "never"):
        return choice == "always"
    if x.cols.device.type != "cpu" or torch.compiler.is_compiling():
        # the crossover was measured on the CPU; compiled code rebuilds the dense tensor, and its
        # first layer's operator chooses the path by the density (BernoulliLinear.moments)
        return False
    rows = x.offsets.numel()
    table_bytes = layer.table_bytes() if callable(getattr(layer, "table_bytes", None)) else 0
    limit = density_limit(rows, table_bytes, indices=True, max_density=getattr(layer, "gather_max_density", None))
    return rows > 0 and x.density <= limit

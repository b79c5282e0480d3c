"""The event-driven LRT moments as torch operators, for compiled code (``torch.ops.sbnn.spike_moments``).

Private: :meth:`sbnn.layers.BernoulliLinear.moments` calls :func:`compiled_spike_moments` under
``torch.compile`` on CPU spike inputs. Eager code chooses the gather or the dense matmuls in
Python, from the input's density (:func:`sbnn.functional.sparse.use_gather`); traced code cannot:
the choice, the indices and their number depend on the data, and a data-dependent branch or
shape breaks the graph. Here the choice is made inside one opaque operator with fixed output
shapes: it hands the indices it found to its backward in a buffer sized for the highest
density that takes the gather (an output the size of the indices would have a data-dependent
shape, which Dynamo traces only with ``capture_dynamic_output_shape_ops``), and the backward
scatters the weight-table gradient from them. The results equal the eager path's, which runs
the same kernels.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from ._operators import operator
from .sparse import (
    SpikeIndices,
    _gather_moments_rows,
    _input_grad,
    _table_grad,
    binary_indices,
    density_limit,
    estimate_density,
)

__all__ = ["compiled_spike_moments"]


def _capacity(x: Tensor, table: Tensor, max_density: float | None) -> int:
    """Room for the active inputs that :func:`spike_moments` hands to its backward: the crossover
    density at one thread (the highest: more threads lower it) times the input's size."""
    limit = density_limit(x.shape[0], table.numel() * table.element_size(), max_density=max_density, threads=1)
    return max(1, math.ceil(min(limit, 1.0) * x.numel()))


@operator("spike_moments", device_types="cpu")
def spike_moments(
    x: Tensor, table: Tensor, bias: Optional[Tensor], max_density: Optional[float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x A_μ + b, x A_v, cols, offsets)`` of spikes ``x`` ``[N, in]`` and a joint table ``[in, 2H]``.

    The moments ``[N, H]`` by the gather when the density of ``x`` is at most
    :func:`~sbnn.functional.sparse.density_limit` (for the table's size and torch's thread count
    when the operator runs; ``max_density`` overrides the measured crossover), its nonzeros are
    all 1 and they fit :func:`_capacity`; otherwise by two dense matmuls (``x² = x``, the
    caller's declaration). For the backward: the active inputs' columns in the first ``nnz``
    entries of ``cols`` ``[capacity]`` and each row's start in ``offsets`` ``[N + 1]``, whose last
    entry is ``nnz``, or −1 where the matmuls ran.
    """
    with torch.no_grad():
        n_rows = x.shape[0]
        cols, offsets = x.new_empty(_capacity(x, table, max_density), dtype=torch.int64), x.new_empty(n_rows + 1, dtype=torch.int64)
        limit = density_limit(n_rows, table.numel() * table.element_size(), max_density=max_density)
        idx = binary_indices(x) if estimate_density(x) <= limit else None
        if idx is not None and idx.cols.numel() <= cols.numel():
            cols[: idx.cols.numel()] = idx.cols
            offsets[:n_rows] = idx.offsets
            offsets[n_rows] = idx.cols.numel()
            return (*_gather_moments_rows(table, bias, idx), cols, offsets)
        width = table.shape[1] // 2
        mean, var = torch.mm(x, table[:, :width]), torch.mm(x, table[:, width:])
        offsets[n_rows] = -1
        return (mean if bias is None else mean.add_(bias)), var, cols, offsets


@spike_moments.register_fake
def _(x, table, bias, max_density):
    width = table.shape[1] // 2
    cols = x.new_empty(_capacity(x, table, max_density), dtype=torch.int64)
    return x.new_empty(x.shape[0], width), x.new_empty(x.shape[0], width), cols, x.new_empty(x.shape[0] + 1, dtype=torch.int64)


@operator("spike_moments_table_grad", device_types="cpu")
def spike_moments_table_grad(x: Tensor, cols: Tensor, offsets: Tensor, g_mean: Tensor, g_var: Tensor) -> Tensor:
    """``∂L/∂A`` ``[in, 2H]`` of :func:`spike_moments` on the path it took: the scatter of
    ``[g_μ | g_v]`` over the active inputs it found, or ``xᵀ[g_μ | g_v]``."""
    with torch.no_grad():
        n_rows, nnz = x.shape[0], int(offsets[-1])
        if nnz < 0:
            return torch.cat([x.t() @ g_mean, x.t() @ g_var], dim=1)
        rows = torch.repeat_interleave(torch.arange(n_rows), offsets.diff())
        idx = SpikeIndices(rows, cols[:nnz], offsets[:n_rows], tuple(x.shape))
        return _table_grad(idx, g_mean.contiguous(), x.shape[1], g_var.contiguous())


@spike_moments_table_grad.register_fake
def _(x, cols, offsets, g_mean, g_var):
    return x.new_empty(x.shape[1], 2 * g_mean.shape[1])


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, table, _, _ = inputs
    _, _, cols, offsets = output
    ctx.save_for_backward(x, table, cols, offsets)


def _backward(ctx: Any, g_mean: Tensor, g_var: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
    x, table, cols, offsets = ctx.saved_tensors
    grad_x = grad_table = grad_bias = None
    if ctx.needs_input_grad[1]:
        grad_table = spike_moments_table_grad(x, cols, offsets, g_mean, g_var)
    if ctx.needs_input_grad[2]:
        grad_bias = g_mean.sum(0)
    if ctx.needs_input_grad[0]:
        grad_x = _input_grad(table, x, g_mean, g_var, tuple(x.shape))
    return grad_x, grad_table, grad_bias, None


spike_moments.register_autograd(_backward, setup_context=_setup_context)


def compiled_spike_moments(
    x: Tensor, table: Tensor, bias: Tensor | None, max_density: float | None = None
) -> tuple[Tensor, Tensor]:
    """Both LRT moments ``(x A_μ + b, x A_v)`` ``[..., H]`` of spikes ``x`` ``[..., in]`` inside compiled code.

    The gather where the density is at most :func:`~sbnn.functional.sparse.density_limit`
    (``max_density``: an override of the measured crossover), the dense matmuls elsewhere; differentiable
    in ``x`` (the dense input gradient, ``x·x`` in the variance), ``table`` and ``bias``.
    """
    flat = x.reshape(-1, x.shape[-1])
    mean, var, _, _ = spike_moments(flat, table.contiguous(), bias, None if max_density is None else float(max_density))
    out_shape = (*x.shape[:-1], table.shape[1] // 2)
    return mean.reshape(out_shape), var.reshape(out_shape)

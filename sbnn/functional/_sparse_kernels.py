"""Numba CPU kernels of the event-driven products (:mod:`sbnn.functional.sparse`).

* :func:`gather_rows_split`: the gather-sum ``out_n = Σ_{i: x_{ni}=1} A_i`` of a joint table
  ``A = [A_a | A_b]`` written straight into two C-contiguous outputs (the LRT mean and variance),
  with an optional bias as the first output's starting value. ``embedding_bag`` returns one
  ``[N, K_a + K_b]`` block whose halves are strided views: the neuron kernels then copied each
  half, and autograd joined the two gradients with a ``cat`` (together ≈ 6 ms of a 35 ms step,
  ``[100, 32, 256]``, one thread).
* :func:`scatter_add_rows_split`: its table gradient ``∂L/∂A_i = Σ_{n: x_{ni}=1} [g_a | g_b]_n``,
  a scatter-add of the two gradients' rows onto the table rows of the active inputs. Done in the
  order of the row-major indices, it reads the gradients once, sequentially, and adds into the
  (small, cache-resident) table gradient; the torch alternative (sort the indices by input, then
  a transposed ``embedding_bag``) paid for the sort and read ``g`` in random order: 0.44× its
  time measured for ``T·B = 3200`` rows, 700 → 512 columns, 3 % input, 1 thread
  (``benchmarks/README.md``).
* :func:`binary_spike_indices`: the active inputs of a dense ``[N, in]`` tensor as CSR (columns
  and per-row offsets), and whether every nonzero is exactly 1, in two passes over it.

Private: :mod:`sbnn.functional.sparse` decides when they apply (CPU tensors of a floating dtype
numba compiles, outside ``torch.compile``) and validates shapes and indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["gather_rows_split", "scatter_add_rows_split", "binary_spike_indices"]


@njit(cache=True, nogil=True)
def gather_rows_split(
    cols: np.ndarray, offsets: np.ndarray, table: np.ndarray, bias: np.ndarray, out_a: np.ndarray, out_b: np.ndarray
) -> None:
    """``[out_a | out_b][n] = [bias | 0] + Σ_{j in bag n} table[cols[j]]``.

    Four table rows are summed in registers before they are added to the output row: a quarter
    of the output's loads and stores (measured 0.6–0.9× ``embedding_bag``'s time, 700 → 512
    columns at 3–10 %, one thread), in a summation order that differs from one row at a time by
    float rounding.

    Args:
        cols: ``[nnz]`` int64 table row per event, bag after bag.
        offsets: ``[N]`` int64 start of each bag in ``cols`` (the last bag runs to ``nnz``).
        table: ``[in, K_a + K_b]`` C-contiguous.
        bias: ``[K_a]`` or ``[0]`` (no bias), same dtype as ``table``.
        out_a: ``[N, K_a]`` C-contiguous, overwritten.
        out_b: ``[N, K_b]`` C-contiguous, overwritten (``K_b`` may be 0).
    """
    n_rows, width_a = out_a.shape
    width_b = out_b.shape[1]
    nnz = cols.shape[0]
    with_bias = bias.shape[0] > 0
    for n in range(n_rows):
        start = offsets[n]
        end = offsets[n + 1] if n + 1 < n_rows else nnz
        acc_a, acc_b = out_a[n], out_b[n]
        for k in range(width_a):
            acc_a[k] = bias[k] if with_bias else 0
        for k in range(width_b):
            acc_b[k] = 0
        j = start
        while j + 3 < end:
            r1, r2, r3, r4 = table[cols[j]], table[cols[j + 1]], table[cols[j + 2]], table[cols[j + 3]]
            for k in range(width_a):  # contiguous rows: the inner loops vectorise
                acc_a[k] += (r1[k] + r2[k]) + (r3[k] + r4[k])
            s1, s2, s3, s4 = r1[width_a:], r2[width_a:], r3[width_a:], r4[width_a:]
            for k in range(width_b):
                acc_b[k] += (s1[k] + s2[k]) + (s3[k] + s4[k])
            j += 4
        while j < end:
            r1 = table[cols[j]]
            for k in range(width_a):
                acc_a[k] += r1[k]
            s1 = r1[width_a:]
            for k in range(width_b):
                acc_b[k] += s1[k]
            j += 1


@njit(cache=True, nogil=True)
def scatter_add_rows_split(rows: np.ndarray, cols: np.ndarray, grad_a: np.ndarray, grad_b: np.ndarray, out: np.ndarray) -> None:
    """``out[cols[j]] += [grad_a | grad_b][rows[j]]`` for every ``j``, in place, in index order.

    Args:
        rows: ``[nnz]`` int64 gradient row per event.
        cols: ``[nnz]`` int64 row of ``out`` per event.
        grad_a: ``[N, K_a]`` C-contiguous.
        grad_b: ``[N, K_b]`` C-contiguous (``K_b`` may be 0).
        out: ``[in, K_a + K_b]`` C-contiguous, same dtype; accumulated into.
    """
    width_a, width_b = grad_a.shape[1], grad_b.shape[1]
    for j in range(rows.shape[0]):
        src_a = grad_a[rows[j]]
        src_b = grad_b[rows[j]]
        dst = out[cols[j]]
        for k in range(width_a):
            dst[k] += src_a[k]
        for k in range(width_b):
            dst[width_a + k] += src_b[k]


@njit(cache=True, nogil=True)
def binary_spike_indices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """``(rows, cols, offsets, binary)`` of the nonzero entries of ``x`` ``[N, in]``, row-major.

    ``binary`` tells whether every nonzero entry is exactly 1. The first pass counts each row's
    nonzeros (a branch-free, vectorised sum), the second writes their positions.
    """
    n_rows, width = x.shape
    offsets = np.empty(n_rows, np.int64)
    nnz = 0
    for n in range(n_rows):
        offsets[n] = nnz
        count = 0
        row = x[n]
        for i in range(width):
            count += row[i] != 0
        nnz += count
    rows = np.empty(nnz, np.int64)
    cols = np.empty(nnz, np.int64)
    binary = True
    j = 0
    for n in range(n_rows):
        row = x[n]
        for i in range(width):
            value = row[i]
            if value != 0:
                binary &= value == 1
                rows[j] = n
                cols[j] = i
                j += 1
    return rows, cols, offsets, binary

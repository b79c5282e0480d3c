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

The gather and the scan have ``*_parallel`` twins that split the rows into ranges, one per
thread, with the same numbers (:func:`sbnn.functional._kernel_ops.parallel_chunks` decides);
the scatter stays serial (split by columns it measured slower: every thread re-reads all events).

Private: :mod:`sbnn.functional.sparse` decides when they apply (CPU tensors of a floating dtype
numba compiles, outside ``torch.compile``) and validates shapes and indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cpu_kernels import _chunk

__all__ = [
    "gather_rows_split",
    "gather_rows_split_parallel",
    "scatter_add_rows_split",
    "binary_spike_indices",
    "binary_spike_indices_parallel",
]


@njit(cache=True, nogil=True)
def gather_rows_split(
    cols: np.ndarray, offsets: np.ndarray, table: np.ndarray, bias: np.ndarray, out_a: np.ndarray, out_b: np.ndarray
) -> None:
    """``[out_a | out_b][n] = [bias | 0] + Σ_{j in bag n} table[cols[j]]``.

    Four table rows are summed in registers before they are added to the output row: a quarter
    of the output's loads and stores (measured 0.76–0.89× ``embedding_bag``'s time, 700 → 512
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
    _gather_range(0, out_a.shape[0], cols, offsets, table, bias, out_a, out_b)


@njit(cache=True, nogil=True, parallel=True)
def gather_rows_split_parallel(
    cols: np.ndarray, offsets: np.ndarray, table: np.ndarray, bias: np.ndarray, out_a: np.ndarray, out_b: np.ndarray,
    n_chunks: int,
) -> None:
    """:func:`gather_rows_split` with the output rows split into ``n_chunks`` ranges run in parallel."""
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, out_a.shape[0], 1)
        _gather_range(lo, hi, cols, offsets, table, bias, out_a, out_b)


@njit(cache=True, nogil=True)
def _gather_range(lo, hi, cols, offsets, table, bias, out_a, out_b):
    """:func:`gather_rows_split` on the output rows ``[lo, hi)``."""
    n_rows, width_a = out_a.shape
    width_b = out_b.shape[1]
    nnz = cols.shape[0]
    with_bias = bias.shape[0] > 0
    for n in range(lo, hi):
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
    n_rows = x.shape[0]
    counts = np.empty(n_rows, np.int64)
    _count_rows(0, n_rows, x, counts)
    offsets, rows, cols = _allocate(counts)
    return rows, cols, offsets, _fill_rows(0, n_rows, x, offsets, rows, cols)


@njit(cache=True, nogil=True, parallel=True)
def binary_spike_indices_parallel(x: np.ndarray, n_chunks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """:func:`binary_spike_indices` with both passes split into ``n_chunks`` row ranges run in parallel.

    A separate kernel: the serial one never enters a parallel region (it runs in forked data-loader
    workers, where a thread pool inherited from the parent is unsafe).
    """
    n_rows = x.shape[0]
    counts = np.empty(n_rows, np.int64)
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, n_rows, 1)
        _count_rows(lo, hi, x, counts)
    offsets, rows, cols = _allocate(counts)
    binary = np.empty(n_chunks, np.bool_)
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, n_rows, 1)
        binary[c] = _fill_rows(lo, hi, x, offsets, rows, cols)
    return rows, cols, offsets, bool(binary.all())


@njit(cache=True, nogil=True)
def _allocate(counts):
    """``(offsets, rows, cols)``: each row's start from the counts, and the index arrays to fill."""
    offsets = np.empty(counts.shape[0], np.int64)
    nnz = 0
    for n in range(counts.shape[0]):
        offsets[n] = nnz
        nnz += counts[n]
    return offsets, np.empty(nnz, np.int64), np.empty(nnz, np.int64)


@njit(cache=True, nogil=True)
def _count_rows(lo, hi, x, counts):
    for n in range(lo, hi):
        count = 0
        row = x[n]
        for i in range(row.shape[0]):
            count += row[i] != 0
        counts[n] = count


@njit(cache=True, nogil=True)
def _fill_rows(lo, hi, x, offsets, rows, cols):
    """The positions of the nonzeros of rows ``[lo, hi)`` from their offsets; whether all are 1."""
    binary = True
    for n in range(lo, hi):
        row = x[n]
        j = offsets[n]
        for i in range(row.shape[0]):
            value = row[i]
            if value != 0:
                binary &= value == 1
                rows[j] = n
                cols[j] = i
                j += 1
    return binary

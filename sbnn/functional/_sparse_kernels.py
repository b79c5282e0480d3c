"""Numba CPU kernel of the event-driven weight gradient (:mod:`sbnn.functional.sparse`).

The gather-sum's weight gradient ``∂L/∂A_i = Σ_{n: x_{ni}=1} g_n`` is a scatter-add of the
output-gradient rows ``g_n`` onto the table rows of the active inputs. Done in the order of the
row-major indices, it reads ``g`` once, sequentially, and adds into the (small, cache-resident)
table gradient; the torch alternative (sort the indices by input, then a transposed
``embedding_bag``) paid for the sort and read ``g`` in random order: 0.44× its time measured
for ``T·B = 3200`` rows, 700 → 512 columns, 3 % input, 1 thread (``benchmarks/README.md``).

Private: :func:`sbnn.functional.sparse.gather_sum` decides when it applies (CPU tensors of a
floating dtype numba compiles, outside ``torch.compile``) and validates the indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["scatter_add_rows"]


@njit(cache=True, nogil=True)
def scatter_add_rows(rows: np.ndarray, cols: np.ndarray, grad: np.ndarray, out: np.ndarray) -> None:
    """``out[cols[j]] += grad[rows[j]]`` for every ``j``, in place, in index order.

    Args:
        rows: ``[nnz]`` int64 row of ``grad`` per event.
        cols: ``[nnz]`` int64 row of ``out`` per event.
        grad: ``[N, K]`` C-contiguous.
        out: ``[in, K]`` C-contiguous, same dtype as ``grad``; accumulated into.
    """
    width = grad.shape[1]
    for j in range(rows.shape[0]):
        src = grad[rows[j]]
        dst = out[cols[j]]
        for k in range(width):  # contiguous rows: the inner loop vectorises
            dst[k] += src[k]

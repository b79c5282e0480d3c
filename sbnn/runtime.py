"""Process-level CPU settings that measurably speed up sbnn training. Each is opt-in.

The recipes' CLI turns on flush-to-zero for denormals for the run and restores the previous
setting afterwards (see :func:`sbnn.cli.run_cli`).
:func:`keep_freed_memory` changes the C allocator of the whole process, so importing or calling
the library never does it: a host application (a notebook, a server) keeps its own allocator. The
``sbnn`` command, which owns its process, turns it on by default (``--keep_freed_memory false``
turns it off): there a training step reaches the same heap peak every step, so keeping the freed
memory costs nothing the run does not already hold at its peak, and removes thousands of minor
page faults per step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable

import torch

__all__ = ["compile_training", "keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc to keep freed memory in the heap: no ``mmap`` for big blocks, no trimming.

    With glibc's defaults, a training step that frees its large ``[T, B, H]`` temporaries hands
    the pages back to the OS, and the next step faults them in again, zero-filled by the kernel.
    On the SHD-sized step of ``benchmarks/step_time.py`` (700 → 256 → 20, T = 100, batch 32, two
    threads) sbnn took 52 ms with ~11 000 minor page faults per step, and 38 ms with none after
    this call (1.40× → 1.08× the time-batched snnTorch step, measured in one process). The cost is
    a process that keeps its peak heap. The environment variables ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_``, or jemalloc/tcmalloc via ``LD_PRELOAD``, do the same from outside.

    Args:
        threshold_bytes: both thresholds (default 1 GiB).

    Returns:
        ``True`` if glibc accepted both settings; ``False`` where there is no glibc ``mallopt``
        (macOS, Windows, musl), in which case nothing changed.
    """
    if not isinstance(threshold_bytes, int) or threshold_bytes < 1:
        raise ValueError(f"threshold_bytes must be a positive integer, got {threshold_bytes!r}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1 and mallopt(_M_TRIM_THRESHOLD, threshold_bytes) == 1


def compile_training(fn: Callable) -> Callable:
    """``torch.compile(fn)`` for a training step's forward pass and loss, drawing noise with torch's generator.

    Inductor replaces ``torch.randn`` on the CPU by a counter-based generator in its generated
    code, which took longer than the whole eager sbnn step (a compiled step 2.1–3.2× eager,
    measured); ``fallback_random`` keeps torch's own draws, so a compiled step also samples the
    noise an eager one would from the same seed. Used by
    ``SpikingClassificationTask(compile=True)`` and ``benchmarks/step_time.py --compile``.
    """
    return torch.compile(fn, options={"fallback_random": True})

"""Registration of sbnn's time loops as torch operators (``torch.ops.sbnn.*``).

``torch.compile`` unrolls a Python time loop (compile time grows with ``T``) and cannot trace into
Numba. A loop registered with ``torch.library.custom_op`` and a shape-only "fake" implementation
is one opaque node of the compiled graph: the compiler fuses the elementwise work around it and
the loop runs as written. On torch < 2.4 (no ``custom_op``) :func:`operator` returns the function
itself, and its callers compile their torch loops instead.
"""

from typing import Callable, Optional, Sequence

import torch

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")


def operator(name: str, device_types: Optional[Sequence[str]] = None) -> Callable[[Callable], Callable]:
    """``torch.library.custom_op("sbnn::<name>", mutates_args=())``, or the function itself on old torch.

    The function must not modify its inputs and must return new tensors; register its fake
    implementation with ``@fn.register_fake`` (a no-op on old torch).
    """

    def wrap(fn: Callable) -> Callable:
        if not HAS_CUSTOM_OP:
            fn.register_fake = lambda fake: fake  # type: ignore[attr-defined]
            return fn
        return torch.library.custom_op(f"sbnn::{name}", mutates_args=(), device_types=device_types)(fn)

    return wrap

"""Registration of sbnn's time loops as torch operators (``torch.ops.sbnn.*``).

``torch.compile`` unrolls a Python time loop (compile time grows with ``T``) and cannot trace into
Numba. A loop registered with ``torch.library.custom_op`` and a shape-only "fake" implementation
is one opaque node of the compiled graph: the compiler fuses the elementwise work around it and
the loop runs as written. On torch < 2.4 (no ``custom_op``) :func:`operator` returns the function
itself, and its callers compile their torch loops instead.
"""

import functools
from typing import Callable, Optional, Sequence

import torch

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")


def operator(name: str, device_types: Optional[Sequence[str]] = None) -> Callable[[Callable], Callable]:
    """Register ``fn`` as ``torch.ops.sbnn.<name>`` (``custom_op``, ``mutates_args=()``) for ``torch.compile``.

    The returned callable runs the operator while Dynamo traces and ``fn`` itself otherwise: the
    same computation, without the dispatcher in eager mode (whose first call of a custom operator
    imports ``torch._dynamo``, about 2 s per process, measured). ``fn`` must not modify its inputs
    and must return new tensors; register its fake implementation with ``@fn.register_fake``
    (a no-op on old torch, where the function is returned as it is) and, for an operator that
    compiled code differentiates, its backward with ``fn.register_autograd`` (the eager call
    does not use it).
    """

    def wrap(fn: Callable) -> Callable:
        if not HAS_CUSTOM_OP:
            fn.register_fake = lambda fake: fake  # type: ignore[attr-defined]
            fn.register_autograd = lambda backward, setup_context=None: None  # type: ignore[attr-defined]
            return fn
        op = torch.library.custom_op(f"sbnn::{name}", mutates_args=(), device_types=device_types)(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            return op(*args, **kwargs) if torch.compiler.is_compiling() else fn(*args, **kwargs)

        call.register_fake = op.register_fake  # type: ignore[attr-defined]
        call.register_autograd = op.register_autograd  # type: ignore[attr-defined]
        return call

    return wrap

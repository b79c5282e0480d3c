"""Argument and input checks at sbnn's public boundaries.

Checks run where data enters the library (a layer's or model's ``forward``), never inside the time
loop. Finiteness checks cost one reduction each; :func:`set_validation` turns input checks off
for production runs, as ``torch.distributions.Distribution.set_default_validate_args`` does.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = ["set_validation", "validation_enabled", "check_input", "check_in_range", "check_choice", "check_positive_int"]

_ENABLED = True


def set_validation(enabled: bool) -> None:
    """Turn sbnn's input checks (rank, size, finiteness) on or off for the whole process."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    """Whether input checks are on (default ``True``)."""
    return _ENABLED


def check_input(
    x: Any,
    name: str,
    *,
    ndims: Iterable[int],
    size: int | None = None,
    dim: int = -1,
    what: str = "",
) -> None:
    """Raise a clear error unless ``x`` is a finite floating tensor of an allowed rank and size.

    Finiteness is checked on the CPU only (on an accelerator it would need a host synchronisation)
    and not while ``torch.compile`` traces (it would break the graph).

    Args:
        x: the input.
        name: who receives it (e.g. ``"BernoulliLinear(50, 128)"``), used in messages.
        ndims: allowed numbers of dimensions.
        size: required size of ``x.shape[dim]``.
        dim: the dimension checked against ``size``.
        what: the expected layout, e.g. ``"[B, in] or [T, B, in]"``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if not _ENABLED:
        return
    ndims = tuple(ndims)
    if x.dim() not in ndims:
        raise ValueError(
            f"{name} expects a tensor with {' or '.join(map(str, ndims))} dimensions {what}, "
            f"got shape {tuple(x.shape)}"
        )
    if size is not None and x.shape[dim] != size:
        raise ValueError(
            f"{name} expects {size} features in dimension {dim} {what}, got shape {tuple(x.shape)}; "
            "check the layer's input size against the data"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
    # one vectorised pass: a sum is finite unless an element is (or the sum overflows, which the
    # exact elementwise check below then rules out); isfinite(x).all() costs three passes.
    # On an accelerator reading the flag back would stall every forward pass (a host
    # synchronisation): there the training loops' deferred divergence checks catch NaN/inf input.
    # Under torch.compile the same read would split the graph, and is skipped likewise.
    if (
        x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not bool(torch.isfinite(x.sum()))
        and not bool(torch.isfinite(x).all())
    ):
        raise ValueError(f"{name} received non-finite values (NaN or inf) in an input of shape {tuple(x.shape)}")


def check_in_range(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` unless every element of ``value`` is a finite number in the interval."""
    t = torch.as_tensor(value, dtype=torch.float64) if not isinstance(value, Tensor) else value.detach().double()
    lo_ok = (t > low) if low_open else (t >= low)
    hi_ok = (t < high) if high_open else (t <= high)
    if t.numel() == 0 or not bool(torch.isfinite(t).all() & lo_ok.all() & hi_ok.all()):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        shown = value if not isinstance(value, Tensor) or value.numel() <= 8 else f"tensor of shape {tuple(value.shape)}"
        raise ValueError(f"{name} must lie in {interval}, got {shown}")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive_int(owner: str, **values: Any) -> None:
    """Raise ``ValueError`` unless every keyword value is an ``int`` (not ``bool``) ``≥ 1``."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")

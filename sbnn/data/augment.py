"""Training-time augmentation of event frames ``[T, B, P, H, W]`` (time-major batches).

Gestures differ by their motion, not by where in the frame it happens, so a random translation
of a whole recording (the same for all its frames) is a label-preserving change of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sbnn.data._common import check_int

__all__ = ["ShiftCollate", "check_max_shift", "random_shift"]


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Each sample of ``x`` ``[T, B, P, H, W]`` translated by its own ``(dy, dx)`` in ``[-max_shift, max_shift]``.

    ``out[:, b, :, i, j] = x[:, b, :, i − dy_b, j − dx_b]``, 0 where that lies outside the frame;
    the shifts are drawn uniformly from ``generator`` (torch's global one when ``None``).
    """
    if max_shift == 0:
        return x
    steps, batch, planes, height, width = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    shifts = torch.randint(-s, s + 1, (batch, 2), generator=generator)
    out = torch.empty_like(x)
    for b, (dy, dx) in enumerate(shifts.tolist()):
        out[:, b] = padded[:, b, :, s - dy : s - dy + height, s - dx : s - dx + width]
    return out


def check_max_shift(owner: str, max_shift: int, frame_size: int) -> int:
    """``max_shift`` as an int, refused (``ValueError``) when negative or when it could move a whole frame out of view."""
    check_int("max_shift", max_shift, minimum=0)
    if max_shift >= frame_size:
        raise ValueError(
            f"{owner}: max_shift={max_shift} would move whole {frame_size}-pixel frames out of view; "
            f"use a few pixels (e.g. 2-4 at 32x32)"
        )
    return max_shift


@dataclass(frozen=True)
class ShiftCollate:
    """``collate(batch)`` gives ``(x [T, B, P, H, W], y)``; this returns ``(random_shift(x, max_shift), y)``.

    A frozen dataclass, so that it pickles into loader workers. The shifts come from torch's global
    generator: in the main process that is the one :class:`sbnn.callbacks.EpochSeed` reseeds per
    epoch; in a worker, the worker's own seeded generator.
    """

    collate: Callable[[Sequence[Any]], tuple[Tensor, Tensor]]
    max_shift: int

    def __call__(self, batch: Sequence[Any]) -> tuple[Tensor, Tensor]:
        x, y = self.collate(batch)
        return random_shift(x, self.max_shift), y

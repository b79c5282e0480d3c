"""Memory of a training step: the bytes autograd keeps for the backward pass."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["saved_for_backward_bytes"]


def saved_for_backward_bytes(model: nn.Module, fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    Each storage counts once however many tensors view it (a hook on
    ``torch.autograd.graph.saved_tensors_hooks`` records every saved tensor's storage); the
    storages of ``model``'s parameters are left out, as they exist whether or not a step runs.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())

r"""Moments of a ±1 weight with natural parameter ``λ``: ``q(w = +1) = σ(2λ)``.

Pure functions on tensors; :mod:`sbnn.posterior` builds the distribution object on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sign_mean", "sign_variance", "sign_mode"]


def sign_mean(lam: Tensor) -> Tensor:
    """``E[w] = tanh λ``."""
    return torch.tanh(lam)


def sign_variance(lam: Tensor) -> Tensor:
    """``Var[w] = 1 − tanh²λ``, as ``4σ(2λ)σ(−2λ)`` so it stays accurate (not 0) for large ``|λ|``."""
    return 4.0 * torch.sigmoid(2.0 * lam) * torch.sigmoid(-2.0 * lam)


def sign_mode(lam: Tensor) -> Tensor:
    """The most likely weight ``sign(λ)``, with ties (``λ = 0``) going to ``+1``."""
    return torch.where(lam >= 0, 1.0, -1.0).to(lam.dtype)

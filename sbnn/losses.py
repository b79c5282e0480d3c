r"""The training objective: a KL-weighted evidence lower bound.

.. math::
    \mathcal L = \mathrm{NLL}(\text{readout}, y)
        + \text{kl\_weight} \cdot \frac{KL(q \,\|\, p)}{N_\text{train}}
        + \text{aux\_weight} \cdot \mathcal L_\text{aux}

With ``kl_weight = 1`` this is the negative ELBO per training example. On small data sets
(``N_train ≈ 10³`` against ``≈ 10⁴`` weights) the full KL keeps the posterior broad and a weight
``≥ 10`` collapses it to the uniform prior, an absorbing state; ``0.1`` worked in sbnn's prototype
(DESIGN §7). ``L_aux`` is the bias-reducing auxiliary loss: any callable ``aux_fn(model) -> Tensor``
computed from the forward pass just run (see the diagnostics issue; none is built in yet).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_in_range, check_positive_int
from .layers import BernoulliLayer

__all__ = ["kl_divergence", "ELBOTerms", "ELBOLoss"]


def kl_divergence(model: nn.Module) -> Tensor:
    """``KL(q ‖ p)`` summed over every Bernoulli layer of ``model`` (0 if it has none)."""
    terms = [m.kl() for m in model.modules() if isinstance(m, BernoulliLayer)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


class ELBOTerms(NamedTuple):
    """The objective and its parts (all scalars): ``loss = nll + kl_term + aux_term``."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    aux: Tensor


class ELBOLoss(nn.Module):
    """``NLL + kl_weight·KL/N_train + aux_weight·L_aux`` for classifiers returning logits.

    Args:
        n_train: number of training examples ``N_train`` (the KL is per example).
        kl_weight: weight of the KL term (``≥ 0``).
        aux_weight: weight of the auxiliary loss (``≥ 0``; needs ``aux_fn`` when positive).
        aux_fn: ``aux_fn(model) -> Tensor`` — the hook for the bias-reducing auxiliary loss.

    Example:
        >>> from sbnn.models import SpikingMLP
        >>> net = SpikingMLP(4, (8,), 3)
        >>> terms = ELBOLoss(n_train=100)(net(torch.rand(5, 2, 4).round()), torch.tensor([0, 2]), net)
        >>> bool(terms.loss > terms.nll)
        True
    """

    def __init__(
        self,
        n_train: int,
        kl_weight: float = 1.0,
        aux_weight: float = 0.0,
        aux_fn: Callable[[nn.Module], Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("ELBOLoss (the number of training examples)", n_train=n_train)
        check_in_range("kl_weight", kl_weight, 0.0)
        check_in_range("aux_weight", aux_weight, 0.0)
        if aux_weight > 0 and aux_fn is None:
            raise ValueError("aux_weight > 0 needs an aux_fn(model) -> Tensor that computes the auxiliary loss")
        self.n_train, self.kl_weight, self.aux_weight, self.aux_fn = n_train, kl_weight, aux_weight, aux_fn

    def forward(self, logits: Tensor, target: Tensor, model: nn.Module) -> ELBOTerms:
        """Return :class:`ELBOTerms` for ``logits [B, K]`` and integer ``target [B]``."""
        nll = F.cross_entropy(logits, target)
        kl = kl_divergence(model).to(nll)
        aux = self.aux_fn(model) if (self.aux_fn is not None and self.aux_weight > 0) else nll.new_zeros(())
        loss = nll + self.kl_weight * kl / self.n_train + self.aux_weight * aux
        return ELBOTerms(loss, nll, kl, aux)

r"""A layer of stochastic binary latent units with a Bernoulli(½) prior.

Unit ``i`` fires ``z_i = H(ℓ_i + ε_i)`` with logistic noise ``ε_i``, so
``q(z_i = 1) = σ(ℓ_i)``. The gradient of ``ℓ`` comes from sbnn's estimator family
(:func:`sbnn.functional.estimators.get_estimator`: ``st``, ``iwst``, ``relaxed``, ``gumbel_rao``,
``agr``), the same estimators that train the spiking neurons. The KL to the uniform prior is
closed-form:

.. math::
    \mathrm{KL}(q \,\|\, \mathrm{Bern}(\tfrac12)) = \sum_i q_i \log q_i + (1 - q_i)\log(1 - q_i) + \log 2,
    \qquad q_i = \sigma(\ell_i).

Reference: the binary-latent VAE of BinPlay (Deja et al. 2020) as used by HyBNN (Dua 2022,
arXiv 2205.09839).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.functional.estimators import Estimator, get_estimator
from sbnn.functional.noise import get_noise

__all__ = ["binary_kl_uniform", "BinaryLatent"]

_LOG2 = math.log(2.0)


def binary_kl_uniform(logits: Tensor) -> Tensor:
    r"""``KL(Bern(σ(ℓ)) ‖ Bern(½))`` per unit, from the logits (stable for any ``ℓ``).

    Uses ``log q = logsigmoid(ℓ)`` and ``log(1 − q) = logsigmoid(−ℓ)``, so saturated units give
    ``log 2`` rather than NaN.

    Args:
        logits: ``ℓ``, any shape.

    Returns:
        The KL per unit, shape of ``logits``, in nats, within ``[0, log 2]``.

    Example:
        >>> binary_kl_uniform(torch.tensor([0.0])).tolist()
        [0.0]
    """
    q = torch.sigmoid(logits)
    return q * F.logsigmoid(logits) + (1.0 - q) * F.logsigmoid(-logits) + _LOG2


class BinaryLatent(nn.Module):
    """Stochastic binary units ``z = H(ℓ + ε)``, ``ε ~ Logistic(0, 1)``, trained through an sbnn estimator.

    Args:
        estimator: a name from :data:`sbnn.functional.estimators.ESTIMATORS` or an
            :class:`~sbnn.functional.estimators.Estimator` instance. An unknown name raises a
            ``ValueError`` listing the valid names.

    Shape:
        - logits: ``[B, N]`` (or any shape).
        - output: same shape, values exactly in ``{0, 1}``.

    Example:
        >>> z = BinaryLatent("st")(torch.zeros(2, 5))
        >>> sorted(set(z.flatten().tolist())) <= [0.0, 1.0]
        True
    """

    def __init__(self, estimator: str | Estimator = "st") -> None:
        super().__init__()
        self.estimator: Estimator = get_estimator(estimator)
        self.noise = get_noise("logistic")

    def forward(self, logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One sample ``z ~ q(z | ℓ)`` with the estimator's gradient to ``ℓ``."""
        eps = self.noise.sample(logits.shape, like=logits, generator=generator)
        return self.estimator(logits, eps, self.noise)

    @staticmethod
    def mode(logits: Tensor) -> Tensor:
        """The most probable code ``1{ℓ ≥ 0}`` (ties to 1), no gradient."""
        return (logits >= 0).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}"

"""The IW-ST estimator family (public face) and the snnTorch ``spike_grad`` adapter.

See :mod:`sbnn.functional.estimators` for the formulas. Estimators are frozen dataclasses, so they
pickle and compare by value; :func:`spike_grad` wraps one as the callable snnTorch neurons take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._validation import check_in_range
from .functional.estimators import AGR, ESTIMATORS, IWST, ST, Estimator, GumbelRao, HardThreshold, Relaxed, get_estimator, spike
from .functional.noise import NOISE_FAMILIES, NoiseFamily, get_noise

__all__ = [
    "Estimator",
    "ST",
    "IWST",
    "Relaxed",
    "GumbelRao",
    "AGR",
    "ESTIMATORS",
    "NOISE_FAMILIES",
    "get_estimator",
    "get_noise",
    "spike",
    "SpikeGrad",
    "spike_grad",
]


@dataclass(frozen=True)
class SpikeGrad:
    """snnTorch ``spike_grad`` callable: ``f(mem − threshold) -> spikes`` with an sbnn estimator.

    The membrane offset ``x = mem − ϑ`` is standardised by the noise scale, ``θ = x / (κ·scale)``
    (``κ`` as in :mod:`sbnn.functional.noise`); the forward is deterministic (``H(x)``, as
    snnTorch's neurons expect: their noise, if any, is already in ``mem``) and the backward is
    ``∂S/∂x = factor(θ, S)/(κ·scale)`` — the estimator's surrogate for a unit with noise of that
    standard deviation. A frozen dataclass, so models using it pickle (snnTorch's closures do not).
    """

    estimator: Estimator
    noise: NoiseFamily
    scale: float

    def __call__(self, x: Tensor) -> Tensor:
        width = self.scale * self.noise.std_to_scale
        return HardThreshold.apply(x / width, torch.zeros_like(x), self.estimator, self.noise)


def spike_grad(name: str | Estimator = "st", *, noise: str = "gaussian", scale: float = 0.5, **kwargs: Any) -> SpikeGrad:
    """An sbnn estimator as snnTorch's ``spike_grad`` (e.g. ``snn.Leaky(spike_grad=spike_grad("iwst", p=0.5))``).

    Args:
        name: estimator name (or instance).
        noise: noise family whose density shapes the surrogate.
        scale: standard deviation of the assumed membrane noise (the surrogate's width).
        **kwargs: the estimator's hyper-parameters.

    Example:
        >>> sg = spike_grad("agr", tau=0.5, scale=0.3)
        >>> x = torch.tensor([-0.1, 0.2], requires_grad=True)
        >>> sg(x).tolist()
        [0.0, 1.0]
    """
    check_in_range("scale", scale, 0.0, low_open=True)
    return SpikeGrad(get_estimator(name, **kwargs), get_noise(noise), float(scale))

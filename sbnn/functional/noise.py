"""Noise families of a stochastic binary unit: ``S = H(θ + ε)`` with ``ε ~ p``.

An estimator needs only the standard density ``p``, its CDF ``F`` (both in log-space, because
``F(θ)`` gets tiny for a unit far from threshold), a sampler, and a sampler of ``ε`` conditioned on
the observed spike (for Gumbel–Rao). Two families are offered:

* ``gaussian``: ``ε ~ N(0, 1)``, probit link ``P(S = 1) = Φ(θ)``.
* ``logistic``: ``ε ~ Logistic(0, 1)``, sigmoid link ``P(S = 1) = σ(θ)``.

A neuron whose noise has standard deviation ``s`` standardises its drive by the family's scale
``s · std_to_scale`` (1 for Gaussian, ``√3/π`` for logistic), so both families give the membrane
the same noise variance and the logistic unit is the usual variance-matched stand-in for the probit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NoiseFamily", "Gaussian", "Logistic", "NOISE_FAMILIES", "get_noise"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class NoiseFamily:
    """Interface of a standard (location 0, scale 1) noise law for ``S = H(θ + ε)``."""

    name: str = "base"
    #: factor turning a noise standard deviation into this family's scale parameter
    std_to_scale: float = 1.0

    def log_pdf(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def log_cdf(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def icdf(self, u: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def pdf(self, x: Tensor) -> Tensor:
        """Density ``p(x)``."""
        return self.log_pdf(x).exp()

    def cdf(self, x: Tensor) -> Tensor:
        """Distribution function ``F(x)``."""
        return self.log_cdf(x).exp()

    def log_prob_spike(self, theta: Tensor, spikes: Tensor) -> Tensor:
        """``log P(S | θ)``: ``log F(θ)`` where ``S = 1`` and ``log F(−θ)`` where ``S = 0``."""
        sign = 2.0 * spikes - 1.0
        return self.log_cdf(sign * theta)

    def sample(self, shape: torch.Size, *, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw standard noise of ``shape`` with the dtype and device of ``like``."""
        u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
        return self.icdf(u.clamp(torch.finfo(like.dtype).tiny, 1.0 - torch.finfo(like.dtype).eps))

    def sample_given_spike(
        self, theta: Tensor, spikes: Tensor, u: Tensor
    ) -> Tensor:
        """Draw ``ε`` from the noise law conditioned on ``H(θ + ε) = S``, by inverse CDF.

        With ``σ = 2S − 1`` the condition is ``σ(θ + ε) ≥ 0``; by symmetry of the law,
        ``ε = −σ · F⁻¹(u · F(σθ))`` for ``u ~ U(0, 1)``. Computed in float64 with ``θ`` clamped
        to ±30 (beyond that ``F`` underflows and the draw is pinned at the boundary).
        """
        sign = 2.0 * spikes - 1.0
        z = (sign * theta).double().clamp(-30.0, 30.0)
        log_p = self.log_cdf(z) + torch.log(u.double().clamp_min(1e-300))
        return (-sign.double() * self._icdf_from_log(log_p)).to(theta.dtype)

    def _icdf_from_log(self, log_u: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Gaussian(NoiseFamily):
    """Standard normal noise: ``p = φ``, ``F = Φ`` (probit link)."""

    name: str = "gaussian"
    std_to_scale: float = 1.0

    def log_pdf(self, x: Tensor) -> Tensor:
        return -0.5 * x * x - _LOG_SQRT_2PI

    def log_cdf(self, x: Tensor) -> Tensor:
        return torch.special.log_ndtr(x)

    def icdf(self, u: Tensor) -> Tensor:
        return torch.special.ndtri(u)

    def _icdf_from_log(self, log_u: Tensor) -> Tensor:
        return torch.special.ndtri(log_u.exp())


@dataclass(frozen=True)
class Logistic(NoiseFamily):
    """Standard logistic noise: ``p = σ(x)σ(−x)``, ``F = σ`` (sigmoid link)."""

    name: str = "logistic"
    std_to_scale: float = math.sqrt(3.0) / math.pi

    def log_pdf(self, x: Tensor) -> Tensor:
        return F.logsigmoid(x) + F.logsigmoid(-x)

    def log_cdf(self, x: Tensor) -> Tensor:
        return F.logsigmoid(x)

    def icdf(self, u: Tensor) -> Tensor:
        return torch.logit(u)

    def _icdf_from_log(self, log_u: Tensor) -> Tensor:
        # logit(u) = log u − log(1 − u), with log(1 − u) = log1p(−exp(log u)) for accuracy near 0
        return log_u - torch.log1p(-log_u.exp().clamp_max(1.0 - 1e-16))


NOISE_FAMILIES: dict[str, NoiseFamily] = {"gaussian": Gaussian(), "logistic": Logistic()}


def get_noise(noise: str | NoiseFamily) -> NoiseFamily:
    """Return the noise family called ``noise`` (``"gaussian"`` or ``"logistic"``).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(noise, NoiseFamily):
        return noise
    try:
        return NOISE_FAMILIES[noise]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown noise family {noise!r}; choose one of {sorted(NOISE_FAMILIES)}"
        ) from None

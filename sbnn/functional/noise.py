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

from .keyed import active_keyed_noise

__all__ = ["NoiseFamily", "Gaussian", "Logistic", "NOISE_FAMILIES", "get_noise", "safe_exp"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def safe_exp(log_x: Tensor) -> Tensor:
    """``exp`` with the argument clamped at ``log(finfo.tiny) + 1``.

    Units far from threshold have log-densities of −10³ and below; ``exp`` of those underflows
    through a slow path (14x slower on CPU, measured) and into denormals. The slow path starts at
    ``log(tiny)`` itself (float32: 1.33 ms against 0.28 ms per 819k elements at ``log(tiny) + 1``,
    measured), hence the margin. The result is ``e·tiny`` instead of 0, which no gradient can
    tell apart.
    """
    return log_x.clamp_min(safe_exp_floor(log_x.dtype)).exp()


def safe_exp_floor(dtype: torch.dtype) -> float:
    """The clamp of :func:`safe_exp`, ``log(finfo(dtype).tiny) + 1``."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


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
        return safe_exp(self.log_pdf(x))

    def cdf(self, x: Tensor) -> Tensor:
        """Distribution function ``F(x)``."""
        return safe_exp(self.log_cdf(x))

    def log_prob_spike(self, theta: Tensor, spikes: Tensor) -> Tensor:
        """``log P(S | θ)``: ``log F(θ)`` where ``S = 1`` and ``log F(−θ)`` where ``S = 0``."""
        sign = 2.0 * spikes - 1.0
        return self.log_cdf(sign * theta)

    def sample(
        self, shape: torch.Size, *, like: Tensor, generator: torch.Generator | None = None, batch_dim: int = 0
    ) -> Tensor:
        """Draw standard noise of ``shape`` with the dtype and device of ``like``.

        Inside a :func:`~sbnn.functional.keyed.keyed_noise` block (and without ``generator``)
        the draw is keyed by sample along ``batch_dim`` (``1`` for time-major ``[T, B, ...]``).
        """
        source = active_keyed_noise() if generator is None else None
        if source is not None:
            u = source.uniform(shape, like=like, batch_dim=batch_dim)
        else:
            u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
        return self.icdf(u.clamp(torch.finfo(like.dtype).tiny, 1.0 - torch.finfo(like.dtype).eps))

    def sample_given_spike(
        self, theta: Tensor, spikes: Tensor, u: Tensor
    ) -> Tensor:
        """Draw ``ε`` from the noise law conditioned on ``H(θ + ε) = S``, by inverse CDF.

        With ``σ = 2S − 1`` the condition is ``σ(θ + ε) ≥ 0``; by symmetry of the law,
        ``ε = −σ · F⁻¹(u · F(σθ))`` for ``u ~ U(0, 1)``, computed in float64 and in log-space so
        that it holds for any ``θ``. After rounding to ``θ``'s dtype a draw that lands on the wrong
        side of ``−θ`` (possible within one ulp) is moved to the nearest value that keeps
        ``H(θ + ε) = S`` exactly as :class:`~sbnn.functional.estimators.HardThreshold` computes it.
        """
        sign = 2.0 * spikes - 1.0
        log_p = self.log_cdf((sign * theta).double()) + torch.log(u.double())
        eps = (-sign.double() * self._icdf_from_log(log_p)).to(theta.dtype)
        fires = theta + eps >= 0
        eps = torch.where((spikes > 0) & ~fires, -theta, eps)
        return torch.where((spikes <= 0) & fires, torch.nextafter(-theta, torch.full_like(theta, -math.inf)), eps)

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

    def pdf_derivative(self, x: Tensor) -> Tensor:
        """``p'(x) = −x φ(x)``."""
        return -x * self.pdf(x)

    def icdf(self, u: Tensor) -> Tensor:
        return torch.special.ndtri(u)

    def sample(
        self, shape: torch.Size, *, like: Tensor, generator: torch.Generator | None = None, batch_dim: int = 0
    ) -> Tensor:
        source = active_keyed_noise() if generator is None else None
        if source is not None:  # evaluation: keyed by sample (sbnn.functional.keyed)
            return source.normal(shape, like=like, batch_dim=batch_dim)
        # randn is 5x cheaper than ndtri(rand) (measured), and this runs for every unit and step
        return torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)

    def _icdf_from_log(self, log_u: Tensor) -> Tensor:
        # ndtri(exp(log u)) is exact until exp underflows (log u < −700, i.e. x < −37); below,
        # start from the asymptotic x ≈ −sqrt(−2 log u − log(−2 log u) − log 2π) and refine
        # with Newton steps on log Φ(x) = log u, whose slope is φ(x)/Φ(x).
        direct = torch.special.ndtri(log_u.clamp_min(-700.0).exp())
        t = -2.0 * log_u.clamp_max(-700.0)
        x = -torch.sqrt(t - torch.log(t) - math.log(2.0 * math.pi))
        for _ in range(3):
            x = x - (self.log_cdf(x) - log_u) * torch.exp(self.log_cdf(x) - self.log_pdf(x))
        return torch.where(log_u >= -700.0, direct, x)


@dataclass(frozen=True)
class Logistic(NoiseFamily):
    """Standard logistic noise: ``p = σ(x)σ(−x)``, ``F = σ`` (sigmoid link)."""

    name: str = "logistic"
    std_to_scale: float = math.sqrt(3.0) / math.pi

    def log_pdf(self, x: Tensor) -> Tensor:
        return F.logsigmoid(x) + F.logsigmoid(-x)

    def log_cdf(self, x: Tensor) -> Tensor:
        return F.logsigmoid(x)

    def pdf_derivative(self, x: Tensor) -> Tensor:
        """``p'(x) = p(x)(1 − 2σ(x)) = −p(x) tanh(x/2)``."""
        return -self.pdf(x) * torch.tanh(0.5 * x)

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

r"""The importance-weighted straight-through (IW-ST) family of spike-gradient estimators.

A stochastic binary unit fires ``S = H(θ + ε)`` with ``ε ~ p`` (CDF ``F``), so ``P(S=1) = F(θ)``.
The forward pass is always the hard sample. For a downstream loss ``f`` the exact gradient of the
expectation is ``d/dθ E[f(S)] = p(θ) · (f(1) − f(0))``; every member of the family replaces the
finite difference by the pathwise derivative ``g_S = ∂f/∂S`` at the sample, weighted:

.. math::
    \widehat{\partial_\theta} = g_S \cdot p(\theta) \cdot w(S, \theta)

Each estimator below supplies the *factor* ``p(θ)·w(S, θ)``. In expectation over ``S``:

============== =================================================== ===================================
name           weight ``w(S, θ)``                                  ``E[ĝ]``
============== =================================================== ===================================
``st``         ``1``                                               ``p(θ)[F f'(1) + (1−F) f'(0)]``
``iwst(p)``    ``q_p(S)/P(S)``, clipped at ``w_max``               ``p(θ)[p f'(1) + (1−p) f'(0)]``
``relaxed(τ)`` ``p((θ+ε)/τ) / (τ p(θ))`` at the drawn ``ε``        a relaxation (random given ``S``)
``gumbel_rao`` mean of the ``relaxed`` weight over ``K`` draws of  same mean as ``relaxed``,
               ``ε | S``                                           lower variance
``agr(τ)``     ``E[p((θ+ε)/τ)/τ | S] / p(θ)`` in closed form       the ``K → ∞`` limit; ``τ → 0``
                                                                   gives ``iwst(½)``
============== =================================================== ===================================

``st`` is exact when ``f`` is linear over the flip; ``iwst(½)`` (the trapezoid rule) is exact for
quadratic ``f`` at the price of variance ``∝ 1/P(S)``. References: Bengio et al. 2013
(arXiv:1308.3432) for straight-through; Jang et al. 2017 (arXiv:1611.01144) and Maddison et al. 2017
(arXiv:1611.00712) for the relaxation; Paulus et al. 2021 (arXiv:2010.04838) for Gumbel–Rao;
Walker, Khajehnejad & Razi 2025 (arXiv:2505.17962) for the IW-ST family.

.. note::
    Our reading of arXiv 2505.17962: only its abstract is public, so the family's parameterisation
    above (and the probit analogues of the relaxations for Gaussian noise) is sbnn's own
    formulation, documented in ``docs/theory.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .noise import _LOG_SQRT_2PI, NoiseFamily, get_noise, safe_exp, safe_exp_floor

__all__ = [
    "Estimator",
    "ST",
    "IWST",
    "Relaxed",
    "GumbelRao",
    "AGR",
    "ESTIMATORS",
    "get_estimator",
    "HardThreshold",
    "spike",
]


class HardThreshold(torch.autograd.Function):
    """``S = H(θ + ε)`` (``H(0) = 1``) forward; ``∂S/∂θ := estimator.factor(θ, S, ε)`` backward.

    One ``autograd.Function`` serves the whole family: the estimator object (a frozen dataclass)
    is a non-tensor input that supplies the backward factor. No gradient flows to ``ε``.
    """

    @staticmethod
    def forward(theta: Tensor, eps: Tensor, estimator: "Estimator", noise: NoiseFamily) -> Tensor:
        return (theta + eps >= 0).to(theta.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        theta, eps, estimator, noise = inputs
        ctx.save_for_backward(theta, eps, output)
        ctx.estimator = estimator
        ctx.noise = noise

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        theta, eps, spikes = ctx.saved_tensors
        return grad * ctx.estimator.factor(theta, spikes, eps, ctx.noise), None, None, None


def spike(theta: Tensor, eps: Tensor, estimator: "Estimator", noise: str | NoiseFamily = "gaussian") -> Tensor:
    """Hard spikes ``H(θ + ε)`` whose gradient w.r.t. ``θ`` is given by ``estimator``.

    Args:
        theta: standardised drive ``(Ū − ϑ)/s``, any shape.
        eps: the standard noise draw that decides the spike (zeros for a deterministic unit).
        estimator: a member of the family (see :func:`get_estimator`).
        noise: the noise family of ``ε``.
    """
    return HardThreshold.apply(theta, eps, estimator, get_noise(noise))


def _check_positive(name: str, value: float, estimator: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{estimator}: {name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class Estimator:
    """Base of the family: a picklable, hashable configuration with a backward ``factor``.

    Calling an estimator, ``est(theta, eps, noise)``, returns the hard spikes with this
    estimator's gradient (see :func:`spike`).
    """

    name: ClassVar[str] = "base"

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        """``p(θ)·w(S, θ)``: the derivative the backward pass assigns to ``∂S/∂θ``."""
        raise NotImplementedError  # pragma: no cover - interface

    def __call__(self, theta: Tensor, eps: Tensor, noise: str | NoiseFamily = "gaussian") -> Tensor:
        return HardThreshold.apply(theta, eps, self, get_noise(noise))


@dataclass(frozen=True)
class ST(Estimator):
    """Noise-density straight-through: ``w = 1``, factor ``p(θ)``.

    ``E[ĝ] = p(θ)[F(θ) f'(1) + (1 − F(θ)) f'(0)]``; exact when ``f`` is linear over the flip,
    bias ``∝ (F(θ) − ½)·f''`` otherwise.
    """

    name: ClassVar[str] = "st"

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        return noise.pdf(theta)


@dataclass(frozen=True)
class IWST(Estimator):
    """Importance-weighted straight-through: ``w = q_p(S)/P(S | θ)`` clipped at ``w_max``.

    ``q_p = Bernoulli(p)`` is the proposal the pathwise derivative is averaged under:
    ``E[ĝ] = p(θ)[p f'(1) + (1 − p) f'(0)]`` while ``w ≤ w_max``. ``p = ½`` is the trapezoid
    rule, exact for quadratic ``f``, with variance ``∝ 1/P(S)``. Weights are formed in log-space.

    Args:
        p: proposal probability of a spike, in (0, 1).
        w_max: clip on the importance weight (bounds the variance of rare flips).
    """

    name: ClassVar[str] = "iwst"
    p: float = 0.5
    w_max: float = 10.0

    def __post_init__(self) -> None:
        if not isinstance(self.p, (int, float)) or not 0.0 < self.p < 1.0:
            raise ValueError(f"iwst: p must lie strictly between 0 and 1, got {self.p!r}")
        _check_positive("w_max", self.w_max, "iwst")

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        return _iwst_factor(theta, spikes, noise, self.p, self.w_max)


@dataclass(frozen=True)
class Relaxed(Estimator):
    """Relaxed (ST-Gumbel/Concrete; probit analogue for Gaussian noise): factor ``p((θ+ε)/τ)/τ``.

    The derivative of the relaxed unit ``F((θ + ε)/τ)`` at the drawn noise; random given ``S``.

    Args:
        tau: temperature ``τ > 0``.
    """

    name: ClassVar[str] = "relaxed"
    tau: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("tau", self.tau, "relaxed")

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        return noise.pdf((theta + eps) / self.tau) / self.tau


@dataclass(frozen=True)
class GumbelRao(Estimator):
    """Gumbel–Rao: the ``relaxed`` factor averaged over ``K`` fresh draws of ``ε`` given ``S``.

    ``factor = (1/K) Σ_k p((θ + ε_k)/τ)/τ`` with ``ε_k ~ p(ε | H(θ + ε) = S)`` (inverse-CDF
    sampling in log-space); no gradient flows through the draws. Same mean as ``relaxed``, lower
    variance. Draws use the global torch RNG.

    Args:
        tau: temperature ``τ > 0``.
        k: number of conditional draws, ``K ≥ 1``.
    """

    name: ClassVar[str] = "gumbel_rao"
    tau: float = 1.0
    k: int = 10

    def __post_init__(self) -> None:
        _check_positive("tau", self.tau, "gumbel_rao")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"gumbel_rao: k must be an integer >= 1, got {self.k!r}")

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        u = torch.rand((self.k, *theta.shape), dtype=theta.dtype, device=theta.device)
        draws = noise.sample_given_spike(theta.unsqueeze(0), spikes.unsqueeze(0), u)
        return (noise.pdf((theta.unsqueeze(0) + draws) / self.tau) / self.tau).mean(0)


@dataclass(frozen=True)
class AGR(Estimator):
    """Analytic Gumbel–Rao: factor ``E[p((θ + ε)/τ)/τ | S]``, the ``K → ∞`` limit of Gumbel–Rao.

    Gaussian noise, in closed form with ``c = √(1 + τ²)``:

    .. math::
        E[φ((θ+ε)/τ)/τ \\mid S=1] = \\frac{φ(θ/c)}{c}\\,\\frac{Φ(τθ/c)}{Φ(θ)}, \\qquad
        E[\\cdot \\mid S=0] = \\frac{φ(θ/c)}{c}\\,\\frac{Φ(−τθ/c)}{Φ(−θ)}

    computed in log-space. Logistic noise has no closed form: the factor is
    ``g(σθ)`` with ``σ = 2S − 1`` and ``g(θ) = ∫_0^∞ σ'(τy − θ)σ'(y) dy / σ(θ)``, tabulated once
    per ``τ`` by composite Simpson quadrature in float64 on ``θ ∈ [−32, 32]`` (step 1/64) and
    interpolated linearly in log-space (relative error below 1e−4; ``θ`` outside the table is
    clamped to its edge). As ``τ → 0`` both tend to ``p(θ)/(2 P(S))``, the ``iwst(½)`` factor.

    Args:
        tau: temperature ``τ > 0``.
    """

    name: ClassVar[str] = "agr"
    tau: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("tau", self.tau, "agr")

    def factor(self, theta: Tensor, spikes: Tensor, eps: Tensor, noise: NoiseFamily) -> Tensor:
        if noise.name == "gaussian":
            return _agr_gaussian_factor(theta, spikes, noise, self.tau)
        sign = 2.0 * spikes - 1.0
        if noise.name == "logistic":
            return safe_exp(_interp_log_table(sign * theta, _logistic_agr_table(float(self.tau))))
        raise ValueError(f"agr: no analytic form for noise family {noise.name!r}")


# -- the factors of iwst and agr without log Φ ---------------------------------------------------
# torch.special.log_ndtr runs element by element on the CPU (~100 ns per element, 25x the whole
# `st` factor, measured); erfc is vectorised. The factors below are the same functions written
# with ratios of CDFs: an underflowing CDF is a ratio's limit, not a loss of accuracy in the log.
_SQRT_HALF = math.sqrt(0.5)


def _cdf(noise: NoiseFamily, x: Tensor) -> Tensor:
    """``F(x)`` without ``log F``: ``½ erfc(−x/√2)`` (Gaussian), ``σ(x)`` (logistic)."""
    if noise.name == "gaussian":
        return torch.special.erfc(x * -_SQRT_HALF).mul_(0.5)
    if noise.name == "logistic":
        return torch.sigmoid(x)
    return safe_exp(noise.log_cdf(x))


def gaussian_erfc_arg(theta: Tensor, spikes: Tensor, scale: float = 1.0) -> Tensor:
    """``−σθ·scale/√2`` (``σ = 2S − 1``), so that ``erfc`` of it is ``2Φ(σθ·scale)``; two passes."""
    k = scale * _SQRT_HALF
    return torch.addcmul(theta * k, theta, spikes, value=-2.0 * k)


def _iwst_factor(theta: Tensor, spikes: Tensor, noise: NoiseFamily, p: float, w_max: float) -> Tensor:
    r"""``p(θ)·min(q_p(S)/P(S | θ), w_max)``, as ``exp(log p(θ) + log min(q/P, w_max))``.

    ``P(S | θ) = F(σθ)``, ``σ = 2S − 1``; where ``F`` underflows the ratio is ``inf`` and the clip
    gives ``w_max``, its exact value there. Equal to :func:`_iwst_factor_logspace`. For Gaussian
    noise the same terms in twelve in-place passes (``2q/2Φ``; the log-density fused into an
    ``addcmul``), against seventeen for the general form.
    """
    if noise.name == "gaussian":
        q2 = spikes.mul(2.0 * (2.0 * p - 1.0)).add_(2.0 * (1.0 - p))  # 2·q_p(S)
        log_w = q2.div_(gaussian_erfc_arg(theta, spikes).erfc_()).clamp_max_(w_max).log_()
        log_f = torch.addcmul(log_w, theta, theta, value=-0.5).sub_(_LOG_SQRT_2PI)
        return log_f.clamp_min_(safe_exp_floor(log_f.dtype)).exp_()
    signed = theta * (2.0 * spikes - 1.0)
    # q_p(S) as an arithmetic blend keeps θ's dtype (torch.where on Python scalars gives float32)
    q = spikes * (2.0 * p - 1.0) + (1.0 - p)
    weight = q.div_(_cdf(noise, signed)).clamp_max_(w_max)
    return safe_exp(noise.log_pdf(theta) + weight.log_())


def _iwst_factor_logspace(theta: Tensor, spikes: Tensor, noise: NoiseFamily, p: float, w_max: float) -> Tensor:
    """The ``iwst`` factor with ``log F`` (the reference :func:`_iwst_factor` is tested against)."""
    log_q = spikes * math.log(p) + (1.0 - spikes) * math.log1p(-p)
    log_w = (log_q - noise.log_prob_spike(theta, spikes)).clamp_max(math.log(w_max))
    return safe_exp(noise.log_pdf(theta) + log_w)


def _agr_gaussian_factor(theta: Tensor, spikes: Tensor, noise: NoiseFamily, tau: float) -> Tensor:
    r"""``φ(θ/c)/c · Φ(στθ/c)/Φ(σθ)`` with the CDF ratio formed directly (``c = √(1 + τ²)``).

    ``Φ(σθ)`` underflows only for an event of probability below ``finfo.tiny`` (``σθ < −13`` in
    float32, ``< −37`` in float64): those elements, if any, take the log-space formula. On an
    accelerator and under ``torch.compile`` that choice is made elementwise, with no host
    synchronisation. Equal to :func:`_agr_gaussian_factor_logspace`.
    """
    c = math.sqrt(1.0 + tau**2)
    arg = gaussian_erfc_arg(theta, spikes)
    den = torch.special.erfc(arg)  # 2Φ(σθ); the factors 2 cancel in the ratio
    ratio = arg.mul_(tau / c).erfc_().div_(den)
    # log φ(θ/c) − log c + log ratio, the log-density fused into one addcmul
    log_f = torch.addcmul(ratio.log_(), theta, theta, value=-0.5 / c**2).sub_(_LOG_SQRT_2PI + math.log(c))
    out = log_f.clamp_min_(safe_exp_floor(log_f.dtype)).exp_()
    tail = den < 2.0 * torch.finfo(den.dtype).tiny  # Φ underflowed, or a denormal without full precision
    if theta.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(tail.any()):  # no host synchronisation to avoid on the CPU; compiled: the elementwise choice
            # the log-space formula on the tail elements only (log Φ is ~100 ns per element on the CPU)
            theta_t, spikes_t = torch.broadcast_tensors(theta, spikes)
            out = out.masked_scatter(tail, _agr_gaussian_factor_logspace(theta_t[tail], spikes_t[tail], noise, tau))
        return out
    return torch.where(tail, _agr_gaussian_factor_logspace(theta, spikes, noise, tau), out)


def _agr_gaussian_factor_logspace(theta: Tensor, spikes: Tensor, noise: NoiseFamily, tau: float) -> Tensor:
    """The Gaussian ``agr`` factor with ``log Φ`` (the reference :func:`_agr_gaussian_factor` is tested against)."""
    sign = 2.0 * spikes - 1.0
    c = math.sqrt(1.0 + tau**2)
    log_num = noise.log_pdf(theta / c) - math.log(c) + noise.log_cdf(sign * tau * theta / c)
    return safe_exp(log_num - noise.log_cdf(sign * theta))


_TABLE_LIMIT = 32.0
_TABLE_STEP = 1.0 / 64.0


@functools.lru_cache(maxsize=16)
def _logistic_agr_table(tau: float) -> Tensor:
    """``log g(θ)`` on the grid ``θ_j = −32 + j/64`` for logistic noise (see :class:`AGR`)."""
    theta = np.arange(-_TABLE_LIMIT, _TABLE_LIMIT + _TABLE_STEP / 2, _TABLE_STEP)
    # ∫_0^∞ σ'(τy − θ)σ'(y) dy: the integrand is below σ'(y) ≤ e^{−y}, so [0, 72] leaves a relative
    # tail under e^{−40} for |θ| ≤ 32; the step resolves both bumps (widths 1 and 1/τ).
    n = int(math.ceil(72.0 * 32.0 * max(1.0, tau)))
    n += n % 2  # Simpson needs an even number of intervals
    y = np.linspace(0.0, 72.0, n + 1)
    simpson = np.ones(n + 1)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    simpson *= (y[1] - y[0]) / 3.0
    log_sp_y = -np.logaddexp(0.0, y) - np.logaddexp(0.0, -y)
    log_j = np.empty_like(theta)
    for start in range(0, theta.size, 256):  # chunks bound the [θ, y] working set to ~ 40 MB
        z = tau * y[None, :] - theta[start : start + 256, None]
        log_f = -np.logaddexp(0.0, z) - np.logaddexp(0.0, -z) + log_sp_y[None, :]
        peak = log_f.max(axis=1, keepdims=True)
        log_j[start : start + 256] = peak[:, 0] + np.log(np.exp(log_f - peak) @ simpson)
    log_g = log_j + np.logaddexp(0.0, -theta)  # divide by σ(θ)
    return torch.from_numpy(log_g)


def _interp_log_table(x: Tensor, table: Tensor) -> Tensor:
    """Linear interpolation of a table on the uniform grid ``[−32, 32]``, step 1/64."""
    pos = ((x.double().clamp(-_TABLE_LIMIT, _TABLE_LIMIT) + _TABLE_LIMIT) / _TABLE_STEP)
    lo = pos.floor().clamp(max=table.numel() - 2)
    frac = pos - lo
    table = table.to(x.device)
    idx = lo.long()
    return (torch.lerp(table[idx], table[idx + 1], frac)).to(x.dtype)


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (ST, IWST, Relaxed, GumbelRao, AGR)
}


def get_estimator(name: str | Estimator, **kwargs: Any) -> Estimator:
    """Build the estimator called ``name`` with hyper-parameters ``kwargs``.

    Example:
        >>> get_estimator("iwst", p=0.5)
        IWST(p=0.5, w_max=10.0)

    Raises:
        ValueError: for an unknown name (listing the valid ones) or an out-of-range
            hyper-parameter; TypeError for a keyword the estimator does not take.
    """
    if isinstance(name, Estimator):
        if kwargs:
            raise TypeError(f"hyper-parameters {sorted(kwargs)} given with an estimator instance {name!r}")
        return name
    try:
        cls = ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {name!r}; valid names are {sorted(ESTIMATORS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as err:
        fields = [f for f in cls.__dataclass_fields__]
        raise TypeError(f"{name}: {err}; it takes {fields or 'no hyper-parameters'}") from None

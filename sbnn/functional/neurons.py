r"""Pure step functions of the noisy (stochastic) leaky integrate-and-fire neuron.

Per time step, with membrane ``U``, leak ``β``, threshold ``ϑ``, LRT pre-activation moments
``(μ, v)`` and standard noise ``ε``:

.. math::
    \bar U[t] &= β U[t−1] + μ[t] − ϑ S[t−1]              && \text{(subtract reset)} \\
    s[t] &= \sqrt{v[t] + σ_0^2 + ε_{min}^2}               && \text{(posterior + intrinsic noise, floored)} \\
    θ[t] &= (\bar U[t] − ϑ) / (κ s[t])                     && \text{(standardised drive)} \\
    U[t] &= \bar U[t] + κ s[t] ε[t]                         && \\
    S[t] &= H(θ[t] + ε[t])                                  && P(S = 1) = F(θ)

``κ`` is the noise family's ``std_to_scale`` (1 for Gaussian, ``√3/π`` for logistic), so the
membrane noise has variance ``s²`` in both families. The zero reset uses
``Ū[t] = β U[t−1] (1 − S[t−1]) + μ[t]``; ``none`` drops the reset term. A deterministic unit
(``mode``/``mean`` evaluation) has ``ε = 0``: it fires when ``Ū[t] ≥ ϑ``. ``β = 0`` without reset
is a binary (non-spiking) stochastic neuron: binary and spiking networks share one code path.

Gradients: ``S`` is differentiated through ``θ`` by an estimator of the IW-ST family
(:mod:`sbnn.functional.estimators`); ``U[t]`` is differentiable in ``μ`` and, through ``s``, in
``v`` (the pathwise term). Whether the reset term carries gradient is ``detach_reset``.

.. note::
    Our reading of arXiv 2505.17962 (only the abstract is public): the noise of the spiking
    neuron is the LRT posterior noise of its input layer plus a small intrinsic ``σ0``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .estimators import Estimator, HardThreshold
from .noise import NoiseFamily

__all__ = [
    "StochasticLIFState",
    "StochasticLIFParameters",
    "RESET_MECHANISMS",
    "noise_scale",
    "stochastic_lif_step",
    "stochastic_lif_sequence",
    "leaky_integrate",
]

RESET_MECHANISMS = ("subtract", "zero", "none")


class StochasticLIFState(NamedTuple):
    """State after a step: membrane ``U[t]`` and emitted spikes ``S[t]``, both shaped like the input."""

    mem: Tensor
    spk: Tensor


class StochasticLIFParameters(NamedTuple):
    """Constants of a stochastic LIF neuron (tensors broadcast over the unit dimensions)."""

    beta: Tensor | float
    threshold: Tensor | float
    sigma0: float
    eps_min: float
    reset_mechanism: str
    detach_reset: bool
    noise: NoiseFamily
    estimator: Estimator


def noise_scale(var: Tensor | None, p: StochasticLIFParameters, like: Tensor) -> Tensor:
    """``κ·sqrt(v + σ0² + ε_min²)``, the family's scale of the membrane noise (``v = 0`` if None)."""
    floor = p.sigma0**2 + p.eps_min**2
    if var is None:
        return torch.full((), floor**0.5 * p.noise.std_to_scale, dtype=like.dtype, device=like.device)
    return torch.sqrt(var + floor) * p.noise.std_to_scale


def _integrate(mu: Tensor, state: StochasticLIFState, p: StochasticLIFParameters) -> Tensor:
    """Noise-free membrane ``Ū[t]`` from the previous state and the input mean."""
    reset_spk = state.spk.detach() if p.detach_reset else state.spk
    if p.reset_mechanism == "subtract":
        return p.beta * state.mem + mu - p.threshold * reset_spk
    if p.reset_mechanism == "zero":
        return p.beta * state.mem * (1.0 - reset_spk) + mu
    return p.beta * state.mem + mu


def _fire(
    mem_bar: Tensor, scale: Tensor, eps: Tensor, p: StochasticLIFParameters
) -> tuple[Tensor, StochasticLIFState]:
    theta = (mem_bar - p.threshold) / scale
    spk = HardThreshold.apply(theta, eps, p.estimator, p.noise)
    return spk, StochasticLIFState(mem_bar + scale * eps, spk)


def stochastic_lif_step(
    mu: Tensor,
    var: Tensor | None,
    state: StochasticLIFState,
    p: StochasticLIFParameters,
    eps: Tensor,
) -> tuple[Tensor, StochasticLIFState]:
    """One step of the stochastic LIF neuron (see the module docstring).

    Args:
        mu: input mean ``μ[t]``, ``[B, ...]``.
        var: input variance ``v[t]`` (``None`` means 0: only ``σ0`` noise).
        state: ``(U[t−1], S[t−1])``.
        p: neuron constants.
        eps: the standard noise draw ``ε[t]``, shaped like ``mu`` (zeros: deterministic unit).

    Returns:
        ``(S[t], (U[t], S[t]))``.
    """
    return _fire(_integrate(mu, state, p), noise_scale(var, p, mu), eps, p)


def stochastic_lif_sequence(
    mu: Tensor,
    var: Tensor | None,
    p: StochasticLIFParameters,
    *,
    state: StochasticLIFState | None = None,
    stochastic: bool = True,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, StochasticLIFState]:
    """Run the neuron over a whole time-major sequence.

    The noise scale and all noise draws are computed for every step at once; the loop iterates
    over ``unbind(0)`` views (indexing ``x[t]`` of a tensor that requires grad makes backward
    quadratic in ``T``).

    Args:
        mu: ``[T, B, ...]`` input means.
        var: ``[T, B, ...]`` input variances, or ``None``.
        p: neuron constants.
        state: initial state (default: rest, ``U = 0``, ``S = 0``).
        stochastic: draw ``ε`` (``False``: deterministic unit, ``ε = 0``).
        eps: explicit noise ``[T, B, ...]`` (overrides ``stochastic``), e.g. to replay a draw.
        generator: RNG for the noise draws.

    Returns:
        ``(spk, mem, state)``: spikes and membranes ``[T, B, ...]`` and the final state.
    """
    if state is None:
        zeros = torch.zeros_like(mu[0])
        state = StochasticLIFState(zeros, zeros)
    scale = noise_scale(var, p, mu).expand_as(mu)
    if eps is None:
        eps = p.noise.sample(mu.shape, like=mu, generator=generator) if stochastic else torch.zeros_like(mu)
    spikes, mems = [], []
    for mu_t, scale_t, eps_t in zip(mu.unbind(0), scale.unbind(0), eps.unbind(0)):
        spk, state = _fire(_integrate(mu_t, state, p), scale_t, eps_t, p)
        spikes.append(spk)
        mems.append(state.mem)
    return torch.stack(spikes), torch.stack(mems), state


def leaky_integrate(x: Tensor, beta: Tensor | float, mem: Tensor | None = None) -> Tensor:
    """Non-spiking leaky integrator ``U[t] = β U[t−1] + x[t]`` over a time-major sequence.

    Args:
        x: ``[T, B, ...]`` input currents.
        beta: leak in ``[0, 1]``.
        mem: initial membrane (default zeros).

    Returns:
        ``[T, B, ...]`` membranes.
    """
    mem = torch.zeros_like(x[0]) if mem is None else mem
    out = []
    for x_t in x.unbind(0):
        mem = beta * mem + x_t
        out.append(mem)
    return torch.stack(out)

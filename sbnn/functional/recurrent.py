r"""A recurrent layer of stochastic LIF neurons as one autograd node: lean in time and memory.

A hidden layer with recurrent Bernoulli weights receives at step ``t`` the feed-forward LRT
moments ``(μ_ff[t], v_ff[t])`` plus the LRT moments of its own spikes ``S[t−1]`` through the
recurrent weights (means add and, the weight sets being independent under the posterior,
variances add):

.. math::
    μ[t] &= μ_{ff}[t] + S[t−1]\, W_μ^\top, \qquad v[t] = v_{ff}[t] + S[t−1]\, W_v^\top \\
    W_μ &= α\, m, \qquad W_v = α^2 (1 − m \odot m), \qquad S[−1] = 0

(``S² = S`` for spikes), and the pathwise stochastic LIF recursion of
:mod:`sbnn.functional.neurons` turns ``(μ[t], v[t])`` into ``S[t]``. Both recurrent moments come
from one matmul per step against the joint weight ``W = [W_μ; W_v]`` (``[2H, H]``).

The forward loop writes into buffers allocated once per sequence (no tensor is created inside
it), and the node saves for the backward pass only the standardised drive ``θ``, the noise scale
``s`` and the noise ``ε`` (the spikes it returns are saved as an output: the next layer keeps
them anyway). The membrane is recomputed where the backward pass needs it,
``U[t] = ϑ + s[t](θ[t] + ε[t])``. The backward pass is the adjoint recursion

.. math::
    g_U[t] &= c[t+1]\, g_{\bar U}[t+1], \qquad c[t+1] = β \;(\text{zero reset: } β(1 − S[t])) \\
    g_S[t] &= \bar g_S[t] + k\,\big(g_{\bar U}[t+1] W_μ + 2 S[t] \odot g_v[t+1] W_v\big)
              + r[t]\, g_{\bar U}[t+1] \\
    g_{\bar U}[t] &= g_U[t] + g_S[t]\, f[t] / s[t], \qquad
    g_v[t] = \big(g_U[t]\, ε[t] − g_S[t]\, f[t]\, θ[t] / s[t]\big)\, κ^2 / (2 s[t])

with ``f`` the estimator's factor ``p(θ)·w(S, θ)``, ``k`` the factor on the gradient through the
recurrent spikes (0 cuts it), ``r[t]`` the reset term's derivative (``−ϑ`` for the subtract reset,
``−βU[t]`` for the zero reset, 0 when the reset is detached) and ``2S`` the derivative of the
``S·S`` in the recurrent variance (the stepwise formulation computes ``x·x`` for inputs that carry
a gradient). When ``k = 0`` and the reset is detached only the linear recurrence of ``g_Ū`` runs
step by step; everything else is computed for all steps at once. The recurrent weights' gradient
is a matmul over all steps, ``g_W = Σ_t [g_Ū[t] | g_v[t]]^\top S[t−1]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._operators import operator
from .neurons import StochasticLIFParameters

__all__ = ["recurrent_lif_sequence"]


@operator("recurrent_lif_forward")
def _forward_loop(
    mu: Tensor, var: Tensor, eps: Tensor, weight: Tensor, beta: Tensor, threshold: Tensor, reset: str, floor: float,
    kappa: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(S, θ, s)`` ``[T, B, H]``: the forward recursion, into buffers allocated once."""
    steps, batch, hidden = mu.shape
    spikes = mu.new_empty(steps, batch, hidden)
    theta = mu.new_empty(steps, batch, hidden)
    scale = mu.new_empty(steps, batch, hidden)
    rec = mu.new_empty(batch, 2 * hidden)
    ubar = mu.new_empty(batch, hidden)
    mem = mu.new_zeros(batch, hidden)
    fire = torch.zeros(batch, hidden, dtype=torch.bool, device=mu.device)
    weight_t = weight.t()
    neg_threshold = -threshold
    for t in range(steps):
        if t == 0:  # S[−1] = 0: no recurrent input
            ubar.copy_(mu[0])
            scale[0].copy_(var[0])
        else:
            torch.mm(spikes[t - 1], weight_t, out=rec)
            torch.add(mu[t], rec[:, :hidden], out=ubar)
            torch.add(var[t], rec[:, hidden:], out=scale[t])
        if reset == "zero":
            mem.masked_fill_(fire, 0.0)  # β U[t−1] (1 − S[t−1])
        ubar.addcmul_(mem, beta)
        if reset == "subtract" and t > 0:
            ubar.addcmul_(spikes[t - 1], neg_threshold)
        scale[t].add_(floor).sqrt_().mul_(kappa)
        torch.addcmul(ubar, scale[t], eps[t], out=mem)
        torch.ge(mem, threshold, out=fire)
        spikes[t].copy_(fire)
        torch.sub(ubar, threshold, out=theta[t]).div_(scale[t])
    return spikes, theta, scale


@_forward_loop.register_fake
def _(mu, var, eps, weight, beta, threshold, reset, floor, kappa):
    return mu.new_empty(mu.shape), mu.new_empty(mu.shape), mu.new_empty(mu.shape)


@operator("recurrent_lif_backward")
def _backward_loop(
    g_spk: Tensor, factor_s: Tensor, theta: Tensor, scale: Tensor, eps: Tensor, spikes: Tensor, weight: Tensor,
    beta: Tensor, threshold: Tensor, reset: str, detach: bool, k: float, half_k2: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(g_Ū, g_v, gθ/s)`` ``[T, B, H]``: the adjoint recursion (module docstring); ``factor_s`` is ``f/s``."""
    steps, batch, hidden = theta.shape
    coeff = beta * (1.0 - spikes) if reset == "zero" else beta.expand(batch, hidden)
    g_ubar, g_var = theta.new_empty(steps, batch, hidden), theta.new_empty(steps, batch, hidden)
    if detach and k == 0.0:
        g_theta_s = g_spk * factor_s
        carry = None
        for t in range(steps - 1, -1, -1):
            if carry is None:
                carry = g_ubar[t].copy_(g_theta_s[t])
            else:
                c = coeff[t] if reset == "zero" else coeff
                carry = torch.addcmul(g_theta_s[t], c, carry, out=g_ubar[t])
        g_mem = g_ubar - g_theta_s
        torch.mul(g_mem.mul_(eps).sub_(g_theta_s * theta).mul_(half_k2), scale.reciprocal(), out=g_var)
        return g_ubar, g_var, g_theta_s
    g_theta_s = torch.empty_like(theta)
    g_s = theta.new_empty(batch, hidden)
    g_u = theta.new_zeros(batch, hidden)
    back = theta.new_empty(batch, hidden)
    w_mean, w_var = weight[:hidden], weight[hidden:]
    membrane = threshold + scale * (theta + eps) if (reset == "zero" and not detach) else None
    for t in range(steps - 1, -1, -1):
        g_s.copy_(g_spk[t])
        if t < steps - 1:
            nxt_ubar, nxt_var = g_ubar[t + 1], g_var[t + 1]
            torch.mul(nxt_ubar, coeff[t] if reset == "zero" else coeff, out=g_u)
            if k != 0.0:
                g_s.addmm_(nxt_ubar, w_mean, alpha=k)
                torch.mm(nxt_var, w_var, out=back)
                g_s.addcmul_(back, spikes[t], value=2.0 * k)
            if not detach:
                if reset == "subtract":
                    g_s.addcmul_(nxt_ubar, threshold, value=-1.0)
                else:  # zero
                    g_s.addcmul_(nxt_ubar, beta * membrane[t], value=-1.0)
        torch.mul(g_s, factor_s[t], out=g_theta_s[t])
        torch.add(g_u, g_theta_s[t], out=g_ubar[t])
        torch.mul(g_u, eps[t], out=g_var[t])
        g_var[t].addcmul_(g_theta_s[t], theta[t], value=-1.0).mul_(half_k2).div_(scale[t])
    return g_ubar, g_var, g_theta_s


@_backward_loop.register_fake
def _(g_spk, factor_s, theta, scale, eps, spikes, weight, beta, threshold, reset, detach, k, half_k2):
    return theta.new_empty(theta.shape), theta.new_empty(theta.shape), theta.new_empty(theta.shape)


class _RecurrentLIFSequence(torch.autograd.Function):
    """The two loops as operators (one opaque node each under ``torch.compile``); the estimator's
    factor and the parameter gradients, computed for all steps at once, around them."""

    @staticmethod
    def forward(ctx: Any, mu, var, eps, weight, beta, threshold, reset, detach_reset, spike_grad, floor, kappa, estimator, noise):
        spikes, theta, scale = _forward_loop(mu, var, eps, weight, beta, threshold, reset, float(floor), float(kappa))
        ctx.save_for_backward(theta, scale, eps, spikes, weight, beta, threshold)
        ctx.reset, ctx.detach = reset, detach_reset or reset == "none"
        ctx.spike_grad, ctx.kappa, ctx.estimator, ctx.noise = spike_grad, kappa, estimator, noise
        ctx.set_materialize_grads(False)
        return spikes

    @staticmethod
    def backward(ctx: Any, g_spk):
        theta, scale, eps, spikes, weight, beta, threshold = ctx.saved_tensors
        needs = ctx.needs_input_grad
        none = (None,) * 9
        if g_spk is None:
            return (None,) * 13
        hidden = theta.shape[-1]
        reset = ctx.reset
        # f/s, the spike's derivative per unit of gθ/s
        factor_s = ctx.estimator.factor(theta, spikes, eps, ctx.noise).div_(scale)
        g_ubar, g_var, g_theta_s = _backward_loop(
            g_spk, factor_s, theta, scale, eps, spikes, weight, beta, threshold, reset, ctx.detach,
            float(ctx.spike_grad), 0.5 * ctx.kappa**2,
        )
        g_weight = g_beta = g_threshold = None
        if needs[3]:
            prev = spikes[:-1].reshape(-1, hidden)
            g_weight = theta.new_empty(2 * hidden, hidden)
            torch.mm(g_ubar[1:].reshape(-1, hidden).t(), prev, out=g_weight[:hidden])
            torch.mm(g_var[1:].reshape(-1, hidden).t(), prev, out=g_weight[hidden:])
        if needs[4]:
            prev_mem = threshold + scale[:-1] * (theta[:-1] + eps[:-1])
            if reset == "zero":
                prev_mem = prev_mem * (1.0 - spikes[:-1])
            g_beta = (g_ubar[1:] * prev_mem).sum_to_size(beta.shape)
        if needs[5]:
            g_thr = -g_theta_s
            if reset == "subtract":
                g_thr[1:] -= g_ubar[1:] * spikes[:-1]
            g_threshold = g_thr.sum_to_size(threshold.shape)
        return (
            g_ubar if needs[0] else None,
            g_var if needs[1] else None,
            None,
            g_weight,
            g_beta,
            g_threshold,
            *none[:7],
        )


def recurrent_lif_sequence(
    mu: Tensor,
    var: Tensor,
    weight: Tensor,
    p: StochasticLIFParameters,
    eps: Tensor,
    *,
    spike_grad: float = 0.0,
) -> Tensor:
    r"""Spikes of a recurrent layer of pathwise stochastic LIF neurons, from rest (module docstring).

    Args:
        mu: ``[T, B, H]`` feed-forward input means ``μ_ff``.
        var: ``[T, B, H]`` feed-forward input variances ``v_ff``.
        weight: ``[2H, H]`` joint recurrent weights ``[α m; α²(1 − m²)]`` (rows: the ``H`` mean
            outputs, then the ``H`` variance outputs; columns: the presynaptic units).
        p: neuron constants; ``p.membrane_noise`` must be ``"pathwise"``.
        eps: ``[T, B, H]`` standard noise draws (zeros: deterministic units).
        spike_grad: factor ``k`` on the gradient through the recurrent spikes ``S[t−1]``
            (0 cuts it, 1 is full BPTT through the recurrence).

    Returns:
        ``[T, B, H]`` spikes in {0, 1}; differentiable in ``mu``, ``var``, ``weight`` and, when they
        are tensors that need it, ``p.beta`` and ``p.threshold``.

    Raises:
        ValueError: for the marginal noise model or inconsistent shapes.
    """
    if p.membrane_noise != "pathwise":
        raise ValueError(
            f"recurrent_lif_sequence runs the pathwise noise model only, got membrane_noise={p.membrane_noise!r}; "
            "run the marginal model step by step (sbnn.models.stages.recurrent_sequence does)"
        )
    if mu.dim() != 3 or var.shape != mu.shape or eps.shape != mu.shape:
        raise ValueError(
            f"recurrent_lif_sequence: mu, var and eps must share one [T, B, H] shape, got {tuple(mu.shape)}, "
            f"{tuple(var.shape)} and {tuple(eps.shape)}"
        )
    hidden = mu.shape[-1]
    if weight.shape != (2 * hidden, hidden):
        raise ValueError(
            f"recurrent_lif_sequence: weight must be the joint [2H, H] = [{2 * hidden}, {hidden}] matrix, "
            f"got {tuple(weight.shape)}"
        )
    beta, threshold = _as_tensor(p.beta, mu), _as_tensor(p.threshold, mu)
    floor = p.sigma0**2 + p.eps_min**2
    return _RecurrentLIFSequence.apply(
        mu, var, eps, weight, beta, threshold, p.reset_mechanism, bool(p.detach_reset), float(spike_grad),
        floor, p.noise.std_to_scale, p.estimator, p.noise,
    )


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.tensor(value, dtype=like.dtype, device=like.device)

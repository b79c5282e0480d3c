r"""Exact expected loss and exact gradients of small stochastic networks, by enumeration.

The network is a :class:`sbnn.models.SpikingMLP` with a membrane readout. Its hidden layers run in
``sample`` (LRT) mode, so given its input a hidden unit's spike at step ``t`` is Bernoulli with
probability ``F(θ[t])``, independent of the other units of the layer; the readout runs in
``mean`` mode (weights ``tanh λ``), so it is a deterministic function of the last layer's spikes.
With the marginal membrane model (or ``β = 0``, where the pathwise model coincides with it) the
probability of a whole spike history ``H_l ∈ {0,1}^{T×n_l}`` of layer ``l`` given the history of
the layer below is the closed form :func:`sbnn.functional.neurons.spike_train_log_prob`, so

.. math::
    \mathbb E[L] = \frac1B \sum_b \sum_{H_1,\dots,H_L} \prod_l P(H_l \mid H_{l-1})\; L(H_L, y_b),
    \qquad H_0 = x_b,

computed as a chain of log-space messages ``m_l(H_l) = logsumexp_{H_{l-1}} (m_{l-1} + log P)``.
Autograd through this sum gives the exact gradient w.r.t. every parameter (``λ``, scales,
biases, learnable leaks and thresholds). This is the objective the estimators of
:mod:`sbnn.functional.estimators` estimate: the expectation is over the LRT pre-activation noise
and the neuron noise of each unit-step, as in training — not over whole-network weight draws.

The cost is ``2^{T n_l} × 2^{T n_{l+1}}`` per pair of adjacent layers; :func:`enumeration_size`
reports it and the entry points refuse networks above ``max_unit_steps`` (default 22 binary
unit-steps per pair of adjacent layers, ~4·10⁶ joint states) before any work.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional.neurons import spike_train_log_prob, time_average_weights
from ..models import SpikingMLP
from ..modes import evaluation

__all__ = ["MAX_UNIT_STEPS", "NotEnumerableError", "enumeration_size", "check_enumerable", "check_inputs", "exact_objective", "exact_gradient", "diagnostic_mode"]

#: default limit on the binary unit-steps of two adjacent layers (``T·(n_l + n_{l+1})``)
MAX_UNIT_STEPS = 22


class NotEnumerableError(ValueError):
    """The network is valid but cannot be enumerated (too large, or pathwise noise with β > 0)."""


@contextmanager
def diagnostic_mode(net: SpikingMLP) -> Iterator[SpikingMLP]:
    """Hidden layers in ``sample`` (LRT) mode with stochastic neurons, readout in ``mean`` mode."""
    with evaluation(net, "sample"):
        saved = net.output.mode
        net.output.mode = "mean"
        try:
            yield net
        finally:
            net.output.mode = saved


def enumeration_size(net: SpikingMLP, n_steps: int) -> list[int]:
    """Binary unit-steps ``T·(n_l + n_{l+1})`` of every pair of adjacent hidden layers (and of the first)."""
    sizes = [n_steps * layer.out_features for layer in net.layers]
    return [sizes[0]] + [a + b for a, b in zip(sizes[:-1], sizes[1:])]


def check_enumerable(net: SpikingMLP, n_steps: int, max_unit_steps: int = MAX_UNIT_STEPS) -> None:
    """Raise ``ValueError`` unless ``net`` can be enumerated exactly within the limit."""
    if not isinstance(net, SpikingMLP):
        raise ValueError(f"exact enumeration supports sbnn.models.SpikingMLP, got {type(net).__name__}")
    if not net.layers:
        raise ValueError("exact enumeration needs at least one hidden stochastic layer (hidden=() has none)")
    if net.readout != "membrane":
        raise ValueError("exact enumeration needs readout='membrane' (a deterministic readout of the spikes)")
    for i, neuron in enumerate(net.neurons):
        if neuron.membrane_noise != "marginal" and bool((neuron.beta != 0).any()):
            raise NotEnumerableError(
                f"hidden layer {i}: the pathwise membrane-noise model with beta > 0 carries continuous noise "
                "in the membrane, so its spike trains cannot be enumerated; use membrane_noise='marginal' or "
                "beta=0 (a binary unit), or estimate against a many-sample REINFORCE reference instead"
            )
    sizes = enumeration_size(net, n_steps)
    worst = max(sizes)
    if worst > max_unit_steps:
        hidden = [layer.out_features for layer in net.layers]
        raise NotEnumerableError(
            f"network too large to enumerate: hidden={hidden} over T={n_steps} steps needs {worst} binary "
            f"unit-steps in one pair of adjacent layers (2^{worst} joint states); the limit is "
            f"{max_unit_steps} (max_unit_steps). Use fewer units or steps, or a sampled reference"
        )


def check_inputs(net: SpikingMLP, x: Tensor, y: Tensor) -> None:
    """Refuse inputs the diagnostics would silently misread: ``x`` must be a finite ``[T, B, in_features]``
    tensor and ``y`` ``[B]`` integer labels in ``[0, K)`` (``K = num_classes``).

    Without this, label ``−1`` indexes the last class and a NaN input turns every result into NaN.

    Raises:
        ValueError: naming the argument, what was received and the valid range.
    """
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a [T, B, in_features] tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[2] != net.in_features or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x must be [T, B, {net.in_features}] with T, B >= 1, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"x holds {int((~torch.isfinite(x)).sum())} NaN or infinite values; the inputs must be finite")
    if not isinstance(y, Tensor) or y.shape != (x.shape[1],):
        raise ValueError(f"y must be [B] = [{x.shape[1]}] labels, got shape {tuple(getattr(y, 'shape', ()))}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    k = net.num_classes
    bad = (y < 0) | (y >= k)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"y[{i}] = {int(y[i])} is not a class label: labels must lie in [0, {k}) for {k} classes")


def _histories(n_units: int, n_steps: int, like: Tensor) -> Tensor:
    """All spike histories of a layer as ``[T, K, n]`` with ``K = 2^{T n}`` (history k = bits of k)."""
    n_bits = n_steps * n_units
    codes = torch.arange(2**n_bits, device=like.device)[:, None]
    bits = (codes >> torch.arange(n_bits - 1, -1, -1, device=like.device)) & 1
    return bits.to(like.dtype).reshape(-1, n_steps, n_units).transpose(0, 1)


def _neuron_params(neuron):
    # the law of a spike train is the marginal model's whether or not β = 0 (they coincide there)
    return neuron.parameters_tuple()._replace(membrane_noise="marginal")


def exact_objective(
    net: SpikingMLP, x: Tensor, y: Tensor, *, max_unit_steps: int = MAX_UNIT_STEPS
) -> Tensor:
    """``E[L]``, the expected mean cross-entropy over the batch, as a differentiable scalar.

    Args:
        net: a small :class:`~sbnn.models.SpikingMLP` (membrane readout; marginal membrane model
            or ``beta=0``).
        x: ``[T, B, in_features]`` finite inputs.
        y: ``[B]`` integer class labels in ``[0, num_classes)``.
        max_unit_steps: refuse networks above this size (see :func:`check_enumerable`).

    Returns:
        A scalar tensor in the dtype of ``x`` (use float64 for gradient checks).

    Raises:
        ValueError: a network that cannot be enumerated, labels outside ``[0, K)``, or NaN/inf
            inputs (see :func:`check_inputs`).
    """
    check_enumerable(net, x.shape[0] if isinstance(x, Tensor) and x.dim() == 3 else 1, max_unit_steps)
    check_inputs(net, x, y)
    n_steps = x.shape[0]
    with diagnostic_mode(net):
        log_m = None  # log P(H_l | x_b), [B, K_l]
        inputs = x  # [T, B or K_{l-1}, n_{l-1}]
        binary = net.binary_input
        for layer, neuron in zip(net.layers, net.neurons):
            mu, var = layer.moments(inputs, binary=binary, validate=False)
            hist = _histories(layer.out_features, n_steps, x)  # [T, K, n]
            # log P(H_l = k | H_{l-1} = j) for all pairs: [T, J, K, n] summed over time and units
            log_t = spike_train_log_prob(mu[:, :, None], var[:, :, None], hist[:, None], _neuron_params(neuron)).sum((0, 3))
            log_m = log_t if log_m is None else torch.logsumexp(log_m[:, :, None] + log_t[None], dim=1)
            inputs, binary = hist, True
        weights = time_average_weights(n_steps, net.readout_beta, like=x)
        logits = net.output.time_weighted(inputs, weights)  # [K_L, C]
        loss = -F.log_softmax(logits, dim=-1)[:, y].T  # [B, K_L]
        return (log_m.exp() * loss).sum(1).mean()


def exact_gradient(
    net: SpikingMLP, x: Tensor, y: Tensor, *, max_unit_steps: int = MAX_UNIT_STEPS
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(E[L], {name: ∂E[L]/∂parameter})`` for every trainable parameter of ``net``."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    value = exact_objective(net, x, y, max_unit_steps=max_unit_steps)
    grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
    return value.detach(), {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads)}

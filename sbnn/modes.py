"""Network-wide evaluation modes, state reset and Monte Carlo prediction.

=========== ================================================ ==============================
mode        Bernoulli layers                                 stochastic neurons
=========== ================================================ ==============================
``sample``  LRT samples (training)                           noisy (posterior + ``σ0``)
``mode``    ``sign(λ)`` weights: the deployed network        deterministic (``ε = 0``)
``mean``    ``tanh(λ)`` weights                              deterministic
``mc``      one fresh explicit draw ``w ~ q`` per layer      deterministic
=========== ================================================ ==============================

Real-weight :class:`~sbnn.GaussianLayer` s take the same modes: ``mode`` and ``mean`` both run
the mean weights ``W̄``, ``mc`` draws ``W̄ + σ_w ξ``.

MC prediction averages the softmax of ``C`` whole binary networks drawn from the posterior
(BayesBiNN, arXiv:2002.10778, eq. 26); each is a network the kernels could deploy.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_choice
from .gaussian_layers import GaussianLayer
from .layers import BernoulliLayer
from .neurons import StochasticLIF

# both weight families keep the same mode contract (set_mode, draw_weights, mode_state)
_WEIGHT_LAYERS = (BernoulliLayer, GaussianLayer)

__all__ = [
    "NETWORK_MODES",
    "set_mode",
    "get_mode",
    "evaluation",
    "deterministic_neurons",
    "reset",
    "mc_predict",
    "lrt_predict",
]

NETWORK_MODES = ("sample", "mode", "mean", "mc")


def set_mode(model: nn.Module, mode: Literal["sample", "mode", "mean", "mc"], generator: torch.Generator | None = None) -> None:
    """Put every Bernoulli layer and stochastic neuron of ``model`` (recursively) in ``mode``.

    ``"mc"`` draws a fresh weight sample for every layer (with ``generator`` if given); call it
    again for the next network of an MC average.
    """
    check_choice("mode", mode, NETWORK_MODES)
    for module in model.modules():
        if isinstance(module, _WEIGHT_LAYERS):
            if mode == "mc":
                module.draw_weights(generator)
                module.set_mode("fixed")
            else:
                module.set_mode(mode)
        elif isinstance(module, StochasticLIF):
            module.set_stochastic(mode == "sample")


def get_mode(model: nn.Module) -> str:
    """The network mode of ``model``'s Bernoulli layers (``"mixed"`` if they disagree)."""
    modes = {m.mode for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)}
    if not modes:
        return "sample"
    mode = modes.pop()
    return "mixed" if modes else ("mc" if mode == "fixed" else mode)


@contextlib.contextmanager
def evaluation(model: nn.Module, mode: Literal["sample", "mode", "mean", "mc"], generator: torch.Generator | None = None) -> Iterator[nn.Module]:
    """Context manager: run ``model`` in ``mode``, then restore every module's previous setting.

    Example:
        >>> from sbnn.models import SpikingMLP
        >>> net = SpikingMLP(4, (8,), 3)
        >>> with evaluation(net, "mode"):
        ...     logits = net(torch.rand(5, 2, 4).round())
    """
    saved = _save_state(model)
    try:
        set_mode(model, mode, generator)
        yield model
    finally:
        _restore_state(saved)


def _save_state(model: nn.Module) -> list[tuple[nn.Module, object]]:
    """Every layer's whole mode state ``(mode, weight)`` and every neuron's noise switch."""
    return [
        (m, m.mode_state() if isinstance(m, _WEIGHT_LAYERS) else m.stochastic)
        for m in model.modules()
        if isinstance(m, (*_WEIGHT_LAYERS, StochasticLIF))
    ]


def _restore_state(saved: list[tuple[nn.Module, object]]) -> None:
    for module, setting in saved:
        if isinstance(module, _WEIGHT_LAYERS):
            module.restore_mode_state(setting)
        else:
            module.set_stochastic(setting)


@contextlib.contextmanager
def deterministic_neurons(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: every :class:`~sbnn.StochasticLIF` of ``model`` runs with ``ε = 0``; the layers keep their mode.

    For training methods that give the network explicit weights and want deterministic neurons
    (:mod:`sbnn.training.methods`). Each neuron's previous setting is restored on exit.
    """
    neurons = [m for m in model.modules() if isinstance(m, StochasticLIF)]
    saved = [n.stochastic for n in neurons]
    try:
        for n in neurons:
            n.set_stochastic(False)
        yield model
    finally:
        for n, s in zip(neurons, saved):
            n.set_stochastic(s)


def reset(model: nn.Module) -> nn.Module:
    """Reset the hidden state of every stateful neuron in ``model``, however deeply nested.

    Covers sbnn's :class:`~sbnn.StochasticLIF` and snnTorch neurons (anything with
    ``reset_mem()``), only within ``model``: unlike ``snntorch.utils.reset`` it neither misses
    nested modules nor resets other models. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, StochasticLIF):
            module.reset_state()
        elif callable(getattr(module, "reset_mem", None)):
            module.reset_mem()
    return model


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, n_samples: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Posterior predictive ``(1/C) Σ_c softmax(f(x; w_c))`` over ``C`` drawn binary networks.

    Args:
        model: returns logits ``[B, K]`` for input ``x``.
        x: model input (e.g. ``[T, B, N]``).
        n_samples: number ``C ≥ 1`` of weight draws.

    Returns:
        Class probabilities ``[B, K]``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    probs = None
    with evaluation(model, "mc"):
        for _ in range(n_samples):
            set_mode(model, "mc", generator)
            p = F.softmax(model(x), dim=-1)
            probs = p if probs is None else probs + p
    return probs / n_samples


@torch.no_grad()
def lrt_predict(model: nn.Module, x: Tensor, n_samples: int = 10) -> Tensor:
    """Average softmax over ``n_samples`` noisy forward passes in ``sample`` (LRT) mode."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    with evaluation(model, "sample"):
        return torch.stack([F.softmax(model(x), dim=-1) for _ in range(n_samples)]).mean(0)

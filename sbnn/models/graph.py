"""Nodes of the deployable graph (:mod:`sbnn.kernels.graph`) built from sbnn's layers and neurons.

The deployed network is the ``mode`` network: weights ``sign(λ)`` (ties to +1), deterministic
neurons (``ε = 0``). A model's :meth:`~sbnn.models.SpikingClassifier.export_graph` is a list of
these nodes; :func:`sbnn.export.to_graph` calls it. ``sbnn.kernels`` is imported when a node is
built, not when this module is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..layers import BernoulliConv2d, BernoulliLinear
from ..neurons import StochasticLIF
from ..posterior import sign_mode

if TYPE_CHECKING:  # pragma: no cover
    from ..kernels.graph import LIF, Conv2d, Dense, MaxPool2d, Synapses

__all__ = ["synapses", "lif", "dense_node", "conv_node", "maxpool_node"]


def _np(t: torch.Tensor):
    return t.detach().to("cpu", torch.float32).numpy().copy()


def synapses(layer: BernoulliLinear | BernoulliConv2d) -> "Synapses":
    """The ``mode`` synapses of a Bernoulli layer: ``sign(λ)`` (ties to +1), ``α``, bias."""
    from ..kernels.graph import Synapses

    if not isinstance(layer, (BernoulliLinear, BernoulliConv2d)):
        raise ValueError(f"synapses: expected a BernoulliLinear or BernoulliConv2d, got {type(layer).__name__}")
    sign = sign_mode(layer.lam.detach()).to(torch.int8).cpu().numpy()
    bias = None if layer.bias is None else _np(layer.bias)
    return Synapses(sign, _np(layer.scale), bias)


def lif(neuron: StochasticLIF) -> "LIF":
    """The deterministic LIF constants of a :class:`~sbnn.StochasticLIF` (its noise is off in ``mode``)."""
    from ..kernels.graph import LIF

    if not isinstance(neuron, StochasticLIF):
        raise ValueError(f"lif: expected a StochasticLIF, got {type(neuron).__name__}")
    if getattr(neuron, "reset_leak", False):
        raise ValueError(
            "lif: reset_leak=True removes βϑ per spike, the event-driven engine's subtract reset removes ϑ; "
            "train with reset_leak=False to deploy"
        )
    return LIF(_np(neuron.beta), _np(neuron.threshold), neuron.reset_mechanism)


def dense_node(layer: BernoulliLinear, neuron: StochasticLIF | float, recurrent: BernoulliLinear | None = None) -> "Dense":
    """A :class:`Dense` node; ``neuron`` is a LIF module or, for a membrane readout, its leak β."""
    from ..kernels.graph import Dense, MembraneReadout

    if not isinstance(layer, BernoulliLinear):
        raise ValueError(f"dense_node: layer must be a BernoulliLinear, got {type(layer).__name__}")
    cell = MembraneReadout(float(neuron)) if isinstance(neuron, (int, float)) else lif(neuron)
    return Dense(synapses(layer), cell, None if recurrent is None else synapses(recurrent))


def conv_node(layer: BernoulliConv2d, neuron: StochasticLIF, in_shape: tuple[int, int, int]) -> "Conv2d":
    """A :class:`Conv2d` node for an input of shape ``(C, H, W)`` per step."""
    from ..kernels.graph import Conv2d

    if not isinstance(layer, BernoulliConv2d):
        raise ValueError(f"conv_node: layer must be a BernoulliConv2d, got {type(layer).__name__}")
    if layer.groups != 1 or isinstance(layer.padding, str):
        raise ValueError("conv_node: the engine supports groups=1 and integer padding only")
    return Conv2d(synapses(layer), lif(neuron), tuple(in_shape), layer.stride, layer.padding, layer.dilation)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def maxpool_node(pool: nn.MaxPool2d, in_shape: tuple[int, int, int], where: str) -> "MaxPool2d":
    """A :class:`MaxPool2d` node; ``where`` names the pool in error messages."""
    from ..kernels.graph import MaxPool2d

    if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
        raise ValueError(f"{where} uses dilation or ceil_mode, which the engine's MaxPool2d lacks")
    return MaxPool2d(tuple(in_shape), _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding))

"""Feed-forward networks: ``SpikingMLP`` and the non-spiking ``BinaryMLP``."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_input
from .base import SpikingClassifier
from .settings import CalibrationSettings, LayerSettings, NeuronSettings, as_settings
from .stages import SpikingStage, Stage

__all__ = ["SpikingMLP", "BinaryMLP", "check_sizes"]


def check_sizes(owner: str, **sizes: int | Sequence[int]) -> None:
    """Raise ``ValueError`` unless every size (or every entry of a sequence) is a positive integer."""
    for name, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in values):
            raise ValueError(f"{owner}: {name} must be positive integers, got {value!r}")


class SpikingMLP(SpikingClassifier):
    """Feed-forward spiking Bayesian network ``in → [BernoulliLinear → StochasticLIF] × L → readout``.

    Run time-batched: every layer's LRT moments are computed for all ``T`` steps in one matmul
    and only the neurons loop over time.

    Args:
        in_features: input channels ``N``.
        hidden: sizes of the hidden spiking layers (may be empty).
        num_classes: number of classes ``K``.
        neuron: constants of every stochastic LIF neuron (:class:`~sbnn.models.NeuronSettings`).
        layer: options of every Bernoulli layer (:class:`~sbnn.models.LayerSettings`).
        calibration: targets of :meth:`calibrate` (:class:`~sbnn.models.CalibrationSettings`).
        readout: ``"membrane"`` (time-averaged membrane of a non-spiking leaky output layer, the
            default: a spike-count readout left the output silent in sbnn's design runs) or
            ``"spike_count"`` (spike counts of stochastic output neurons).
        readout_beta: leak of the readout membrane.
        binary_input: the input holds 0/1 spikes, so ``x² = x`` in the first layer's LRT variance
            (saves a pass over ``[T, B, N]`` and the memory it keeps for backward); checked on
            the calibration batch.

    Shape:
        - Input: ``[T, B, N]`` spikes or currents, time-major, or the
          :class:`~sbnn.functional.sparse.SpikeIndices` of binary spikes ``[T, B, N]`` (the first
          layer gathers from them; :mod:`sbnn.models.index_input`).
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingMLP(50, (128,), 10, neuron=NeuronSettings(beta=0.9, estimator="st"))
        >>> tuple(net(torch.rand(20, 4, 50).round()).shape)
        (4, 10)
    """

    index_input = True

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128,),
        num_classes: int = 10,
        *,
        neuron: NeuronSettings = NeuronSettings(),
        layer: LayerSettings = LayerSettings(),
        calibration: CalibrationSettings = CalibrationSettings(),
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: float = 0.9,
        binary_input: bool = False,
    ) -> None:
        hidden = list(hidden)
        check_sizes("SpikingMLP", in_features=in_features, hidden=hidden, num_classes=num_classes)
        super().__init__(num_classes, neuron=neuron, layer=layer, calibration=calibration, binary_input=binary_input)
        sizes = [in_features, *hidden]
        self.in_features = in_features
        self.layers = nn.ModuleList(self.layer_settings.linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.neurons = nn.ModuleList(self.neuron_settings.build() for _ in hidden)
        self._build_readout(sizes[-1], readout, readout_beta)

    def stages(self) -> list[Stage]:
        return [SpikingStage(layer, neuron) for layer, neuron in zip(self.layers, self.neurons)]

    def check_input(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def export_meta(self) -> dict:
        return {"model": "SpikingMLP", "binary_input": self.binary_input}


class BinaryMLP(nn.Module):
    """Non-spiking ±1-weight MLP ``in → [BernoulliLinear → activation] × L → BernoulliLinear``.

    The architecture of BayesBiNN's synthetic experiments (Meng et al. 2020, appendix B.1: two
    hidden layers of 64 tanh units) built from sbnn's Bernoulli layers, so that every training
    method of :mod:`sbnn.training.methods` runs on the same network. A time-major input ``[T, B, N]`` is
    averaged over time first, so ``T`` changes nothing for a constant input; ``[B, N]`` is
    accepted as well.

    Args:
        in_features: input size ``N``.
        hidden: hidden layer sizes.
        num_classes: outputs ``K`` (class logits, or 1 for regression).
        activation: ``"tanh"`` (BayesBiNN's) or ``"relu"``.
        layer: options of every Bernoulli layer (default: with biases).

    Shape:
        - Input: ``[B, N]`` or ``[T, B, N]``.
        - Output: ``[B, K]``.

    Example:
        >>> net = BinaryMLP(2, (64, 64), 2)
        >>> tuple(net(torch.randn(1, 5, 2)).shape)
        (5, 2)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64, 64),
        num_classes: int = 2,
        *,
        activation: Literal["tanh", "relu"] = "tanh",
        layer: LayerSettings = LayerSettings(bias=True),
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        check_sizes("BinaryMLP", in_features=in_features, hidden=hidden, num_classes=num_classes)
        check_choice("activation", activation, ("tanh", "relu"))
        layer = as_settings(LayerSettings, layer, "BinaryMLP", "layer")
        if layer.time_affine_steps is not None:
            raise ValueError("BinaryMLP averages its input over time: it has no per-time-step gain; leave layer.time_affine_steps unset")
        sizes = [in_features, *hidden, num_classes]
        self.in_features, self.num_classes, self.activation = in_features, num_classes, activation
        self.layers = nn.ModuleList(layer.linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``[B, K]`` for ``[B, N]`` or time-major ``[T, B, N]`` input."""
        check_input(x, "BinaryMLP", ndims=(2, 3), size=self.in_features, what="([B, in_features] or [T, B, in_features])")
        if x.dim() == 3:
            x = x.mean(0)
        act = torch.tanh if self.activation == "tanh" else torch.relu
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)

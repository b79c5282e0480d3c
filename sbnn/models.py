"""Ready-made SBNN architectures.

``SpikingMLP``: ``in → [BernoulliLinear → StochasticLIF] × L → BernoulliLinear → readout``, run
time-batched: every layer's LRT moments are computed for all ``T`` steps in one matmul and only
the neuron loops over time.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Sequence

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat
from torch import Tensor, nn

from ._validation import check_choice, check_in_range, check_input
from .functional.estimators import get_estimator
from .functional.neurons import leaky_integrate, time_average_weights
from .layers import BernoulliLinear
from .modes import evaluation
from .neurons import StochasticLIF

__all__ = ["SpikingMLP", "BinaryMLP"]


class SpikingMLP(nn.Module):
    """Feed-forward spiking Bayesian network with a membrane (or spike-count) readout.

    Args:
        in_features: input channels ``N``.
        hidden: sizes of the hidden spiking layers.
        out_features: number of classes ``K``.
        beta, threshold, sigma0, noise, reset_mechanism, detach_reset, membrane_noise: hidden
            neurons' constants (see :class:`sbnn.StochasticLIF`).
        estimator: spike-gradient estimator name (see :mod:`sbnn.estimators`).
        estimator_kwargs: its hyper-parameters, e.g. ``{"tau": 0.5}``.
        readout: ``"membrane"`` (time-averaged membrane of a non-spiking leaky output layer, the
            default: a spike-count readout left the output silent in sbnn's prototype) or
            ``"spike_count"`` (spike counts of stochastic output neurons).
        readout_beta: leak of the readout membrane.
        bias: float biases in the Bernoulli layers.
        binary_input: the input holds 0/1 spikes, so ``x² = x`` in the first layer's LRT variance
            (saves a pass over ``[T, B, N]`` and the memory it keeps for backward); checked on
            the calibration batch.
        lam_std: standard deviation of the ``λ ~ N(0, lam_std²)`` initialisation.
        prior_lam: natural parameter of the Bernoulli prior (0: uniform).

    Shape:
        - Input: ``[T, B, N]`` spikes or currents, time-major.
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingMLP(50, (128,), 10)
        >>> tuple(net(torch.rand(20, 4, 50).round()).shape)
        (4, 10)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128,),
        out_features: int = 10,
        *,
        beta: ClosedUnitInterval = 0.9,
        threshold: PositiveFloat = 1.0,
        sigma0: NonNegativeFloat = 0.1,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str = "st",
        estimator_kwargs: dict[str, Any] | None = None,
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        membrane_noise: Literal["pathwise", "marginal"] = "pathwise",
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: ClosedUnitInterval = 0.9,
        bias: bool = False,
        binary_input: bool = False,
        lam_std: PositiveFloat = 0.5,
        prior_lam: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
            raise ValueError(
                f"SpikingMLP: in_features, hidden sizes and out_features must be positive integers, got "
                f"in_features={in_features!r}, hidden={list(hidden)!r}, out_features={out_features!r}"
            )
        check_choice("readout", readout, ("membrane", "spike_count"))
        check_in_range("readout_beta", readout_beta, 0.0, 1.0)
        est = get_estimator(estimator, **(estimator_kwargs or {}))
        neuron = dict(
            beta=beta, threshold=threshold, sigma0=sigma0, noise=noise, estimator=est,
            reset_mechanism=reset_mechanism, detach_reset=detach_reset, membrane_noise=membrane_noise,
        )
        layer = dict(bias=bias, lam_std=lam_std, prior_lam=prior_lam)
        self.in_features, self.out_features, self.readout, self.readout_beta = in_features, out_features, readout, readout_beta
        self.binary_input = binary_input
        self.layers = nn.ModuleList(BernoulliLinear(a, b, **layer) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.neurons = nn.ModuleList(StochasticLIF(**neuron) for _ in hidden)
        self.output = BernoulliLinear(sizes[-2], out_features, **layer)
        self.output_neuron = StochasticLIF(**neuron) if readout == "spike_count" else None

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, K]`` and the hidden layers' spike trains (each ``[T, B, H]``)."""
        check_input(x, "SpikingMLP", ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")
        spikes = []
        for i, (layer, neuron) in enumerate(zip(self.layers, self.neurons)):
            moments = layer._spike_moments(x) if (i > 0 or self.binary_input) else layer._moments(x)
            x, _ = neuron.sequence(moments, validate=False)
            spikes.append(x)
        binary = bool(self.layers) or self.binary_input  # the output layer's input is 0/1
        if self.output_neuron is not None:
            moments = self.output._spike_moments(x) if binary else self.output._moments(x)
            out_spk, _ = self.output_neuron.sequence(moments, validate=False)
            return out_spk.sum(0), spikes
        # mean_t of the leaky readout membrane is a fixed weighted sum over time; its LRT noise is
        # reparameterised, so the gradient reaches v through sqrt(v)·ξ (DESIGN §7)
        weights = time_average_weights(x.shape[0], self.readout_beta, like=x)
        return self.output.time_weighted(x, weights), spikes

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` for a time-major input ``[T, B, N]``."""
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0, readout_std: float = 3.0) -> list[float]:
        """Data-dependent initialisation of every layer's scale ``α`` on a batch (DESIGN §7).

        Layer by layer, in ``sample`` mode: each hidden layer's free membrane
        (``U[t] = βU[t−1] + h[t]``, no reset) gets standard deviation ``hidden_gain·ϑ``, then the
        layer's spikes feed the next; the membrane readout's logits get ``readout_std``
        (a spike-count output layer is treated as hidden). Warns when a hidden layer then fires
        at a rate below 0.1 %.

        Args:
            x: a training batch ``[T, B, N]``.

        Returns:
            The hidden layers' firing rates after calibration.
        """
        check_in_range("hidden_gain", hidden_gain, 0.0, low_open=True)
        check_in_range("readout_std", readout_std, 0.0, low_open=True)
        check_input(x, "SpikingMLP.calibrate", ndims=(3,), size=self.in_features, what="([T, B, in_features])")
        if self.binary_input and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                "SpikingMLP was built with binary_input=True but the calibration batch holds values other "
                "than 0 and 1; build it with binary_input=False for counts or real-valued inputs"
            )
        rates = []
        with evaluation(self, "sample"):
            pairs = list(zip(self.layers, self.neurons))
            if self.output_neuron is not None:
                pairs.append((self.output, self.output_neuron))
            for i, (layer, neuron) in enumerate(pairs):
                beta, threshold = neuron.beta, float(neuron.threshold.mean())
                layer.calibrate_scale_(x, hidden_gain * threshold, lambda h: leaky_integrate(h, beta))
                x, _ = neuron.sequence(layer._moments(x), validate=False)
                rates.append(float(x.mean()))
                if rates[-1] < 1e-3:
                    warnings.warn(
                        f"SpikingMLP.calibrate: layer {i} fires at rate {rates[-1]:.2e} after calibration; "
                        "the network will not learn (raise hidden_gain or check the input activity)",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            if self.output_neuron is None:
                self.output.calibrate_scale_(
                    x, readout_std, lambda h: leaky_integrate(h, self.readout_beta).mean(0)
                )
        return rates


class BinaryMLP(nn.Module):
    """Non-spiking ±1-weight MLP ``in → [BernoulliLinear → activation] × L → BernoulliLinear``.

    The architecture of BayesBiNN's synthetic experiments (seed 001 B.1: two hidden layers of 64
    tanh units) built from sbnn's Bernoulli layers, so that every training method of
    :mod:`sbnn.training.methods` (BayesBiNN, SBNN's Adam-on-λ, STE, Bop, ProxConnect++ quantisers,
    full-precision Adam) runs on the same network. A time-major input ``[T, B, N]`` (e.g. real
    values repeated over ``T`` steps) is averaged over time first, so ``T`` changes nothing for a
    constant input; ``[B, N]`` is accepted as well.

    Args:
        in_features: input size ``N``.
        hidden: hidden layer sizes.
        out_features: outputs ``K`` (class logits, or 1 for regression).
        activation: ``"tanh"`` (seed 001) or ``"relu"``.
        bias: float biases in the Bernoulli layers.
        lam_std: standard deviation of the ``λ ~ N(0, lam_std²)`` initialisation.

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
        out_features: int = 2,
        *,
        activation: Literal["tanh", "relu"] = "tanh",
        bias: bool = True,
        lam_std: PositiveFloat = 0.5,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes):
            raise ValueError(
                f"BinaryMLP: in_features, hidden sizes and out_features must be positive integers, got "
                f"in_features={in_features!r}, hidden={list(hidden)!r}, out_features={out_features!r}"
            )
        check_choice("activation", activation, ("tanh", "relu"))
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.layers = nn.ModuleList(BernoulliLinear(a, b, bias=bias, lam_std=lam_std) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``[B, K]`` for ``[B, N]`` or time-major ``[T, B, N]`` input."""
        check_input(x, "BinaryMLP", ndims=(2, 3), size=self.in_features, what="([B, in_features] or [T, B, in_features])")
        if x.dim() == 3:
            x = x.mean(0)
        act = torch.tanh if self.activation == "tanh" else torch.relu
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)

"""SBNN architectures for the event-data recipes: a recurrent net for SHD, a conv net for DVS Gesture.

Both are built only from :class:`~sbnn.layers.BernoulliLinear` / :class:`~sbnn.layers.BernoulliConv2d`,
:class:`~sbnn.neurons.StochasticLIF` and pooling (no normalisation layers), expose
``forward_with_spikes`` and ``calibrate`` like :class:`sbnn.models.SpikingMLP` (so
:class:`sbnn.lightning.SpikingClassificationTask` calibrates and logs them), and keep their layers
in named, ordered submodules so that an exporter can walk them:

``SpikingRecurrentNet`` (per hidden layer ``i``, then the readout)::

    layers[i]     BernoulliLinear   feed-forward weights           (all T steps in one matmul)
    recurrent[i]  BernoulliLinear   recurrent weights S[t-1] -> h  (absent if recurrent=False)
    neurons[i]    StochasticLIF     input moments = layers[i](x)[t] + recurrent[i](S[t-1])
    output        BernoulliLinear   readout weights
    output_neuron StochasticLIF     only for readout="spike_count" (logits = spike counts);
                                    readout="membrane": logits = mean_t of U[t] = β_r U[t-1] + output(S)[t]

``SpikingConvNet``::

    convs[i]        BernoulliConv2d  3x3 (kernel_size), stride 1, 'same' padding
    conv_neurons[i] StochasticLIF
    pools[i]        MaxPool2d / AvgPool2d (pool) on the spikes
    (flatten [C, H, W] -> C·H·W)
    fcs[j]          BernoulliLinear, fc_neurons[j] StochasticLIF
    output, output_neuron  as above
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Sequence

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ._validation import check_choice, check_in_range, check_input
from .functional.estimators import get_estimator
from .functional.neurons import StochasticLIFState, leaky_integrate, time_average_weights
from .layers import BernoulliConv2d, BernoulliLinear, Moments
from .modes import evaluation
from .neurons import StochasticLIF

__all__ = ["SpikingRecurrentNet", "SpikingConvNet"]


def _check_sizes(owner: str, **sizes: Any) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in values):
            raise ValueError(f"{owner}: {name} must be positive integers, got {value!r}")


class _Readout(nn.Module):
    """Shared readout and neuron construction of the two nets."""

    def _neuron_kwargs(self, beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism, detach_reset) -> dict:
        return dict(
            beta=beta, threshold=threshold, sigma0=sigma0, noise=noise,
            estimator=get_estimator(estimator, **(estimator_kwargs or {})),
            reset_mechanism=reset_mechanism, detach_reset=detach_reset,
        )

    def _make_readout(self, in_features: int, out_features: int, readout: str, readout_beta: float, neuron: dict, layer: dict) -> None:
        check_choice("readout", readout, ("membrane", "spike_count"))
        check_in_range("readout_beta", readout_beta, 0.0, 1.0)
        self.readout, self.readout_beta, self.out_features = readout, readout_beta, out_features
        self.output = BernoulliLinear(in_features, out_features, **layer)
        self.output_neuron = StochasticLIF(**neuron) if readout == "spike_count" else None

    def _readout(self, x: Tensor, binary: bool) -> Tensor:
        """Logits ``[B, K]`` from the last hidden spikes ``x`` ``[T, B, F]``."""
        if self.output_neuron is not None:
            moments = self.output._spike_moments(x) if binary else self.output._moments(x)
            out_spk, _ = self.output_neuron.sequence(moments, validate=False)
            return out_spk.sum(0)
        # mean_t of the leaky readout membrane is a fixed weighted sum over time (see SpikingMLP)
        weights = time_average_weights(x.shape[0], self.readout_beta, like=x)
        return self.output.time_weighted(x, weights)

    def _calibrate_readout(self, x: Tensor, hidden_gain: float, readout_std: float, rates: list[float]) -> None:
        if self.output_neuron is not None:
            neuron = self.output_neuron
            self.output.calibrate_scale_(x, hidden_gain * float(neuron.threshold.mean()), lambda h: leaky_integrate(h, neuron.beta))
            spk, _ = neuron.sequence(self.output._moments(x), validate=False)
            rates.append(float(spk.mean()))
        else:
            self.output.calibrate_scale_(x, readout_std, lambda h: leaky_integrate(h, self.readout_beta).mean(0))

    @staticmethod
    def _warn_silent(owner: str, rates: list[float]) -> None:
        for i, rate in enumerate(rates):
            if rate < 1e-3:
                warnings.warn(
                    f"{owner}.calibrate: layer {i} fires at rate {rate:.2e} after calibration; the network will "
                    "not learn (raise hidden_gain or check the input activity)",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]``."""
        return self.forward_with_spikes(x)[0]


class SpikingRecurrentNet(_Readout):
    """Recurrent (or feed-forward) spiking Bayesian network for spike-train inputs such as SHD.

    Each hidden layer's neurons get, at step ``t``, the sum of the feed-forward LRT moments of the
    input and the recurrent LRT moments of the layer's own spikes ``S[t−1]``: means add and, the
    two weight sets being independent under the posterior, variances add.

    Args:
        in_features: input channels ``N`` (700 for SHD, fewer after down-sampling).
        hidden: sizes of the hidden spiking layers.
        out_features: number of classes ``K``.
        recurrent: add recurrent weights to every hidden layer (``False``: feed-forward).
        beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism,
            detach_reset: neuron constants (see :class:`sbnn.StochasticLIF`).
        readout: ``"membrane"`` (time-averaged non-spiking membrane, default) or ``"spike_count"``.
        readout_beta: leak of the readout membrane.
        bias: float biases in the feed-forward and output layers (never in the recurrent ones).
        binary_input: the input holds 0/1 spikes (``x² = x`` in the first layer).
        lam_std, prior_lam: ``λ`` initialisation and prior (see :class:`sbnn.BernoulliLinear`).
        recurrent_gain: calibration target of the recurrent input's free-membrane std, as a
            fraction of the feed-forward one (our choice: recurrence refines, the input drives).
        recurrent_spike_grad: factor on the gradient that flows back through the recurrent
            spikes ``S[t−1]`` (the forward pass is unchanged; the recurrent weights always get
            their gradient ``gμ[t]·S[t−1]ᵀ``). 0 (default) cuts it, 1 is full BPTT through the
            recurrence. Full BPTT multiplies the adjoint at every step by
            ``α W_rec diag(p(θ)/s)``, whose gain exceeds 1 once ``α`` grows in training with
            deterministic neurons (``s = σ0``: a surrogate peak of ≈ 4ϑ⁻¹), and the gradient
            explodes (``docs/recipes/shd.md``, "Why the recurrent spikes carry no gradient").

    Shape:
        - Input: ``[T, B, N]``, time-major.
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingRecurrentNet(20, (16,), 4)
        >>> tuple(net(torch.rand(10, 3, 20).round()).shape)
        (3, 4)
    """

    def __init__(
        self,
        in_features: PositiveInt = 700,
        hidden: Sequence[int] = (256,),
        out_features: PositiveInt = 20,
        *,
        recurrent: bool = True,
        beta: ClosedUnitInterval = 0.95,
        threshold: PositiveFloat = 1.0,
        sigma0: NonNegativeFloat = 0.1,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str = "st",
        estimator_kwargs: dict[str, Any] | None = None,
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: ClosedUnitInterval = 0.95,
        bias: bool = False,
        binary_input: bool = True,
        lam_std: PositiveFloat = 0.5,
        prior_lam: float = 0.0,
        recurrent_gain: PositiveFloat = 0.5,
        recurrent_spike_grad: ClosedUnitInterval = 0.0,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        _check_sizes("SpikingRecurrentNet", in_features=in_features, hidden=hidden, out_features=out_features)
        if not hidden:
            raise ValueError("SpikingRecurrentNet: hidden must name at least one layer, e.g. [256]")
        check_in_range("recurrent_gain", recurrent_gain, 0.0, low_open=True)
        check_in_range("recurrent_spike_grad", recurrent_spike_grad, 0.0, 1.0)
        neuron = self._neuron_kwargs(beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism, detach_reset)
        layer = dict(bias=bias, lam_std=lam_std, prior_lam=prior_lam)
        sizes = [in_features, *hidden]
        self.in_features, self.binary_input, self.recurrent_gain = in_features, binary_input, recurrent_gain
        self.recurrent_spike_grad = float(recurrent_spike_grad)
        self.layers = nn.ModuleList(BernoulliLinear(a, b, **layer) for a, b in zip(sizes[:-1], sizes[1:]))
        self.recurrent = (
            nn.ModuleList(BernoulliLinear(h, h, bias=False, lam_std=lam_std, prior_lam=prior_lam) for h in hidden)
            if recurrent else None
        )
        self.neurons = nn.ModuleList(StochasticLIF(**neuron) for _ in hidden)
        self._make_readout(hidden[-1], out_features, readout, readout_beta, neuron, layer)

    @staticmethod
    def _damp(spikes: Tensor, factor: float) -> Tensor:
        """``spikes`` with the gradient through them scaled by ``factor`` (value unchanged)."""
        if factor == 1.0 or not spikes.requires_grad:
            return spikes
        if factor == 0.0:
            return spikes.detach()
        return spikes.detach() + factor * (spikes - spikes.detach())

    def _recurrent_sequence(self, ff: Moments, rec: BernoulliLinear, neuron: StochasticLIF) -> Tensor:
        """Spikes ``[T, B, H]`` of a layer whose step-``t`` moments are ``ff[t] + rec(S[t−1])``."""
        means = ff.mean.unbind(0)
        variances = ff.var.unbind(0) if ff.var is not None else [None] * len(means)
        state: StochasticLIFState | None = None
        spikes = []
        for t, (mu, var) in enumerate(zip(means, variances)):
            if t > 0:  # S[−1] = 0 adds nothing
                r = rec._moments(self._damp(spikes[-1], self.recurrent_spike_grad))
                mu = mu + r.mean
                var = var + r.var if (var is not None and r.var is not None) else var
            spk, mem = neuron.sequence(Moments(mu[None], None if var is None else var[None]), state=state, validate=False)
            state = StochasticLIFState(mem[0], spk[0])
            spikes.append(spk[0])
        return torch.stack(spikes)

    def _hidden(self, i: int, x: Tensor) -> Tensor:
        layer, neuron = self.layers[i], self.neurons[i]
        moments = layer._spike_moments(x) if (i > 0 or self.binary_input) else layer._moments(x)
        if self.recurrent is None:
            return neuron.sequence(moments, validate=False)[0]
        return self._recurrent_sequence(moments, self.recurrent[i], neuron)

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, K]`` and the hidden layers' spike trains (each ``[T, B, H]``)."""
        check_input(x, "SpikingRecurrentNet", ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")
        spikes = []
        for i in range(len(self.layers)):
            x = self._hidden(i, x)
            spikes.append(x)
        return self._readout(x, binary=True), spikes

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0, readout_std: float = 3.0) -> list[float]:
        """Data-dependent scales on a batch ``[T, B, N]`` (DESIGN §7), layer by layer in ``sample`` mode.

        Feed-forward layer: free-membrane std ``hidden_gain·ϑ``; recurrent layer: ``recurrent_gain``
        times that, measured on the layer's spikes without recurrence shifted by one step; then
        the layer's spikes (with recurrence) feed the next. Readout as in
        :meth:`sbnn.models.SpikingMLP.calibrate`.

        Returns:
            Firing rates of the hidden layers (and of a spike-count output layer).
        """
        check_in_range("hidden_gain", hidden_gain, 0.0, low_open=True)
        check_in_range("readout_std", readout_std, 0.0, low_open=True)
        check_input(x, "SpikingRecurrentNet.calibrate", ndims=(3,), size=self.in_features, what="([T, B, in_features])")
        if self.binary_input and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                "SpikingRecurrentNet was built with binary_input=True but the calibration batch holds values other "
                "than 0 and 1; build it with binary_input=False for spike counts"
            )
        rates: list[float] = []
        with evaluation(self, "sample"):
            for i, (layer, neuron) in enumerate(zip(self.layers, self.neurons)):
                target = hidden_gain * float(neuron.threshold.mean())
                integrate = lambda h, b=neuron.beta: leaky_integrate(h, b)  # noqa: E731
                layer.calibrate_scale_(x, target, integrate)
                if self.recurrent is not None:
                    alone, _ = neuron.sequence(layer._moments(x), validate=False)
                    shifted = torch.cat([torch.zeros_like(alone[:1]), alone[:-1]])
                    if float(shifted.sum()) > 0:
                        self.recurrent[i].calibrate_scale_(shifted, self.recurrent_gain * target, integrate)
                x = self._hidden(i, x)
                rates.append(float(x.mean()))
            self._calibrate_readout(x, hidden_gain, readout_std, rates)
        self._warn_silent("SpikingRecurrentNet", rates)
        return rates


class SpikingConvNet(_Readout):
    """Convolutional spiking Bayesian network for event frames such as DVS Gesture.

    ``[BernoulliConv2d → StochasticLIF → pool] × len(channels) → flatten →
    [BernoulliLinear → StochasticLIF] × len(fc) → readout``; no normalisation layers. Every
    convolution runs on all ``T`` frames at once (time folded into the batch); only the neurons
    loop over time.

    Args:
        in_channels: input channels (2 polarities for DVS Gesture).
        input_size: input height and width (an int for square frames), e.g. 32 after 4×
            down-sampling of the 128×128 sensor.
        channels: output channels of the convolution blocks.
        out_features: number of classes ``K``.
        kernel_size: convolution kernel (odd; 'same' padding).
        pool: pooling window and stride after every block (1: no pooling).
        pool_type: ``"max"`` (keeps spikes binary: an OR over the window, which deploys as
            bit operations) or ``"avg"``.
        fc: sizes of hidden fully connected spiking layers after the convolutions.
        beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism,
            detach_reset: neuron constants (see :class:`sbnn.StochasticLIF`).
        readout, readout_beta: see :class:`SpikingRecurrentNet`.
        bias: float biases in the Bernoulli layers.
        lam_std, prior_lam: ``λ`` initialisation and prior.

    Shape:
        - Input: ``[T, B, C_in, H, W]`` frames (spikes or counts), time-major.
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingConvNet(2, 8, (4,), 3, fc=())
        >>> tuple(net(torch.rand(5, 2, 2, 8, 8).round()).shape)
        (2, 3)
    """

    def __init__(
        self,
        in_channels: PositiveInt = 2,
        input_size: int | tuple[int, int] = 32,
        channels: Sequence[int] = (32, 64),
        out_features: PositiveInt = 11,
        *,
        kernel_size: PositiveInt = 3,
        pool: PositiveInt = 2,
        pool_type: Literal["max", "avg"] = "max",
        fc: Sequence[int] = (128,),
        beta: ClosedUnitInterval = 0.9,
        threshold: PositiveFloat = 1.0,
        sigma0: NonNegativeFloat = 0.1,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str = "st",
        estimator_kwargs: dict[str, Any] | None = None,
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: ClosedUnitInterval = 0.9,
        bias: bool = False,
        lam_std: PositiveFloat = 0.5,
        prior_lam: float = 0.0,
    ) -> None:
        super().__init__()
        channels, fc = list(channels), list(fc)
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        _check_sizes("SpikingConvNet", in_channels=in_channels, input_size=[h, w], channels=channels, fc=fc,
                     out_features=out_features, kernel_size=kernel_size, pool=pool)
        if not channels:
            raise ValueError("SpikingConvNet: channels must name at least one convolution block, e.g. [32, 64]")
        if kernel_size % 2 == 0:
            raise ValueError(f"SpikingConvNet: kernel_size must be odd for 'same' padding, got {kernel_size}")
        check_choice("pool_type", pool_type, ("max", "avg"))
        for _ in channels:
            if h < pool or w < pool:
                raise ValueError(
                    f"SpikingConvNet: input_size {input_size} is too small for {len(channels)} blocks pooling by {pool}; "
                    "use fewer channels entries, a smaller pool or a larger input"
                )
            h, w = h // pool, w // pool
        neuron = self._neuron_kwargs(beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism, detach_reset)
        layer = dict(bias=bias, lam_std=lam_std, prior_lam=prior_lam)
        self.in_channels, self.input_size, self.pool_type = in_channels, input_size, pool_type
        self.convs = nn.ModuleList(
            BernoulliConv2d(a, b, kernel_size, padding=kernel_size // 2, **layer)
            for a, b in zip([in_channels, *channels[:-1]], channels)
        )
        self.conv_neurons = nn.ModuleList(StochasticLIF(**neuron) for _ in channels)
        pool_cls = nn.MaxPool2d if pool_type == "max" else nn.AvgPool2d
        self.pools = nn.ModuleList(pool_cls(pool) if pool > 1 else nn.Identity() for _ in channels)
        flat = channels[-1] * h * w
        sizes = [flat, *fc]
        self.fcs = nn.ModuleList(BernoulliLinear(a, b, **layer) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc_neurons = nn.ModuleList(StochasticLIF(**neuron) for _ in fc)
        self._make_readout(sizes[-1], out_features, readout, readout_beta, neuron, layer)

    @staticmethod
    def _pool(pool: nn.Module, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        out = pool(x.reshape(t * b, *x.shape[2:]))
        return out.reshape(t, b, *out.shape[1:])

    def _conv_block(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        spk, _ = self.conv_neurons[i].sequence(self.convs[i]._moments(x), validate=False)
        return spk, self._pool(self.pools[i], spk)

    def _check(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(5,), size=self.in_channels, dim=2, what="([T, B, C_in, H, W], time-major)")
        size = (self.input_size, self.input_size) if isinstance(self.input_size, int) else tuple(self.input_size)
        if tuple(x.shape[3:]) != size:
            raise ValueError(f"{name} expects frames of size {size}, got shape {tuple(x.shape)}; check the down-sampling")

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, K]`` and every spiking layer's spikes (conv: ``[T, B, C, H, W]``)."""
        self._check(x, "SpikingConvNet")
        spikes = []
        for i in range(len(self.convs)):
            spk, x = self._conv_block(i, x)
            spikes.append(spk)
        x = x.flatten(2)
        binary = self.pool_type == "max"
        for j, (layer, neuron) in enumerate(zip(self.fcs, self.fc_neurons)):
            moments = layer._spike_moments(x) if (binary or j > 0) else layer._moments(x)
            x, _ = neuron.sequence(moments, validate=False)
            spikes.append(x)
        return self._readout(x, binary=binary or bool(self.fcs)), spikes

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0, readout_std: float = 3.0) -> list[float]:
        """Data-dependent scales on a batch ``[T, B, C, H, W]``, layer by layer (DESIGN §7).

        Returns:
            Firing rates of every spiking layer.
        """
        check_in_range("hidden_gain", hidden_gain, 0.0, low_open=True)
        check_in_range("readout_std", readout_std, 0.0, low_open=True)
        self._check(x, "SpikingConvNet.calibrate")
        rates: list[float] = []
        with evaluation(self, "sample"):
            for i, (conv, neuron) in enumerate(zip(self.convs, self.conv_neurons)):
                conv.calibrate_scale_(x, hidden_gain * float(neuron.threshold.mean()), lambda h, b=neuron.beta: leaky_integrate(h, b))
                spk, x = self._conv_block(i, x)
                rates.append(float(spk.mean()))
            x = x.flatten(2)
            for layer, neuron in zip(self.fcs, self.fc_neurons):
                layer.calibrate_scale_(x, hidden_gain * float(neuron.threshold.mean()), lambda h, b=neuron.beta: leaky_integrate(h, b))
                x, _ = neuron.sequence(layer._moments(x), validate=False)
                rates.append(float(x.mean()))
            self._calibrate_readout(x, hidden_gain, readout_std, rates)
        self._warn_silent("SpikingConvNet", rates)
        return rates

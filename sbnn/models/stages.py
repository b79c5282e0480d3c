r"""The stages a :class:`~sbnn.models.SpikingClassifier` runs its input through, and its readout.

A stage is a light view over modules its model owns (it is not itself a module, so the model's
parameter names stay those of its own attributes). It knows three things:

- ``forward(x, binary) -> (x, binary, spikes)``: run the whole time-major sequence; ``binary``
  says whether ``x`` holds 0/1 spikes (a linear layer then uses ``x² = x``, one matmul);
- ``calibrate(x, binary, settings) -> (x, binary, rates)``: set the stage's scales ``α`` from the
  batch (``docs/design.md §7``), then run it;
- ``export(shape) -> (nodes, shape)``: the deployable ``mode`` nodes (:mod:`sbnn.models.graph`).

Calibration of a spiking stage: the free membrane ``U[t] = βU[t−1] + h[t]`` of its neurons
gets standard deviation ``hidden_gain·ϑ``; a recurrent input gets ``recurrent_gain`` times that,
measured on the layer's own spikes without recurrence, shifted by one step. The membrane
readout's logits get standard deviation ``readout_std``; a spike-count readout is calibrated
as a hidden layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..functional.neurons import StochasticLIFState, leaky_integrate, time_average_weights
from ..functional.recurrent import recurrent_lif_sequence
from ..functional.layers import joint_lrt_weight
from ..layers import BernoulliLayer, BernoulliLinear, Moments
from ..neurons import StochasticLIF
from . import graph
from .blocks import calibrate_rms_
from .settings import CalibrationSettings
from .time_affine import apply_time_affine, apply_time_affine_step

__all__ = [
    "Stage",
    "SpikingStage",
    "Flatten",
    "ResidualStem",
    "ResidualBlockStage",
    "SpikeOut",
    "Pool",
    "Readout",
    "recurrent_sequence",
    "recurrent_sequence_stepwise",
    "joint_recurrent_weight",
    "scale_gradient",
]


class Stage:
    """Interface of a stage (see the module docstring)."""

    def forward(self, x: Any, binary: bool) -> tuple[Any, bool, list[Tensor]]:  # pragma: no cover - interface
        raise NotImplementedError

    def calibrate(self, x: Any, binary: bool, settings: CalibrationSettings) -> tuple[Any, bool, list[float]]:
        out, binary, spikes = self.forward(x, binary)
        return out, binary, [float(s.mean()) for s in spikes]

    def export(self, shape: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
        raise ValueError(f"{type(self).__name__} has no counterpart in the event-driven engine")


def _free_membrane(beta: Tensor | float):
    return lambda h: leaky_integrate(h, beta)


def _pool_frames(pool: nn.Module, x: Tensor) -> Tensor:
    t, b = x.shape[:2]
    out = pool(x.reshape(t * b, *x.shape[2:]))
    return out.reshape(t, b, *out.shape[1:])


def scale_gradient(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged in the forward pass, with the gradient through it multiplied by ``factor``."""
    if factor == 1.0 or not x.requires_grad:
        return x
    if factor == 0.0:
        return x.detach()
    return x.detach() + factor * (x - x.detach())


def recurrent_sequence(
    ff: Moments, rec: BernoulliLinear, neuron: StochasticLIF, spike_grad: float = 1.0, shared_affine: nn.Module | None = None
) -> Tensor:
    """Spikes ``[T, B, H]`` of a layer whose step-``t`` moments are ``ff[t] + rec(S[t−1])``.

    Means add and, the two weight sets being independent under the posterior, variances add.
    ``S[−1] = 0`` adds nothing at ``t = 0``. ``spike_grad`` scales the gradient that flows back
    through ``S[t−1]`` (the recurrent weights get theirs either way; see
    :class:`~sbnn.models.SpikingRecurrentNet`).

    In training (recurrent weights in ``sample`` mode, pathwise neurons, LRT input moments) the
    layer runs as one autograd node (:func:`sbnn.functional.recurrent.recurrent_lif_sequence`):
    no allocation inside its time loop, and only ``θ``, ``s`` and ``ε`` saved for the backward
    pass. Otherwise (deterministic modes, the marginal noise model, a neuron reporting its drive)
    it runs step by step (:func:`recurrent_sequence_stepwise`); both compute the same spikes and
    gradients for the same noise. ``shared_affine``: the feed-forward layer's
    :class:`~sbnn.models.time_affine.TimeAffine`, whose gain of step ``t`` also multiplies the
    recurrent current (``LayerSettings(time_affine_recurrent="shared")``).
    """
    if shared_affine is None and _fused_applies(ff, rec, neuron):
        mu = ff.mean
        p = neuron.parameters_tuple()
        eps = p.noise.sample(mu.shape, like=mu, batch_dim=1) if neuron.stochastic else torch.zeros_like(mu)
        return recurrent_lif_sequence(mu, ff.var, joint_recurrent_weight(rec), p, eps, spike_grad=spike_grad)
    return recurrent_sequence_stepwise(ff, rec, neuron, spike_grad, shared_affine)


def _fused_applies(ff: Moments, rec: BernoulliLinear, neuron: StochasticLIF) -> bool:
    return (
        isinstance(rec, BernoulliLinear)  # the joint table is the Bernoulli family's [α m; α²(1 − m²)]
        and rec.mode == "sample"
        and rec.bias is None
        and getattr(rec, "time_affine", None) is None  # a per-step gain on the recurrent current runs step by step
        and ff.var is not None
        and ff.mean.dim() == 3
        and neuron.membrane_noise == "pathwise"
        and not neuron.reports_drive
        and neuron.noise_source is None
    )


def joint_recurrent_weight(rec: BernoulliLinear) -> Tensor:
    """``[α m; α²(1 − m²)]``, ``[2H, H]``: both LRT moments of a recurrent layer from one matmul."""
    return joint_lrt_weight(rec.lam, rec.scale)


def recurrent_sequence_stepwise(
    ff: Moments, rec: BernoulliLinear, neuron: StochasticLIF, spike_grad: float = 1.0, shared_affine: nn.Module | None = None
) -> Tensor:
    """:func:`recurrent_sequence` one step at a time through the neuron's :meth:`~sbnn.StochasticLIF.sequence`."""
    means = ff.mean.unbind(0)
    variances = ff.var.unbind(0) if ff.var is not None else [None] * len(means)
    state: StochasticLIFState | None = None
    spikes: list[Tensor] = []
    for t, (mu, var) in enumerate(zip(means, variances)):
        if t > 0:
            r = apply_time_affine_step(rec, rec.moments(scale_gradient(spikes[-1], spike_grad), validate=False), t)
            if shared_affine is not None:
                r = shared_affine.gain_step(r, t)
            mu = mu + r.mean
            var = var + r.var if (var is not None and r.var is not None) else var
        # the returned state carries the marginal model's conditional mean and variance
        spk, _, state = neuron.sequence(
            Moments(mu[None], None if var is None else var[None]), state=state, validate=False, return_state=True
        )
        spikes.append(spk[0])
    return torch.stack(spikes)


class SpikingStage(Stage):
    """``layer → neuron`` (optionally with recurrent weights, optionally followed by pooling).

    Args:
        layer: a :class:`~sbnn.BernoulliLinear` or :class:`~sbnn.BernoulliConv2d`.
        neuron: its :class:`~sbnn.StochasticLIF`.
        recurrent: recurrent weights ``S[t−1] → h[t]`` (linear layers only).
        recurrent_spike_grad: factor on the gradient through the recurrent spikes ``S[t−1]``.
        pool: a pooling module on the spikes (``nn.Identity`` or ``None``: none).
        output_binary: whether the stage's output is 0/1 (not after average pooling).
        shared_affine: the recurrent current shares ``layer``'s per-time-step gain (it has no
            gain and bias of its own).
    """

    def __init__(
        self,
        layer: BernoulliLayer,
        neuron: StochasticLIF,
        *,
        recurrent: BernoulliLinear | None = None,
        recurrent_spike_grad: float = 1.0,
        pool: nn.Module | None = None,
        output_binary: bool = True,
        shared_affine: bool = False,
    ) -> None:
        self.layer, self.neuron, self.recurrent = layer, neuron, recurrent
        self.shared_affine = shared_affine
        self.recurrent_spike_grad = recurrent_spike_grad
        self.pool = None if isinstance(pool, nn.Identity) else pool
        self.output_binary = output_binary

    def _spikes(self, x: Tensor, binary: bool) -> Tensor:
        moments = apply_time_affine(self.layer, self.layer.moments(x, binary=binary, validate=False))
        if self.recurrent is None:
            return self.neuron.sequence(moments, validate=False)[0]
        shared = getattr(self.layer, "time_affine", None) if self.shared_affine else None
        return recurrent_sequence(moments, self.recurrent, self.neuron, self.recurrent_spike_grad, shared)

    def forward(self, x: Tensor, binary: bool) -> tuple[Tensor, bool, list[Tensor]]:
        spk = self._spikes(x, binary)
        out = spk if self.pool is None else _pool_frames(self.pool, spk)
        return out, self.output_binary, [spk]

    def calibrate(self, x: Tensor, binary: bool, settings: CalibrationSettings) -> tuple[Tensor, bool, list[float]]:
        target = settings.hidden_gain * float(self.neuron.threshold.mean())
        integrate = _free_membrane(self.neuron.beta)
        self.layer.calibrate_scale_(x, target, integrate)
        if self.recurrent is not None:
            alone, _ = self.neuron.sequence(self.layer.moments(x, validate=False), validate=False)
            shifted = torch.cat([torch.zeros_like(alone[:1]), alone[:-1]])
            if float(shifted.sum()) > 0:
                self.recurrent.calibrate_scale_(shifted, settings.recurrent_gain * target, integrate)
        else:
            binary = False  # feed-forward layers calibrate on the general two-matmul moments
        out, out_binary, spikes = self.forward(x, binary)
        return out, out_binary, [float(spikes[0].mean())]

    def export(self, shape: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
        if isinstance(self.layer, BernoulliLinear):
            return [graph.dense_node(self.layer, self.neuron, recurrent=self.recurrent)], (self.layer.out_features,)
        node = graph.conv_node(self.layer, self.neuron, shape)
        nodes, shape = [node], node.out_shape
        if self.pool is not None:
            if not isinstance(self.pool, nn.MaxPool2d):
                raise ValueError(
                    "pool_type='avg' cannot be exported: average pooling turns spikes into fractions, which the event-driven engine (binary spikes "
                    "between layers) cannot represent; train with pool_type='max' (an OR over the window) or pool=1"
                )
            node = graph.maxpool_node(self.pool, shape, "a pooling layer")
            nodes.append(node)
            shape = node.out_shape
        return nodes, shape


class Flatten(Stage):
    """``[T, B, C, H, W]`` → ``[T, B, C·H·W]``."""

    def forward(self, x: Tensor, binary: bool) -> tuple[Tensor, bool, list[Tensor]]:
        return x.flatten(2), binary, []

    def export(self, shape: tuple[int, ...]) -> tuple[list, tuple[int, ...]]:
        return [], (math.prod(shape),)


class ResidualStem(Stage):
    """A Bernoulli layer whose moments start a residual stream; with ``neuron`` (spike shortcut), its spikes do.

    Calibration: the stem gives ``first`` (the neuron that integrates the stream first) a
    free-membrane RMS of ``hidden_gain·ϑ`` (:func:`sbnn.models.blocks.calibrate_rms_`).
    """

    def __init__(self, layer: BernoulliLayer, neuron: StochasticLIF | None, first: StochasticLIF) -> None:
        self.layer, self.neuron, self.first = layer, neuron, first

    def forward(self, x: Tensor, binary: bool) -> tuple[Moments, bool, list[Tensor]]:
        stream = apply_time_affine(self.layer, self.layer.moments(x, binary=binary, validate=False))
        if self.neuron is None:
            return stream, False, []
        spk, _ = self.neuron.sequence(stream, validate=False)
        return Moments(spk, None), False, [spk]

    def calibrate(self, x: Tensor, binary: bool, settings: CalibrationSettings) -> tuple[Moments, bool, list[float]]:
        calibrate_rms_(self.layer, x, settings.hidden_gain * float(self.first.threshold.mean()), self.first.beta)
        out, binary, spikes = self.forward(x, binary)
        return out, binary, [float(s.mean()) for s in spikes]


class ResidualBlockStage(Stage):
    """One residual block (:mod:`sbnn.models.blocks`) on the stream."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def forward(self, x: Moments, binary: bool) -> tuple[Moments, bool, list[Tensor]]:
        stream, spikes = self.block(x, validate=False)
        return stream, False, spikes

    def calibrate(self, x: Moments, binary: bool, settings: CalibrationSettings) -> tuple[Moments, bool, list[float]]:
        stream, rates = self.block.calibrate(x, settings.hidden_gain)
        return stream, False, rates


class SpikeOut(Stage):
    """The end of a residual stream: a neuron's spikes (membrane shortcut) or the spike sums themselves."""

    def __init__(self, neuron: StochasticLIF | None) -> None:
        self.neuron = neuron

    def forward(self, x: Moments, binary: bool) -> tuple[Tensor, bool, list[Tensor]]:
        if self.neuron is None:
            return x.mean, False, []
        spk, _ = self.neuron.sequence(x, validate=False)
        return spk, False, [spk]


class Pool(Stage):
    """Global average pooling over space (``"avg"``) or flattening of every position (``"flatten"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def forward(self, x: Tensor, binary: bool) -> tuple[Tensor, bool, list[Tensor]]:
        if self.kind == "flatten":
            return x.flatten(-3), binary, []  # [T, B, C·h·w]
        return x.mean(dim=(-2, -1)), False, []  # [T, B, C]


class Readout:
    """The classifier's output layer: logits ``[B, K]`` from the last hidden activity ``[T, B, F]``.

    ``membrane`` (``neuron`` is ``None``): the time average of a non-spiking leaky membrane
    ``U[t] = β U[t−1] + output(x)[t]``, a fixed weighted sum over time whose LRT noise is
    reparameterised, so the gradient reaches ``v`` through ``sqrt(v)·ξ``. ``spike_count``: the
    spike counts of stochastic output neurons.

    Args:
        output: the readout's Bernoulli linear layer.
        neuron: the output neurons (spike-count readout) or ``None``.
        beta: leak ``β`` of the membrane readout.
        noise: ``False``: the membrane readout is the mean network's in every mode,
            ``Σ_t w_t (W̄ x[t] + b)`` (``LayerSettings(readout_noise=False)``).
    """

    def __init__(self, output: BernoulliLinear, neuron: StochasticLIF | None, beta: float, noise: bool = True) -> None:
        self.output, self.neuron, self.beta, self.noise = output, neuron, beta, noise

    def forward(self, x: Tensor, binary: bool) -> Tensor:
        if self.neuron is not None:
            moments = self.output.moments(x, binary=binary, validate=False)
            return self.neuron.sequence(moments, validate=False)[0].sum(0)
        weights = time_average_weights(x.shape[0], self.beta, like=x)
        if not self.noise and self.output.mode == "sample":
            # the LRT mean W̄·Σ_t w_t x[t] + b, with the bias weighted by Σ_t w_t as time_weighted does
            mean = self.output.moments(torch.tensordot(weights, x, dims=1), validate=False).mean
            bias = self.output.bias
            return mean if bias is None else mean + bias * (weights.sum() - 1.0)
        return self.output.time_weighted(x, weights, binary=binary, validate=False)

    def calibrate(self, x: Tensor, settings: CalibrationSettings) -> list[float]:
        """Set the readout's scale; returns the output neurons' firing rate (spike-count readout only)."""
        if self.neuron is not None:
            neuron = self.neuron
            self.output.calibrate_scale_(x, settings.hidden_gain * float(neuron.threshold.mean()), _free_membrane(neuron.beta))
            spk, _ = neuron.sequence(self.output.moments(x, validate=False), validate=False)
            return [float(spk.mean())]
        self.output.calibrate_scale_(x, settings.readout_std, lambda h: leaky_integrate(h, self.beta).mean(0))
        return []

    def export(self) -> list:
        return [graph.dense_node(self.output, self.neuron if self.neuron is not None else self.beta)]


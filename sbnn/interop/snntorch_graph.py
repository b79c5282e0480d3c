r"""The deployed graph as an snnTorch network: torch.nn synapses and snnTorch neurons, step by step.

:func:`snntorch_network` builds, from a :class:`sbnn.kernels.graph.Graph` (or any exportable
sbnn model's ``mode`` network), a network of ``torch.nn.Linear``/``torch.nn.Conv2d`` layers
holding the ±1 weights, a :class:`ScaleBias` for ``α`` and the bias, :class:`SbnnLeaky` neurons
(a subclass of ``snntorch.Leaky``), ``torch.nn.MaxPool2d`` for max pooling of spikes and a
:class:`LeakyIntegrator` for the membrane readout. It runs one time step per call, as snnTorch
networks do, and it is what NeuroBench's ``SNNTorchModel`` wraps: NeuroBench's hooks count the
outputs of every ``snntorch.SpikingNeuron`` (activation sparsity) and the inputs of every
``nn.Linear``/``nn.Conv2d`` (synaptic operations).

=============================== ============================================================
graph node                      modules (one :class:`SpikingLayer` per node unless stated)
=============================== ============================================================
``Dense`` synapses              ``nn.Flatten`` (after a conv) → ``nn.Linear`` (weights ±1,
                                no bias) → :class:`ScaleBias` ``μ = fl(n·α) + b``
``Conv2d`` synapses             ``nn.Conv2d`` (weights ±1, no bias) → :class:`ScaleBias`
recurrent synapses              ``nn.Linear`` on the layer's own spikes of ``t − 1`` →
                                :class:`ScaleBias`, added: ``μ = μ_ff + μ_rec``
``LIF`` (any reset)             :class:`SbnnLeaky`
``MaxPool2d``                   ``nn.MaxPool2d`` (the node's own module)
``MembraneReadout``             :class:`LeakyIntegrator` (not a spiking neuron)
=============================== ============================================================

**Exactness.** The ±1 weights make every pre-activation ``n`` an exact integer sum of input
counts (below ``2²⁴``, exact in float32 in any summation order), and the float work follows the
engine's order (:mod:`sbnn.kernels._kernels`): ``μ = fl(fl(n·α) + b)``, then the neuron. Hidden
spikes and spike-count outputs therefore equal the engine's and the PyTorch ``mode`` network's bit
for bit; the membrane readout integrates step by step in float32, while the engine sums the time
average in float64, so the logits agree to float32 rounding.

**snnTorch's Leaky and sbnn's LIF.** ``snntorch.Leaky`` (1.0) keeps the pre-reset membrane and
applies the previous step's reset at the next update, as sbnn does, but differs in three details
that change spikes: it fires when ``U > ϑ`` (sbnn: ``U ≥ ϑ``; equality is common with dyadic
scales and thresholds), and its subtract and no-reset updates round twice,
``fl(fl(β·U) + μ)``, where sbnn fuses ``fma(U, β, μ)`` (``torch.addcmul``). Its zero reset,
``fl(β·fl((1 − S)·U)) + μ``, already equals sbnn's. :class:`SbnnLeaky` overrides exactly those
three methods.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import snntorch
import torch
from torch import Tensor, nn

from ..kernels.graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses

__all__ = ["SbnnLeaky", "ScaleBias", "LeakyIntegrator", "SpikingLayer", "SNNTorchNet", "SNNTorchRun", "snntorch_network", "dense_synops"]


class SbnnLeaky(snntorch.Leaky):
    r"""``snntorch.Leaky`` with the arithmetic of sbnn's deterministic LIF neuron (``ε = 0``).

    .. math::

        \bar U[t] &= \mathrm{fma}(U[t−1], β, μ[t]) − ϑ S[t−1]   && \text{(subtract)} \\
        \bar U[t] &= μ[t] + \mathrm{fl}(β U[t−1])(1 − S[t−1])    && \text{(zero)} \\
        \bar U[t] &= \mathrm{fma}(U[t−1], β, μ[t])               && \text{(none)} \\
        S[t] &= [\bar U[t] ≥ ϑ]

    Everything else is snnTorch's (``reset_delay=True``: the stored membrane is ``Ū``, the reset
    of a spike applies at the next step; the previous spike is recomputed from it as
    ``Ū[t−1] ≥ ϑ``). ``surrogate_disable=True``: this neuron is for inference, and it pickles
    (snnTorch's default surrogate is a closure).

    Args:
        beta: leak ``[1]`` or one per unit (broadcastable to the layer's ``[B, ...]`` input;
            ``[C, 1, 1]`` for a conv layer).
        threshold: ``ϑ > 0``, shaped like ``beta``.
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.

    Shape:
        - input: ``μ[t]`` ``[B, ...]``; output: ``(S[t], Ū[t])``, both ``[B, ...]``.

    Example:
        >>> import torch
        >>> n = SbnnLeaky(torch.tensor([0.5]), torch.tensor([1.0]))
        >>> [float(n(torch.ones(1, 1))[0]) for _ in range(3)]
        [1.0, 0.0, 1.0]
    """

    def __init__(self, beta: Tensor, threshold: Tensor, reset_mechanism: str = "subtract") -> None:
        super().__init__(beta=beta, threshold=threshold, reset_mechanism=reset_mechanism, surrogate_disable=True)
        # snnTorch keeps every neuron in a class-level list for its init_hidden resets, which this
        # neuron does not use; leaving it there would keep every network built (and its state) alive
        if self in snntorch.SpikingNeuron.instances:
            snntorch.SpikingNeuron.instances.remove(self)

    def fire(self, mem: Tensor) -> Tensor:
        """``S = [U ≥ ϑ]`` (snnTorch: ``U > ϑ``)."""
        return (mem >= self.threshold).to(mem.dtype)

    def mem_reset(self, mem: Tensor) -> Tensor:
        """The previous step's spike, recomputed from the stored membrane ``Ū[t−1]``."""
        return self.fire(mem).detach()

    def _base_sub(self, input_: Tensor) -> Tensor:
        return torch.addcmul(input_, self.mem, self.beta).addcmul_(self.reset, -self.threshold)

    def _base_int(self, input_: Tensor) -> Tensor:
        return torch.addcmul(input_, self.mem, self.beta)


class ScaleBias(nn.Module):
    """``μ = fl(n·α) + b``: the scale and bias of a ±1 layer, applied after its integer sum.

    Args:
        alpha: ``[1]`` or one per output unit / channel, broadcastable to the layer's output.
        bias: shaped like ``alpha``'s per-unit form, or ``None``.
    """

    def __init__(self, alpha: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)
        self.register_buffer("bias", bias)

    def forward(self, n: Tensor) -> Tensor:
        mu = n * self.alpha
        return mu if self.bias is None else mu + self.bias


class LeakyIntegrator(nn.Module):
    """Non-spiking readout membrane ``U[t] = β U[t−1] + h[t]`` (sbnn's ``leaky_integrate``, one step per call).

    Deliberately not an ``snntorch.SpikingNeuron``: it has no spikes, so NeuroBench's activation
    sparsity does not count it, as the engine's does not (its outputs are the logits' terms).
    The logits are the time average of ``U``.

    Args:
        beta: the leak ``β ∈ [0, 1]``.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.register_buffer("beta", torch.tensor(float(beta), dtype=torch.float32))
        self.mem: Tensor | None = None

    def reset_state(self) -> None:
        self.mem = None

    def forward(self, h: Tensor) -> Tensor:
        self.mem = h if self.mem is None else self.beta * self.mem + h
        return self.mem


class SpikingLayer(nn.Module):
    """One synaptic graph node: ±1 synapses (and recurrent ones) → scale and bias → neuron.

    Args:
        synapse: ``nn.Linear`` or ``nn.Conv2d`` with ±1 weights and no bias.
        scale: its :class:`ScaleBias`.
        neuron: :class:`SbnnLeaky` or, for the readout, :class:`LeakyIntegrator`.
        recurrent: ``nn.Linear`` with ±1 weights from the layer's spikes at ``t − 1``, or ``None``.
        recurrent_scale: its :class:`ScaleBias`.
        flatten: flatten ``[B, C, H, W]`` to ``[B, C·H·W]`` before a dense synapse.

    Shape:
        - input ``[B, ...]`` one time step; output: spikes (or the readout membrane) ``[B, ...]``.
    """

    def __init__(
        self,
        synapse: nn.Module,
        scale: ScaleBias,
        neuron: nn.Module,
        recurrent: nn.Linear | None = None,
        recurrent_scale: ScaleBias | None = None,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten() if flatten else None
        self.synapse, self.scale, self.neuron = synapse, scale, neuron
        self.recurrent, self.recurrent_scale = recurrent, recurrent_scale
        self.spikes: Tensor | None = None  # S[t−1], for the recurrent synapses

    def reset_state(self) -> None:
        self.spikes = None
        if isinstance(self.neuron, LeakyIntegrator):
            self.neuron.reset_state()
        else:
            self.neuron.mem = torch.zeros(0, dtype=self.neuron.mem.dtype, device=self.neuron.mem.device)

    def forward(self, x: Tensor) -> Tensor:
        if self.flatten is not None:
            x = self.flatten(x)
        mu = self.scale(self.synapse(x))
        if self.recurrent is not None:
            prev = self.spikes if self.spikes is not None else torch.zeros_like(mu)
            # the engine's order: μ_ff + (fl(n_rec·α_r) + b_r), the recurrent term at t = 0 included
            mu = mu + self.recurrent_scale(self.recurrent(prev))
        if isinstance(self.neuron, LeakyIntegrator):
            return self.neuron(mu)
        spk, _ = self.neuron(mu)
        if self.recurrent is not None:
            self.spikes = spk
        return spk


class SNNTorchRun(NamedTuple):
    """Output of :meth:`SNNTorchNet.sequence`.

    ``output``: ``[B, K]`` logits (time-averaged readout membrane) or spike counts; ``steps``:
    ``[T, B, K]`` the per-step outputs (readout membranes or output spikes); ``spikes``: per graph
    node, its ``[T, B, *node_shape]`` spikes (``None`` for the readout).
    """

    output: Tensor
    steps: Tensor
    spikes: list


class SNNTorchNet(nn.Module):
    """A deployed sbnn graph as a step-by-step snnTorch network (see the module docstring).

    ``forward(x[t])`` returns ``(out, state)`` for one time step, the snnTorch convention
    NeuroBench's ``SNNTorchModel`` relies on: ``out`` is the output spikes (spike-count readout) or
    the readout membrane; :meth:`reset` (which ``SNNTorchModel`` calls before every batch) clears
    every state. Build it with :func:`snntorch_network`.

    Args:
        layers: one module per graph node (:class:`SpikingLayer` or ``nn.MaxPool2d``).
        input_shape: the graph's per-step input shape.
        readout: ``"membrane"`` or ``"spike_count"``.
    """

    def __init__(self, layers: list[nn.Module], input_shape: tuple[int, ...], readout: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.input_shape, self.readout = tuple(input_shape), readout

    def reset(self) -> None:
        """Clear every neuron's membrane and the recurrent spikes (empty tensors: no state in the footprint)."""
        for layer in self.layers:
            if isinstance(layer, SpikingLayer):
                layer.reset_state()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One time step: ``x`` ``[B, *input_shape]`` → ``(out, out)`` with ``out`` ``[B, K]``."""
        for layer in self.layers:
            x = layer(x)
        return x, x

    @torch.no_grad()
    def sequence(self, x: Tensor) -> SNNTorchRun:
        """Run a whole time-major input from rest, recording every node's spikes.

        Shape:
            - x: ``[T, B, *input_shape]``.
        """
        if tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(f"SNNTorchNet.sequence: x must be [T, B, {', '.join(map(str, self.input_shape))}], got {tuple(x.shape)}")
        self.reset()
        recorded: list[list[Tensor]] = [[] for _ in self.layers]
        steps = []
        for x_t in x.unbind(0):
            h = x_t
            for k, layer in enumerate(self.layers):
                h = layer(h)
                recorded[k].append(h)
            steps.append(h)
        out = torch.stack(steps)
        spikes: list[Tensor | None] = [torch.stack(r) for r in recorded]
        if self.readout == "membrane":
            spikes[-1] = None
            return SNNTorchRun(out.mean(0), out, spikes)
        return SNNTorchRun(out.sum(0), out, spikes)


def _t(values, shape: tuple[int, ...] | None = None) -> Tensor:
    out = torch.as_tensor(values, dtype=torch.float32).clone()
    return out if shape is None else out.reshape(shape)


def _per_unit_shape(size: int, conv: bool) -> tuple[int, ...]:
    """``[1]`` stays ``[1]``; one value per channel of a conv layer broadcasts as ``[C, 1, 1]``."""
    return (size, 1, 1) if conv and size > 1 else (size,)


def _synapse(syn: Synapses, node: Any) -> tuple[nn.Module, ScaleBias]:
    conv = syn.sign.ndim == 4
    weight = torch.as_tensor(syn.sign, dtype=torch.float32)
    if conv:
        c_out, c_in, kh, kw = syn.sign.shape
        layer: nn.Module = nn.Conv2d(c_in, c_out, (kh, kw), stride=node.stride, padding=node.padding,
                                     dilation=node.dilation, bias=False)
    else:
        layer = nn.Linear(syn.sign.shape[1], syn.sign.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    layer.weight.requires_grad_(False)
    shape = _per_unit_shape(syn.alpha.size, conv)
    bias = None if syn.bias is None else _t(syn.bias, _per_unit_shape(syn.bias.size, conv))
    return layer, ScaleBias(_t(syn.alpha, shape), bias)


def snntorch_network(model: Any) -> SNNTorchNet:
    """The snnTorch network of ``model``'s deployed (``mode``) graph.

    Args:
        model: an exportable sbnn model or a :class:`sbnn.kernels.graph.Graph`.

    Returns:
        An :class:`SNNTorchNet` in eval mode, float32, on the CPU.

    Example:
        >>> import numpy as np, torch
        >>> from sbnn.kernels.graph import Dense, Graph, LIF, Synapses
        >>> g = Graph((3,), (Dense(Synapses(np.ones((2, 3)), [0.5]), LIF([0.9], [1.0])),))
        >>> snntorch_network(g).sequence(torch.ones(4, 1, 3)).output.tolist()
        [[4.0, 4.0]]
    """
    from ..export import to_graph

    graph: Graph = to_graph(model)
    shapes = [graph.input_shape, *graph.shapes()]
    layers: list[nn.Module] = []
    for k, node in enumerate(graph.nodes):
        if isinstance(node, MaxPool2d):
            layers.append(nn.MaxPool2d(node.kernel_size, node.stride, node.padding))
            continue
        synapse, scale = _synapse(node.synapses, node)
        if isinstance(node.neuron, MembraneReadout):
            neuron: nn.Module = LeakyIntegrator(node.neuron.beta)
        else:
            lif: LIF = node.neuron
            conv = isinstance(node, Conv2d)
            neuron = SbnnLeaky(_t(lif.beta, _per_unit_shape(lif.beta.size, conv)),
                               _t(lif.threshold, _per_unit_shape(lif.threshold.size, conv)), lif.reset)
        recurrent = recurrent_scale = None
        if isinstance(node, Dense) and node.recurrent is not None:
            recurrent, recurrent_scale = _synapse(node.recurrent, node)
        flatten = isinstance(node, Dense) and len(shapes[k]) > 1
        layers.append(SpikingLayer(synapse, scale, neuron, recurrent, recurrent_scale, flatten))
    net = SNNTorchNet(layers, graph.input_shape, graph.readout)
    net.eval()
    return net


def dense_synops(graph: Graph, n_steps: int) -> float:
    """Synaptic operations per sample of every connection at every step (NeuroBench's ``Dense``).

    Dense and recurrent synapses count ``fan-in·fan-out`` per step (the recurrent ones at every
    step, the first included); a convolution counts the in-bounds kernel taps of every output
    position (zero padding adds none): ``C_out·C_in·Σ_y taps_y·Σ_x taps_x``.
    """
    shapes = [graph.input_shape, *graph.shapes()]
    total = 0
    for k, node in enumerate(graph.nodes):
        if isinstance(node, Dense):
            total += math.prod(shapes[k]) * node.synapses.n_out
            if node.recurrent is not None:
                total += node.recurrent.sign.size
        elif isinstance(node, Conv2d):
            c_out, c_in, kh, kw = node.synapses.sign.shape
            _, h_out, w_out = node.out_shape
            taps = [
                sum(1 for o in range(n_out) for j in range(kernel) if 0 <= o * s - p + j * d < n_in)
                for n_out, kernel, s, p, d, n_in in (
                    (h_out, kh, node.stride[0], node.padding[0], node.dilation[0], node.in_shape[1]),
                    (w_out, kw, node.stride[1], node.padding[1], node.dilation[1], node.in_shape[2]),
                )
            ]
            total += c_out * c_in * taps[0] * taps[1]
    return float(n_steps * total)

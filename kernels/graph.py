"""The layer graph of a deployed SBNN: what :mod:`sbnn.export` writes and the engine runs.

A :class:`Graph` is a feed-forward chain of nodes over time-major binary spike tensors. All
activations are kept flattened in PyTorch's C order (``[C, H, W]`` → ``c·H·W + y·W + x``), so a
dense layer after a convolution needs no explicit flatten node.

================== ===============================================================================
node               computes (per time step ``t``; ``n`` are exact integer ±1 sums of input events)
================== ===============================================================================
:class:`Dense`     ``μ[t] = fl(fl(n[t]·α) + b)``; with ``recurrent``, ``μ[t] += μ_rec[t]`` from the
                   layer's own spikes at ``t − 1``; then the neuron (:class:`LIF` or, last node
                   only, :class:`MembraneReadout`)
:class:`Conv2d`    the same with a 2-D convolution (``groups = 1``), neuron :class:`LIF`
:class:`MaxPool2d` OR of the binary spikes in each window (``max_pool2d`` of 0/1 maps)
================== ===============================================================================

The graph holds plain NumPy arrays: ±1 weights as int8 in PyTorch layout (``[out, in]`` or
``[C_out, C_in, kH, kW]``), float32 scales ``α`` (``[1]`` or ``[out]``), biases, leaks and
thresholds (``[1]`` or one per unit/channel). It does not depend on torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

import numpy as np

__all__ = ["Synapses", "LIF", "MembraneReadout", "Dense", "Conv2d", "MaxPool2d", "Graph", "Node", "RESETS"]

RESETS = ("subtract", "zero", "none")


def _f32(name: str, value, allowed: tuple[int, ...]) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32).reshape(-1))
    if arr.size not in allowed:
        raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: values must be finite, got {arr}")
    return arr


@dataclass(frozen=True)
class Synapses:
    """±1 weights with a float32 scale and optional bias: ``h = α·(sign @ x) + b``.

    Args:
        sign: int8 ±1 weights, ``[out, in]`` (dense) or ``[C_out, C_in, kH, kW]`` (conv).
        alpha: positive float32 scale, ``[1]`` or ``[out]``.
        bias: float32 ``[out]`` or ``None``.
    """

    sign: np.ndarray
    alpha: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        sign = np.asarray(self.sign)
        if sign.ndim not in (2, 4) or sign.size == 0:
            raise ValueError(f"Synapses.sign: expected a non-empty [out, in] or [out, in, kH, kW] array, got shape {sign.shape}")
        if not np.isin(sign, (-1, 1)).all():
            raise ValueError("Synapses.sign: every weight must be -1 or +1 (export sign(λ), ties to +1)")
        object.__setattr__(self, "sign", np.ascontiguousarray(sign, dtype=np.int8))
        out = sign.shape[0]
        alpha = _f32("Synapses.alpha", self.alpha, (1, out))
        if (alpha <= 0).any():
            raise ValueError(f"Synapses.alpha: the scale must be positive, got {alpha}")
        object.__setattr__(self, "alpha", alpha)
        if self.bias is not None:
            object.__setattr__(self, "bias", _f32("Synapses.bias", self.bias, (out,)))

    @property
    def n_out(self) -> int:
        return int(self.sign.shape[0])


@dataclass(frozen=True)
class LIF:
    """Deterministic (``mode``) stochastic-LIF neurons: leak ``β``, threshold ``ϑ``, reset."""

    beta: np.ndarray
    threshold: np.ndarray
    reset: str = "subtract"

    def __post_init__(self) -> None:
        beta = _f32("LIF.beta", self.beta, (np.asarray(self.beta).size,))
        thr = _f32("LIF.threshold", self.threshold, (np.asarray(self.threshold).size,))
        if ((beta < 0) | (beta > 1)).any():
            raise ValueError(f"LIF.beta: the leak must lie in [0, 1], got {beta}")
        if (thr <= 0).any():
            raise ValueError(f"LIF.threshold: the threshold must be positive, got {thr}")
        if self.reset not in RESETS:
            raise ValueError(f"LIF.reset: expected one of {RESETS}, got {self.reset!r}")
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "threshold", thr)


@dataclass(frozen=True)
class MembraneReadout:
    """Non-spiking leaky readout: the output is the time average of ``U[t] = β U[t−1] + h[t]``."""

    beta: float

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"MembraneReadout.beta: the leak must lie in [0, 1], got {self.beta}")
        object.__setattr__(self, "beta", float(self.beta))


@dataclass(frozen=True)
class Dense:
    """Fully connected ±1 layer with a neuron, optionally with recurrent ±1 synapses ``[out, out]``."""

    synapses: Synapses
    neuron: LIF | MembraneReadout
    recurrent: Synapses | None = None


@dataclass(frozen=True)
class Conv2d:
    """±1 2-D convolution (``groups = 1``) followed by LIF neurons.

    Args:
        in_shape: ``(C_in, H, W)`` of one time step.
        stride, padding, dilation: as ``torch.nn.Conv2d`` (integer pairs; no string padding).
    """

    synapses: Synapses
    neuron: LIF
    in_shape: tuple[int, int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c_out, _, kh, kw = self.synapses.sign.shape
        _, h, w = self.in_shape
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (c_out, ho, wo)


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling of binary spike maps (``dilation = 1``, ``ceil_mode = False``)."""

    in_shape: tuple[int, int, int]
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        ho = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        return (c, ho, wo)


Node = Union[Dense, Conv2d, MaxPool2d]


@dataclass(frozen=True)
class Graph:
    """A deployable SBNN: input shape of one time step, nodes, and free-form metadata.

    The output is the last node's: time-averaged readout membranes (``MembraneReadout``) or spike
    counts (``LIF``). :meth:`validate` checks that the shapes chain.
    """

    input_shape: tuple[int, ...]
    nodes: tuple[Node, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        self.validate()

    @property
    def readout(self) -> str:
        """``"membrane"`` or ``"spike_count"``."""
        last = self.nodes[-1]
        return "membrane" if isinstance(last, Dense) and isinstance(last.neuron, MembraneReadout) else "spike_count"

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-step output shape of every node."""
        out = []
        shape = self.input_shape
        for node in self.nodes:
            if isinstance(node, Dense):
                shape = (node.synapses.n_out,)
            else:
                shape = node.out_shape
            out.append(shape)
        return out

    def validate(self) -> None:
        if not self.nodes:
            raise ValueError("Graph.nodes: a graph needs at least one node")
        if any(s < 1 for s in self.input_shape):
            raise ValueError(f"Graph.input_shape: sizes must be positive, got {self.input_shape}")
        shape = self.input_shape
        for k, node in enumerate(self.nodes):
            where = f"Graph.nodes[{k}] ({type(node).__name__})"
            if isinstance(node, Dense):
                syn = node.synapses
                if syn.sign.ndim != 2 or syn.sign.shape[1] != math.prod(shape):
                    raise ValueError(f"{where}: weights {syn.sign.shape} do not take the {math.prod(shape)} inputs of shape {shape}")
                if isinstance(node.neuron, MembraneReadout) and k != len(self.nodes) - 1:
                    raise ValueError(f"{where}: a MembraneReadout may only be the last node")
                if node.recurrent is not None:
                    if isinstance(node.neuron, MembraneReadout):
                        raise ValueError(f"{where}: recurrent synapses need LIF neurons")
                    if node.recurrent.sign.shape != (syn.n_out, syn.n_out):
                        raise ValueError(f"{where}: recurrent weights must be [{syn.n_out}, {syn.n_out}], got {node.recurrent.sign.shape}")
                units = syn.n_out
            elif isinstance(node, (Conv2d, MaxPool2d)):
                if isinstance(node, MaxPool2d) and k == 0:
                    raise ValueError(f"{where}: a MaxPool2d cannot be the first node (its input would be counts); pool the frames before the engine")
                if isinstance(node, Conv2d) and not isinstance(node.neuron, LIF):
                    raise ValueError(f"{where}: a Conv2d node needs LIF neurons")
                if tuple(node.in_shape) != tuple(shape):
                    raise ValueError(f"{where}: in_shape {tuple(node.in_shape)} differs from the incoming shape {tuple(shape)}")
                if isinstance(node, Conv2d) and (node.synapses.sign.ndim != 4 or node.synapses.sign.shape[1] != shape[0]):
                    raise ValueError(f"{where}: weights {node.synapses.sign.shape} do not take {shape[0]} input channels")
                if min(node.out_shape) < 1:
                    raise ValueError(f"{where}: the output shape {node.out_shape} is empty")
                units = node.out_shape[0]
            else:
                raise ValueError(f"{where}: unknown node type; expected Dense, Conv2d or MaxPool2d")
            neuron = getattr(node, "neuron", None)
            if isinstance(neuron, LIF):
                for name in ("beta", "threshold"):
                    size = getattr(neuron, name).size
                    if size not in (1, units):
                        raise ValueError(f"{where}: LIF.{name} has {size} values; expected 1 or {units} (one per unit/channel)")
            shape = self.shapes()[k]

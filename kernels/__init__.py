"""Event-driven Numba kernels and the inference engine for deployed SBNNs (:mod:`sbnn.kernels`).

A trained SBNN in ``mode`` is a network of ±1 weights and binary spikes; here it runs
event-driven: every input spike adds one bit-packed (or int8) row of ±1 weights, laid out per
presynaptic neuron, to integer accumulators, and the float work (scale, bias, leak, threshold)
follows in the float32 op order of the PyTorch ``mode`` path. See ``docs/kernels.md``.

* :mod:`sbnn.kernels.graph` — the layer graph (:class:`Graph`, :class:`Dense`, :class:`Conv2d`,
  :class:`MaxPool2d`, :class:`LIF`, :class:`MembraneReadout`, :class:`Synapses`);
* :mod:`sbnn.kernels.engine` — :class:`Engine`, which runs a graph on framed spikes or tonic events;
* :mod:`sbnn.kernels.api` — the validated kernel functions (packing, events, linear, conv, LIF).

Files are written and read by :mod:`sbnn.export`.
"""

from .api import BITORDER, Events, events_from_dense, events_from_tonic, pack_signs, threads, unpack_signs
from .engine import Engine, EngineResult, LayerStats
from .graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses

__all__ = [
    "BITORDER",
    "Events",
    "events_from_dense",
    "events_from_tonic",
    "pack_signs",
    "unpack_signs",
    "threads",
    "Engine",
    "EngineResult",
    "LayerStats",
    "Graph",
    "Dense",
    "Conv2d",
    "MaxPool2d",
    "LIF",
    "MembraneReadout",
    "Synapses",
]

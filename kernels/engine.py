"""The inference engine: runs a :class:`~sbnn.kernels.graph.Graph` event-driven on the CPU.

Each node runs for all ``T`` steps and ``B`` samples in one kernel call (the time loop lives in
the kernels), so Python overhead is per layer, not per step. Between nodes the spikes travel as
CSR event lists: a layer reads only the weight rows of the neurons that spiked.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from . import _kernels as K
from . import api
from .graph import Conv2d, Dense, Graph, LIF, MaxPool2d, MembraneReadout, Synapses

__all__ = ["Engine", "EngineResult", "LayerStats", "readout_weights", "AUTO_INT8_BYTES"]

_RESETS = {"subtract": K.RESET_SUBTRACT, "zero": K.RESET_ZERO, "none": K.RESET_NONE}


class LayerStats(NamedTuple):
    """Activity of one node over a run: input events, synaptic operations, output spikes."""

    name: str
    input_events: int
    synops: int
    output_spikes: int
    units: int
    rate: float


class EngineResult(NamedTuple):
    """Output of :meth:`Engine.run`.

    ``output``: float32 logits ``[B, K]`` (time-averaged readout membrane) or int64 spike counts
    ``[B, K]``; ``spikes``: per node, uint8 ``[T, B, ...]`` spikes (``None`` for the readout, and
    all ``None`` unless ``record=True``); ``stats``: one :class:`LayerStats` per node.
    """

    output: np.ndarray
    spikes: list
    stats: list

    @property
    def synops(self) -> int:
        return sum(s.synops for s in self.stats)


def readout_weights(n_steps: int, beta: float) -> np.ndarray:
    """``w_k`` with ``mean_t U[t] = Σ_k w_k h[k]`` for ``U[t] = β U[t−1] + h[t]`` (float32 values).

    The same float64 formula, cast to float32, as :func:`sbnn.functional.neurons.time_average_weights`.
    """
    k = np.arange(n_steps, dtype=np.float64)
    w = (n_steps - k) / n_steps if beta == 1.0 else (1.0 - beta ** (n_steps - k)) / ((1.0 - beta) * n_steps)
    return w.astype(np.float32)


class _Prepared(NamedTuple):
    rows: api.SynapseRows
    alpha: np.ndarray
    bias: np.ndarray
    has_bias: bool


def _prepare(syn: Synapses, fmt: str) -> _Prepared:
    m = syn.n_out
    rows = api.dense_rows(syn.sign, fmt) if syn.sign.ndim == 2 else api.conv_rows(syn.sign, fmt)
    alpha = np.ascontiguousarray(np.broadcast_to(syn.alpha, (m,)), dtype=np.float32)
    bias = np.zeros(m, np.float32) if syn.bias is None else syn.bias
    return _Prepared(rows, alpha, bias, syn.bias is not None)


def _expand(values: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a ``[1]`` or per-channel ``[C]`` constant to every unit of a ``[C, ...]`` layer."""
    per_channel = math.prod(out_shape[1:])
    full = np.broadcast_to(values, (out_shape[0],))
    return np.ascontiguousarray(np.repeat(full, per_channel), dtype=np.float32)


#: ``weights="auto"`` uses int8 rows for layers with at most this many weights (1 MiB as int8)
AUTO_INT8_BYTES = 1 << 20


def _format(syn: Synapses, weights: str) -> str:
    if weights != "auto":
        return weights
    return "int8" if syn.sign.size <= AUTO_INT8_BYTES else "packed"


class Engine:
    """Event-driven runner of an exported SBNN.

    Args:
        graph: the network (see :mod:`sbnn.kernels.graph`; :func:`sbnn.export.load` builds one).
        weights: kernel weight format: ``"packed"`` (1 bit per weight in memory), ``"int8"`` (1 byte),
            or ``"auto"`` (the default): int8 for layers whose int8 rows take at most
            :data:`AUTO_INT8_BYTES` (they stay in cache, and the int8 kernel is faster on narrow
            layers), packed for larger ones (where the packed kernel reads 8× less memory). The file
            on disk is packed either way; the choice changes speed only, never results.
        threads: Numba threads for the run (``None``: Numba's default); samples run in parallel.

    Example:
        >>> import numpy as np
        >>> from sbnn.kernels.graph import Dense, Graph, LIF, Synapses
        >>> g = Graph((3,), (Dense(Synapses(np.ones((2, 3)), [0.5]), LIF([0.9], [1.0])),))
        >>> Engine(g).run(np.ones((4, 1, 3))).output.tolist()
        [[4, 4]]
    """

    def __init__(self, graph: Graph, weights: str = "auto", threads: int | None = None) -> None:
        if not isinstance(graph, Graph):
            raise ValueError(f"Engine: graph must be a sbnn.kernels.graph.Graph, got {type(graph).__name__}")
        if weights not in (*api.WEIGHT_FORMATS, "auto"):
            raise ValueError(f"Engine: weights must be one of {(*api.WEIGHT_FORMATS, 'auto')}, got {weights!r}")
        with api.threads(threads):
            pass  # validates the thread count now rather than at the first run
        self.graph, self.weights, self.threads = graph, weights, threads
        self._prepared = []
        shapes = [graph.input_shape, *graph.shapes()]
        for k, node in enumerate(graph.nodes):
            if isinstance(node, MaxPool2d):
                self._prepared.append(None)
                continue
            out_shape = shapes[k + 1]
            syn = _prepare(node.synapses, _format(node.synapses, weights))
            syn = syn._replace(alpha=_expand(syn.alpha, out_shape), bias=_expand(syn.bias, out_shape))
            rec = _prepare(node.recurrent, _format(node.recurrent, weights)) if isinstance(node, Dense) and node.recurrent is not None else None
            lif = None
            if isinstance(node.neuron, LIF):
                lif = (_expand(node.neuron.beta, out_shape), _expand(node.neuron.threshold, out_shape), _RESETS[node.neuron.reset])
            self._prepared.append((syn, rec, lif))

    def _check_input(self, x) -> np.ndarray:
        arr = api._array("x", x)
        shape = self.graph.input_shape
        flat = math.prod(shape)
        if arr.ndim == 3 and arr.shape[2] == flat:
            pass
        elif arr.ndim == 2 + len(shape) and tuple(arr.shape[2:]) == shape:
            arr = arr.reshape(arr.shape[0], arr.shape[1], flat)
        else:
            raise ValueError(
                f"Engine.run: x must be time-major [T, B, {', '.join(map(str, shape))}] (or [T, B, {flat}]), "
                f"got shape {tuple(arr.shape)}"
            )
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"Engine.run: x needs at least one time step and one sample, got shape {tuple(arr.shape)}")
        return arr

    def call_bytes(self, rows: int, n_events: int, record: bool = False) -> int:
        """Bytes a run over ``rows = T·B`` rows with ``n_events`` input events allocates (an upper estimate).

        Input events take 8 bytes each plus 8 per row; every node then holds, per row and unit,
        its int32 pre-activations, uint8 spikes and (at most one per unit) 8-byte output events:
        16 bytes, plus 1 retained with ``record``.
        """
        per_unit = 16 + (1 if record else 0)
        units = sum(math.prod(shape) for shape in self.graph.shapes())
        return 8 * (n_events + rows + 1) + per_unit * rows * units

    def run(self, x, *, record: bool = False, max_bytes: int | None = None) -> EngineResult:
        """Run on framed spikes (or integer counts) ``x`` (NumPy array or torch tensor).

        Args:
            x: time-major input.
            record: also return every node's spike trains.
            max_bytes: memory limit of the call (:meth:`call_bytes`), checked before any work;
                ``None``: :data:`sbnn.kernels.api.MAX_CALL_BYTES` (4 GiB).

        Shape:
            - x: ``[T, B, *input_shape]`` or ``[T, B, prod(input_shape)]``, values in {0, 1, 2, ...}.
            - output: ``[B, K]``; spikes (``record``): ``[T, B, *node_shape]`` per node.

        Raises:
            ValueError: wrong shape, values that are not non-negative integers, or a call above
                ``max_bytes``.
        """
        arr = self._check_input(x)
        total = float(arr.sum(dtype=np.float64))  # the input events; bad values are named by events_from_dense
        if math.isfinite(total) and total >= 0:
            api.check_call_bytes(self.call_bytes(arr.shape[0] * arr.shape[1], int(total), record), max_bytes, "Engine.run")
        events = api.events_from_dense(arr, max_bytes=max_bytes)
        return self._run_events(events, arr.shape[0], arr.shape[1], record)

    def run_events(
        self, events: np.ndarray, sensor_size: tuple[int, int, int], *, n_steps: int, time_window: float,
        start: float = 0.0, binary: bool = True, record: bool = False, max_bytes: int | None = None,
    ) -> EngineResult:
        """Run on one tonic event array (a batch of one); see :func:`sbnn.kernels.api.events_from_tonic`.

        ``max_bytes`` limits the memory of the call as in :meth:`run`, checked before any work.

        Raises:
            ValueError: unsorted timestamps, indices outside the sensor, a sensor whose size
                differs from the network's input, or a call above ``max_bytes``.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
            raise ValueError(f"Engine.run_events: n_steps must be a positive int, got {n_steps!r}")
        n_events = int(getattr(events, "size", 0))
        need = api.tonic_call_bytes(int(n_steps), n_events) + self.call_bytes(int(n_steps), n_events, record)
        api.check_call_bytes(need, max_bytes, "Engine.run_events")
        w, h, p = sensor_size
        if w * h * p != math.prod(self.graph.input_shape):
            raise ValueError(
                f"Engine.run_events: sensor_size {tuple(sensor_size)} has {w * h * p} channels, the network takes "
                f"{math.prod(self.graph.input_shape)} (input shape {self.graph.input_shape})"
            )
        ev = api.events_from_tonic(
            events, sensor_size, n_steps=int(n_steps), time_window=time_window, start=start, binary=binary, max_bytes=max_bytes
        )
        return self._run_events(ev, n_steps, 1, record)

    def _counts(self, node, syn: _Prepared, events: api.Events, in_shape, out_shape, chunks: int) -> tuple[np.ndarray, int]:
        """Integer pre-activations ``[T·B, units]`` of a dense or conv node, and its synaptic operations."""
        if isinstance(node, Dense):
            if syn.rows.fmt == "packed":
                n = K.linear_packed(events.ptr, events.idx, syn.rows.rows, syn.rows.n_out, chunks)
            else:
                n = K.linear_int8(events.ptr, events.idx, syn.rows.rows, chunks)
            return n, events.n_events * syn.rows.n_out
        packed = syn.rows.fmt == "packed"
        n, synops = K.conv2d_counts(
            events.ptr, events.idx, packed,
            syn.rows.rows if packed else np.zeros((1, 1, 1, 1), np.uint64),
            syn.rows.rows if not packed else np.zeros((1, 1, 1, 1), np.int8),
            in_shape[0], in_shape[1], in_shape[2], out_shape[0], *node.synapses.sign.shape[2:],
            *node.stride, *node.padding, *node.dilation, out_shape[1], out_shape[2],
        )
        return n, int(synops)

    @staticmethod
    def _readout(n: np.ndarray, syn: _Prepared, beta: float) -> np.ndarray:
        """Time-averaged leaky readout membrane ``α·Σ_t w_t n[t] + b·Σ_t w_t`` (float64, then float32)."""
        w = readout_weights(n.shape[0], beta)
        logits = np.tensordot(w.astype(np.float64), n.astype(np.float64), axes=1) * syn.alpha.astype(np.float64)
        if syn.has_bias:
            # torch adds bias·Σw with Σw summed in float32
            logits = logits + syn.bias.astype(np.float64) * float(w.sum(dtype=np.float32))
        return logits.astype(np.float32)

    @staticmethod
    def _neurons(n: np.ndarray, syn: _Prepared, rec: _Prepared | None, lif) -> tuple[np.ndarray, int]:
        """LIF spikes ``[T, B, units]`` (with the recurrent input if any) and the recurrent synaptic operations."""
        beta, thr, reset = lif
        if rec is None:
            spk, _ = K.lif_sequence(n, syn.alpha, syn.bias, syn.has_bias, beta, thr, reset, False)
            return spk, 0
        packed = rec.rows.fmt == "packed"
        spk, _, rec_ops = K.recurrent_lif_sequence(
            n, syn.alpha, syn.bias, syn.has_bias, packed,
            rec.rows.rows if packed else np.zeros((1, 1), np.uint64),
            rec.rows.rows if not packed else np.zeros((1, 1), np.int8),
            rec.alpha, rec.bias, rec.has_bias, beta, thr, reset, False,
        )
        return spk, int(rec_ops)

    def _run_events(self, events: api.Events, steps: int, batch: int, record: bool) -> EngineResult:
        graph = self.graph
        shapes = [graph.input_shape, *graph.shapes()]
        spikes_out, stats = [], []
        output, dense = None, None
        with api.threads(self.threads):
            chunks = 4 * numba.get_num_threads()
            for k, (node, prep) in enumerate(zip(graph.nodes, self._prepared)):
                name = f"{k}:{type(node).__name__.lower()}"
                in_shape, out_shape = shapes[k], shapes[k + 1]
                units = math.prod(out_shape)
                if isinstance(node, MaxPool2d):
                    pooled = K.maxpool2d_spikes(
                        dense, *in_shape, *node.kernel_size, *node.stride, *node.padding, out_shape[1], out_shape[2]
                    )
                    spk = pooled.reshape(steps, batch, units)
                    n_in, n_spk = int(dense.sum(dtype=np.int64)), int(pooled.sum(dtype=np.int64))
                    stats.append(LayerStats(name, n_in, 0, n_spk, units, n_spk / pooled.size))
                else:
                    syn, rec, lif = prep
                    n, synops = self._counts(node, syn, events, in_shape, out_shape, chunks)
                    n = n.reshape(steps, batch, units)
                    if isinstance(node, Dense) and isinstance(node.neuron, MembraneReadout):
                        output = self._readout(n, syn, node.neuron.beta)
                        stats.append(LayerStats(name, events.n_events, synops, 0, units, 0.0))
                        spikes_out.append(None)
                        break
                    spk, rec_ops = self._neurons(n, syn, rec, lif)
                    n_spk = int(spk.sum(dtype=np.int64))
                    stats.append(LayerStats(name, events.n_events, synops + rec_ops, n_spk, units, n_spk / spk.size))
                spikes_out.append(spk.reshape(steps, batch, *out_shape) if record else None)
                dense = spk.reshape(steps * batch, units)
                if k + 1 < len(graph.nodes) and not isinstance(graph.nodes[k + 1], MaxPool2d):
                    ptr, idx = K.dense_to_events(dense)
                    events = api.Events(ptr, idx, units)
                if k == len(graph.nodes) - 1:
                    output = spk.sum(axis=0, dtype=np.int64)
        return EngineResult(output, spikes_out if record else [None] * len(spikes_out), stats)

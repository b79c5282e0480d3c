r"""NIR export and import of sbnn's deployed (``mode``) network.

NIR, the Neuromorphic Intermediate Representation (Pedersen et al., Nature Communications 2024),
is the exchange format that snnTorch, Norse, Sinabs, Rockpool, Lava-DL and others read.
:func:`to_nir` writes the layer graph of :func:`sbnn.export.to_graph` (so it works for every
exportable model); :func:`graph_from_nir` reads any NIR graph sbnn can run into a
:class:`sbnn.kernels.graph.Graph`, and :func:`from_nir` builds a trainable sbnn network from it.

**Time-step convention.** NIR's neurons are ODEs, ``τ dv/dt = (v_leak − v) + R I``. sbnn runs
them with one forward-Euler step of length ``dt`` per time step,
``v[t] = (1 − dt/τ) v[t−1] + (R dt/τ) I[t]``, which is the convention of snnTorch's NIR exporter
and importer (``dt = 1e-4`` there, hence :data:`DEFAULT_DT`). An sbnn neuron with leak ``β``
becomes ``τ = dt/(1 − β)``, ``R = τ/dt`` (unit input gain), ``v_leak = 0``; ``β = 1`` becomes the
integrator nodes ``IF``/``I`` with ``R = 1/dt``.

================================= =============================================================
sbnn (:mod:`sbnn.kernels.graph`)  NIR nodes
================================= =============================================================
``Dense`` synapses                ``Affine`` (with bias) or ``Linear``; weight ``α·sign`` (scale
                                  folded: float32 products, exact)
``Conv2d`` synapses               ``Conv2d`` (``groups = 1``; zero bias when sbnn has none)
``LIF``, reset ``"zero"``         ``LIF`` (``IF`` for ``β = 1``), ``v_reset = 0``
``LIF``, reset ``"none"``         ``LI`` (``I``) → ``Threshold``
``LIF``, reset ``"subtract"``     refused (NIR's neurons reset to a fixed value)
recurrent synapses                ``Linear``/``Affine`` from the layer's spikes back to its
                                  neuron (an edge pair, one-step delay as in snnTorch's RLeaky)
``MaxPool2d`` of spikes           ``SumPool2d`` → ``Threshold(0.5)``: the OR of the window
``Dense`` after a conv            ``Flatten`` (``start_dim = 0``: NIR shapes have no batch axis)
``MembraneReadout``               ``LI`` (``I``); NIR's output is the membrane trace, sbnn's
                                  logits are its time average
================================= =============================================================

**Thresholds.** sbnn fires when ``U ≥ ϑ``; NIR's ``LIF`` and ``Threshold`` fire when ``v > θ``
(so do snnTorch's and Norse's implementations). The export writes ``θ`` = the largest float32
below ``ϑ``, so that the two agree exactly in float32; the import takes ``ϑ`` = the smallest
float32 above ``θ``. A round trip restores ``ϑ`` bit for bit.

**Import of real weights.** A weight matrix ``W`` becomes ``sign(W)`` (zeros to +1, the ties of
``sign(λ)``) and one scale per output row, ``α_j = mean_i |W_ji|`` (XNOR-Net's choice), exact
for rows that are already ``±α_j``. A node's input gain ``g = R dt/τ`` (``R dt`` for ``IF``/``I``)
is folded into its incoming weights and bias; gains within :data:`GAIN_TOLERANCE` of 1 count as 1.
:func:`from_nir` starts the posterior at ``λ = sign(W)·atanh(2c − 1)``, i.e.
``q(w = sign W) = c`` for the ``confidence`` ``c``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses

if TYPE_CHECKING:  # the nir package is an optional extra
    import nir as _nir_types
    from torch import nn

__all__ = [
    "DEFAULT_DT", "DEFAULT_CONFIDENCE", "GAIN_TOLERANCE", "NIRConversionError",
    "to_nir", "write_nir", "export_checkpoint_nir", "graph_from_nir", "from_nir",
]

#: Euler time step of snnTorch's NIR exporter and importer (seconds).
DEFAULT_DT = 1e-4
#: Default ``q(w = sign W)`` of an imported weight.
DEFAULT_CONFIDENCE = 0.9
#: Relative distance from 1 below which an input gain ``R dt/τ`` is taken as exactly 1.
GAIN_TOLERANCE = 1e-6


class NIRConversionError(ValueError):
    """A network or NIR graph that cannot be converted exactly; the message names the node."""


def _nir():
    try:
        import nir
    except ImportError:
        raise ImportError("sbnn.interop.nir needs the 'nir' package: pip install 'sbnn[nir]'") from None
    return nir


def _check_dt(dt: float) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt: the Euler time step must be a positive finite number (seconds), got {dt!r}")
    return float(dt)


def _below(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.nextafter(x, np.float32(-np.inf), dtype=np.float32)


def _above(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.nextafter(x, np.float32(np.inf), dtype=np.float32)


# -- export ----------------------------------------------------------------------------------------
def _folded(syn: Synapses) -> np.ndarray:
    """``α·sign`` as float32, ``α`` broadcast over the output axis (products of ±1: exact)."""
    alpha = syn.alpha.reshape((-1,) + (1,) * (syn.sign.ndim - 1))
    return (syn.sign.astype(np.float32) * alpha).astype(np.float32)


def _weight_node(nir, syn: Synapses):
    w = _folded(syn)
    return nir.Linear(weight=w) if syn.bias is None else nir.Affine(weight=w, bias=syn.bias.copy())


def _leak(nir, beta: np.ndarray, shape: tuple[int, ...], dt: float, where: str, spiking_thr: np.ndarray | None):
    """NIR node(s) of leak ``β`` per unit: ``LIF``/``IF`` (with ``spiking_thr``) or ``LI``/``I``."""
    beta = np.broadcast_to(_per_unit(beta, shape), shape).astype(np.float64)
    ones = np.ones(shape, np.float64)
    if (beta == 1).all():
        r = ones / dt
        if spiking_thr is None:
            return nir.I(r=r)
        return nir.IF(r=r, v_threshold=_thr(spiking_thr, shape), v_reset=np.zeros(shape))
    if (beta == 1).any():
        raise NIRConversionError(
            f"{where}: β = 1 for some units but not all; NIR's LIF needs a finite τ = dt/(1 − β) and its IF "
            "has no leak, so one node cannot hold both: use β < 1 everywhere or β = 1 for the whole layer"
        )
    tau = dt / (1.0 - beta)
    r = tau / dt
    if spiking_thr is None:
        return nir.LI(tau=tau, r=r, v_leak=np.zeros(shape))
    return nir.LIF(tau=tau, r=r, v_leak=np.zeros(shape), v_threshold=_thr(spiking_thr, shape), v_reset=np.zeros(shape))


def _thr(thr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return _below(np.broadcast_to(_per_unit(thr, shape), shape))


def _per_unit(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Graph constants (``[1]`` or one per unit/channel) shaped to broadcast over ``shape``."""
    values = np.asarray(values)
    values = values.astype(np.float64 if values.dtype == np.float64 else np.float32).reshape(-1)
    if values.size == 1:
        return values.reshape(())
    return values.reshape((-1,) + (1,) * (len(shape) - 1))


def to_nir(model: Any, *, dt: float = DEFAULT_DT) -> _nir_types.NIRGraph:
    """The NIR graph of ``model``'s deployed (``mode``) network.

    Args:
        model: an exportable sbnn module (see :func:`sbnn.export.to_graph`) or a
            :class:`~sbnn.kernels.graph.Graph`.
        dt: Euler time step that maps the leak to NIR's time constants, ``τ = dt/(1 − β)``.

    Returns:
        A ``nir.NIRGraph`` with nodes ``input``, ``fc{k}``/``conv{k}``, ``lif{k}`` (or ``li{k}`` →
        ``lif{k}_spike``), ``rec{k}``, ``pool{k}`` → ``pool{k}_or``, ``flatten{k}``, ``readout{k}``,
        ``output`` (``k``: the graph node's index).

    Raises:
        NIRConversionError: a setting NIR cannot express exactly (``reset="subtract"``, mixed
            ``β = 1``), naming the node and the nearest exact choice.

    Example:
        >>> import numpy as np
        >>> from sbnn.kernels.graph import Dense, Graph, LIF, MembraneReadout, Synapses
        >>> g = Graph((3,), (Dense(Synapses(np.ones((2, 3)), [0.5]), LIF([0.5], [1.0], "zero")),
        ...                  Dense(Synapses(np.ones((1, 2)), [1.0]), MembraneReadout(0.9))))
        >>> sorted(to_nir(g).nodes)
        ['fc0', 'fc1', 'input', 'lif0', 'output', 'readout1']
    """
    from ..export import to_graph

    nir = _nir()
    dt = _check_dt(dt)
    graph = to_graph(model)
    shapes = [tuple(graph.input_shape), *[tuple(s) for s in graph.shapes()]]
    nodes: dict[str, Any] = {"input": nir.Input(input_type=np.array(graph.input_shape))}
    edges: list[tuple[str, str]] = []
    prev = "input"

    def add(name: str, node: Any) -> None:
        nonlocal prev
        nodes[name] = node
        edges.append((prev, name))
        prev = name

    for k, node in enumerate(graph.nodes):
        where = f"graph node {k} ({type(node).__name__})"
        in_shape, out_shape = shapes[k], shapes[k + 1]
        if isinstance(node, MaxPool2d):
            pad = np.array(node.padding)
            add(f"pool{k}", nir.SumPool2d(kernel_size=np.array(node.kernel_size), stride=np.array(node.stride), padding=pad))
            # a window's spike count is ≥ 1 exactly when one of its spikes is 1 (zero padding adds nothing)
            add(f"pool{k}_or", nir.Threshold(threshold=np.full(out_shape, 0.5)))
            continue
        if isinstance(node, Dense):
            if len(in_shape) > 1:
                add(f"flatten{k}", nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1))
            add(f"fc{k}", _weight_node(nir, node.synapses))
        else:
            syn = node.synapses
            bias = syn.bias.copy() if syn.bias is not None else np.zeros(syn.n_out, np.float32)
            add(f"conv{k}", nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=_folded(syn), stride=tuple(node.stride),
                                       padding=tuple(node.padding), dilation=tuple(node.dilation), groups=1, bias=bias))
        neuron = node.neuron
        if isinstance(neuron, MembraneReadout):
            readout = _leak(nir, np.array([neuron.beta], np.float64), out_shape, dt, where, None)
            # the readout leak is a float64 in sbnn; τ ↔ β loses its last bit, so record it exactly
            readout.metadata["sbnn_beta"] = float(neuron.beta)
            add(f"readout{k}", readout)
            continue
        if neuron.reset == "subtract":
            raise NIRConversionError(
                f"{where}: reset_mechanism='subtract' (sbnn's default) lowers the membrane by ϑ after a spike, but "
                "NIR's LIF, IF and CubaLIF reset to a fixed v_reset, so NIR cannot express it. Nearest exact choices: "
                "reset_mechanism='zero' (exported as LIF with v_reset = 0) or 'none' (exported as LI → Threshold); "
                "fine-tune the network with one of them before exporting"
            )
        if neuron.reset == "zero":
            add(f"lif{k}", _leak(nir, neuron.beta, out_shape, dt, where, neuron.threshold))
            into, spikes = f"lif{k}", f"lif{k}"
        else:
            add(f"li{k}", _leak(nir, neuron.beta, out_shape, dt, where, None))
            add(f"lif{k}_spike", nir.Threshold(threshold=_thr(neuron.threshold, out_shape)))
            into, spikes = f"li{k}", f"lif{k}_spike"
        if isinstance(node, Dense) and node.recurrent is not None:
            nodes[f"rec{k}"] = _weight_node(nir, node.recurrent)
            edges += [(spikes, f"rec{k}"), (f"rec{k}", into)]
    nodes["output"] = nir.Output(output_type=np.array(shapes[-1]))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)


# -- import ----------------------------------------------------------------------------------------
_WEIGHTS = ("Affine", "Linear")


def _kind(node: Any) -> str:
    return type(node).__name__


def _inline(nir, graph, prefix: str = "") -> tuple[dict, list]:
    """Nodes and edges of ``graph`` with nested ``NIRGraph`` nodes spliced in (their Input/Output dropped)."""
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, str] = {}  # nested graph key -> its input node key (prefixed)
    exit_: dict[str, str] = {}
    for key, node in graph.nodes.items():
        name = prefix + key
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = _inline(nir, node, name + ".")
            ins = [k for k, n in sub_nodes.items() if isinstance(n, nir.Input)]
            outs = [k for k, n in sub_nodes.items() if isinstance(n, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise NIRConversionError(f"node {name!r} (nested NIRGraph): needs exactly one Input and one Output, got {len(ins)} and {len(outs)}")
            nodes.update(sub_nodes)
            edges += sub_edges
            entry[name], exit_[name] = ins[0], outs[0]
        else:
            nodes[name] = node
    for a, b in graph.edges:
        a, b = prefix + a, prefix + b
        edges.append((exit_.get(a, a), entry.get(b, b)))
    # splice out the nested graphs' Input/Output nodes
    for key in list(entry.values()) + list(exit_.values()):
        preds = [a for a, b in edges if b == key]
        succs = [b for a, b in edges if a == key]
        edges = [e for e in edges if key not in e] + [(a, b) for a in preds for b in succs]
        del nodes[key]
    return nodes, edges


def _check_finite(key: str, node: Any) -> None:
    for f in fields(node):
        if f.name in ("input_type", "output_type", "metadata"):
            continue
        value = getattr(node, f.name)
        if isinstance(value, str) or value is None:
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(arr).all():
            raise NIRConversionError(f"node {key!r} ({_kind(node)}): {f.name} has non-finite values; NIR parameters must be finite")


_SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv2d", "LIF", "IF", "LI", "I", "Threshold", "SumPool2d", "Flatten")


def _arr(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _neuron_constants(key: str, node: Any, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Leak ``β`` and input gain ``g`` per unit of an LIF/IF/LI/I node under the Euler convention."""
    kind = _kind(node)
    if kind in ("IF", "I"):
        r = _arr(node.r)
        return np.ones_like(r), r * dt
    tau, r, v_leak = _arr(node.tau), _arr(node.r), _arr(node.v_leak)
    if (tau <= 0).any():
        raise NIRConversionError(f"node {key!r} ({kind}): tau must be positive, got min {tau.min()}")
    if not np.all(v_leak == 0):
        raise NIRConversionError(
            f"node {key!r} ({kind}): v_leak ≠ 0 (max |v_leak| = {np.abs(v_leak).max()}); sbnn's neurons leak to 0; "
            "fold v_leak into the preceding Affine bias (v_leak·dt/τ per step) before importing"
        )
    if (tau < dt * (1 - 1e-12)).any():
        raise NIRConversionError(
            f"node {key!r} ({kind}): tau = {tau.min()} is shorter than dt = {dt}; the Euler leak 1 − dt/τ would be "
            "negative. Import with a dt no larger than the smallest tau (the exporter's dt)"
        )
    beta = np.clip(1.0 - dt / tau, 0.0, 1.0)
    return beta, r * dt / tau


def _squeeze(name: str, key: str, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-unit constants → graph form: ``[1]`` if uniform, one per unit (dense) or channel (conv)."""
    v = np.asarray(values, np.float32)
    try:
        v = np.broadcast_to(v.reshape(v.shape if v.size > 1 else ()), shape)
    except ValueError:
        raise NIRConversionError(f"node {key!r}: {name} has shape {np.shape(values)}, which does not fit the layer's output {shape}") from None
    if (v == v.reshape(-1)[0]).all():
        return v.reshape(-1)[:1].copy()
    if len(shape) == 1:
        return v.reshape(-1).copy()
    per_channel = v.reshape(shape[0], -1)
    if not (per_channel == per_channel[:, :1]).all():
        raise NIRConversionError(f"node {key!r}: {name} varies within a channel; sbnn's conv neurons take one value per channel")
    return per_channel[:, 0].copy()


def _synapses(key: str, weight: np.ndarray, bias: np.ndarray | None, gain: np.ndarray, keep_zero_bias: bool = True) -> Synapses:
    """``sign(W)`` with ``α_j = mean |W_j|`` (and the neuron's input gain folded in).

    NIR's Conv2d always has a bias, so an all-zero conv bias means none (``keep_zero_bias=False``).
    """
    w = np.asarray(weight, np.float32)
    out = w.shape[0]
    g = np.asarray(gain, np.float64).reshape(-1)
    if w.ndim == 2 and g.size not in (1, out):
        raise NIRConversionError(f"node {key!r}: the neuron's gain has {g.size} values for {out} outputs")
    if w.ndim == 4 and g.size > 1:
        per_channel = g.reshape(out, -1)
        if not (per_channel == per_channel[:, :1]).all():
            raise NIRConversionError(f"node {key!r}: the neuron's input gain R·dt/τ varies within a channel")
        g = per_channel[:, 0]
    if g.size > 1 and (g == g[0]).all():
        g = g[:1]
    if np.all(np.abs(g - 1.0) <= GAIN_TOLERANCE):
        g = np.ones(1)
    sign = np.where(w < 0, -1, 1).astype(np.int8)
    mag = np.abs(w).reshape(out, -1).astype(np.float64).mean(1)
    if (mag == 0).all():
        raise NIRConversionError(f"node {key!r}: every weight is 0; a ±α layer needs a positive scale")
    mag[mag == 0] = mag[mag > 0].mean()  # an all-zero row: its signs are ties (+1), give it the layer's scale
    alpha = (mag * g).astype(np.float32) if g.size in (1, out) else mag.astype(np.float32)
    if (alpha <= 0).any():
        raise NIRConversionError(f"node {key!r}: the neuron's input gain R·dt/τ must be positive, got {g.min()}")
    if (alpha == alpha[0]).all():
        alpha = alpha[:1]
    b = None
    if bias is not None:
        b64 = np.asarray(bias, np.float64).reshape(-1)
        if b64.size != out:
            raise NIRConversionError(f"node {key!r}: bias has {b64.size} values for {out} outputs")
        if keep_zero_bias or np.any(b64 != 0):
            b = (b64 * g).astype(np.float32) if not np.array_equal(g, np.ones(1)) else np.asarray(bias, np.float32).reshape(-1)
    return Synapses(sign, alpha, b)


def _chain(nir, graph) -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """The Input→Output path of node keys, the nodes, and each recurrent neuron's weight node."""
    if not isinstance(graph, nir.NIRGraph):
        raise NIRConversionError(f"graph_from_nir: expected a nir.NIRGraph (nir.read(path) returns one), got {type(graph).__name__}")
    nodes, edges = _inline(nir, graph)
    for key, node in nodes.items():
        if _kind(node) not in _SUPPORTED:
            raise NIRConversionError(
                f"node {key!r} ({_kind(node)}): not supported by sbnn; supported node types: {', '.join(_SUPPORTED)}"
            )
        _check_finite(key, node)
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise NIRConversionError(f"edge ({a!r}, {b!r}): no node named {end!r}")
    edges = list(dict.fromkeys(edges))
    succ: dict[str, list[str]] = {k: [] for k in nodes}
    pred: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
    # a layer's recurrent weights: W with one input from the neuron's spikes and one output into the neuron
    recurrent: dict[str, str] = {}
    for w, node in nodes.items():
        if _kind(node) not in _WEIGHTS or len(pred[w]) != 1 or len(succ[w]) != 1:
            continue
        src, dst = pred[w][0], succ[w][0]
        spiking = _kind(nodes[dst]) in ("LIF", "IF") and src == dst
        split = _kind(nodes[dst]) in ("LI", "I") and _kind(nodes[src]) == "Threshold" and pred[src] == [dst]
        if spiking or split:
            if dst in recurrent:
                raise NIRConversionError(f"node {dst!r}: more than one recurrent weight node ({recurrent[dst]!r}, {w!r})")
            recurrent[dst] = w
            succ[src].remove(w)
            pred[dst].remove(w)
            succ[w], pred[w] = [], []
    inputs = [k for k, n in nodes.items() if _kind(n) == "Input"]
    outputs = [k for k, n in nodes.items() if _kind(n) == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRConversionError(f"graph_from_nir: sbnn networks have one Input and one Output node, got inputs {inputs} and outputs {outputs}")
    path, seen, key = [], set(), inputs[0]
    while True:
        if key in seen:
            raise NIRConversionError(
                f"node {key!r} ({_kind(nodes[key])}): lies on a cycle that is not a layer's recurrent weight "
                "(neuron → Affine/Linear → same neuron); sbnn cannot run it"
            )
        seen.add(key)
        path.append(key)
        if key == outputs[0]:
            break
        if len(succ[key]) != 1:
            raise NIRConversionError(
                f"node {key!r} ({_kind(nodes[key])}): has {len(succ[key])} outgoing edges; sbnn runs chains of layers "
                "(each node feeding exactly one next node, plus self-recurrent layers)"
            )
        nxt = succ[key][0]
        if len(pred[nxt]) != 1:
            raise NIRConversionError(f"node {nxt!r} ({_kind(nodes[nxt])}): has {len(pred[nxt])} incoming edges; sbnn layers take one input")
        key = nxt
    dangling = sorted(k for k in nodes if k not in seen and k not in recurrent.values())
    if dangling:
        raise NIRConversionError(f"nodes {dangling} are not on the path from {inputs[0]!r} to {outputs[0]!r} (a branch or a cycle); sbnn cannot run them")
    return path, nodes, recurrent


def _shape_of(value) -> tuple[int, ...] | None:
    if isinstance(value, dict):
        value = next(iter(value.values()), None)
    if value is None:
        return None
    arr = np.asarray(value).reshape(-1)
    if arr.size == 0:
        return None
    return tuple(int(s) for s in arr)


def graph_from_nir(graph: _nir_types.NIRGraph, *, dt: float = DEFAULT_DT) -> Graph:
    """The sbnn layer graph of a NIR graph (from any library), ready for :class:`sbnn.kernels.Engine`.

    Args:
        graph: a ``nir.NIRGraph`` (``nir.read(path)``); nested graphs (e.g. snnTorch's RLeaky) are inlined.
        dt: the Euler time step the graph was written for (the exporter's; snnTorch uses 1e-4).

    Returns:
        A :class:`~sbnn.kernels.graph.Graph`; weights as described in the module docstring.

    Raises:
        NIRConversionError: unsupported node types, shapes that do not chain, non-finite
            parameters, branches or cycles other than a layer's recurrent weights, ``v_reset ≠ 0``,
            ``v_leak ≠ 0``, ``τ < dt`` — each naming the node.
    """
    nir = _nir()
    dt = _check_dt(dt)
    path, nodes, recurrent = _chain(nir, graph)
    shape = _shape_of(nodes[path[0]].input_type)
    if shape is None:
        raise NIRConversionError(f"node {path[0]!r} (Input): has no shape; write the input shape into the graph")
    out: list = []
    pending: tuple[str, Any, tuple[int, ...]] | None = None  # (key, weight node, input shape)
    i = 1
    while i < len(path):
        key = path[i]
        node = nodes[key]
        kind = _kind(node)
        nxt = nodes[path[i + 1]] if i + 1 < len(path) else None
        if kind in _WEIGHTS + ("Conv2d",) and pending is not None:
            raise NIRConversionError(f"node {key!r} ({kind}): follows the weights {pending[0]!r} without neurons in between; sbnn layers are synapses then neurons")
        if kind == "Flatten":
            if pending is not None:
                raise NIRConversionError(f"node {key!r} (Flatten): between weights {pending[0]!r} and their neurons")
            start, end = int(node.start_dim), int(node.end_dim)
            if start not in (0, -len(shape)) or end not in (-1, len(shape) - 1):
                raise NIRConversionError(f"node {key!r} (Flatten): start_dim={start}, end_dim={end} do not flatten the whole {shape} step (NIR shapes have no batch axis: use start_dim=0)")
            shape = (math.prod(shape),)
        elif kind in _WEIGHTS:
            w = np.asarray(node.weight)
            if w.ndim != 2 or w.shape[1] != math.prod(shape):
                raise NIRConversionError(f"node {key!r} ({kind}): weight {w.shape} does not take the {math.prod(shape)} inputs of shape {shape}")
            if len(shape) != 1:
                shape = (math.prod(shape),)  # sbnn keeps activations flattened in C order
            pending = (key, node, shape)
        elif kind == "Conv2d":
            w = np.asarray(node.weight)
            if len(shape) != 3 or w.ndim != 4 or w.shape[1] != shape[0]:
                raise NIRConversionError(f"node {key!r} (Conv2d): weight {w.shape} does not take input of shape {shape} ([C, H, W])")
            if int(node.groups) != 1 or isinstance(node.padding, str):
                raise NIRConversionError(f"node {key!r} (Conv2d): groups={node.groups}, padding={node.padding!r}; sbnn convolutions have groups=1 and integer padding")
            pending = (key, node, shape)
        elif kind in ("LIF", "IF", "LI", "I"):
            if pending is None:
                raise NIRConversionError(f"node {key!r} ({kind}): has no weights before it; sbnn neurons take the output of an Affine, Linear or Conv2d node")
            wkey, wnode, in_shape = pending
            pending = None
            is_conv = _kind(wnode) == "Conv2d"
            beta, gain = _neuron_constants(key, node, dt)
            bias = getattr(wnode, "bias", None)
            if is_conv:
                probe = Conv2d(Synapses(np.ones(np.shape(wnode.weight), np.int8), [1.0]), LIF([0.5], [1.0]), in_shape,
                               _pair(wnode.stride), _pair(wnode.padding), _pair(wnode.dilation))
                out_shape = probe.out_shape
            else:
                out_shape = (int(np.shape(wnode.weight)[0]),)
            declared = _shape_of(getattr(node, "input_type", None))
            if declared is not None and math.prod(declared) != math.prod(out_shape):
                raise NIRConversionError(f"node {key!r} ({kind}): declares input shape {declared}, but {wkey!r} gives {out_shape}")
            gshape = np.broadcast_to(gain, np.broadcast_shapes(np.shape(gain), ())).reshape(-1)
            if gshape.size not in (1, math.prod(out_shape)):
                raise NIRConversionError(f"node {key!r} ({kind}): parameters have {gshape.size} values for {math.prod(out_shape)} units")
            syn = _synapses(wkey, wnode.weight, bias, gshape, keep_zero_bias=not is_conv)
            if kind in ("LIF", "IF"):
                if not np.all(_arr(node.v_reset) == 0):
                    raise NIRConversionError(
                        f"node {key!r} ({kind}): v_reset ≠ 0; sbnn's zero reset restarts the membrane at 0 (set v_reset = 0, "
                        "or shift the threshold and bias by −v_reset)"
                    )
                neuron = LIF(_squeeze("tau", key, beta, out_shape), _above(_squeeze("v_threshold", key, node.v_threshold, out_shape)), "zero")
            elif nxt is not None and _kind(nxt) == "Threshold":
                neuron = LIF(_squeeze("tau", key, beta, out_shape), _above(_squeeze("threshold", path[i + 1], nxt.threshold, out_shape)), "none")
                i += 1
            elif nxt is not None and _kind(nxt) == "Output" and not is_conv and key not in recurrent:
                b = np.unique(np.asarray(beta, np.float64))
                if b.size != 1:
                    raise NIRConversionError(f"node {key!r} ({kind}): a readout needs one τ for all units, got {b.size} values")
                recorded = (getattr(node, "metadata", None) or {}).get("sbnn_beta")
                exact = recorded is not None and abs(float(recorded) - b[0]) <= 1e-9
                neuron = MembraneReadout(float(recorded) if exact else float(b[0]))
            else:
                raise NIRConversionError(f"node {key!r} ({kind}): a leaky integrator must be followed by a Threshold (spiking layer) or be the last node before the Output (readout)")
            if isinstance(neuron, LIF) and not np.all(neuron.threshold > 0):
                raise NIRConversionError(f"node {key!r} ({kind}): sbnn thresholds must be positive")
            rec = None
            if key in recurrent:
                if is_conv:
                    raise NIRConversionError(f"node {recurrent[key]!r}: recurrent weights on a convolutional layer are not supported")
                rnode = nodes[recurrent[key]]
                if np.shape(rnode.weight) != (out_shape[0], out_shape[0]):
                    raise NIRConversionError(f"node {recurrent[key]!r} ({_kind(rnode)}): recurrent weight {np.shape(rnode.weight)} must be [{out_shape[0]}, {out_shape[0]}]")
                rec = _synapses(recurrent[key], rnode.weight, getattr(rnode, "bias", None), gshape)
            if is_conv:
                out.append(Conv2d(syn, neuron, tuple(in_shape), _pair(wnode.stride), _pair(wnode.padding), _pair(wnode.dilation)))
            else:
                out.append(Dense(syn, neuron, rec))
            shape = out_shape
        elif kind == "SumPool2d":
            if pending is not None:
                raise NIRConversionError(f"node {key!r} (SumPool2d): between weights {pending[0]!r} and their neurons")
            thr = None if nxt is None or _kind(nxt) != "Threshold" else _arr(nxt.threshold)
            if thr is None or not ((thr >= 0) & (thr < 1)).all():
                raise NIRConversionError(
                    f"node {key!r} (SumPool2d): sbnn pools spikes by OR (max pooling); it must be followed by a Threshold "
                    "in [0, 1) (as sbnn exports it), otherwise the pooled counts are not spikes"
                )
            if len(shape) != 3:
                raise NIRConversionError(f"node {key!r} (SumPool2d): needs a [C, H, W] input, got {shape}")
            pool = MaxPool2d(tuple(shape), _pair(node.kernel_size), _pair(node.stride), _pair(node.padding))
            out.append(pool)
            shape = pool.out_shape
            i += 1
        elif kind == "Threshold":
            raise NIRConversionError(f"node {key!r} (Threshold): follows {path[i - 1]!r}; sbnn reads a Threshold only after LI/I (spiking layer) or SumPool2d (OR pooling)")
        elif kind == "Output":
            if pending is not None:
                raise NIRConversionError(f"node {pending[0]!r}: weights reach the Output without neurons; end the graph with an LI (readout) or LIF node")
        i += 1
    if not out:
        raise NIRConversionError("graph_from_nir: the graph has no layers")
    try:
        return Graph(_shape_of(nodes[path[0]].input_type), tuple(out), {"source": "nir", "dt": dt})
    except ValueError as err:
        raise NIRConversionError(f"graph_from_nir: the layers do not chain: {err}") from None


def _pair(v) -> tuple[int, int]:
    arr = np.asarray(v).reshape(-1)
    if arr.size == 1:
        return (int(arr[0]), int(arr[0]))
    return (int(arr[0]), int(arr[1]))


def _log_exact(alpha: float) -> float:
    """A float32 ``ℓ`` with ``exp(ℓ) == α`` in torch's float32 ``exp`` when one lies within 8 ulps of ``log α``."""
    import torch

    target = torch.tensor(alpha, dtype=torch.float32)
    guess = np.float32(math.log(float(target)))
    cand = guess
    for _ in range(8):
        cand = np.nextafter(cand, np.float32(-np.inf), dtype=np.float32)
    for _ in range(17):
        if torch.exp(torch.tensor(cand)) == target:
            return float(cand)
        cand = np.nextafter(cand, np.float32(np.inf), dtype=np.float32)
    return float(guess)


def from_nir(
    graph: _nir_types.NIRGraph, *, dt: float = DEFAULT_DT, confidence: float = DEFAULT_CONFIDENCE, **network_kwargs: Any
) -> nn.Module:
    """A trainable sbnn network initialised from a NIR graph (e.g. a float SNN trained elsewhere).

    Dense graphs become a :class:`~sbnn.SpikingMLP`, graphs with recurrent layers a
    :class:`~sbnn.models.SpikingRecurrentNet`. Each Bernoulli layer gets ``λ = sign(W)·atanh(2c − 1)``
    and one scale (the mean of the graph's per-row ``α``: the models hold one per layer), each
    neuron the layer's ``β`` and ``ϑ``. For a graph whose rows share one ``α`` per layer (every
    sbnn export), the ``mode`` network reproduces :func:`graph_from_nir` bit for bit.

    Args:
        graph: a ``nir.NIRGraph``.
        dt: the exporter's Euler time step.
        confidence: ``c = q(w = sign W) ∈ (0.5, 1)``.
        **network_kwargs: model arguments that replace the imported ones (e.g. ``neuron=NeuronSettings(...)``
            with the training settings ``sigma0``, ``estimator``; give the imported β, ϑ and reset again there).

    Raises:
        NIRConversionError: what :func:`graph_from_nir` refuses, plus convolutional graphs
            (use :func:`graph_from_nir` and the engine) and mixed reset kinds.
    """
    import torch

    from ..models import LayerSettings, NeuronSettings, SpikingMLP, SpikingRecurrentNet

    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence: q(w = sign W) must lie in (0.5, 1), got {confidence!r}")
    g = graph_from_nir(graph, dt=dt)
    if not all(isinstance(n, Dense) for n in g.nodes) or len(g.input_shape) != 1:
        raise NIRConversionError("from_nir: builds dense and recurrent networks; this graph has convolution or pooling "
                                 "nodes: run it with sbnn.kernels.Engine(graph_from_nir(graph))")
    hidden, last = g.nodes[:-1], g.nodes[-1]
    resets = {n.neuron.reset for n in g.nodes if isinstance(n.neuron, LIF)}
    if len(resets) > 1:
        raise NIRConversionError(f"from_nir: the layers mix reset kinds {sorted(resets)}; sbnn models use one")
    n_rec = sum(n.recurrent is not None for n in hidden)
    if n_rec not in (0, len(hidden)) or last.recurrent is not None:
        raise NIRConversionError("from_nir: either every hidden layer is recurrent or none (and never the output layer)")
    for n in hidden:
        if n.recurrent is not None and n.recurrent.bias is not None:
            raise NIRConversionError("from_nir: a recurrent weight node has a bias; SpikingRecurrentNet's recurrent layers have none")
    readout = "membrane" if isinstance(last.neuron, MembraneReadout) else "spike_count"
    first = (hidden[0] if hidden else last).neuron
    kwargs = dict(
        neuron=NeuronSettings(
            beta=float(first.beta[0]) if isinstance(first, LIF) else 0.9,
            threshold=float(first.threshold[0]) if isinstance(first, LIF) else 1.0,
            reset_mechanism=resets.pop() if resets else "zero",
        ),
        layer=LayerSettings(bias=any(n.synapses.bias is not None for n in g.nodes)),
        readout=readout,
        readout_beta=last.neuron.beta if readout == "membrane" else 0.9,
    )
    kwargs.update(network_kwargs)
    sizes = [n.synapses.n_out for n in hidden]
    if n_rec:
        if not hidden:
            raise NIRConversionError("from_nir: a recurrent network needs a hidden layer")
        net = SpikingRecurrentNet(g.input_shape[0], sizes, last.synapses.n_out, recurrent=True, binary_input=False, **kwargs)
        layers, neurons, recs = list(net.layers), list(net.neurons), list(net.recurrent)
    else:
        net = SpikingMLP(g.input_shape[0], sizes, last.synapses.n_out, **kwargs)
        layers, neurons, recs = list(net.layers), list(net.neurons), [None] * len(hidden)
    layers.append(net.output)
    neurons.append(getattr(net, "output_neuron", None))
    recs.append(None)
    lam = math.atanh(2.0 * confidence - 1.0)
    with torch.no_grad():
        for node, layer, neuron, rec in zip(g.nodes, layers, neurons, recs):
            for syn, target in ((node.synapses, layer), (node.recurrent, rec)):
                if syn is None:
                    continue
                target.lam.copy_(torch.from_numpy(syn.sign.astype(np.float32)) * lam)
                alpha = float(np.mean(syn.alpha, dtype=np.float64)) if syn.alpha.size > 1 else float(syn.alpha[0])
                target.log_scale.copy_(torch.full_like(target.log_scale, _log_exact(alpha)))
                if syn.bias is not None:
                    target.bias.copy_(torch.from_numpy(syn.bias))
                elif target.bias is not None:
                    target.bias.zero_()
            if isinstance(node.neuron, LIF) and neuron is not None:
                for name in ("beta", "threshold"):
                    value = torch.from_numpy(getattr(node.neuron, name).copy())
                    setattr(neuron, name, value.reshape(()) if value.numel() == 1 else value)
    return net


def write_nir(model: Any, path: str | os.PathLike, *, dt: float = DEFAULT_DT) -> Path:
    """Write :func:`to_nir` of ``model`` to ``path`` (NIR's HDF5 file), atomically: temp file, then rename."""
    nir = _nir()
    graph = to_nir(model, dt=dt)  # refusals come before anything is written
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_checkpoint_nir(
    checkpoint: str | os.PathLike, path: str | os.PathLike, *, config: str | os.PathLike | None = None, dt: float = DEFAULT_DT
) -> Path:
    """NIR graph of a training checkpoint's ``mode`` network (architecture as in :func:`sbnn.export.export_checkpoint`)."""
    from ..export import export_checkpoint, load_graph

    _nir()
    _check_dt(dt)
    with tempfile.TemporaryDirectory() as tmp:
        graph = load_graph(export_checkpoint(checkpoint, Path(tmp) / "model.sbnn", config=config))
    return write_nir(graph, path, dt=dt)


def main_nir(checkpoint: str, out: str, *, config: str | None, dt: float) -> None:
    """``sbnn-export --format nir``: exit status 1 with a one-line message on any refusal."""
    try:
        path = export_checkpoint_nir(checkpoint, out, config=config, dt=dt)
    except (ValueError, ImportError) as err:
        raise SystemExit(f"sbnn-export: {err}") from None
    nodes = len(_nir().read(path).nodes)
    print(f"sbnn-export: wrote {path} ({path.stat().st_size:,} bytes, NIR graph of {nodes} nodes, dt={dt})")

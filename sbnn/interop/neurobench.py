r"""NeuroBench's metrics on sbnn's deployed networks, beside the engine's own statistics.

NeuroBench (Yik et al., Nature Communications 2025; package ``neurobench``) measures a model
through its wrappers. :func:`neurobench_model` puts sbnn's deployed (``mode``) network into
NeuroBench's ``SNNTorchModel`` by one of two routes, so NeuroBench's own hooks count the
activations (outputs of every ``snntorch.SpikingNeuron``) and the synaptic operations (inputs of
every ``nn.Linear``/``nn.Conv2d``); :func:`engine_statistics` computes the same quantities from
:class:`sbnn.kernels.Engine`'s per-layer counts.

- ``route="direct"`` (the default): :func:`sbnn.interop.snntorch_graph.snntorch_network` builds
  the network from the graph with ``nn.Linear``/``nn.Conv2d`` (±1 weights), the scale and bias,
  :class:`~sbnn.interop.snntorch_graph.SbnnLeaky` neurons (``snntorch.Leaky`` with sbnn's exact
  arithmetic), ``nn.MaxPool2d`` and the membrane readout. Every graph runs, and its hidden spikes
  equal the engine's bit for bit.
- ``route="nir"``: :func:`sbnn.interop.nir.to_nir` and snnTorch's own NIR import. It runs only
  what that import runs (zero-reset ``LIF`` layers, spike-count readout, no pooling, no
  recurrence), and equals the engine only for dyadic constants (snnTorch folds ``α`` into the
  weights and computes ``β = 1 − dt/τ`` in float64); it is kept to check the exchange format.

The default is the direct route because it is exact for every exportable network; the NIR route
runs when asked for, and refuses what snnTorch's import cannot run.

============================= ================================ ===================================
quantity                      NeuroBench                       sbnn engine
============================= ================================ ===================================
activation sparsity           zero outputs / all outputs of    ``1 − Σ spikes / Σ units·T·B`` over
                              the spiking-neuron modules       the LIF layers (equal)
effective ACs per sample      Σ binary input × nonzero weight  ``Σ synops / B`` (equal for binary
                              connections (bias excluded)      inputs: every ±1 weight is nonzero)
dense synops per sample       every connection at every step   :func:`~sbnn.interop.snntorch_graph.dense_synops` (equal)
connection sparsity           zero weights / all weights       0: a ±1 weight is never zero
footprint                     bytes of the float32 parameters  the ``.sbnn`` file: 1 bit per weight
                              and buffers of the snnTorch net  plus float32 constants and header
accuracy                      argmax of the post-processed     argmax of the engine's output
                              outputs (time-averaged readout   (equal up to float32 ties of the
                              membrane, or summed spikes)      membrane readout)
============================= ================================ ===================================

The membrane readout is a :class:`~sbnn.interop.snntorch_graph.LeakyIntegrator`, not a spiking
neuron: neither NeuroBench's activation sparsity nor the engine's counts it. Effective MACs are 0
for both when the input is binary spikes (NeuroBench counts a layer's operations as MACs only when
its input is not binary; for count-valued frames the engine's synops count each count as an
event, NeuroBench the first layer's operations as MACs).
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..kernels.engine import Engine
from ..kernels.graph import LIF, Graph, MaxPool2d
from .nir import DEFAULT_DT, NIRConversionError, to_nir

__all__ = ["ROUTES", "neurobench_model", "neurobench_metrics", "engine_statistics", "post_processor"]

#: the routes of :func:`neurobench_model`
ROUTES = ("direct", "nir")


def _graph(model: Any) -> Graph:
    from ..export import to_graph

    return to_graph(model)


def _check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"route: expected one of {ROUTES}, got {route!r} ('direct' runs every sbnn graph exactly)")
    return route


def _nir_network(graph: Graph, dt: float) -> Any:
    """snnTorch's import of ``graph``'s NIR export (refusing what that import cannot run)."""
    import torch
    from snntorch.import_nir import import_from_nir

    fix = "; use route='direct', or readout='spike_count' and reset_mechanism='zero'"
    for k, node in enumerate(graph.nodes):
        neuron = getattr(node, "neuron", None)
        if neuron is not None and not (isinstance(neuron, LIF) and neuron.reset == "zero"):
            raise NIRConversionError(
                f"graph node {k}: {type(neuron).__name__} {getattr(neuron, 'reset', '')!s}: snnTorch's NIR import runs "
                "zero-reset LIF layers only" + fix
            )
        if isinstance(node, MaxPool2d):
            raise NIRConversionError(
                f"graph node {k}: MaxPool2d exports as SumPool2d → Threshold, which snnTorch's NIR import lacks; use route='direct'"
            )
        if getattr(node, "recurrent", None) is not None:
            raise NIRConversionError(
                f"graph node {k}: recurrent synapses: snnTorch's NIR import runs them through nirtorch's generic "
                "interpreter, whose spikes differ (docs/interop.md); use route='direct'"
            )
    net = import_from_nir(to_nir(graph, dt=dt))
    for module in net.modules():
        # NIR shapes have no batch axis, so sbnn writes Flatten(start_dim=0); snnTorch's importer
        # passes it to torch.nn.Flatten unchanged (its exporter subtracts 1, the importer does not
        # add it back), which would flatten the batch too
        if isinstance(module, torch.nn.Flatten) and module.start_dim == 0:
            module.start_dim = 1
    return net


def neurobench_model(model: Any, *, route: Literal["direct", "nir"] = "direct", dt: float = DEFAULT_DT) -> Any:
    """NeuroBench's ``SNNTorchModel`` around ``model``'s deployed network.

    Args:
        model: an exportable sbnn network or a :class:`~sbnn.kernels.graph.Graph`.
        route: ``"direct"`` (:func:`~sbnn.interop.snntorch_graph.snntorch_network`: every graph,
            exact) or ``"nir"`` (NIR export → snnTorch's ``import_from_nir``); see the module docstring.
        dt: the NIR route's Euler time step.

    Raises:
        ValueError: an unknown ``route``.
        NIRConversionError: ``route="nir"`` for a network snnTorch's NIR import does not run (a
            membrane readout, a reset other than ``"zero"``, max pooling, recurrent synapses).
    """
    from neurobench.models import SNNTorchModel

    _check_route(route)
    graph = _graph(model)
    if route == "nir":
        return SNNTorchModel(_nir_network(graph, dt))
    from .snntorch_graph import snntorch_network

    return SNNTorchModel(snntorch_network(graph))


def post_processor(readout: str):
    """NeuroBench post-processor ``[B, T, K] → [B]`` class predictions, as sbnn reads its readout.

    ``"membrane"``: argmax of the time-averaged readout membrane (sbnn's logits);
    ``"spike_count"``: argmax of the summed output spikes. Ties go to the lowest class, as
    ``numpy.argmax`` on the engine's output.
    """
    if readout == "membrane":
        return lambda preds: preds.mean(1).argmax(-1)
    if readout == "spike_count":
        return lambda preds: preds.sum(1).argmax(-1)
    raise ValueError(f"post_processor: readout must be 'membrane' or 'spike_count', got {readout!r}")


def _check_data(graph: Graph, x: Any, labels: Any, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    arr = np.asarray(x)
    shape, flat = graph.input_shape, math.prod(graph.input_shape)
    if not (arr.ndim >= 3 and (tuple(arr.shape[2:]) == shape or (arr.ndim == 3 and arr.shape[2] == flat))) or 0 in arr.shape[:2]:
        raise ValueError(f"{name}: x must be time-major [T, B, {', '.join(map(str, shape))}], got shape {arr.shape}")
    if labels is None:
        return arr, None
    y = np.asarray(labels)
    if y.shape != (arr.shape[1],):
        raise ValueError(f"{name}: labels must be [B] = [{arr.shape[1]}] class indices, got shape {y.shape}")
    return arr, y.astype(np.int64)


def _check_batch_size(batch_size: int | None, name: str) -> None:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{name}: batch_size must be a positive int or None (all samples at once), got {batch_size!r}")


def neurobench_metrics(
    model: Any,
    x: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    route: Literal["direct", "nir"] = "direct",
    dt: float = DEFAULT_DT,
    batch_size: int | None = 32,
) -> dict:
    """Run NeuroBench's Footprint, ConnectionSparsity, ActivationSparsity and SynapticOperations.

    NeuroBench's hooks keep every step's activations of a batch, so the samples run in batches
    of ``batch_size``. Its workload metrics aggregate across batches exactly: the synaptic
    operations are summed, activation sparsity and accuracy are batch-size-weighted means of
    per-batch values whose denominators are proportional to the batch size (equal to the
    all-at-once values up to float rounding).

    Args:
        model: an exportable sbnn network or a graph (see :func:`neurobench_model`).
        x: time-major input ``[T, B, *input_shape]`` (NeuroBench's batch-first layout is made here).
        labels: ``[B]`` class labels (adds NeuroBench's ClassificationAccuracy with
            :func:`post_processor` of the graph's readout).
        route, dt: see :func:`neurobench_model`.
        batch_size: samples per NeuroBench batch (``None``: all at once).

    Returns:
        NeuroBench's result dictionary.

    Raises:
        ValueError: bad ``x``, ``labels``, ``batch_size`` or ``route``.
        RuntimeError: a NeuroBench metric failed (NeuroBench itself reports 0.0 and prints the error).
    """
    import torch
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations

    _check_route(route)
    _check_batch_size(batch_size, "neurobench_metrics")
    graph = _graph(model)
    arr, y = _check_data(graph, x, labels, "neurobench_metrics")
    wrapped = neurobench_model(graph, route=route, dt=dt)
    data = torch.as_tensor(np.asarray(arr, np.float32)).transpose(0, 1).contiguous()  # [B, T, ...]
    if data.ndim == 3 and len(graph.input_shape) > 1:
        data = data.reshape(*data.shape[:2], *graph.input_shape)
    targets = torch.as_tensor(y if y is not None else np.zeros(data.shape[0], np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, targets), batch_size=batch_size or len(data))
    workload = [ActivationSparsity, SynapticOperations] + ([ClassificationAccuracy] if y is not None else [])
    post = [post_processor(graph.readout)] if y is not None else []
    bench = Benchmark(wrapped, loader, [], post, [[Footprint, ConnectionSparsity], workload])
    log = io.StringIO()
    # NeuroBench catches a failing workload metric, prints it and reports 0.0: keep its print and raise
    with torch.no_grad(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
        results = bench.run(quiet=False)
    net = wrapped.__net__()
    if callable(getattr(net, "reset", None)):
        net.reset()  # release the last batch's state
    errors = [line for line in log.getvalue().splitlines() if line.startswith("Error running workload metric")]
    if errors:
        raise RuntimeError("neurobench_metrics: NeuroBench reported " + "; ".join(errors))
    return results


def engine_statistics(model: Any, x: np.ndarray, labels: np.ndarray | None = None, *, batch_size: int | None = None) -> dict:
    """The engine's counts on ``x`` (``[T, B, *input_shape]``), in NeuroBench's terms.

    Args:
        model: an exportable sbnn network or a graph.
        x: time-major input.
        labels: ``[B]`` class labels (adds ``accuracy``).
        batch_size: samples per engine call (``None``: all at once); the counts add up exactly.

    Returns:
        ``activation_sparsity``, ``synops_per_sample`` (NeuroBench's effective ACs for binary
        input), ``events_per_sample`` (input events of every layer), ``firing_rates`` (per LIF
        layer), ``file_bytes`` (the ``.sbnn`` file), ``weights`` (count of ±1 weights, recurrent
        ones included), ``dense_synops_per_sample`` (every connection at every step, as
        NeuroBench's ``Dense``), ``output`` (the engine's ``[B, K]`` output) and, with
        ``labels``, ``accuracy``.
    """
    from ..export import save
    from .snntorch_graph import dense_synops

    _check_batch_size(batch_size, "engine_statistics")
    graph = _graph(model)
    arr, y = _check_data(graph, x, labels, "engine_statistics")
    steps, batch = arr.shape[:2]
    step = batch_size or batch
    engine = Engine(graph)
    is_lif = [isinstance(getattr(n, "neuron", None), LIF) for n in graph.nodes]
    spikes = np.zeros(len(graph.nodes), np.int64)
    events = synops = 0
    outputs = []
    for start in range(0, batch, step):
        result = engine.run(np.ascontiguousarray(arr[:, start:start + step]))
        spikes += [s.output_spikes for s in result.stats]
        events += sum(s.input_events for s in result.stats)
        synops += result.synops
        outputs.append(result.output)
    output = np.concatenate(outputs)
    units = [s.units for s in result.stats]
    lif_spikes = sum(int(s) for s, keep in zip(spikes, is_lif) if keep)
    lif_units = sum(u for u, keep in zip(units, is_lif) if keep) * steps * batch
    with tempfile.TemporaryDirectory() as tmp:
        size = save(graph, Path(tmp) / "m.sbnn").stat().st_size
    weights = sum(n.synapses.sign.size + (0 if getattr(n, "recurrent", None) is None else n.recurrent.sign.size)
                  for n in graph.nodes if not isinstance(n, MaxPool2d))
    stats = {
        "activation_sparsity": 1.0 - lif_spikes / lif_units if lif_units else 0.0,
        "synops_per_sample": synops / batch,
        "events_per_sample": events / batch,
        "firing_rates": [int(s) / (u * steps * batch) for s, u, keep in zip(spikes, units, is_lif) if keep],
        "file_bytes": int(size),
        "weights": int(weights),
        "dense_synops_per_sample": dense_synops(graph, steps),
        "output": output,
    }
    if y is not None:
        stats["accuracy"] = float((output.argmax(1) == y).mean())
    return stats

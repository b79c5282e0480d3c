r"""NeuroBench's metrics on sbnn's deployed networks, beside the engine's own statistics.

NeuroBench (Yik et al., Nature Communications 2025; package ``neurobench``) measures a model
through its wrappers: :func:`neurobench_model` routes sbnn's deployed (``mode``) network through
:func:`sbnn.interop.nir.to_nir` and snnTorch's NIR import into NeuroBench's ``SNNTorchModel``, so
NeuroBench's own hooks count the activations and synaptic operations. :func:`engine_statistics`
computes the same quantities from :class:`sbnn.kernels.Engine`'s per-layer counts.

============================= ================================ ===================================
quantity                      NeuroBench                       sbnn engine
============================= ================================ ===================================
activation sparsity           zero outputs / all outputs of    ``1 − Σ spikes / Σ units·T·B`` over
                              the spiking-neuron modules       the LIF layers (equal)
effective ACs per sample      Σ binary input × nonzero weight  ``Σ synops / B`` (equal for binary
                              connections (bias excluded)      inputs: every ±1 weight is nonzero)
connection sparsity           zero weights / all weights       0: a ±1 weight is never zero
footprint                     bytes of the float32 parameters  the ``.sbnn`` file: 1 bit per weight
                              and buffers of the snnTorch net  plus float32 constants and header
============================= ================================ ===================================

The NIR route runs only what snnTorch imports exactly: zero-reset ``LIF`` layers (the last one
gives the spike-count readout). Effective MACs are 0 for both when the input is binary spikes
(NeuroBench counts a layer's operations as MACs only when its input is not binary).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.engine import Engine
from ..kernels.graph import LIF, Dense, Graph, MaxPool2d
from .nir import DEFAULT_DT, NIRConversionError, to_nir

__all__ = ["neurobench_model", "neurobench_metrics", "engine_statistics"]


def _graph(model: Any) -> Graph:
    from ..export import to_graph

    return to_graph(model)


def neurobench_model(model: Any, *, dt: float = DEFAULT_DT) -> Any:
    """NeuroBench's ``SNNTorchModel`` around snnTorch's import of ``model``'s NIR graph.

    Raises:
        NIRConversionError: the network has a membrane readout or a non-zero reset, which
            snnTorch's NIR import does not run (use ``readout="spike_count"``, ``reset_mechanism="zero"``).
    """
    from neurobench.models import SNNTorchModel
    from snntorch.import_nir import import_from_nir

    graph = _graph(model)
    for k, node in enumerate(graph.nodes):
        neuron = getattr(node, "neuron", None)
        if neuron is not None and not (isinstance(neuron, LIF) and neuron.reset == "zero"):
            raise NIRConversionError(
                f"graph node {k}: {type(neuron).__name__} {getattr(neuron, 'reset', '')!s}: snnTorch's NIR import runs "
                "zero-reset LIF layers only; use readout='spike_count' and reset_mechanism='zero'"
            )
        if isinstance(node, MaxPool2d):
            raise NIRConversionError(f"graph node {k}: MaxPool2d exports as SumPool2d → Threshold, which snnTorch's NIR import lacks")
    import torch

    net = import_from_nir(to_nir(graph, dt=dt))
    for module in net.modules():
        # NIR shapes have no batch axis, so sbnn writes Flatten(start_dim=0); snnTorch's importer
        # passes it to torch.nn.Flatten unchanged (its exporter subtracts 1, the importer does not
        # add it back), which would flatten the batch too
        if isinstance(module, torch.nn.Flatten) and module.start_dim == 0:
            module.start_dim = 1
    return SNNTorchModel(net)


def neurobench_metrics(model: Any, x: np.ndarray, labels: np.ndarray | None = None, *, dt: float = DEFAULT_DT) -> dict:
    """Run NeuroBench's Footprint, ConnectionSparsity, ActivationSparsity and SynapticOperations.

    Args:
        model: an exportable sbnn network or a graph (see :func:`neurobench_model`).
        x: time-major input spikes ``[T, B, *input_shape]`` (NeuroBench's batch-first layout is
            made here).
        labels: ``[B]`` class labels (adds NeuroBench's ClassificationAccuracy on spike counts).

    Returns:
        NeuroBench's result dictionary.
    """
    import torch
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations

    wrapped = neurobench_model(model, dt=dt)
    data = torch.as_tensor(np.asarray(x, np.float32)).transpose(0, 1).contiguous()  # [B, T, ...]
    targets = torch.as_tensor(labels if labels is not None else np.zeros(data.shape[0], np.int64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, targets), batch_size=len(data))
    workload = [ActivationSparsity, SynapticOperations] + ([ClassificationAccuracy] if labels is not None else [])
    post = [lambda spikes: spikes.sum(1).argmax(-1)] if labels is not None else []
    bench = Benchmark(wrapped, loader, [], post, [[Footprint, ConnectionSparsity], workload])
    with torch.no_grad():
        return bench.run(quiet=True)


def engine_statistics(model: Any, x: np.ndarray) -> dict:
    """The engine's counts on ``x`` (``[T, B, *input_shape]``), in NeuroBench's terms.

    Returns:
        ``activation_sparsity``, ``synops_per_sample`` (NeuroBench's effective ACs for binary
        input), ``events_per_sample`` (input events of every layer), ``firing_rates`` (per LIF
        layer), ``file_bytes`` (the ``.sbnn`` file), ``weights`` (count of ±1 weights).
    """
    from ..export import save

    graph = _graph(model)
    arr = np.asarray(x)
    batch = arr.shape[1]
    result = Engine(graph).run(arr)
    lif = [s for s, n in zip(result.stats, graph.nodes) if isinstance(getattr(n, "neuron", None), LIF)]
    steps = arr.shape[0]
    spikes = sum(s.output_spikes for s in lif)
    units = sum(s.units for s in lif) * steps * batch
    with tempfile.TemporaryDirectory() as tmp:
        size = save(graph, Path(tmp) / "m.sbnn").stat().st_size
    weights = sum(n.synapses.sign.size + (0 if getattr(n, "recurrent", None) is None else n.recurrent.sign.size)
                  for n in graph.nodes if not isinstance(n, MaxPool2d))
    return {
        "activation_sparsity": 1.0 - spikes / units if units else 0.0,
        "synops_per_sample": result.synops / batch,
        "events_per_sample": sum(s.input_events for s in result.stats) / batch,
        "firing_rates": [s.rate for s in lif],
        "file_bytes": int(size),
        "weights": int(weights),
        "dense_synops_per_sample": float(sum(
            steps * math.prod(graph.input_shape if k == 0 else graph.shapes()[k - 1]) * n.synapses.n_out
            for k, n in enumerate(graph.nodes) if isinstance(n, Dense)
        )),
    }

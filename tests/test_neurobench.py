"""NeuroBench's own metric implementations on sbnn's deployed networks agree with the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nir")
pytest.importorskip("neurobench")
pytest.importorskip("snntorch.import_nir")

from sbnn.data.randman import make_randman  # noqa: E402
from sbnn.export import to_graph  # noqa: E402
from sbnn.interop.neurobench import engine_statistics, neurobench_metrics  # noqa: E402
from sbnn.interop.nir import NIRConversionError  # noqa: E402
from sbnn.kernels.engine import Engine  # noqa: E402
from sbnn.models import SpikingMLP  # noqa: E402
from sbnn.models import NeuronSettings, SpikingConvNet  # noqa: E402


@pytest.fixture
def randman():
    x, y = make_randman(n_classes=4, n_channels=20, n_steps=30, n_samples_per_class=6, seed=0)
    return x.transpose(0, 1).numpy(), y.numpy()  # time-major [T, B, C]


def test_mlp_metrics_agree_with_the_engine(randman):
    x, y = randman
    torch.manual_seed(0)
    net = SpikingMLP(20, [32, 16], 4, neuron=NeuronSettings(reset_mechanism="zero", beta=0.9, threshold=0.3), readout="spike_count")
    nb = neurobench_metrics(net, x, y)
    ours = engine_statistics(net, x)
    assert 0.0 < ours["activation_sparsity"] < 1.0 and ours["synops_per_sample"] > 0
    assert nb["ActivationSparsity"] == pytest.approx(ours["activation_sparsity"], abs=1e-12)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["synops_per_sample"], abs=1e-9)
    assert nb["SynapticOperations"]["Effective_MACs"] == 0  # binary input: accumulations only
    assert nb["SynapticOperations"]["Dense"] == pytest.approx(ours["dense_synops_per_sample"])
    assert nb["ConnectionSparsity"] == 0.0  # ±α weights are never zero
    # the footprint differs by design: NeuroBench counts float32 weights, the file one bit each
    assert nb["Footprint"] >= 4 * ours["weights"] > ours["file_bytes"] > ours["weights"] / 8
    # accuracy: NeuroBench's on the summed output spikes equals the engine's argmax of spike counts
    counts = Engine(to_graph(net)).run(x).output
    assert nb["ClassificationAccuracy"] == pytest.approx(float((counts.argmax(1) == y).mean()))


def test_conv_metrics_agree_with_the_engine():
    rng = np.random.default_rng(0)
    x = (rng.random((8, 5, 2, 8, 8)) < 0.2).astype(np.float32)
    torch.manual_seed(1)
    net = SpikingConvNet(2, 8, channels=(4,), fc=(), num_classes=3, pool=1,
                         neuron=NeuronSettings(reset_mechanism="zero", threshold=0.5), readout="spike_count")
    nb = neurobench_metrics(net, x)
    ours = engine_statistics(net, x)
    assert nb["ActivationSparsity"] == pytest.approx(ours["activation_sparsity"], abs=1e-12)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["synops_per_sample"], abs=1e-9)


def test_membrane_readout_is_refused_with_the_fix():
    net = SpikingMLP(4, [3], 2, neuron=NeuronSettings(reset_mechanism="zero"))  # membrane readout: an LI node snnTorch lacks
    with pytest.raises(NIRConversionError, match="readout='spike_count'"):
        neurobench_metrics(net, np.zeros((2, 1, 4), np.float32))

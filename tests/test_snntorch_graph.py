"""The deployed graph as an snnTorch network equals the engine and the PyTorch ``mode`` network.

Hidden spikes and spike-count outputs are compared bit for bit; membrane-readout logits to
float32 rounding (the engine sums the time average in float64, the snnTorch network integrates
step by step in float32, as the ``mode`` network does over a different summation order).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import numpy as np
import pytest
import snntorch
import torch

from sbnn import evaluation
from sbnn.export import to_graph
from sbnn.interop.snntorch_graph import LeakyIntegrator, SbnnLeaky, SNNTorchNet, SpikingLayer, dense_synops, snntorch_network
from sbnn.kernels.engine import Engine
from sbnn.kernels.graph import Conv2d, Dense, Graph, LIF, MaxPool2d, Synapses
from sbnn.models import LayerSettings, NeuronSettings, SpikingConvNet, SpikingMLP, SpikingRecurrentNet


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def spikes(shape: tuple[int, ...], rate: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) < rate).float()


def _calibrate(net, x) -> None:
    with warnings.catch_warnings():  # the tests check the activity themselves
        warnings.simplefilter("ignore", RuntimeWarning)
        net.calibrate(x)


def _biases_(net: torch.nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)


def _check(net, x: torch.Tensor) -> SNNTorchNet:
    """snnTorch network == engine (every node, bit for bit) == ``mode`` net (hidden spikes); logits to rounding."""
    with evaluation(net, "mode"), torch.no_grad():
        logits, hidden = net.forward_with_spikes(x)
    graph = to_graph(net)
    ours = Engine(graph).run(x.numpy(), record=True)
    snn = snntorch_network(graph)
    run = snn.sequence(x)
    assert len(run.spikes) == len(graph.nodes)
    for k, (a, b) in enumerate(zip(ours.spikes, run.spikes)):
        if a is None:
            assert b is None and graph.readout == "membrane"
            continue
        np.testing.assert_array_equal(b.numpy(), a, err_msg=f"node {k} ({type(graph.nodes[k]).__name__})")
    # the mode net's hidden spikes are those of the graph's LIF nodes (pooling comes after them)
    lif_nodes = [k for k, n in enumerate(graph.nodes) if isinstance(getattr(n, "neuron", None), LIF)]
    lif_nodes = lif_nodes[: len(hidden)]
    for k, h in zip(lif_nodes, hidden):
        np.testing.assert_array_equal(run.spikes[k].numpy(), h.numpy(), err_msg=f"node {k}")
    assert 0.02 < float(np.mean([h.mean() for h in hidden])) < 0.8  # not a silent (vacuous) network
    if graph.readout == "spike_count":
        np.testing.assert_array_equal(run.output.numpy(), ours.output)
        np.testing.assert_array_equal(run.output.numpy(), logits.numpy())
    else:
        np.testing.assert_allclose(run.output.numpy(), ours.output, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run.output.numpy(), logits.numpy(), rtol=1e-5, atol=1e-5)
        assert run.steps.shape == (x.shape[0], x.shape[1], graph.nodes[-1].synapses.n_out)
    return snn


def test_dvs_style_conv_net(gen):
    """The DVS recipe's shape: conv → 2×2 max-pool → conv → max-pool → fc → membrane readout, subtract reset."""
    net = SpikingConvNet(2, 8, (4, 6), 3, fc=(5,), pool=2, pool_type="max", readout="membrane", readout_beta=0.9,
                         neuron=NeuronSettings(beta=0.9, threshold=1.0, reset_mechanism="subtract"), layer=LayerSettings(bias=True))
    x = spikes((8, 5, 2, 8, 8), 0.3, gen)
    _calibrate(net, x)
    _biases_(net, gen)
    snn = _check(net, x)
    kinds = [type(m).__name__ for m in snn.layers]
    assert kinds == ["SpikingLayer", "MaxPool2d", "SpikingLayer", "MaxPool2d", "SpikingLayer", "SpikingLayer"]
    assert isinstance(snn.layers[0].synapse, torch.nn.Conv2d) and isinstance(snn.layers[4].synapse, torch.nn.Linear)
    assert isinstance(snn.layers[-1].neuron, LeakyIntegrator) and not isinstance(snn.layers[-1].neuron, snntorch.SpikingNeuron)


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
def test_recurrent_net(gen, readout):
    net = SpikingRecurrentNet(6, (7, 5), 3, readout=readout, layer=LayerSettings(bias=True),
                              neuron=NeuronSettings(threshold=0.5) if readout == "spike_count" else NeuronSettings())
    x = spikes((12, 6, 6), 0.3, gen)
    _calibrate(net, x)
    _biases_(net, gen)
    snn = _check(net, x)
    assert all(layer.recurrent is not None for layer in snn.layers[:2])


def _dyadic_mlp(reset: str) -> SpikingMLP:
    """Scales 1/2, biases in quarters, β = 1/2, ϑ = 1: membranes hit the threshold exactly, often."""
    net = SpikingMLP(12, (10, 8), 4, neuron=NeuronSettings(beta=0.5, threshold=1.0, reset_mechanism=reset),
                     layer=LayerSettings(bias=True), readout="spike_count")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "log_scale"):
                m.log_scale.fill_(math.log(0.5))
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.nn.Parameter):
                m.bias.copy_(torch.randint(-2, 3, m.bias.shape, generator=g) * 0.25)
    return net


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_every_reset_on_threshold_ties(gen, reset):
    net = _dyadic_mlp(reset)
    x = spikes((16, 8, 12), 0.4, gen)
    snn = _check(net, x)
    # ties U == ϑ do occur here, so the ≥ of SbnnLeaky is what makes the equality (next test)
    mem = []
    layer = snn.layers[0]
    snn.reset()
    for x_t in x.unbind(0):
        layer(x_t)
        mem.append(layer.neuron.mem.clone())
    assert (torch.stack(mem) == 1.0).any()


def test_plain_snntorch_leaky_differs_on_ties(gen):
    """Negative control: snnTorch's own Leaky (fires at U > ϑ, two roundings) gives other spikes."""
    net = _dyadic_mlp("subtract")
    x = spikes((16, 8, 12), 0.4, gen)
    graph = to_graph(net)
    ours = Engine(graph).run(x.numpy(), record=True)
    snn = snntorch_network(graph)
    for layer in snn.layers:
        if isinstance(layer.neuron, SbnnLeaky):
            n = layer.neuron
            layer.neuron = snntorch.Leaky(beta=n.beta.clone(), threshold=n.threshold.clone(), reset_mechanism="subtract")
    assert not np.array_equal(snn.sequence(x).spikes[0].numpy(), ours.spikes[0])


@pytest.mark.parametrize(
    ("reset", "expected"),
    [("subtract", [1, 0, 1, 0, 1]), ("zero", [1, 1, 1, 1, 1]), ("none", [1, 1, 1, 1, 1])],
)
def test_sbnn_leaky_hand_computed(reset, expected):
    """β = 1/2, ϑ = 1, input 1: Ū = 1, then 0.5 + 1 − 1, 0.25 + 1, … (subtract); snnTorch's Leaky waits one step."""
    n = SbnnLeaky(torch.tensor([0.5]), torch.tensor([1.0]), reset)
    assert [float(n(torch.ones(1, 1))[0]) for _ in range(5)] == expected
    plain = snntorch.Leaky(beta=torch.tensor([0.5]), threshold=torch.tensor([1.0]), reset_mechanism=reset)
    assert float(plain(torch.ones(1, 1))[0]) == 0.0  # U = 1 is not > 1


def test_graph_without_model_and_per_unit_constants(gen):
    """A hand-made graph: per-channel α, β, ϑ on a strided, padded, dilated conv, a padded pool, zero reset."""
    rng = np.random.default_rng(0)
    conv = Conv2d(Synapses(rng.choice([-1, 1], (3, 2, 3, 3)), [0.3, 0.25, 0.4], [0.1, -0.2, 0.0]),
                  LIF([0.8, 0.5, 1.0], [0.6, 0.5, 0.7], "zero"), (2, 9, 9), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    pool = MaxPool2d(conv.out_shape, (2, 2), (2, 2), (1, 0))
    c, h, w = pool.out_shape
    fc = Dense(Synapses(rng.choice([-1, 1], (4, c * h * w)), [0.2]), LIF([0.9], [0.5], "subtract"))
    graph = Graph((2, 9, 9), (conv, pool, fc))
    x = spikes((6, 4, 2, 9, 9), 0.4, gen)
    ours = Engine(graph).run(x.numpy(), record=True)
    run = snntorch_network(graph).sequence(x)
    for a, b in zip(ours.spikes, run.spikes):
        np.testing.assert_array_equal(b.numpy(), a)
    np.testing.assert_array_equal(run.output.numpy(), ours.output)
    assert 0 < ours.output.sum() < ours.output.size * 6
    # NeuroBench's "Dense": in-bounds taps of every output position, counted by a conv of ones
    ones = torch.nn.functional.conv2d(torch.ones(1, 2, 9, 9), torch.ones(3, 2, 3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert dense_synops(graph, 6) == 6 * (float(ones.sum()) + c * h * w * 4)


def test_module_contracts(gen):
    net = SpikingRecurrentNet(6, (7,), 3, layer=LayerSettings(bias=True))
    x = spikes((6, 3, 6), 0.4, gen)
    _calibrate(net, x)
    snn = snntorch_network(net)
    ref = snn.sequence(x).output
    for clone in (pickle.loads(pickle.dumps(snn)), copy.deepcopy(snn)):
        torch.testing.assert_close(clone.sequence(x).output, ref, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(snn.state_dict(), buf)
    other = snntorch_network(SpikingRecurrentNet(6, (7,), 3, layer=LayerSettings(bias=True)))
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    torch.testing.assert_close(other.sequence(x).output, ref, rtol=0, atol=0)
    snn.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in [*snn.parameters(), *snn.buffers()] if t.is_floating_point())
    # reset() leaves no state behind: the footprint of a used network equals a fresh one's
    fresh = sum(t.numel() for t in snntorch_network(net).buffers())
    snn.reset()
    assert sum(t.numel() for t in snn.buffers()) == fresh
    assert isinstance(snn.layers[0], SpikingLayer)
    # not kept alive by snnTorch's class-level neuron list
    assert not any(n is m for m in snn.modules() for n in snntorch.SpikingNeuron.instances)


def test_bad_input_shape():
    snn = snntorch_network(SpikingMLP(4, (3,), 2))
    with pytest.raises(ValueError, match=r"x must be \[T, B, 4\]"):
        snn.sequence(torch.zeros(3, 2, 5))

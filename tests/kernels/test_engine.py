"""The engine reproduces the PyTorch ``mode`` network: spikes bit for bit, readouts to rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbnn import BernoulliConv2d, BernoulliLinear, StochasticLIF, evaluation
from sbnn.export import conv_node, dense_node, to_graph
from sbnn.functional.neurons import StochasticLIFState
from sbnn.kernels import Engine, Graph, MaxPool2d
from sbnn.layers import BernoulliLayer
from sbnn.models import NeuronSettings, SpikingMLP


def random_scales_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every Bernoulli layer random scales in [1/16, 1/2], not powers of two.

    Bit-identity must hold for any ``α``: the torch ``mode`` path multiplies ``α`` after the exact
    ±1 matmul, as the engine does (``docs/kernels.md``).
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, BernoulliLayer):
                u = torch.rand(m.log_scale.shape, generator=generator)
                m.log_scale.copy_((-4.0 + 3.0 * u) * math.log(2.0))


def spikes(shape: tuple[int, ...], rate: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli(rate) 0/1 float32 spikes."""
    return (torch.rand(shape, generator=generator) < rate).float()


def _mlp(gen, **kw) -> SpikingMLP:
    net = SpikingMLP(40, (48, 24), 7, **kw)
    net.calibrate(spikes((20, 16, 40), 0.2, gen))
    random_scales_(net, gen)
    return net


@pytest.mark.parametrize("weights", ["packed", "int8"])
@pytest.mark.parametrize("rate", [0.0, 0.02, 0.2, 0.6, 1.0])
def test_spiking_mlp_spikes_bit_identical(gen, weights, rate):
    net = _mlp(gen)
    x = spikes((25, 6, 40), rate, gen)
    with evaluation(net, "mode"), torch.no_grad():
        logits, hidden = net.forward_with_spikes(x)
    out = Engine(to_graph(net), weights=weights).run(x, record=True)
    for k, h in enumerate(hidden):
        np.testing.assert_array_equal(out.spikes[k], h.numpy().astype(np.uint8), err_msg=f"hidden layer {k}")
    # the readout sums over time in a different order than torch: equal to float32 rounding
    np.testing.assert_allclose(out.output, logits.numpy(), rtol=1e-5, atol=1e-5)
    if rate == 0.0:
        assert out.stats[0].input_events == 0 and out.stats[0].synops == 0
    if rate == 1.0:
        assert out.stats[0].input_events == 25 * 6 * 40
    assert out.stats[0].synops == out.stats[0].input_events * 48


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_spike_count_readout_and_resets(gen, reset):
    net = _mlp(gen, readout='spike_count', neuron=NeuronSettings(reset_mechanism=reset, beta=0.75))
    x = spikes((30, 5, 40), 0.15, gen)
    with evaluation(net, "mode"), torch.no_grad():
        counts, hidden = net.forward_with_spikes(x)
    out = Engine(to_graph(net)).run(x.numpy().astype(np.uint8), record=True)
    assert sum(int(h.sum()) for h in hidden) > 0
    np.testing.assert_array_equal(out.output, counts.numpy().astype(np.int64))
    np.testing.assert_array_equal(out.spikes[-1].sum(0), counts.numpy())


def test_thresholds_exactly_hit(gen):
    # α = 1/4, β = 1/2, ϑ = 1: every membrane is a small dyadic number, so many land exactly on ϑ
    net = SpikingMLP(30, (20,), 4, readout='spike_count', neuron=NeuronSettings(beta=0.5, threshold=1.0))
    with torch.no_grad():
        for layer in (*net.layers, net.output):
            layer.log_scale.fill_(math.log(0.25))
    x = spikes((40, 8, 30), 0.3, gen)
    with evaluation(net, "mode"), torch.no_grad():
        moments = net.layers[0].moments(x)
        spk_t, mem_t = net.neurons[0].sequence(moments)
        counts, _ = net.forward_with_spikes(x)
    assert int((mem_t == 1.0).sum()) > 10  # the edge case really occurs
    out = Engine(to_graph(net)).run(x, record=True)
    np.testing.assert_array_equal(out.spikes[0], spk_t.numpy().astype(np.uint8))
    np.testing.assert_array_equal(out.output, counts.numpy())


def _torch_recurrent(ff, rec, lif, x):
    """Reference recurrent layer in ``mode``: ``μ[t] = ff(x)[t] + rec(S[t−1])`` (the graph's order)."""
    mu_ff = ff(x)
    spk = torch.zeros_like(mu_ff[0])
    state = StochasticLIFState(torch.zeros_like(spk), spk)
    out = []
    for t in range(x.shape[0]):
        mu = mu_ff[t] + rec(spk)
        s, _ = lif.sequence(mu[None], state=state)
        spk = s[0]
        state = StochasticLIFState(_[0], spk)
        out.append(spk)
    return torch.stack(out)


@pytest.mark.parametrize("weights", ["packed", "int8"])
@pytest.mark.parametrize("bias", [False, True])
def test_recurrent_layer_bit_identical(gen, weights, bias):
    ff, rec = BernoulliLinear(30, 70, bias=bias), BernoulliLinear(70, 70, bias=bias)
    lif = StochasticLIF(beta=0.875, threshold=1.0)
    random_scales_(ff, gen)
    random_scales_(rec, gen)
    with torch.no_grad():
        ff.log_scale.add_(math.log(4.0))  # enough drive for the layer to fire
        if bias:  # arbitrary float biases: each layer adds its bias after α·n, as the engine does
            ff.bias.normal_(0.0, 0.2, generator=gen)
            rec.bias.normal_(0.0, 0.1, generator=gen)
    x = spikes((30, 4, 30), 0.2, gen)
    with evaluation(ff, "mode"), evaluation(rec, "mode"), evaluation(lif, "mode"), torch.no_grad():
        ref = _torch_recurrent(ff, rec, lif, x)
    assert 0.01 < float(ref.mean()) < 0.9
    graph = Graph((30,), (dense_node(ff, lif, recurrent=rec),))
    out = Engine(graph, weights=weights).run(x, record=True)
    np.testing.assert_array_equal(out.spikes[0], ref.numpy().astype(np.uint8))
    assert out.stats[0].synops == out.stats[0].input_events * 70 + int(ref[:-1].sum()) * 70


class _ConvNet(torch.nn.Module):
    """conv → LIF → maxpool → conv → LIF → flatten → dense readout, built from sbnn layers."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.c1 = BernoulliConv2d(2, 8, 3, padding=1, bias=bias, scale="channel")
        self.l1 = StochasticLIF(beta=torch.linspace(0.5, 0.9, 8).reshape(8, 1, 1), threshold=1.0)
        self.c2 = BernoulliConv2d(8, 70, 3, stride=2, bias=bias)
        self.l2 = StochasticLIF(beta=0.75, threshold=0.75, reset_mechanism="zero")
        self.out = BernoulliLinear(70 * 2 * 2, 5, bias=bias)
        self.l3 = StochasticLIF(beta=0.5, threshold=1.0)

    def forward(self, x):
        t, b = x.shape[:2]
        s1, _ = self.l1.sequence(self.c1(x))
        p1 = F.max_pool2d(s1.flatten(0, 1), 2).reshape(t, b, 8, 5, 5)
        s2, _ = self.l2.sequence(self.c2(p1))
        s3, _ = self.l3.sequence(self.out(s2.flatten(2)))
        return s1, s2, s3

    def export_graph(self) -> Graph:
        return Graph((2, 10, 10), (
            conv_node(self.c1, self.l1, (2, 10, 10)),
            MaxPool2d((8, 10, 10), (2, 2), (2, 2)),
            conv_node(self.c2, self.l2, (8, 5, 5)),
            dense_node(self.out, self.l3),
        ))


@pytest.mark.parametrize("weights", ["packed", "int8"])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_net_bit_identical(gen, weights, bias):
    net = _ConvNet(bias)
    random_scales_(net, gen)
    if bias:
        with torch.no_grad():
            for layer in (net.c1, net.c2, net.out):
                layer.bias.copy_(torch.randint(-4, 5, layer.bias.shape, generator=gen) / 8.0)
    x = spikes((12, 3, 2, 10, 10), 0.25, gen)
    with evaluation(net, "mode"), torch.no_grad():
        s1, s2, s3 = net(x)
    assert all(0.0 < float(s.mean()) < 1.0 for s in (s1, s2))
    out = Engine(to_graph(net), weights=weights).run(x, record=True)
    np.testing.assert_array_equal(out.spikes[0], s1.numpy().astype(np.uint8))
    np.testing.assert_array_equal(out.spikes[2], s2.numpy().astype(np.uint8))
    np.testing.assert_array_equal(out.output, s3.sum(0).numpy().astype(np.int64))


def test_general_scale_matches_torch(gen):
    """A scale that is not a power of two: torch's mode path computes fl(α·n) exactly as the engine."""
    layer = BernoulliLinear(700, 256, bias=True)
    with torch.no_grad():
        layer.log_scale.fill_(math.log(0.0731))
        layer.bias.normal_(0, 0.3, generator=gen)
    x = spikes((1, 64, 700), 0.2, gen)
    with evaluation(layer, "mode"), torch.no_grad():
        h = layer(x)[0]
        exact = (x[0] @ torch.where(layer.lam >= 0, 1.0, -1.0).T) * layer.scale + layer.bias
    assert torch.equal(h, exact)  # bit for bit, not approximately
    # thresholds exactly at a membrane value: both fire (H(0) = 1) on every example
    b, j = (int(i) for i in torch.nonzero(h > 0)[0])
    lif = StochasticLIF(beta=0.9, threshold=float(h[b, j]))
    with evaluation(lif, "mode"), torch.no_grad():
        spk_t, _ = lif.sequence(h[None])
    assert spk_t[0, b, j] == 1
    out = Engine(Graph((700,), (dense_node(layer, lif),))).run(x, record=True)
    np.testing.assert_array_equal(out.spikes[0][0], spk_t[0].numpy().astype(np.uint8))


def test_run_events_matches_frames(gen):
    net = _mlp(gen)
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 25_000, 300))
    ev = np.zeros(300, dtype=[("t", "<i8"), ("x", "<i8"), ("p", "<i8")])
    ev["t"], ev["x"], ev["p"] = t, rng.integers(0, 40, 300), 0
    frames = np.zeros((25, 1, 40), np.uint8)
    frames[t // 1000, 0, ev["x"]] = 1
    engine = Engine(to_graph(net))
    a = engine.run_events(ev, (40, 1, 1), n_steps=25, time_window=1000.0, record=True)
    b = engine.run(frames, record=True)
    np.testing.assert_array_equal(a.spikes[0], b.spikes[0])
    np.testing.assert_array_equal(a.output, b.output)
    with pytest.raises(ValueError, match="sensor_size"):
        engine.run_events(ev, (41, 1, 1), n_steps=25, time_window=1000.0)


@pytest.mark.parametrize("x, match", [
    (np.zeros((5, 2, 39)), r"\[T, B, 40\]"),
    (np.full((5, 2, 40), 0.5), "integer"),
    (-np.ones((5, 2, 40)), "non-negative"),
])
def test_run_rejects_bad_input(gen, x, match):
    engine = Engine(to_graph(_mlp(gen)))
    with pytest.raises(ValueError, match=match):
        engine.run(x)


def test_engine_rejects_bad_arguments(gen):
    graph = to_graph(_mlp(gen))
    with pytest.raises(ValueError, match="weights must be one of"):
        Engine(graph, weights="int4")
    with pytest.raises(ValueError, match="Graph"):
        Engine("model.sbnn")


def test_auto_weight_format_picks_int8_for_small_layers(gen):
    graph = Graph((4096,), (dense_node(BernoulliLinear(4096, 300), StochasticLIF()), dense_node(BernoulliLinear(300, 10), 0.9)))
    engine = Engine(graph)
    assert [p[0].rows.fmt for p in engine._prepared] == ["packed", "int8"]
    assert engine._prepared[0][0].rows.rows.dtype == np.uint64 and engine._prepared[1][0].rows.rows.dtype == np.int8

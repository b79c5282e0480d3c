"""Exact enumeration: hand values, finite differences, size limits."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sbnn.diagnostics.exact import NotEnumerableError, exact_gradient, exact_objective
from sbnn.functional.noise import get_noise
from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP


def _net(hidden, neuron: NeuronSettings = NeuronSettings(), **kw):
    neuron = dataclasses.replace(neuron, sigma0=0.3) if neuron.sigma0 == NeuronSettings.sigma0 else neuron
    return SpikingMLP(5, hidden, 3, layer=LayerSettings(bias=True), neuron=neuron, **kw).double()


def _data(T, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, 5, dtype=torch.float64, generator=g).round(), torch.randint(0, 3, (B,), generator=g)


def test_one_unit_by_hand():
    net = _net((1,), neuron=NeuronSettings(beta=0.0, reset_mechanism='none'))
    x, y = _data(1, B=1)
    layer = net.layers[0]
    with torch.no_grad():
        m, alpha = torch.tanh(layer.lam), layer.scale
        mu = float(alpha * (m * x[0]).sum() + layer.bias)
        v = float(alpha**2 * ((1 - m**2) * x[0]).sum())
    theta = (mu - 1.0) / math.sqrt(v + 0.09 + 1e-6)
    fire = 0.5 * math.erfc(-theta / math.sqrt(2))
    losses = []
    for s in (0.0, 1.0):
        with torch.no_grad():
            logits = net.output.scale * torch.tanh(net.output.lam)[:, 0] * s + net.output.bias
        losses.append(float(F.cross_entropy(logits[None], y)))
    expected = (1 - fire) * losses[0] + fire * losses[1]
    assert exact_objective(net, x, y).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    "hidden, T, kw",
    [
        ((3, 3, 2), 1, dict(beta=0.0, reset_mechanism="none")),  # binary network, 3 stochastic layers
        ((2, 2), 3, dict(beta=0.7, membrane_noise="marginal")),  # spiking, subtract reset
        ((3,), 3, dict(beta=0.5, membrane_noise="marginal", reset_mechanism="zero", noise="logistic")),
        ((2,), 2, dict(beta=0.0, reset_mechanism="subtract")),  # pathwise at β = 0 is enumerable
    ],
)
def test_exact_gradient_equals_finite_differences(hidden, T, kw):
    net = _net(hidden, neuron=NeuronSettings(**kw))
    x, y = _data(T)
    _, grads = exact_gradient(net, x, y)
    h = 1e-6
    for name, p in net.named_parameters():
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += h
                up = exact_objective(net, x, y)
                p[idx] -= 2 * h
                down = exact_objective(net, x, y)
                p[idx] += h
            fd = float(up - down) / (2 * h)
            assert grads[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, idx)


def test_probabilities_sum_to_one_through_the_layers():
    # a readout that ignores the spikes makes E[L] the loss itself: the messages must sum to 1
    net = _net((2, 2), neuron=NeuronSettings(beta=0.6, membrane_noise='marginal'))
    with torch.no_grad():
        net.output.lam.zero_()  # tanh(0) = 0: logits = bias·Σw for every history
    x, y = _data(3)
    logits = net.output.bias * float(sum([(1 - 0.9 ** (3 - k)) / (0.1 * 3) for k in range(3)]))
    expected = F.cross_entropy(logits.expand(4, 3), y)
    assert float(exact_objective(net, x, y)) == pytest.approx(float(expected), rel=1e-10)


def test_too_large_network_is_refused_with_the_count_and_the_limit():
    net = _net((8, 8), neuron=NeuronSettings(beta=0.5, membrane_noise='marginal'))
    x, y = _data(2)
    with pytest.raises(NotEnumerableError, match=r"needs 32 binary unit-steps.*the limit is 22"):
        exact_objective(net, x, y)


def test_pathwise_spiking_network_is_refused():
    net = _net((2,), neuron=NeuronSettings(beta=0.9))
    with pytest.raises(ValueError, match="membrane_noise='marginal'"):
        exact_objective(net, *_data(2))


def test_spike_count_readout_is_refused():
    net = SpikingMLP(5, (2,), 3, readout='spike_count', neuron=NeuronSettings(beta=0.0))
    with pytest.raises(ValueError, match="readout='membrane'"):
        exact_objective(net, torch.zeros(1, 2, 5), torch.zeros(2, dtype=torch.long))

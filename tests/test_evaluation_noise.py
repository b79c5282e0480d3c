"""LRT evaluation noise keyed by example: an example's probabilities do not depend on its batch.

:func:`sbnn.training.predict_probabilities` must give every example the same LRT probabilities
whether it is evaluated in a whole batch, in a half of it, in another order or with another
noise ``stream`` (the batch index and rank the tasks pass), for every network family; the same
seed gives the same numbers and another seed other ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbnn import BernoulliConv2d, BernoulliLinear, StochasticLIF, evaluation
from sbnn.functional.keyed import keyed_noise, sample_keys
from sbnn.layers import Moments, sample_moments
from sbnn.models import (
    LayerSettings,
    NeuronSettings,
    ResidualSpikingMLP,
    SpikingConvNet,
    SpikingMLP,
    SpikingRecurrentNet,
    SpikingResNet,
)
from sbnn.modes import lrt_predict
from sbnn.training import predict_probabilities


def _spikes(*shape: int) -> torch.Tensor:
    return (torch.rand(*shape) < 0.3).float()


# every network family (and the readout, noise and membrane-noise variants), with an input [T, B, ...]
NETWORKS = {
    "mlp": (lambda: SpikingMLP(6, (7, 5), 3), lambda: _spikes(5, 6, 6)),
    "mlp-spike_count": (lambda: SpikingMLP(6, (5,), 3, readout="spike_count"), lambda: _spikes(5, 6, 6)),
    "mlp-logistic-marginal": (
        lambda: SpikingMLP(6, (5,), 3, neuron=NeuronSettings(noise="logistic", membrane_noise="marginal")),
        lambda: _spikes(5, 6, 6),
    ),
    "recurrent": (lambda: SpikingRecurrentNet(6, (5, 4), 3), lambda: _spikes(5, 6, 6)),
    "conv": (lambda: SpikingConvNet(2, 8, (3,), 3, fc=(5,)), lambda: _spikes(4, 6, 2, 8, 8)),
    "resnet": (lambda: SpikingResNet(2, 3, depth=8, widths=(2, 4, 4), input_size=(8, 8)), lambda: _spikes(3, 6, 2, 8, 8)),
    "resnet-spike": (
        lambda: SpikingResNet(2, 3, depth=8, widths=(2, 4, 4), input_size=(8, 8), shortcut="spike"),
        lambda: _spikes(3, 6, 2, 8, 8),
    ),
    "residual-mlp": (lambda: ResidualSpikingMLP(6, 3, depth=4, width=5), lambda: _spikes(4, 6, 6)),
    # real-weight layers and the accumulated-variance neuron with a learned σ_b
    "gaussian-recurrent-marginal": (
        lambda: SpikingRecurrentNet(
            6, (5, 4), 3, layer=LayerSettings(weights="gaussian"),
            neuron=NeuronSettings(membrane_noise="marginal", sigma_b=0.1, learn_sigma_b=True),
        ),
        lambda: _spikes(5, 6, 6),
    ),
    "gaussian-recurrent": (lambda: SpikingRecurrentNet(6, (5,), 3, layer=LayerSettings(weights="gaussian")), lambda: _spikes(5, 6, 6)),
    "gaussian-conv": (lambda: SpikingConvNet(2, 8, (3,), 3, fc=(5,), layer=LayerSettings(weights="gaussian")), lambda: _spikes(4, 6, 2, 8, 8)),
}


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    torch.manual_seed(0)
    build, data = NETWORKS[request.param]
    net, x = build(), data()
    net.calibrate(x)
    return net, x


def _lrt(net: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    return predict_probabilities(net, x, kinds=("lrt",), mc_samples=3, **kw)["lrt"]


def test_lrt_probabilities_do_not_depend_on_the_batch(network):
    net, x = network
    whole = _lrt(net, x, seed=4, stream=0)
    # halves of unequal sizes, each with the noise stream another batch or rank would pass
    halves = torch.cat([_lrt(net, x[:, :2], seed=4, stream=1), _lrt(net, x[:, 2:], seed=4, stream=7)])
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    permuted = _lrt(net, x[:, perm], seed=4, stream=3)
    # the noise is the same bit for bit; the matmuls may round a row differently in another
    # batch shape (BLAS blocking), hence float rounding, not bit identity
    assert torch.allclose(halves, whole, rtol=0, atol=1e-6)
    assert torch.allclose(permuted[perm.argsort()], whole, rtol=0, atol=1e-6)
    # the noise makes a difference: the passes are not all alike
    with evaluation(net, "mode"):
        mode = torch.softmax(net(x), -1)
    assert not torch.allclose(whole, mode, atol=1e-3)


def test_lrt_probabilities_are_reproducible_and_follow_the_seed(network):
    net, x = network
    a, b = _lrt(net, x, seed=4), _lrt(net, x, seed=4)
    assert torch.equal(a, b)
    assert not torch.allclose(_lrt(net, x, seed=5), a, atol=1e-4)


def test_every_lrt_draw_is_keyed(network):
    """Within a keyed block, torch's global RNG state changes nothing: no draw site escapes."""
    net, x = network
    outs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        with keyed_noise(sample_keys(x, 1), seed=2) as source:
            outs.append(lrt_predict(net, x, 2))
        assert source.draws > 0
    assert torch.equal(outs[0], outs[1])


def test_training_draws_are_torch_rng_outside_a_block():
    """Outside a keyed block the LRT sample is ``μ + sqrt(v)·randn`` from torch's RNG, as before."""
    mean, var = torch.randn(3, 5, 4), torch.rand(3, 5, 4)
    torch.manual_seed(0)
    got = sample_moments(Moments(mean, var), batch_dim=1)
    torch.manual_seed(0)
    assert torch.equal(got, mean + var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() * torch.randn(3, 5, 4))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: BernoulliLinear(4, 3), (6, 4)),  # [B, in]
        (lambda: BernoulliLinear(4, 3), (3, 6, 4)),  # [T, B, in]
        (lambda: BernoulliConv2d(2, 3, 3, padding=1), (6, 2, 5, 5)),  # [B, C, H, W]
        (lambda: BernoulliConv2d(2, 3, 3, padding=1), (3, 6, 2, 5, 5)),  # [T, B, C, H, W]
    ],
)
def test_a_layer_forward_keys_its_noise_on_the_batch_axis(layer, shape):
    """Layers used on their own (e.g. in front of an snnTorch neuron) see ``[B, ...]`` or ``[T, B, ...]``."""
    torch.manual_seed(0)
    layer, x = layer(), torch.rand(shape)
    batch_dim = len(shape) - layer.lam.dim()
    with keyed_noise(sample_keys(x, batch_dim), 0):
        whole = layer(x)
    part = x.narrow(batch_dim, 2, 3)
    with keyed_noise(sample_keys(part, batch_dim), 0):
        # same noise; the moments of a real-valued input round per batch shape (float rounding)
        assert torch.allclose(layer(part), whole.narrow(batch_dim, 2, 3), rtol=0, atol=1e-6)


def test_a_neuron_stepped_by_hand_keys_its_noise_on_the_batch_axis():
    neuron = StochasticLIF(beta=0.8, init_hidden=True)
    drive = torch.randn(4, 6, 5)  # [T, B, N], fed one step [B, N] at a time
    keys = sample_keys(drive, 1)

    def run(rows):
        neuron.reset_state()
        with keyed_noise(keys[rows], 0):
            return torch.stack([neuron(d[rows]) for d in drive])

    assert torch.equal(run([1, 4]), run(list(range(6)))[:, [1, 4]])

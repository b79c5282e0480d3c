"""SpikingRecurrentNet and SpikingConvNet: hand-computed `mode` passes, calibration, contracts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbnn.layers import BernoulliLayer
from sbnn.models import CalibrationSettings, NeuronSettings, SpikingMLP
from sbnn.modes import evaluation
from sbnn.models import SpikingConvNet, SpikingRecurrentNet
from sbnn.models.stages import recurrent_sequence, recurrent_sequence_stepwise
from sbnn.posterior import sign_mode


def _spikes(*shape: int, rate: float = 0.2, gen: torch.Generator | None = None) -> torch.Tensor:
    return (torch.rand(*shape, generator=gen) < rate).float()


def _lif_mode(currents: list[torch.Tensor] | None, beta: float, threshold: float, step=None) -> torch.Tensor:
    """Deterministic subtract-reset LIF by hand; ``step(t, s_prev)`` returns the input current."""
    mem, spk, out = None, None, []
    for t in range(len(currents) if currents is not None else step.n):
        current = currents[t] if currents is not None else step(t, spk)
        if mem is None:
            mem, spk = torch.zeros_like(current), torch.zeros_like(current)
        mem = beta * mem + current - threshold * spk
        spk = (mem >= threshold).float()
        out.append(spk)
    return torch.stack(out)


def _w(layer) -> torch.Tensor:
    return sign_mode(layer.lam.detach()) * layer.scale.detach().reshape(-1, *[1] * (layer.lam.dim() - 1))


def _membrane_readout(x: torch.Tensor, layer, beta: float) -> torch.Tensor:
    h = F.linear(x, _w(layer))
    mem, acc = torch.zeros_like(h[0]), torch.zeros_like(h[0])
    for t in range(len(h)):
        mem = beta * mem + h[t]
        acc = acc + mem
    return acc / len(h)


def test_recurrent_mode_pass_matches_a_hand_loop(gen):
    net = SpikingRecurrentNet(12, (9,), 4, readout_beta=0.7, neuron=NeuronSettings(beta=0.8))
    x = _spikes(15, 3, 12, rate=0.4, gen=gen)
    net.calibrate(x)
    with torch.no_grad():
        net.recurrent[0].log_scale.fill_(-0.5)  # make the recurrence matter
    with evaluation(net, "mode"), torch.no_grad():
        logits, (spikes,) = net.forward_with_spikes(x)
        ff = F.linear(x, _w(net.layers[0]))
        w_rec = _w(net.recurrent[0])

        class Step:
            n = len(x)

            def __call__(self, t, s_prev):
                return ff[t] + (F.linear(s_prev, w_rec) if t > 0 else 0.0)

        expected = _lif_mode(None, 0.8, 1.0, step=Step())
        assert torch.equal(spikes, expected)
        assert expected.sum() > 0
        torch.testing.assert_close(logits, _membrane_readout(expected, net.output, 0.7))


def test_feed_forward_variant_equals_spiking_mlp(gen):
    """recurrent=False is SpikingMLP: same parameters give bit-identical logits in `mode` and `sample`."""
    rnn = SpikingRecurrentNet(10, (8, 6), 3, recurrent=False)
    mlp = SpikingMLP(10, (8, 6), 3, readout_beta=0.95, binary_input=True, neuron=NeuronSettings(beta=0.95))
    mlp.load_state_dict(rnn.state_dict())
    x = _spikes(12, 4, 10, rate=0.5, gen=gen)
    with evaluation(rnn, "mode"), evaluation(mlp, "mode"):
        assert torch.equal(rnn(x), mlp(x))
    torch.manual_seed(5)
    a = rnn(x)
    torch.manual_seed(5)
    assert torch.equal(a, mlp(x))


def test_recurrent_variances_add(gen):
    """In `sample` mode the neuron sees v = v_ff[t] + v_rec(S[t-1]): replay the noise and compare."""
    net = SpikingRecurrentNet(6, (5,), 2)
    x = _spikes(4, 2, 6, rate=0.6, gen=gen)
    layer, rec, neuron = net.layers[0], net.recurrent[0], net.neurons[0]
    seen = []
    original = neuron.sequence

    def spy(moments, **kw):
        seen.append(moments)
        return original(moments, **kw)

    neuron.sequence = spy
    with torch.no_grad():
        spikes = recurrent_sequence_stepwise(layer.moments(x), rec, neuron)
    ff_mu, ff_var = layer.moments(x)
    for t in range(1, 4):
        r_mu, r_var = rec.moments(spikes[t - 1])
        torch.testing.assert_close(seen[t].mean[0], ff_mu[t] + r_mu)
        torch.testing.assert_close(seen[t].var[0], ff_var[t] + r_var)


def test_conv_mode_pass_matches_a_hand_loop(gen):
    net = SpikingConvNet(2, 8, (3, 4), 5, fc=(7,), readout_beta=0.6, neuron=NeuronSettings(beta=0.85))
    x = _spikes(6, 2, 2, 8, 8, rate=0.3, gen=gen)
    net.calibrate(x)
    with evaluation(net, "mode"), torch.no_grad():
        logits, spikes = net.forward_with_spikes(x)
        h = x
        for conv, spk in zip(net.convs, spikes[:2]):
            cur = F.conv2d(h.flatten(0, 1), _w(conv), padding=1).unflatten(0, (6, 2))
            s = _lif_mode(list(cur), 0.85, 1.0)
            assert torch.equal(spk, s)
            h = F.max_pool2d(s.flatten(0, 1), 2).unflatten(0, (6, 2))
        assert h.shape == (6, 2, 4, 2, 2)
        s = _lif_mode(list(F.linear(h.flatten(2), _w(net.fcs[0]))), 0.85, 1.0)
        assert torch.equal(spikes[2], s)
        torch.testing.assert_close(logits, _membrane_readout(s, net.output, 0.6))


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
def test_training_pass_reaches_every_parameter(readout, gen):
    for net, x in (
        (SpikingRecurrentNet(10, (8,), 3, readout=readout), _spikes(8, 4, 10, rate=0.4, gen=gen)),
        (SpikingConvNet(2, 8, (4,), 3, fc=(6,), readout=readout), _spikes(5, 4, 2, 8, 8, rate=0.4, gen=gen)),
    ):
        rates = net.calibrate(x)
        assert all(r > 0 for r in rates)
        logits, spikes = net.forward_with_spikes(x)
        assert logits.shape == (4, 3) and spikes
        F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        lam_grads = [m.lam.grad.abs().sum() for m in net.modules() if isinstance(m, BernoulliLayer)]
        assert all(g > 0 for g in lam_grads)


def test_calibration_hits_the_readout_target(gen):
    net = SpikingConvNet(2, 8, (4,), 3, fc=())
    x = _spikes(10, 64, 2, 8, 8, rate=0.3, gen=gen)
    net.calibrate(x)  # the default target, readout_std = 3
    torch.manual_seed(1)
    with evaluation(net, "sample"), torch.no_grad():
        logits = net(x)
    assert 2.0 < float(logits.std()) < 4.0


def test_state_dict_round_trip(tmp_path, gen):
    net = SpikingRecurrentNet(10, (8,), 3)
    x = _spikes(5, 2, 10, gen=gen)
    torch.save(net.state_dict(), tmp_path / "n.pt")
    other = SpikingRecurrentNet(10, (8,), 3)
    other.load_state_dict(torch.load(tmp_path / "n.pt"))
    with evaluation(net, "mode"), evaluation(other, "mode"):
        assert torch.equal(net(x), other(x))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: SpikingRecurrentNet(10, (), 3), "at least one layer"),
        (lambda: SpikingRecurrentNet(0, (8,), 3), "in_features"),
        (lambda: SpikingRecurrentNet(10, (8,), 3, calibration=CalibrationSettings(recurrent_gain=0.0)), "recurrent_gain"),
        (lambda: SpikingRecurrentNet(10, (8,), 3, readout="max"), "readout"),
        (lambda: SpikingConvNet(2, 8, (), 3), "at least one convolution"),
        (lambda: SpikingConvNet(2, 8, (4,), 3, kernel_size=2), "odd"),
        (lambda: SpikingConvNet(2, 4, (4, 4, 4), 3), "too small"),
        (lambda: SpikingConvNet(2, 8, (4,), 3, pool_type="min"), "pool_type"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs():
    with pytest.raises(ValueError, match="in_features"):
        SpikingRecurrentNet(10, (8,), 3)(torch.zeros(5, 2, 11))
    with pytest.raises(ValueError, match="frames of size"):
        SpikingConvNet(2, 8, (4,), 3)(torch.zeros(5, 2, 2, 16, 16))
    with pytest.raises(ValueError, match="binary_input"):
        SpikingRecurrentNet(10, (8,), 3).calibrate(torch.full((5, 2, 10), 2.0))

"""SpikingMLP, network modes, MC prediction, the ELBO and interop with snnTorch models."""

from __future__ import annotations

import pytest
import snntorch as snn
import torch
from torch import nn

import sbnn
from sbnn.models import CalibrationSettings, NeuronSettings, SpikingMLP


def _batch(t=20, b=16, n=12, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    x = (torch.rand(t, b, n, generator=gen) < 0.15).float()
    y = torch.randint(0, 3, (b,), generator=gen)
    return x, y


def _explicit_mode_forward(net: SpikingMLP, x: torch.Tensor) -> torch.Tensor:
    """The deployed network written out by hand: sign(λ) weights, deterministic LIF, membrane readout."""
    h = x
    for layer, lif in zip(net.layers, net.neurons):
        w = torch.where(layer.lam >= 0, 1.0, -1.0) * layer.scale.reshape(-1, 1)
        cur = h @ w.T
        mem, spk, out = torch.zeros_like(cur[0]), torch.zeros_like(cur[0]), []
        for c in cur:
            mem = lif.beta * mem + c - lif.threshold * spk
            spk = (mem >= lif.threshold).float()
            out.append(spk)
        h = torch.stack(out)
    w = torch.where(net.output.lam >= 0, 1.0, -1.0) * net.output.scale.reshape(-1, 1)
    cur, mem, acc = h @ w.T, 0.0, []
    for c in cur:
        mem = net.readout_beta * mem + c
        acc.append(mem)
    return torch.stack(acc).mean(0)


def test_mode_forward_is_deterministic_and_equals_explicit_network():
    torch.manual_seed(0)
    net = SpikingMLP(12, (16, 8), 3)
    x, _ = _batch()
    net.calibrate(x)
    with sbnn.evaluation(net, "mode"):
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, _explicit_mode_forward(net, x), rtol=1e-5, atol=1e-5)
    assert sbnn.get_mode(net) == "sample"  # restored after the context


def test_calibration_sets_firing_and_logit_scale():
    torch.manual_seed(0)
    net = SpikingMLP(12, (32,), 3, calibration=CalibrationSettings(hidden_gain=2.0, readout_std=3.0))
    x, _ = _batch(b=64)
    rates = net.calibrate(x)
    assert 0.01 < rates[0] < 0.5
    assert 2.0 < net(x).std().item() < 4.5  # one noisy draw around the target 3


def test_calibration_warns_on_silent_network():
    net = SpikingMLP(12, (8,), 3, calibration=CalibrationSettings(hidden_gain=0.01))
    x = torch.zeros(10, 4, 12)
    x[0, 0, 0] = 1.0  # almost no activity
    with pytest.warns(RuntimeWarning, match="layer 0 fires at rate"):
        net.calibrate(x)


def test_mc_prediction_is_a_probability_average_over_drawn_networks():
    torch.manual_seed(0)
    net = SpikingMLP(12, (16,), 3)
    x, _ = _batch()
    net.calibrate(x)
    p = sbnn.mc_predict(net, x, n_samples=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(p.sum(-1), torch.ones(16))
    # the same draws by hand
    gen = torch.Generator().manual_seed(3)
    manual = 0
    with sbnn.evaluation(net, "mc"):
        for _ in range(4):
            sbnn.set_mode(net, "mc", gen)
            manual = manual + torch.softmax(net(x), -1)
    torch.testing.assert_close(p, manual / 4)
    assert sbnn.get_mode(net) == "sample"
    lrt = sbnn.lrt_predict(net, x, n_samples=3)
    torch.testing.assert_close(lrt.sum(-1), torch.ones(16))


def test_elbo_terms():
    torch.manual_seed(0)
    net = SpikingMLP(12, (16,), 3)
    x, y = _batch()
    logits = net(x)
    terms = sbnn.ELBOLoss(n_train=500, kl_weight=0.1)(logits, y, net)
    torch.testing.assert_close(terms.nll, nn.functional.cross_entropy(logits, y))
    torch.testing.assert_close(terms.kl, net.layers[0].kl() + net.output.kl())
    torch.testing.assert_close(terms.loss, terms.nll + 0.1 * terms.kl / 500)
    aux = sbnn.ELBOLoss(500, aux_weight=2.0, aux_fn=lambda m: torch.tensor(0.25))(logits, y, net)
    torch.testing.assert_close(aux.loss, aux.nll + aux.kl / 500 + 0.5)
    with pytest.raises(ValueError, match="aux_fn"):
        sbnn.ELBOLoss(500, aux_weight=1.0)
    with pytest.raises(ValueError, match="n_train"):
        sbnn.ELBOLoss(0)
    with pytest.raises(ValueError, match="kl_weight"):
        sbnn.ELBOLoss(10, kl_weight=-1.0)


@pytest.mark.parametrize("estimator, kwargs", [("st", {}), ("agr", {"tau": 0.5}), ("iwst", {"p": 0.5}), ("gumbel_rao", {"k": 4})])
def test_spiking_mlp_trains(estimator, kwargs):
    torch.manual_seed(0)
    net = SpikingMLP(12, (32,), 3, neuron=NeuronSettings(estimator=estimator, estimator_kwargs=kwargs))
    x, y = _batch(b=32)
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=32, kl_weight=0.1)
    opt = torch.optim.Adam([{"params": [p for n, p in net.named_parameters() if n.endswith("lam")], "lr": 0.1},
                            {"params": [p for n, p in net.named_parameters() if not n.endswith("lam")], "lr": 1e-2}])
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(x), y, net).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_spike_count_readout():
    torch.manual_seed(0)
    net = SpikingMLP(12, (16,), 3, readout="spike_count")
    x, _ = _batch()
    net.calibrate(x)
    out = net(x)
    assert out.shape == (16, 3) and torch.all(out == out.round()) and out.min() >= 0


def test_bernoulli_layer_inside_snntorch_sequential_trains():
    """An sbnn layer feeding snnTorch Leaky neurons in an nn.Sequential (the drop-in use)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        sbnn.BernoulliLinear(12, 32),
        snn.Leaky(beta=0.9, init_hidden=True),
        sbnn.BernoulliLinear(32, 3),
        snn.Leaky(beta=0.9, init_hidden=True, output=True),
    )
    x, y = _batch(b=32)
    with torch.no_grad():
        net[0].log_scale.fill_(0.5)
        net[2].log_scale.fill_(-0.5)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for _ in range(25):
        sbnn.reset(net)
        mems = []
        for x_t in x.unbind(0):
            _, mem = net(x_t)
            mems.append(mem)
        logits = torch.stack(mems).mean(0)
        loss = nn.functional.cross_entropy(logits, y) + sbnn.kl_divergence(net) / 1000
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_bad_model_input():
    net = SpikingMLP(12, (8,), 3)
    with pytest.raises(ValueError, match="12 features"):
        net(torch.zeros(5, 2, 10))
    with pytest.raises(ValueError, match="dimensions"):
        net(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="positive integers"):
        SpikingMLP(12, (0,), 3)
    with pytest.raises(ValueError, match="readout"):
        SpikingMLP(12, (8,), 3, readout="rate")
    with pytest.raises(ValueError, match="mode"):
        sbnn.set_mode(net, "deploy")


def test_binary_input_declaration_is_exact_and_checked():
    torch.manual_seed(0)
    x, _ = _batch()
    a = SpikingMLP(12, (16,), 3)
    b = SpikingMLP(12, (16,), 3, binary_input=True)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    out_a = a(x)
    torch.manual_seed(1)
    out_b = b(x)
    torch.testing.assert_close(out_a, out_b)  # same draws, same law: x² = x changes no number
    with pytest.raises(ValueError, match="binary_input=False"):
        b.calibrate(x * 2.0)


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
def test_no_hidden_layer_with_real_valued_input_uses_x_squared(readout):
    """Without hidden layers the output sees the raw input: x² ≠ x for real values."""
    torch.manual_seed(0)
    net = SpikingMLP(12, (), 3, readout=readout)
    x = torch.rand(6, 2000, 12) * 3.0
    mean, var = net.output.moments(x)
    expected_var = (x * x) @ (net.output.scale**2 * (1 - torch.tanh(net.output.lam) ** 2)).T
    torch.testing.assert_close(var, expected_var, rtol=1e-4, atol=1e-6)
    if readout == "membrane":
        w = sbnn.functional.neurons.time_average_weights(6, net.readout_beta, like=x)
        logits = net(x)
        # the sampled logits' spread matches Σ_t w_t² v[t] (mean-subtracted, one sample per row)
        expected = torch.einsum("t,tbo->bo", w**2, expected_var).mean()
        resid = logits - torch.einsum("t,tbo->bo", w, mean)
        assert abs(resid.var().item() / expected.item() - 1) < 0.1

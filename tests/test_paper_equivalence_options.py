"""The options that make sbnn's paper configuration follow the SBNN authors' code, checked on their own.

Each option is checked against a hand computation or plain autograd, independently of the
authors' repository: the leaked subtract reset (fused node against the step-by-step reference,
and a hand trajectory), the recurrent self-variance, the per-time-step gain on the mean only and
shared by the recurrent current, the deterministic readout with its own bias, and noise replay.
Last, a whole recurrent network of the paper configuration against a plain-torch implementation
of the mathematics written here (``docs/theory.md §7``), on the same noise, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbnn import GaussianLinear
from sbnn.functional.estimators import get_estimator
from sbnn.functional.neurons import (
    StochasticLIFParameters,
    StochasticLIFState,
    _fused_marginal_sequence,
    _marginal_sequence,
    stochastic_lif_sequence,
)
from sbnn.functional.noise import get_noise
from sbnn.layers import Moments
from sbnn.models import LayerSettings, NeuronSettings, SpikingRecurrentNet
from sbnn.models.stages import Readout
from sbnn.models.time_affine import TimeAffine
from sbnn.neurons import NoiseReplay, StochasticLIF, replay_noise

D = torch.float64


# -- the leaked subtract reset --------------------------------------------------------------------
def _leak_params(beta, threshold, sigma_b, detach):
    return StochasticLIFParameters(
        beta, threshold, 0.1, 1e-3, "subtract", detach, get_noise("gaussian"), get_estimator("st"), "marginal", sigma_b, True
    )


@pytest.mark.parametrize("detach", [True, False])
def test_leaked_reset_fused_equals_plain_autograd(gen, detach):
    T, B, H = 8, 3, 4
    mu = (torch.randn(T, B, H, dtype=D, generator=gen) * 0.8 + 0.7).requires_grad_()
    var = (torch.rand(T, B, H, dtype=D, generator=gen) * 0.3).requires_grad_()
    eps = torch.randn(T, B, H, dtype=D, generator=gen)
    beta = torch.tensor([0.9, 0.7, 0.5, 0.8], dtype=D, requires_grad=True)
    threshold = torch.tensor(1.0, dtype=D, requires_grad=True)
    sigma_b = torch.tensor(0.3, dtype=D, requires_grad=True)
    mem0 = (torch.randn(B, H, dtype=D, generator=gen) * 0.3).requires_grad_()
    var0 = (torch.rand(B, H, dtype=D, generator=gen) * 0.2).requires_grad_()
    spk0 = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * B, dtype=D, requires_grad=True)
    leaves = [mu, var, beta, threshold, sigma_b, mem0, var0, spk0]
    w = [torch.randn(T, B, H, dtype=D, generator=gen) for _ in range(3)]
    results = []
    for fn in (_marginal_sequence, _fused_marginal_sequence):
        p = _leak_params(beta, threshold, sigma_b, detach)
        spk, mem, theta, scale, state = fn(mu, var, p, StochasticLIFState(mem0, spk0, var0), eps)
        loss = (spk * w[0]).sum() + (mem * w[1]).sum() + (theta.tanh() * w[2]).sum() + state.mem.sum()
        results.append((spk, mem, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (s_ref, m_ref, g_ref), (s_fused, m_fused, g_fused) = results
    assert torch.equal(s_ref, s_fused)
    assert 0 < float(s_ref.detach().mean()) < 1
    torch.testing.assert_close(m_ref, m_fused, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(["mu", "var", "beta", "threshold", "sigma_b", "mem0", "var0", "spk0"], g_ref, g_fused):
        if a is None or b is None:
            assert name == "spk0" and detach and (a is None or not a.any())
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_leaked_reset_hand_trajectory():
    # one unit, no noise in the draw (ε = 0), variance 0 + floor: M[t] = β(M[t−1] − ϑS[t−1]) + μ[t]
    beta, theta_ = 0.5, 1.0
    mu = torch.tensor([1.5, 0.2, 1.2, 0.0], dtype=D).reshape(4, 1, 1)
    p = StochasticLIFParameters(beta, theta_, 0.0, 1e-3, "subtract", True, get_noise("gaussian"), get_estimator("st"), "marginal", None, True)
    spk, mem, _ = stochastic_lif_sequence(mu, None, p, eps=torch.zeros_like(mu))
    # hand: M0 = 1.5 → S=1; M1 = 0.5(1.5 − 1) + 0.2 = 0.45 → 0; M2 = 0.5·0.45 + 1.2 = 1.425 → 1;
    # M3 = 0.5(1.425 − 1) + 0 = 0.2125 (the unleaked reset would give 0.7125 − 1 = −0.2875)
    assert spk.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(mem.flatten(), torch.tensor([1.5, 0.45, 1.425, 0.2125], dtype=D))


def test_leaked_reset_refused_outside_marginal_subtract():
    with pytest.raises(ValueError, match="membrane_noise='marginal'"):
        StochasticLIF(reset_leak=True)
    with pytest.raises(ValueError, match="reset_leak"):
        NeuronSettings(reset_leak=True, membrane_noise="marginal", reset_mechanism="zero")
    p = StochasticLIFParameters(0.9, 1.0, 0.1, 1e-3, "subtract", True, get_noise("gaussian"), get_estimator("st"), "pathwise", None, True)
    with pytest.raises(ValueError, match="reset_leak"):
        stochastic_lif_sequence(torch.zeros(2, 1, 1), None, p)


def test_neuron_pickles_without_reset_leak_attribute():
    lif = StochasticLIF(membrane_noise="marginal", reset_leak=True)
    state = lif.__dict__.copy()
    state.pop("reset_leak")  # as a pickle from before the option
    restored = StochasticLIF.__new__(StochasticLIF)
    restored.__setstate__(state)
    assert restored.reset_leak is False and restored.noise_source is None


# -- recurrent self-variance ------------------------------------------------------------------------
def test_recurrent_self_variance_keeps_the_diagonal_term():
    layer = GaussianLinear(3, 3, bias=False, zero_diagonal=True, self_variance=True).double()
    plain = GaussianLinear(3, 3, bias=False, zero_diagonal=True).double()
    plain.load_state_dict(layer.state_dict())
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=D)
    s2 = float(layer.sigma.detach().square())
    mu, var = layer.moments(x)
    mu0, var0 = plain.moments(x)
    torch.testing.assert_close(mu, mu0)  # the mean has no self-connection either way
    w = layer.weight.detach()
    torch.testing.assert_close(mu, x @ (w * (1 - torch.eye(3, dtype=D))).T)
    torch.testing.assert_close(var, torch.full((1, 3), 2 * s2, dtype=D))  # σ² Σ_i x_i² for every unit
    torch.testing.assert_close(var0, torch.tensor([[1 * s2, 2 * s2, 1 * s2]], dtype=D))  # minus x_j²
    with pytest.raises(ValueError, match="zero_diagonal"):
        GaussianLinear(3, 3, self_variance=True)
    # ±1 recurrent layers have no zero diagonal: the setting is ignored, so `weights` alone switches families
    from sbnn.models import SpikingRecurrentNet

    pm1 = SpikingRecurrentNet(3, (4,), 2, layer=LayerSettings(recurrent_self_variance=True))
    assert not hasattr(pm1.recurrent[0], "self_variance")
    gauss = SpikingRecurrentNet(3, (4,), 2, layer=LayerSettings(weights="gaussian", recurrent_self_variance=True))
    assert gauss.recurrent[0].self_variance


# -- per-time-step gain on the mean only, shared with the recurrent current ----------------------
def test_time_affine_on_the_mean_only():
    affine = TimeAffine(4, 2, scale_variance=False).double()
    with torch.no_grad():
        affine.gain.copy_(torch.tensor([[2.0, 3.0]] * 4))
        affine.bias.copy_(torch.tensor([[0.5, -0.5]] * 4))
    mean, var = torch.ones(2, 1, 2, dtype=D), torch.full((2, 1, 2), 0.7, dtype=D)
    out = affine(Moments(mean, var))
    torch.testing.assert_close(out.mean, torch.tensor([[[2.5, 2.5]]] * 2, dtype=D))
    assert out.var is var  # untouched
    v0 = var[0]
    step = affine.gain_step(Moments(torch.ones(1, 2, dtype=D), v0), 3)
    torch.testing.assert_close(step.mean, torch.tensor([[2.0, 3.0]], dtype=D))
    assert step.var is v0
    with pytest.raises(ValueError, match="time_affine_steps"):
        affine.gain_step(Moments(torch.ones(1, 2), None), 4)


def _paper_recurrent(steps, hidden=(5,), **layer):
    neuron = NeuronSettings(
        beta=0.8, sigma0=0.0, eps_min=1e-10, membrane_noise="marginal", sigma_b=0.2, learn_sigma_b=True,
        detach_reset=False, reset_leak=True,
    )
    settings = LayerSettings(
        weights="gaussian", variance_input_grad=False, time_affine_steps=steps, time_affine_variance=False,
        readout_noise=False, **layer,
    )
    return SpikingRecurrentNet(6, hidden, 3, neuron=neuron, layer=settings, readout_beta=0.0, recurrent_spike_grad=1.0).double()


def test_shared_recurrent_gain_equals_own_gain_tied(gen):
    # g(a + r) + b with one gain = a separate gain on r tied to the feed-forward one (and no bias):
    # same forward, and the shared gain's gradient is the sum of the two
    T = 5
    shared = _paper_recurrent(T, time_affine_recurrent="shared")
    own = _paper_recurrent(T)
    assert not hasattr(shared.recurrent[0], "time_affine") or shared.recurrent[0].time_affine is None
    own.load_state_dict(shared.state_dict(), strict=False)
    with torch.no_grad():
        shared.layers[0].time_affine.gain.copy_(1 + 0.3 * torch.randn(T, 5, generator=gen, dtype=D))
        shared.layers[0].time_affine.bias.copy_(0.2 * torch.randn(T, 5, generator=gen, dtype=D))
        own.layers[0].time_affine.load_state_dict(shared.layers[0].time_affine.state_dict())
        own.recurrent[0].time_affine.gain.copy_(shared.layers[0].time_affine.gain)
        own.recurrent[0].time_affine.bias.zero_()
    x = (torch.rand(T, 4, 6, generator=gen) < 0.5).to(D)
    eps = torch.randn(T, 4, 5, generator=gen, dtype=D)
    outs = []
    for net in (shared, own):
        with replay_noise(net, {"neurons.0": eps}):
            outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    g_shared = torch.autograd.grad(outs[0].square().sum(), shared.layers[0].time_affine.gain)[0]
    g_own = torch.autograd.grad(outs[1].square().sum(), [own.layers[0].time_affine.gain, own.recurrent[0].time_affine.gain])
    torch.testing.assert_close(g_shared, g_own[0] + g_own[1], rtol=1e-10, atol=1e-12)


# -- deterministic readout with its own bias ---------------------------------------------------------
def test_deterministic_readout_is_the_mean_network(gen):
    out = GaussianLinear(4, 3, bias=True).double()
    x = torch.rand(6, 2, 4, generator=gen, dtype=D)
    for beta in (0.0, 0.7):
        readout = Readout(out, None, beta, noise=False)
        a, b = readout.forward(x, False), readout.forward(x, False)
        assert torch.equal(a, b)  # no draw
        w = torch.tensor([(1 - beta ** (6 - k)) / ((1 - beta) * 6) for k in range(6)], dtype=D)
        hand = sum(w[t] * (x[t] @ out.weight.T + out.bias) for t in range(6))
        torch.testing.assert_close(a, hand)
    noisy = Readout(out, None, 0.0, noise=True)
    assert not torch.equal(noisy.forward(x, False), noisy.forward(x, False))
    net = _paper_recurrent(3, readout_bias=True)
    assert net.output.bias is not None and net.layers[0].bias is None


# -- noise replay ------------------------------------------------------------------------------------
def test_noise_replay_feeds_sequence_and_steps(gen):
    eps = torch.randn(4, 2, 3, generator=gen)
    mu = torch.rand(4, 2, 3, generator=gen) * 2
    lif = StochasticLIF(sigma0=0.5)
    want, _ = lif.sequence(mu, eps=eps)
    replay = NoiseReplay(eps)
    lif.set_noise_source(replay)
    got, _ = lif.sequence(mu)
    assert torch.equal(got, want) and replay.exhausted
    with pytest.raises(ValueError, match="NoiseReplay"):
        lif.sequence(mu)  # past the end
    lif.set_noise_source(NoiseReplay(eps))
    steps = lif.sequence(mu[:2])[0], lif.sequence(mu[2:])[0]
    # two calls (each from rest) consume consecutive steps of the draws
    assert torch.equal(steps[0], want[:2]) and torch.equal(steps[1], lif.sequence(mu[2:], eps=eps[2:])[0])
    lif.set_noise_source(None)
    net = torch.nn.Sequential(lif)
    with pytest.raises(ValueError, match="not StochasticLIF"):
        with replay_noise(net, {"1": eps}):
            pass
    with replay_noise(net, {"0": eps}):
        assert lif.noise_source is not None
    assert lif.noise_source is None


# -- the whole paper configuration against plain torch ------------------------------------------------
class _PaperSpike(torch.autograd.Function):
    """S = H(u + sε); ∂S/∂u = φ(u/s)/s, ∂S/∂s = −(u/s)·φ(u/s)/s (docs/theory.md §7.3)."""

    @staticmethod
    def forward(ctx, u, s, eps):
        ctx.save_for_backward(u, s)
        return (u / s + eps >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        u, s = ctx.saved_tensors
        pdf = torch.exp(-0.5 * (u / s) ** 2) / math.sqrt(2 * math.pi)
        gu = g * pdf / s
        return gu, -gu * u / s, None


def _plain_recurrent(net, x, eps):
    """The paper's recurrent network written out (one hidden layer): returns logits [B, K]."""
    T, B = x.shape[:2]
    ff, rec, lif = net.layers[0], net.recurrent[0], net.neurons[0]
    beta, thr, sb2 = lif.beta, lif.threshold, lif.sigma_b**2
    W, R = ff.weight, rec.weight * (1 - torch.eye(R_size := rec.weight.shape[0], dtype=x.dtype))
    g, b = ff.time_affine.gain, ff.time_affine.bias
    M = torch.zeros(B, R_size, dtype=x.dtype)
    V = torch.zeros_like(M)
    S = torch.zeros_like(M)
    out = 0
    for t in range(T):
        cur = (x[t] @ W.T + S @ R.T) * g[t] + b[t]
        added = ff.sigma**2 * x[t].sum(-1, keepdim=True) + rec.sigma**2 * S.detach().sum(-1, keepdim=True)
        V = beta**2 * V + added
        s = torch.sqrt(V + sb2)
        M = beta * (M - thr * S) + cur
        S = _PaperSpike.apply(M - thr, s, eps[t])
        out = out + S @ net.output.weight.T
    return out / T


def test_paper_recurrent_network_against_plain_torch(gen):
    T = 6
    net = _paper_recurrent(T, time_affine_recurrent="shared", recurrent_self_variance=True)
    with torch.no_grad():
        net.layers[0].weight.mul_(3.0)  # enough drive for spikes and resets
        net.layers[0].time_affine.gain.copy_(1 + 0.3 * torch.randn(T, 5, generator=gen, dtype=D))
        net.layers[0].time_affine.bias.copy_(0.2 * torch.randn(T, 5, generator=gen, dtype=D))
    x = (torch.rand(T, 4, 6, generator=gen) < 0.5).to(D)
    eps = torch.randn(T, 4, 5, generator=gen, dtype=D)
    with replay_noise(net, {"neurons.0": eps}):
        ours = net(x)
    plain = _plain_recurrent(net, x, eps)
    torch.testing.assert_close(ours, plain, rtol=1e-12, atol=1e-12)
    y = torch.tensor([0, 1, 2, 0])
    params = [p for p in net.parameters() if p.requires_grad]
    g_ours = torch.autograd.grad(F.cross_entropy(ours, y), params, allow_unused=True)
    g_plain = torch.autograd.grad(F.cross_entropy(plain, y), params, allow_unused=True)
    checked = 0
    for (name, _), a, b in zip([(n, p) for n, p in net.named_parameters() if p.requires_grad], g_ours, g_plain):
        if a is None and b is None:
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
        checked += 1
    assert checked >= 8  # weights, σ's, σ_b, gains, biases, readout


# -- the signal-to-noise term in its current form ---------------------------------------------------
def test_snr_current_form_against_hand(gen):
    from sbnn.training.snr import SNRLoss

    lif = StochasticLIF(beta=0.8, sigma0=0.0, eps_min=1e-10, membrane_noise="marginal", sigma_b=0.2, learn_sigma_b=True).double()
    net = torch.nn.Sequential(lif)
    mu = torch.randn(3, 2, 4, generator=gen, dtype=D).requires_grad_()
    var = (torch.rand(3, 2, 4, generator=gen, dtype=D) * 0.5).requires_grad_()
    for weight in (1.0, 2.0):
        aux = SNRLoss("sum", signal="current", sigma_b_weight=weight)
        aux.attach(net)
        lif.sequence(Moments(mu, var))
        loss = aux(net)
        aux.detach()
        sb2 = torch.nn.functional.softplus(lif.sigma_b_rho) ** 2
        hand = (mu.square() / (var + 1e-20 + weight * sb2)).sum() / 2  # Σ_{t,units} r², mean over the batch
        torch.testing.assert_close(loss, hand, rtol=1e-12, atol=0)
        grads = torch.autograd.grad(loss - hand, [mu, var, lif.sigma_b_rho])
        for g in grads:
            assert float(g.abs().max()) < 1e-9
    with pytest.raises(ValueError, match="signal"):
        SNRLoss(signal="voltage")
    with pytest.raises(ValueError, match="sigma_b_weight"):
        SNRLoss(signal="current", sigma_b_weight=-1.0)


def test_export_refuses_the_leaked_reset():
    from sbnn.models import SpikingMLP

    neuron = NeuronSettings(membrane_noise="marginal", reset_leak=True)
    with pytest.raises(ValueError, match="reset_leak"):
        SpikingMLP(4, (3,), 2, neuron=neuron).export_graph()
    SpikingMLP(4, (3,), 2, neuron=NeuronSettings(membrane_noise="marginal")).export_graph()  # the default exports


def test_shared_recurrent_gain_refuses_batch_norm():
    with pytest.raises(ValueError, match="time_batch_norm"):
        LayerSettings(time_affine_steps=4, time_batch_norm=True, time_affine_recurrent="shared")
    with pytest.raises(ValueError, match="BatchNorm"):
        TimeAffine(4, 2, batch_norm=True).gain_step(Moments(torch.ones(1, 2), None), 0)

"""Bernoulli layers: LRT moments against explicit weight samples, modes, KL, contracts, bad input."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

import sbnn
from sbnn.layers import BernoulliConv2d, BernoulliLinear, Moments


def _linear(seed: int = 0, **kw) -> BernoulliLinear:
    torch.manual_seed(seed)
    layer = BernoulliLinear(6, 4, **kw)
    with torch.no_grad():
        layer.lam.normal_(0.0, 1.0)
        layer.log_scale.fill_(math.log(0.7))
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def test_lrt_moments_match_explicit_weight_samples(gen):
    layer = _linear()
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.5, -1.2, 0.3, 2.0, 0.0, -0.7]])
    mu, var = layer.moments(x)
    n = 200_000
    w = layer.posterior().sample((n,), generator=gen)  # [n, 4, 6]
    h = 0.7 * torch.einsum("noi,bi->nbo", w, x) + layer.bias
    se_mean = h.std(0) / math.sqrt(n)
    assert ((h.mean(0) - mu).abs() < 5 * se_mean + 1e-6).all()
    # the variance estimate's standard error is about var * sqrt(2/n) for near-Gaussian sums
    torch.testing.assert_close(h.var(0), var, rtol=5 * math.sqrt(2 / n) * 3, atol=1e-5)


def test_conv_lrt_moments_match_explicit_weight_samples(gen):
    torch.manual_seed(3)
    layer = BernoulliConv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        layer.lam.normal_(0.0, 1.0)
    x = (torch.rand(1, 2, 5, 5) < 0.4).float()
    mu, var = layer.moments(x)
    n = 20_000
    w = layer.posterior().sample((n,), generator=gen)
    h = torch.stack([F.conv2d(x, wi * layer.scale.item(), padding=1) for wi in w])
    se_mean = h.std(0) / math.sqrt(n)
    assert ((h.mean(0) - mu).abs() < 5 * se_mean + 1e-6).all()
    torch.testing.assert_close(h.var(0), var, rtol=0.08, atol=1e-5)


def test_sample_mode_draws_from_the_lrt_gaussian():
    layer = _linear()
    x = torch.ones(1, 6).expand(50_000, 6)
    h = layer(x)
    mu, var = layer.moments(x[:1])
    assert abs(h.mean(0) - mu[0]).max() < 5 * (var[0].sqrt().max() / math.sqrt(50_000))
    torch.testing.assert_close(h.var(0), var[0], rtol=0.05, atol=1e-5)


def test_mode_is_deterministic_and_equals_explicit_sign_network():
    layer = _linear()
    x = torch.randn(3, 5, 6)
    layer.mode = "mode"
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)
    sign = torch.where(layer.lam >= 0, 1.0, -1.0)
    torch.testing.assert_close(a, F.linear(x, 0.7 * sign, layer.bias), rtol=0, atol=1e-6)
    mean, var = layer.moments(x)
    assert var is None and torch.equal(mean, a)


def test_mode_gradient_is_straight_through_tanh():
    layer = _linear(bias=False)
    x = torch.randn(4, 6)
    layer.mode = "mode"
    layer(x).sum().backward()
    expected = 0.7 * (1 - torch.tanh(layer.lam.detach()) ** 2) * x.sum(0).expand(4, 6)
    torch.testing.assert_close(layer.lam.grad, expected)


def test_mean_and_fixed_modes(gen):
    layer = _linear()
    x = torch.randn(2, 6)
    layer.mode = "mean"
    torch.testing.assert_close(layer(x), F.linear(x, 0.7 * torch.tanh(layer.lam), layer.bias))
    with pytest.raises(ValueError, match="draw_weights"):
        _linear().mode = "fixed"
    w = layer.draw_weights(gen)
    assert set(w.unique().tolist()) <= {-1.0, 1.0}
    layer.mode = "fixed"
    torch.testing.assert_close(layer(x), F.linear(x, 0.7 * w, layer.bias))
    w2 = layer.draw_weights(torch.Generator().manual_seed(1234))
    assert torch.equal(w, w2)  # same seed, same network
    with pytest.raises(ValueError, match="mode"):
        layer.mode = "bogus"


def test_kl_sums_weights_and_vanishes_at_prior():
    layer = _linear()
    lam = layer.lam.detach()
    q = torch.sigmoid(2 * lam)
    direct = (q * torch.log(2 * q) + (1 - q) * torch.log(2 * (1 - q))).sum()
    torch.testing.assert_close(layer.kl(), direct)
    layer.set_prior(lam)
    assert layer.kl().abs().item() < 1e-6
    net = torch.nn.Sequential(_linear(1), torch.nn.ReLU(), BernoulliLinear(4, 2))
    torch.testing.assert_close(sbnn.kl_divergence(net), net[0].kl() + net[2].kl())


def test_initialisations():
    torch.manual_seed(0)
    big = BernoulliLinear(200, 100, lam_init="bayesbinn")
    assert set(big.lam.unique().tolist()) == {-10.0, 10.0}
    normal = BernoulliLinear(200, 100)
    assert abs(normal.lam.std().item() - 0.5) < 0.02
    assert normal.scale.item() == pytest.approx(1 / math.sqrt(200))
    assert BernoulliLinear(3, 2, lam_init="zero").lam.abs().sum() == 0
    assert BernoulliLinear(3, 5, scale="channel").scale.shape == (5,)


def test_calibrate_scale_hits_target_std():
    layer = _linear(bias=False)
    x = (torch.rand(20, 64, 6) < 0.3).float()
    layer.calibrate_scale_(x, target_std=2.0)
    torch.manual_seed(5)
    assert abs(layer(x).std().item() - 2.0) < 0.1
    silent = torch.zeros(5, 2, 6)
    before = layer.scale.clone()
    with pytest.warns(RuntimeWarning, match="no input activity"):
        layer.calibrate_scale_(silent, 1.0)
    assert torch.equal(layer.scale, before)


def test_conv_time_major_folding_matches_per_step():
    torch.manual_seed(1)
    layer = BernoulliConv2d(2, 4, 3, stride=2, padding=1)
    layer.mode = "mode"
    x = (torch.rand(3, 2, 2, 8, 8) < 0.3).float()
    out = layer(x)
    assert out.shape == (3, 2, 4, 4, 4)
    for t in range(3):
        torch.testing.assert_close(out[t], layer(x[t]))


def test_return_moments_feeds_a_stochastic_lif_in_sequential():
    net = torch.nn.Sequential(BernoulliLinear(6, 4, return_moments=True), sbnn.StochasticLIF(init_hidden=True))
    out = net(torch.ones(3, 6))
    assert out.shape == (3, 4) and set(out.unique().tolist()) <= {0.0, 1.0}
    assert isinstance(net[0](torch.ones(3, 6)), Moments)


def test_module_contracts(tmp_path):
    layer = _linear()
    layer64 = layer.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in [layer64.lam, layer64.log_scale, layer64.bias, layer64.prior_lam])
    assert layer64(torch.randn(2, 6, dtype=torch.float64)).dtype == torch.float64
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.mode = layer.mode = "mode"
    x = torch.randn(2, 6, dtype=torch.float64)
    assert torch.equal(loaded(x), layer(x))
    fresh = BernoulliLinear(6, 4).to(torch.float64)
    fresh.load_state_dict(layer.state_dict())
    fresh.mode = "mode"
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.ones(6), ValueError, "dimensions"),
        (torch.ones(2, 2, 2, 6), ValueError, "dimensions"),
        (torch.ones(2, 5), ValueError, "6 features"),
        (torch.tensor([[float("nan")] * 6]), ValueError, "non-finite"),
        (torch.ones(2, 6, dtype=torch.int64), TypeError, "floating-point"),
        ([[1.0] * 6], TypeError, "torch.Tensor"),
    ],
)
def test_linear_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        _linear()(x)


def test_conv_bad_input_and_arguments():
    conv = BernoulliConv2d(2, 4, 3)
    with pytest.raises(ValueError, match="2 features"):
        conv(torch.ones(1, 3, 8, 8))
    with pytest.raises(ValueError, match="dimensions"):
        conv(torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups"):
        BernoulliConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="in_features"):
        BernoulliLinear(0, 3)
    with pytest.raises(ValueError, match="lam_init"):
        BernoulliLinear(3, 3, lam_init="uniform")
    with pytest.raises(ValueError, match="lam_std"):
        BernoulliLinear(3, 3, lam_std=-1.0)


def test_validation_can_be_switched_off():
    layer = _linear()
    sbnn.set_validation(False)
    try:
        out = layer(torch.tensor([[float("nan")] * 6]))  # no check: NaN passes through
        assert torch.isnan(out).all()
    finally:
        sbnn.set_validation(True)


def test_time_weighted_moments_of_spikes_equal_the_general_ones_bit_for_bit():
    """``binary=True`` forms ``Σ w² x`` from ``x`` itself: the same numbers and gradients for 0/1 ``x``."""
    from sbnn.functional.layers import time_weighted_moments

    x = (torch.rand(9, 3, 6) < 0.4).float().requires_grad_()
    w = torch.linspace(1.0, 0.2, 9, requires_grad=True)
    g_s, g_q = torch.randn(3, 6), torch.randn(3, 6)
    results = []
    for binary in (False, True):
        s, q = time_weighted_moments(w, x, binary=binary)
        results.append((s, q, *torch.autograd.grad((s * g_s + q * g_q).sum(), (w, x))))
    for general, spikes in zip(*results):
        assert torch.equal(general, spikes)
    # and not a flag that changes nothing: a non-binary input tells the two apart
    x2 = x.detach() * 2.0
    assert not torch.equal(time_weighted_moments(w, x2)[1], time_weighted_moments(w, x2, binary=True)[1])


def test_time_weighted_readout_matches_per_step_layer():
    """Σ_t w_t h[t]: exact in deterministic modes, same Gaussian law as per-step LRT samples."""
    layer = _linear()
    x = (torch.rand(9, 3, 6) < 0.4).float()
    w = torch.linspace(1.0, 0.2, 9)
    layer.mode = "mode"
    torch.testing.assert_close(layer.time_weighted(x, w), torch.einsum("t,tbo->bo", w, layer(x)))
    layer.mode = "sample"
    n = 40_000
    xs = x[:, :1].expand(9, n, 6)
    fast = layer.time_weighted(xs, w)
    slow = torch.einsum("t,tbo->bo", w, layer(xs))
    se = slow.std(0) / math.sqrt(n)
    assert ((fast.mean(0) - slow.mean(0)).abs() < 5 * math.sqrt(2) * se).all()
    torch.testing.assert_close(fast.var(0), slow.var(0), rtol=0.05, atol=1e-6)


def test_spike_shortcut_keeps_the_gradient_of_x_squared():
    """x² = x saves a pass for data, but spikes that carry gradient must keep d(x²)/dx = 2x."""
    layer = _linear(bias=False)
    x = (torch.rand(5, 3, 6) < 0.4).float().requires_grad_()
    torch.manual_seed(0)
    mu, var = layer.moments(x, binary=True)
    g_fast = torch.autograd.grad(mu.sum() + var.sum(), x)[0]
    mu2, var2 = layer.moments(x)
    g_ref = torch.autograd.grad(mu2.sum() + var2.sum(), x)[0]
    torch.testing.assert_close(g_fast, g_ref)
    w = torch.linspace(1.0, 0.1, 5)
    layer.mode = "mode"
    a = torch.autograd.grad(layer.time_weighted(x, w).sum(), x)[0]
    b = torch.autograd.grad(torch.einsum("t,tbo->bo", w, layer(x)).sum(), x)[0]
    torch.testing.assert_close(a, b)


def test_set_fixed_weight_runs_the_given_weight_and_keeps_parameters_unchanged():
    layer = BernoulliLinear(4, 3)
    n_params = len(list(layer.parameters()))
    layer.set_fixed_weight(layer.lam)  # a Parameter: must not become a new parameter of the layer
    assert layer.mode == "fixed" and len(list(layer.parameters())) == n_params
    x = torch.rand(2, 4)
    torch.testing.assert_close(layer(x), (x @ layer.lam.T) * layer.scale)
    layer(x).sum().backward()  # the gradient reaches λ through the given weight
    assert layer.lam.grad is not None and layer.lam.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="λ's shape"):
        layer.set_fixed_weight(torch.zeros(4, 3))


def test_time_weighted_moments_are_the_sums_and_their_gradients(gen):
    from sbnn.functional.layers import time_weighted_moments

    w = torch.rand(5, dtype=torch.float64, generator=gen).requires_grad_()
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=gen).requires_grad_()
    s, q = time_weighted_moments(w, x)
    torch.testing.assert_close(s, torch.einsum("t,tbi->bi", w, x))
    torch.testing.assert_close(q, torch.einsum("t,tbi->bi", w * w, x * x))
    assert torch.autograd.gradcheck(time_weighted_moments, (w, x))
    with pytest.raises(ValueError, match=r"weights \[T\] and x \[T, \.\.\.\]"):
        time_weighted_moments(w[:4], x)
    # gradcheck's double backward (create_graph) takes the torch formula
    assert torch.autograd.gradgradcheck(time_weighted_moments, (w, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_time_weighted_input_gradient_kernel_equals_the_torch_formula(gen, monkeypatch, dtype):
    """The CPU kernel's input gradient is the torch formula's, bit for bit (same roundings, one fma)."""
    from sbnn.functional import layers as functional_layers

    w = torch.rand(9, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    x = (torch.rand(9, 4, 6, generator=gen, dtype=torch.float64) < 0.3).to(dtype).requires_grad_()
    g_s, g_q = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64).to(dtype)

    def grads():
        s, q = functional_layers.time_weighted_moments(w, x)
        return torch.autograd.grad((s * g_s + q * g_q).sum(), (w, x))

    with torch.no_grad():  # as in a first-order backward
        assert functional_layers._time_weighted_kernel(w, x, g_s, g_q) is not None
    kernel = grads()
    monkeypatch.setattr(functional_layers, "_time_weighted_kernel", lambda *args: None)
    reference = grads()
    for a, b in zip(kernel, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

"""Real-weight Gaussian-posterior layers: LRT moments, modes, KL, calibration, bad input, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sbnn
from sbnn import GaussianConv2d, GaussianLinear, evaluation
from sbnn.models import LayerSettings, SpikingMLP
from sbnn.weight_families import conv_layer, linear_layer

D = torch.float64


def _mc_moments(layer, x, n):
    """Mean and variance of the pre-activation over ``n`` explicit weight draws (``fixed`` mode)."""
    outs = []
    with evaluation(layer, "mode"):
        for _ in range(n):
            layer.draw_weights()
            layer.set_mode("fixed")
            outs.append(layer(x))
    h = torch.stack(outs)
    return h.mean(0), h.var(0)


LAYERS = {
    "linear": (lambda: GaussianLinear(12, 5, sigma_init=2.0), lambda g: torch.randn(3, 12, dtype=D, generator=g)),
    "linear-zero-diagonal": (
        lambda: GaussianLinear(6, 6, bias=False, sigma_init=2.0, zero_diagonal=True),
        lambda g: (torch.rand(4, 6, dtype=D, generator=g) < 0.5).to(D),
    ),
    "conv": (lambda: GaussianConv2d(3, 4, 3, padding=1, sigma_init=2.0), lambda g: torch.randn(2, 3, 5, 5, dtype=D, generator=g)),
    "conv-groups-stride": (
        lambda: GaussianConv2d(4, 6, 3, stride=2, padding=1, groups=2, sigma_init=2.0),
        lambda g: torch.randn(2, 4, 6, 6, dtype=D, generator=g),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_lrt_moments_match_monte_carlo_over_sampled_weights(gen, name):
    # Note: 4000 draws; tolerances are > 6 standard errors of the mean and of the variance
    torch.manual_seed(0)
    build, data = LAYERS[name]
    layer = build().double()
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    x = data(gen)
    mu, var = layer.moments(x)
    n = 4000
    mc_mean, mc_var = _mc_moments(layer, x, n)
    assert torch.all((mc_mean - mu).abs() <= 6 * (var / n).sqrt() + 1e-12)
    assert torch.all((mc_var - var).abs() <= 6 * var * math.sqrt(2 / (n - 1)) + 1e-12)
    assert float(var.detach().min()) > 0 or name == "linear-zero-diagonal"


def test_variance_by_hand():
    layer = GaussianLinear(3, 2, bias=False).double()
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=D)
    _, var = layer.moments(x)
    s2 = float(layer.sigma) ** 2
    assert var[0].tolist() == pytest.approx([s2 * 5.25, s2 * 5.25])
    rec = GaussianLinear(3, 3, bias=False, zero_diagonal=True).double()
    mu, var = rec.moments(x)
    s2 = float(rec.sigma) ** 2
    assert var[0].tolist() == pytest.approx([s2 * 4.25, s2 * 1.25, s2 * 5.0])
    w = rec.weight.detach().tolist()
    expected = [-2 * w[0][1] + 0.5 * w[0][2], w[1][0] + 0.5 * w[1][2], w[2][0] - 2 * w[2][1]]
    assert mu[0].tolist() == pytest.approx(expected)
    assert torch.all(rec.draw_weights().diagonal() == 0)
    conv = GaussianConv2d(2, 3, 3, padding=1, bias=False).double()
    xc = torch.rand(1, 2, 4, 4, dtype=D)
    _, vc = conv.moments(xc)
    window = F.pad(xc.square().sum(1, keepdim=True), (1, 1, 1, 1)).unfold(2, 3, 1).unfold(3, 3, 1).sum((-1, -2))
    torch.testing.assert_close(vc, (float(conv.sigma) ** 2 * window).expand(1, 3, 4, 4))


def test_initialisation_is_the_papers():
    torch.manual_seed(0)
    layer = GaussianLinear(700, 256)
    assert float(layer.sigma) == pytest.approx(0.5 / math.sqrt(700), rel=1e-5)
    assert float(layer.weight.abs().max()) <= 1 / math.sqrt(700)
    assert float(layer.weight.abs().max()) > 0.95 / math.sqrt(700)
    conv = GaussianConv2d(32, 64, 3)
    assert float(conv.sigma) == pytest.approx(0.5 / math.sqrt(32 * 9), rel=1e-5)
    assert float(GaussianLinear(100, 4, sigma_init=1.0).sigma) == pytest.approx(0.1, rel=1e-5)


def test_modes_run_the_mean_or_a_drawn_network():
    torch.manual_seed(0)
    layer = GaussianLinear(5, 3)
    x = torch.randn(4, 5)
    for mode in ("mode", "mean"):
        layer.set_mode(mode)
        mu, var = layer.moments(x)
        assert var is None
        torch.testing.assert_close(mu, x @ layer.weight.T + layer.bias)
    with pytest.raises(ValueError, match="draw_weights"):
        layer.set_mode("fixed")
    w = layer.draw_weights(torch.Generator().manual_seed(3))
    assert not torch.equal(w, layer.weight)
    layer.set_mode("fixed")
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias)
    state = layer.mode_state()
    layer.set_mode("sample")
    layer.restore_mode_state(state)
    assert layer.mode == "fixed" and layer.mode_state().weight is w
    with pytest.raises(ValueError, match="shape"):
        layer.set_fixed_weight(torch.zeros(2, 2))
    sbnn.set_mode(layer, "mc", torch.Generator().manual_seed(3))
    torch.testing.assert_close(layer.mode_state().weight, w)  # the same generator draws the same network


def test_kl_is_zero_without_prior_and_closed_form_with_one():
    layer = GaussianLinear(4, 3).double()
    assert float(layer.kl()) == 0.0
    with_prior = GaussianLinear(4, 3, prior_std=0.7).double()
    q = torch.distributions.Normal(with_prior.weight, with_prior.sigma.expand_as(with_prior.weight))
    p = torch.distributions.Normal(torch.zeros_like(with_prior.weight), torch.full_like(with_prior.weight, 0.7))
    torch.testing.assert_close(with_prior.kl(), torch.distributions.kl_divergence(q, p).sum())
    (g,) = torch.autograd.grad(with_prior.kl(), with_prior.sigma_rho)
    assert float(g) != 0
    net = SpikingMLP(4, (3,), 2, layer=LayerSettings(weights="gaussian", prior_std=1.0))
    expected = sum(m.kl() for m in (net.layers[0], net.output))
    torch.testing.assert_close(sbnn.kl_divergence(net), expected)


def test_rescale_scales_the_moments_like_alpha():
    torch.manual_seed(0)
    layer = GaussianConv2d(2, 3, 3, padding=1).double()
    x = torch.rand(2, 2, 5, 5, dtype=D)
    mu, var = layer.unit_moments(x)
    layer.rescale_(2.5)
    mu2, var2 = layer.unit_moments(x)
    torch.testing.assert_close(mu2, 2.5 * mu)
    torch.testing.assert_close(var2, 6.25 * var)


def test_calibration_sets_the_statistic_std():
    torch.manual_seed(0)
    layer = GaussianLinear(30, 20)
    x = (torch.rand(8, 64, 30) < 0.3).float()
    factor = layer.calibrate_scale_(x, 2.0)
    assert float(factor) > 0
    h = sbnn.layers.sample_moments(layer.unit_moments(x))
    assert float(h.std()) == pytest.approx(2.0, rel=0.05)
    with pytest.warns(RuntimeWarning, match="left unchanged"):
        assert float(layer.calibrate_scale_(torch.zeros(8, 4, 30), 2.0)) == 1.0


def test_variance_input_grad_false_detaches_the_variance_path():
    x = torch.rand(3, 6, requires_grad=True)
    grads = []
    for flag in (True, False):
        torch.manual_seed(0)
        layer = GaussianLinear(6, 4, variance_input_grad=flag)
        _, var = layer.moments(x)
        g_x, g_s = torch.autograd.grad(var.sum(), (x, layer.sigma_rho), allow_unused=True)
        grads.append(g_x)
        assert float(g_s) > 0
    assert grads[0].abs().sum() > 0 and grads[1] is None


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GaussianLinear(4, 3, sigma_init=0.0), "sigma_init"),
        (lambda: GaussianLinear(4, 3, sigma_init=-1.0), "sigma_init"),
        (lambda: GaussianLinear(4, 3, prior_std=0.0), "prior_std"),
        (lambda: GaussianLinear(4, 3, zero_diagonal=True), "square"),
        (lambda: GaussianConv2d(3, 4, 3, groups=2), "divisible"),
        (lambda: LayerSettings(weights="gauss"), "layer.weights"),
        (lambda: LayerSettings(sigma_init=0.0), "layer.sigma_init"),
        (lambda: LayerSettings(prior_std=-1.0), "layer.prior_std"),
        (lambda: linear_layer(3, 2, weights="real"), "weights"),
        (lambda: SpikingMLP(4, (3,), 2, layer={"weights": "gaussian", "sigma": 1.0}), "unknown keys"),
    ],
)
def test_bad_settings_are_refused_before_work(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_layer_input_is_checked():
    with pytest.raises(ValueError, match="expects 4 features"):
        GaussianLinear(4, 3)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="non-finite"):
        GaussianConv2d(2, 3, 3)(torch.full((1, 2, 4, 4), float("nan")))


def test_family_factories_and_settings_kwargs():
    assert isinstance(linear_layer(3, 2, weights="gaussian", sigma_init=1.0), GaussianLinear)
    assert isinstance(conv_layer(3, 2, 3, weights="gaussian"), GaussianConv2d)
    assert isinstance(linear_layer(3, 2), sbnn.BernoulliLinear)
    assert "weights" not in LayerSettings().kwargs()  # the Bernoulli kwargs stay those of BernoulliLinear
    sbnn.BernoulliLinear(3, 2, **LayerSettings().kwargs())
    assert LayerSettings(weights="gaussian").kwargs() == {
        "weights": "gaussian", "bias": False, "sigma_init": 0.5, "prior_std": None, "variance_input_grad": True,
    }


def test_export_of_a_real_weight_network_is_refused_with_the_reason():
    from sbnn.export import to_graph

    net = SpikingMLP(4, (3,), 2, layer=LayerSettings(weights="gaussian"))
    with pytest.raises(ValueError, match=r"real-valued Gaussian-posterior weights.*±1 weights only.*mean_weight"):
        to_graph(net)
    assert torch.equal(net.layers[0].mean_weight(), net.layers[0].weight)

"""The fused accumulated-variance (marginal) neuron against plain autograd, and the σ-gradient.

The reference is the step-by-step marginal recursion run by autograd
(``sbnn.functional.neurons._marginal_sequence``); the fused node must give identical spikes and,
in float64, the same gradients for every input: ``μ``, ``v``, ``σ_b``, ``β``, ``ϑ`` and the
initial state. The σ-gradient is then checked against finite differences of the expected
activation ``E[S] = F(u/s)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.functional.estimators import get_estimator
from sbnn.functional.neurons import (
    StochasticLIFParameters,
    StochasticLIFState,
    _fused_marginal_sequence,
    _marginal_sequence,
    stochastic_lif_sequence,
)
from sbnn.functional.noise import get_noise
from sbnn.neurons import StochasticLIF

D = torch.float64


def _inputs(gen, T=7, B=3, H=4):
    mu = (torch.randn(T, B, H, dtype=D, generator=gen) * 0.8 + 0.6).requires_grad_()
    var = (torch.rand(T, B, H, dtype=D, generator=gen) * 0.3).requires_grad_()
    eps = torch.randn(T, B, H, dtype=D, generator=gen)
    beta = torch.tensor([0.9, 0.7, 0.5, 0.8], dtype=D, requires_grad=True)
    threshold = torch.tensor(1.0, dtype=D, requires_grad=True)
    sigma_b = torch.tensor(0.3, dtype=D, requires_grad=True)
    mem0 = (torch.randn(B, H, dtype=D, generator=gen) * 0.3).requires_grad_()
    var0 = (torch.rand(B, H, dtype=D, generator=gen) * 0.2).requires_grad_()
    spk0 = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * B, dtype=D, requires_grad=True)
    return mu, var, eps, beta, threshold, sigma_b, mem0, var0, spk0


def _params(beta, threshold, sigma_b, reset, detach, noise, estimator):
    return StochasticLIFParameters(
        beta, threshold, 0.1, 1e-3, reset, detach, get_noise(noise), estimator, "marginal", sigma_b
    )


def _loss(spk, mem, theta, state, gen_w):
    """A loss that reaches every output: spikes, membranes, θ and the final mean and variance."""
    w1, w2, w3 = gen_w
    return (
        (spk * w1).sum() + (mem * w2).sum() + (theta.tanh() * w3).sum()
        + (state.mem * 0.3).sum() + state.var.sqrt().sum()
    )


ESTIMATORS = [("st", {}), ("iwst", {"p": 0.5}), ("iwst", {"p": 0.3, "w_max": 3.0}), ("agr", {"tau": 0.7}), ("relaxed", {"tau": 0.5})]


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: f"{e[0]}{e[1]}")
def test_fused_marginal_equals_plain_autograd(gen, reset, detach, noise, est):
    if est[0] == "agr" and noise == "logistic":
        est = ("agr", {"tau": 0.7})  # tabulated factor: still deterministic, same in both paths
    estimator = get_estimator(est[0], **est[1])
    inputs = _inputs(gen)
    mu, var, eps, beta, threshold, sigma_b, mem0, var0, spk0 = inputs
    leaves = [mu, var, beta, threshold, sigma_b, mem0, var0, spk0]
    weights = [torch.randn(mu.shape, dtype=D, generator=gen) for _ in range(3)]
    results = []
    for fn in (_marginal_sequence, _fused_marginal_sequence):
        p = _params(beta, threshold, sigma_b, reset, detach, noise, estimator)
        spk, mem, theta, scale, state = fn(mu, var, p, StochasticLIFState(mem0, spk0, var0), eps)
        grads = torch.autograd.grad(_loss(spk, mem, theta, state, weights), leaves, allow_unused=True)
        results.append((spk, mem, theta, scale, state.mem, state.var, grads))
    (ref, fused) = results
    assert torch.equal(ref[0], fused[0])  # spikes identical, bit for bit
    assert 0 < float(ref[0].detach().mean()) < 1
    for a, b in zip(ref[1:6], fused[1:6]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    names = ["mu", "var", "beta", "threshold", "sigma_b", "mem0", "var0", "spk0"]
    for name, a, b in zip(names, ref[6], fused[6]):
        if a is None or b is None:  # only the detached reset leaves S[−1] without a gradient
            assert name == "spk0" and (detach or reset == "none") and (a is None or not a.any())
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


def test_fused_marginal_without_variance_or_sigma_b_matches(gen):
    mu = (torch.randn(6, 2, 5, dtype=D, generator=gen) + 0.8).requires_grad_()
    eps = torch.randn(6, 2, 5, dtype=D, generator=gen)
    p = StochasticLIFParameters(0.8, 1.0, 0.3, 1e-3, "subtract", True, get_noise("gaussian"), get_estimator("st"), "marginal")
    zeros = torch.zeros(2, 5, dtype=D)
    out = [fn(mu, None, p, StochasticLIFState(zeros, zeros), eps) for fn in (_marginal_sequence, _fused_marginal_sequence)]
    assert torch.equal(out[0][0], out[1][0])
    g = [torch.autograd.grad((o[0] * torch.arange(5.0, dtype=D)).sum(), mu)[0] for o in out]
    torch.testing.assert_close(g[0], g[1], rtol=1e-12, atol=1e-12)


def test_per_step_chaining_equals_the_whole_sequence(gen):
    """A recurrent layer runs the neuron one step at a time: the returned state carries V and the graph."""
    lif = StochasticLIF(beta=0.8, sigma0=0.0, membrane_noise="marginal", sigma_b=0.2, learn_sigma_b=True,
                        detach_reset=False).double()
    mu = (torch.randn(6, 2, 3, dtype=D, generator=gen) + 0.9).requires_grad_()
    var = torch.rand(6, 2, 3, dtype=D, generator=gen).requires_grad_()
    eps = torch.randn(6, 2, 3, dtype=D, generator=gen)
    spk, _ = lif.sequence((mu, var), eps=eps)
    whole = torch.autograd.grad(spk.sum() + (spk[-1] * 2).sum(), (mu, var, lif.sigma_b_rho))
    state, steps = None, []
    for t in range(6):
        s, _, state = lif.sequence((mu[t : t + 1], var[t : t + 1]), eps=eps[t : t + 1], state=state, return_state=True)
        steps.append(s[0])
    steps = torch.stack(steps)
    assert torch.equal(steps, spk)
    chained = torch.autograd.grad(steps.sum() + (steps[-1] * 2).sum(), (mu, var, lif.sigma_b_rho))
    for a, b in zip(whole, chained):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _expected_sigma_grad(estimator, noise, u, s, c=1.0):
    """``E_S[∂Ŝ/∂s]`` of one unit at ``θ = u/s``, computed exactly over ``S ∈ {0, 1}``."""
    theta = torch.tensor([u / s], dtype=D)
    f1 = estimator.factor(theta, torch.ones_like(theta), torch.zeros_like(theta), noise)
    f0 = estimator.factor(theta, torch.zeros_like(theta), torch.zeros_like(theta), noise)
    p1 = noise.cdf(theta)
    factor = p1 * f1 + (1 - p1) * f0
    return float(factor * (-theta / s))


@pytest.mark.parametrize("model", ["pathwise", "marginal"])
@pytest.mark.parametrize("u", [-0.7, 0.2, 1.3])
def test_sigma_gradient_of_st_is_the_derivative_of_the_expected_activation(gen, model, u):
    """One step, β = 0: ``∂S/∂σ_b`` (st) equals ``∂Φ(u/s)/∂σ_b`` by central differences, for every draw."""
    v, sb = 0.4, 0.3
    sigma_b = torch.tensor(sb, dtype=D, requires_grad=True)
    p = StochasticLIFParameters(0.0, 1.0, 0.0, 1e-6, "none", True, get_noise("gaussian"), get_estimator("st"), model, sigma_b)
    mu = torch.full((1, 8), 1.0 + u, dtype=D)
    spk, _, _ = stochastic_lif_sequence(mu, torch.full_like(mu, v), p, generator=gen)
    (g,) = torch.autograd.grad(spk.sum(), sigma_b)

    def expected(b):
        return 0.5 * math.erfc(-(u / math.sqrt(v + 1e-12 + b * b)) / math.sqrt(2))

    h = 1e-5
    fd = (expected(sb + h) - expected(sb - h)) / (2 * h)
    assert float(g) / 8 == pytest.approx(fd, rel=1e-6)
    assert fd != 0


@pytest.mark.parametrize("name,kwargs", [("st", {}), ("iwst", {"p": 0.5}), ("iwst", {"p": 0.2}), ("agr", {"tau": 0.5}), ("agr", {"tau": 1.5})])
@pytest.mark.parametrize("u", [-0.9, 0.4])
def test_sigma_gradient_in_expectation_over_the_spike(name, kwargs, u):
    """``E_S[∂Ŝ/∂s] = −(u/s)·E_S[∂Ŝ/∂u]``; for st and iwst it is ``∂Φ(u/s)/∂s``, for agr ``∂Φ(u/(cs))/∂s``."""
    estimator, noise = get_estimator(name, **kwargs), get_noise("gaussian")
    s = 0.8
    c = math.sqrt(1 + kwargs["tau"] ** 2) if name == "agr" else 1.0
    h = 1e-5

    def smooth(scale):
        return 0.5 * math.erfc(-(u / (c * scale)) / math.sqrt(2))

    fd = (smooth(s + h) - smooth(s - h)) / (2 * h)
    # the backward of the node: spikes forced by ε = ±large, then weighted by P(S) exactly
    grads = {}
    for spike, e in ((1.0, 50.0), (0.0, -50.0)):
        scale = torch.tensor([s], dtype=D, requires_grad=True)
        theta = torch.tensor([u], dtype=D) / scale
        out = estimator(theta, torch.tensor([e], dtype=D), noise)
        assert float(out.detach()) == spike
        grads[spike] = float(torch.autograd.grad(out.sum(), scale)[0])
    p1 = noise.cdf(torch.tensor(u / s, dtype=D)).item()
    expectation = p1 * grads[1.0] + (1 - p1) * grads[0.0]
    assert expectation == pytest.approx(_expected_sigma_grad(estimator, noise, u, s), rel=1e-9)
    # f(S) = S is linear with f'(1) = f'(0): every unclipped iwst(p) is unbiased for it, not only p = ½
    assert expectation == pytest.approx(fd, rel=1e-6)


def test_learned_sigma_b_is_a_parameter_with_softplus_init():
    lif = StochasticLIF(sigma_b=0.12692801104297263, learn_sigma_b=True, membrane_noise="marginal")
    assert [n for n, _ in lif.named_parameters()] == ["sigma_b_rho"]
    assert float(lif.sigma_b_rho) == pytest.approx(-2.0, abs=1e-6)
    assert float(lif.sigma_b) == pytest.approx(0.12692801104297263, rel=1e-6)
    fixed = StochasticLIF(sigma_b=0.3)
    assert "sigma_b_rho" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    assert StochasticLIF().sigma_b is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma_b=-0.1), "sigma_b"),
    (dict(sigma_b=0.0, learn_sigma_b=True), r"needs (neuron\.)?sigma_b > 0"),
    (dict(sigma_b=float("nan")), "sigma_b"),
])
def test_bad_sigma_b_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticLIF(**kwargs)
    from sbnn.models import NeuronSettings

    with pytest.raises(ValueError, match=match):
        NeuronSettings(**kwargs)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_a_shared_variance_runs_on_its_small_shape_with_exact_gradients(gen, reset):
    """A real-weight layer's variance is one value per position, expanded over the channels."""
    source = (torch.rand(5, 3, 1, dtype=D, generator=gen) * 0.5).requires_grad_()
    mu = (torch.randn(5, 3, 6, dtype=D, generator=gen) + 0.7).requires_grad_()
    eps = torch.randn(5, 3, 6, dtype=D, generator=gen)
    sigma_b = torch.tensor(0.2, dtype=D, requires_grad=True)
    p = StochasticLIFParameters(0.8, 1.0, 0.0, 1e-6, reset, False, get_noise("gaussian"), get_estimator("st"), "marginal", sigma_b)
    zeros = torch.zeros(3, 6, dtype=D)
    outs = []
    for fn, var in ((_marginal_sequence, source.expand(5, 3, 6).clone()), (_fused_marginal_sequence, source.expand(5, 3, 6))):
        spk, mem, theta, scale, state = fn(mu, var, p, StochasticLIFState(zeros, zeros), eps)
        loss = (spk * torch.linspace(-1, 1, 6, dtype=D)).sum() + theta.sin().sum() + state.var.sum()
        outs.append((spk, *torch.autograd.grad(loss, (mu, source, sigma_b))))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1:], outs[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

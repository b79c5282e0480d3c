"""Pure stochastic-LIF step functions: hand-computed trajectories, firing law, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.functional.estimators import AGR, IWST, ST
from sbnn.functional.neurons import (
    StochasticLIFParameters,
    StochasticLIFState,
    leaky_integrate,
    noise_scale,
    stochastic_lif_sequence,
    stochastic_lif_step,
)
from sbnn.functional.noise import get_noise


def params(reset="subtract", beta=0.5, sigma0=0.1, eps_min=1e-3, noise="gaussian", detach_reset=True):
    return StochasticLIFParameters(beta, 1.0, sigma0, eps_min, reset, detach_reset, get_noise(noise), ST())


@pytest.mark.parametrize(
    "reset, expected_mem",
    [
        # U = 0.6, 0.9, 1.05 (fires, >= threshold), then 0.5*1.05 + 0.2 minus the reset
        ("subtract", [0.6, 0.9, 1.05, 0.525 + 0.2 - 1.0]),
        ("zero", [0.6, 0.9, 1.05, 0.2]),
        ("none", [0.6, 0.9, 1.05, 0.725]),
    ],
)
def test_deterministic_trajectory_by_hand(reset, expected_mem):
    mu = torch.tensor([0.6, 0.6, 0.6, 0.2]).reshape(4, 1)
    spk, mem, state = stochastic_lif_sequence(mu, None, params(reset), stochastic=False)
    torch.testing.assert_close(mem.flatten(), torch.tensor(expected_mem))
    assert spk.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert torch.equal(state.spk, spk[-1]) and torch.equal(state.mem, mem[-1])


def test_threshold_exactly_hit_fires():
    spk, _, _ = stochastic_lif_sequence(torch.tensor([[1.0]]), None, params(), stochastic=False)
    assert spk.item() == 1.0


def test_noisy_step_by_hand():
    p = params()
    mu, var, eps = torch.tensor([0.8]), torch.tensor([0.09]), torch.tensor([0.7])
    s = math.sqrt(0.09 + 0.01 + 1e-6)
    spk, state = stochastic_lif_step(mu, var, StochasticLIFState(torch.zeros(1), torch.zeros(1)), p, eps)
    assert state.mem.item() == pytest.approx(0.8 + s * 0.7, rel=1e-6)
    assert spk.item() == 1.0  # (0.8 - 1)/s + 0.7 = 0.0675 >= 0
    spk, _ = stochastic_lif_step(mu, var, StochasticLIFState(torch.zeros(1), torch.zeros(1)), p, torch.tensor([0.6]))
    assert spk.item() == 0.0  # -0.632 + 0.6 < 0


def test_logistic_noise_is_variance_matched():
    p = params(noise="logistic")
    scale = noise_scale(torch.tensor([0.09]), p, torch.zeros(1))
    assert scale.item() == pytest.approx(math.sqrt(0.100001) * math.sqrt(3) / math.pi, rel=1e-6)
    # the membrane noise κ s ε with ε ~ Logistic(0, 1) has variance s^2
    eps = get_noise("logistic").sample(torch.Size([400_000]), like=torch.zeros(1))
    assert (scale * eps).var().item() == pytest.approx(0.100001, rel=0.02)


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
def test_firing_probability_is_the_link_of_theta(noise):
    """P(S[0] = 1) = F((mu - threshold)/(κ s)): the unit is Bernoulli with the noise family's link."""
    p = params(noise=noise)
    n = 200_000
    mu, var = torch.full((1, n), 0.9), torch.full((1, n), 0.05)
    spk, _, _ = stochastic_lif_sequence(mu, var, p, generator=torch.Generator().manual_seed(0))
    scale = noise_scale(var[0, :1], p, mu).item()
    prob = get_noise(noise).cdf(torch.tensor((0.9 - 1.0) / scale)).item()
    assert abs(spk.mean().item() - prob) < 5 * math.sqrt(prob * (1 - prob) / n)


def test_binary_neuron_is_memoryless():
    """beta = 0 without reset: every step is an independent Bernoulli unit of its own input."""
    p = params(reset="none", beta=0.0)
    mu = torch.tensor([[2.0], [-2.0], [2.0]])
    spk, mem, _ = stochastic_lif_sequence(mu, None, p, stochastic=False)
    assert spk.flatten().tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(mem.flatten(), mu.flatten())


def test_sequence_equals_stepwise_loop_with_same_noise():
    p = params()
    gen = torch.Generator().manual_seed(0)
    mu, var = torch.randn(6, 3, 4, generator=gen), torch.rand(6, 3, 4, generator=gen)
    eps = torch.randn(6, 3, 4, generator=gen)
    spk, mem, _ = stochastic_lif_sequence(mu, var, p, eps=eps)
    state = StochasticLIFState(torch.zeros(3, 4), torch.zeros(3, 4))
    for t in range(6):
        s_t, state = stochastic_lif_step(mu[t], var[t], state, p, eps[t])
        assert torch.equal(s_t, spk[t]) and torch.equal(state.mem, mem[t])


def test_st_gradient_of_first_step():
    """dS/dmu = p(theta)/s and dS/dv = -p(theta) theta / (2 s^2) through theta = (mu - thr)/s."""
    p = params()
    mu = torch.tensor([0.8], requires_grad=True)
    var = torch.tensor([0.09], requires_grad=True)
    spk, _ = stochastic_lif_step(mu, var, StochasticLIFState(torch.zeros(1), torch.zeros(1)), p, torch.tensor([0.7]))
    spk.backward()
    s = math.sqrt(0.100001)
    theta = (0.8 - 1.0) / s
    phi = math.exp(-theta**2 / 2) / math.sqrt(2 * math.pi)
    assert mu.grad.item() == pytest.approx(phi / s, rel=1e-5)
    assert var.grad.item() == pytest.approx(-phi * theta / (2 * s**2), rel=1e-5)


def test_membrane_carries_pathwise_gradient_to_variance():
    p = params()
    var = torch.tensor([0.09], requires_grad=True)
    _, state = stochastic_lif_step(torch.tensor([0.3]), var, StochasticLIFState(torch.zeros(1), torch.zeros(1)), p, torch.tensor([1.5]))
    state.mem.backward()
    assert var.grad.item() == pytest.approx(1.5 / (2 * math.sqrt(0.100001)), rel=1e-5)


@pytest.mark.parametrize("detach, expect_reset_grad", [(True, False), (False, True)])
def test_detach_reset_controls_gradient_through_reset(detach, expect_reset_grad):
    p = params(detach_reset=detach)
    mu = torch.tensor([[1.2], [0.0]], requires_grad=True)
    _, mem, _ = stochastic_lif_sequence(mu, None, p, stochastic=False)
    mem[1].sum().backward()
    # d U[1] / d mu[0] = beta, minus threshold * dS[0]/dmu[0] when the reset carries gradient
    s = math.sqrt(0.01 + 1e-6)
    phi = math.exp(-((0.2 / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    expected = 0.5 - (phi / s if expect_reset_grad else 0.0)
    assert mu.grad[0].item() == pytest.approx(expected, rel=1e-4)


def test_leaky_integrate_by_hand():
    out = leaky_integrate(torch.tensor([[1.0], [0.0], [2.0]]), 0.5)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.5, 2.25]))


def test_no_nan_when_unit_gets_no_input():
    """v = 0 and sigma0 = 0: the floor eps_min keeps theta finite (docs/design.md §7)."""
    p = params(sigma0=0.0)
    mu = torch.zeros(3, 2, requires_grad=True)
    var = torch.zeros(3, 2, requires_grad=True)
    spk, mem, _ = stochastic_lif_sequence(mu, var, p)
    (spk.sum() + mem.sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(var.grad).all()


@pytest.mark.parametrize("estimator", [ST(), AGR(0.5)])
def test_step_compiles_without_graph_breaks(estimator):
    import torch._dynamo as dynamo
    from torch.distributions import Distribution

    p = params()._replace(beta=torch.tensor(0.9), threshold=torch.tensor(1.0), estimator=estimator)
    state = StochasticLIFState(torch.zeros(4, 5), torch.zeros(4, 5))
    validate = Distribution._validate_args  # dynamo switches distribution validation off globally
    try:
        explanation = dynamo.explain(stochastic_lif_step)(torch.randn(4, 5), torch.rand(4, 5), state, p, torch.randn(4, 5))
    finally:
        Distribution.set_default_validate_args(validate)
    assert explanation.graph_break_count == 0


def _reference_sequence(mu, var, p, state, eps):
    """The neuron written as plain autograd ops (the fused autograd.Function must equal it)."""
    from sbnn.functional.estimators import HardThreshold

    mem, spk = state.mem, state.spk
    scale = noise_scale(var, p, mu).expand_as(mu)
    spikes, mems = [], []
    for mu_t, s_t, e_t in zip(mu.unbind(0), scale.unbind(0), eps.unbind(0)):
        reset_spk = spk.detach() if p.detach_reset else spk
        if p.reset_mechanism == "subtract":
            ubar = p.beta * mem + mu_t - p.threshold * reset_spk
        elif p.reset_mechanism == "zero":
            ubar = p.beta * mem * (1.0 - reset_spk) + mu_t
        else:
            ubar = p.beta * mem + mu_t
        spk = HardThreshold.apply((ubar - p.threshold) / s_t, e_t, p.estimator, p.noise)
        mem = ubar + s_t * e_t
        spikes.append(spk)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("estimator", [ST(), AGR(0.7), IWST(0.5)])
@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
def test_fused_sequence_matches_autograd_reference(reset, detach, estimator, noise):
    gen = torch.Generator().manual_seed(7)
    t, b, n = 7, 3, 4
    kw = dict(dtype=torch.float64)
    mu = (0.6 * torch.randn(t, b, n, generator=gen, **kw) + 0.4).requires_grad_()
    var = (0.2 * torch.rand(t, b, n, generator=gen, **kw)).requires_grad_()
    eps = get_noise(noise).sample(torch.Size([t, b, n]), like=mu.detach(), generator=gen)
    beta = torch.full((n,), 0.8, **kw).requires_grad_()  # per-unit leak
    threshold = torch.tensor(1.0, **kw).requires_grad_()
    mem0 = (0.5 * torch.randn(b, n, generator=gen, **kw)).requires_grad_()
    spk0 = (torch.rand(b, n, generator=gen, **kw) < 0.5).to(torch.float64).requires_grad_()
    p = StochasticLIFParameters(beta, threshold, 0.1, 1e-3, reset, detach, get_noise(noise), estimator)
    g_spk = torch.randn(t, b, n, generator=gen, **kw)
    g_mem = torch.randn(t, b, n, generator=gen, **kw)

    leaves = [mu, var, beta, threshold, mem0, spk0]
    spk, mem, _ = stochastic_lif_sequence(mu, var, p, state=StochasticLIFState(mem0, spk0), eps=eps)
    fused = torch.autograd.grad((spk * g_spk).sum() + (mem * g_mem).sum(), leaves, allow_unused=True)
    ref_spk, ref_mem = _reference_sequence(mu, var, p, StochasticLIFState(mem0, spk0), eps)
    ref = torch.autograd.grad((ref_spk * g_spk).sum() + (ref_mem * g_mem).sum(), leaves, allow_unused=True)

    assert torch.equal(spk, ref_spk)
    torch.testing.assert_close(mem, ref_mem)
    assert 0 < spk.mean() < 1  # both outcomes occur, so the reset paths are exercised
    for name, a, r in zip(["mu", "var", "beta", "threshold", "mem0", "spk0"], fused, ref):
        if r is None or (name == "spk0" and (detach or reset == "none")):
            assert a is None or torch.count_nonzero(a) == 0, name
            continue
        torch.testing.assert_close(a, r, msg=name)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_time_average_weights_reproduce_the_mean_leaky_membrane(beta):
    from sbnn.functional.neurons import time_average_weights

    x = torch.randn(13, 4, 3, dtype=torch.float64)
    w = time_average_weights(13, beta, like=x)
    torch.testing.assert_close(torch.tensordot(w, x, dims=1), leaky_integrate(x, beta).mean(0))

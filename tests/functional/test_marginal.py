"""The marginal membrane-noise model and spike-train probabilities (hand values, exact sums)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sbnn.functional.estimators import ST
from sbnn.functional.neurons import (
    StochasticLIFParameters,
    StochasticLIFState,
    spike_train_log_prob,
    stochastic_lif_sequence,
    stochastic_lif_step,
)
from sbnn.functional.noise import get_noise
from sbnn.neurons import StochasticLIF


def params(model="marginal", reset="subtract", beta=0.5, sigma0=0.3, noise="gaussian"):
    return StochasticLIFParameters(beta, 1.0, sigma0, 1e-3, reset, True, get_noise(noise), ST(), model)


def test_marginal_trajectory_by_hand():
    # β = 0.5, ϑ = 1, floor f = 0.09 + 1e-6; μ = (0.8, 0.8), v = (0.16, 0.04); ε = (0.7, -3)
    mu = torch.tensor([[0.8], [0.8]], dtype=torch.float64)
    var = torch.tensor([[0.16], [0.04]], dtype=torch.float64)
    eps = torch.tensor([[0.7], [-3.0]], dtype=torch.float64)
    spk, mem, state, drive = stochastic_lif_sequence(mu, var, params(), eps=eps, return_drive=True)
    f = 0.09 + 1e-6
    v0 = 0.16 + f
    theta0 = (0.8 - 1.0) / math.sqrt(v0)  # -0.398: with ε = 0.7 the unit fires
    assert drive.theta[0].item() == pytest.approx(theta0)
    assert spk[:, 0].tolist() == [1.0, 0.0]
    # step 2: M = 0.5·0.8 + 0.8 − 1·1 = 0.2 (the mean is carried, not the noisy sample);
    # V = 0.25·v0 + 0.04 + f
    v1 = 0.25 * v0 + 0.04 + f
    assert state.mem.item() == pytest.approx(0.2) and state.var.item() == pytest.approx(v1)
    assert drive.theta[1].item() == pytest.approx((0.2 - 1.0) / math.sqrt(v1))
    assert mem[0].item() == pytest.approx(0.8 + math.sqrt(v0) * 0.7)  # the sample that fired


def test_zero_reset_restarts_mean_and_variance():
    mu = torch.tensor([[2.0], [0.3]])
    spk, _, state = stochastic_lif_sequence(mu, torch.full_like(mu, 0.5), params(reset="zero"), stochastic=False)
    assert spk[:, 0].tolist() == [1.0, 0.0]
    assert state.mem.item() == pytest.approx(0.3) and state.var.item() == pytest.approx(0.5 + 0.09 + 1e-6)


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_spike_train_probabilities_sum_to_one(noise, reset):
    T = 4
    mu = torch.tensor([0.9, 0.2, 1.4, 0.6], dtype=torch.float64)[:, None]
    var = torch.tensor([0.1, 0.3, 0.05, 0.2], dtype=torch.float64)[:, None]
    trains = torch.tensor(list(itertools.product([0.0, 1.0], repeat=T)), dtype=torch.float64).T  # [T, 16]
    logp = spike_train_log_prob(mu, var, trains, params(reset=reset, beta=0.7, noise=noise)).sum(0)
    assert torch.logsumexp(logp, 0).exp().item() == pytest.approx(1.0, abs=1e-12)


def test_spike_train_log_prob_matches_sampling_frequency(gen):
    # Note: 40000 draws; the tolerance is > 6 binomial standard errors, a false failure is < 1e-8
    T, n = 3, 40000
    mu = torch.tensor([0.9, 0.5, 1.1])[:, None].expand(T, n)
    var = torch.full_like(mu, 0.2)
    p = params(beta=0.6)
    spk, _, _ = stochastic_lif_sequence(mu, var, p, generator=gen)
    train = torch.tensor([1.0, 0.0, 1.0])[:, None]
    freq = (spk == train).all(0).double().mean().item()
    prob = spike_train_log_prob(mu[:, :1], var[:, :1], train, p).sum().exp().item()
    assert abs(freq - prob) < 6 * math.sqrt(prob * (1 - prob) / n)


def test_marginal_equals_pathwise_at_zero_leak(gen):
    mu = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    var = torch.rand(5, 3, 4, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(5, 3, 4, dtype=torch.float64, generator=gen)
    grads = []
    for model in ("pathwise", "marginal"):
        spk, _, _ = stochastic_lif_sequence(mu, var, params(model, reset="none", beta=0.0), eps=eps)
        grads.append((spk, *torch.autograd.grad((spk * torch.arange(4.0, dtype=torch.float64)).sum(), (mu, var))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_drive_factor_is_the_backward_derivative(gen):
    # β = 0, no reset: dS/dμ = factor / scale exactly (θ = (μ − ϑ)/scale)
    mu = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    for model in ("pathwise", "marginal"):
        p = params(model, reset="none", beta=0.0)
        spk, _, _, drive = stochastic_lif_sequence(mu, None, p, generator=gen, return_drive=True)
        (g,) = torch.autograd.grad(spk.sum(), mu)
        factor = p.estimator.factor(drive.theta.detach(), drive.spikes, drive.eps, p.noise)
        torch.testing.assert_close(g, factor / drive.scale)
        torch.testing.assert_close(drive.theta + drive.eps >= 0, drive.spikes.bool())


def test_step_and_module_match_the_sequence(gen):
    mu = torch.randn(6, 2, 3) + 0.8
    var = torch.rand(6, 2, 3)
    eps = torch.randn(6, 2, 3, generator=gen)
    p = params(beta=0.8)
    spk, mem, _ = stochastic_lif_sequence(mu, var, p, eps=eps)
    state = StochasticLIFState(torch.zeros(2, 3), torch.zeros(2, 3))
    for t in range(6):
        s_t, state = stochastic_lif_step(mu[t], var[t], state, p, eps[t])
        assert torch.equal(s_t, spk[t])
    lif = StochasticLIF(beta=0.8, sigma0=0.3, membrane_noise="marginal")
    torch.testing.assert_close(lif.sequence((mu, var), eps=eps)[0], spk)
    with pytest.raises(ValueError, match="init_hidden=True"):
        lif((mu[0], var[0]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="membrane_noise"):
        StochasticLIF(membrane_noise="accumulated")


def test_init_hidden_marginal_carries_the_variance():
    mu, var = torch.randn(6, 2, 3) + 0.8, torch.rand(6, 2, 3)
    lif = StochasticLIF(beta=0.8, sigma0=0.3, membrane_noise="marginal", init_hidden=True, output=True)
    lif.set_stochastic(False)
    steps = [lif((mu[t], var[t]))[0] for t in range(6)]
    spk, _ = lif.sequence((mu, var))
    assert torch.equal(torch.stack(steps), spk)
    expected = var[0] + 0.09 + 1e-6
    for t in range(1, 6):
        expected = 0.64 * expected + var[t] + 0.09 + 1e-6
    torch.testing.assert_close(lif.var, expected)

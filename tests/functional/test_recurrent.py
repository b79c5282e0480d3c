"""The fused recurrent LIF layer equals the step-by-step autograd formulation, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from sbnn.functional.estimators import AGR, IWST, ST
from sbnn.functional.layers import lrt_linear
from sbnn.functional.neurons import StochasticLIFParameters, StochasticLIFState, stochastic_lif_sequence
from sbnn.functional.noise import get_noise
from sbnn.functional.recurrent import recurrent_lif_sequence
from sbnn.functional.signs import sign_mean, sign_variance
from sbnn.models.stages import scale_gradient


def _params(reset: str, detach: bool, estimator, beta, threshold, noise="gaussian") -> StochasticLIFParameters:
    return StochasticLIFParameters(beta, threshold, 0.3, 1e-3, reset, detach, get_noise(noise), estimator)


def _reference(mu, var, lam, log_alpha, p, eps, spike_grad):
    """Step by step with autograd: per step the recurrent LRT moments of S[t−1] (x·x in the variance)."""
    alpha = log_alpha.exp()
    state, spikes = None, []
    for t in range(mu.shape[0]):
        m, v = mu[t], var[t]
        if t > 0:
            r_mu, r_var = lrt_linear(scale_gradient(spikes[-1], spike_grad), lam, alpha)
            m, v = m + r_mu, v + r_var
        spk, mem, _ = stochastic_lif_sequence(m[None], v[None], p, state=state, eps=eps[t][None])
        state = StochasticLIFState(mem[0], spk[0])
        spikes.append(spk[0])
    return torch.stack(spikes)


def _fused(mu, var, lam, log_alpha, p, eps, spike_grad):
    alpha = log_alpha.exp().reshape(-1, 1)
    weight = torch.cat([sign_mean(lam) * alpha, sign_variance(lam) * alpha.square()])
    return recurrent_lif_sequence(mu, var, weight, p, eps, spike_grad=spike_grad)


def _inputs(gen, steps=12, batch=3, hidden=5):
    kw = dict(dtype=torch.float64, generator=gen)
    mu = (0.9 * torch.randn(steps, batch, hidden, **kw) + 0.4).requires_grad_()
    var = (0.2 * torch.rand(steps, batch, hidden, **kw)).requires_grad_()
    lam = torch.randn(hidden, hidden, **kw).requires_grad_()
    log_alpha = torch.tensor([-0.7], dtype=torch.float64).requires_grad_()
    eps = torch.randn(steps, batch, hidden, **kw)
    return mu, var, lam, log_alpha, eps


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("spike_grad", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("estimator", [ST(), IWST(p=0.4, w_max=5.0), AGR(tau=0.7)], ids=["st", "iwst", "agr"])
def test_fused_recurrent_layer_equals_stepwise_autograd(gen, reset, detach, spike_grad, estimator):
    mu, var, lam, log_alpha, eps = _inputs(gen)
    beta = torch.tensor(0.85, dtype=torch.float64, requires_grad=True)
    threshold = torch.full((5,), 1.0, dtype=torch.float64).requires_grad_()
    p = _params(reset, detach, estimator, beta, threshold)
    leaves = (mu, var, lam, log_alpha, beta, threshold)
    weights = torch.randn(12, 3, 5, dtype=torch.float64, generator=gen)  # a loss that weighs every spike

    ref = _reference(mu, var, lam, log_alpha, p, eps, spike_grad)
    ref_grads = torch.autograd.grad((ref * weights).sum(), leaves)
    out = _fused(mu, var, lam, log_alpha, p, eps, spike_grad)
    grads = torch.autograd.grad((out * weights).sum(), leaves)

    assert 0 < float(ref.detach().mean()) < 1  # both spiking and silent steps are covered
    assert torch.equal(out, ref)
    for name, g, r in zip(("mu", "var", "lam", "log_alpha", "beta", "threshold"), grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


def test_logistic_noise_and_float_constants(gen):
    mu, var, lam, log_alpha, eps = _inputs(gen)
    eps = get_noise("logistic").sample(eps.shape, like=eps, generator=gen)
    p = _params("subtract", True, ST(), 0.9, 1.0, noise="logistic")
    ref = _reference(mu, var, lam, log_alpha, p, eps, 0.0)
    out = _fused(mu, var, lam, log_alpha, p, eps, 0.0)
    assert torch.equal(out, ref)
    for g, r in zip(torch.autograd.grad(out.sum(), (mu, var, lam)), torch.autograd.grad(ref.sum(), (mu, var, lam))):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_refuses_the_marginal_model_and_wrong_shapes(gen):
    mu, var, lam, log_alpha, eps = _inputs(gen)
    p = _params("subtract", True, ST(), 0.9, 1.0)._replace(membrane_noise="marginal")
    with pytest.raises(ValueError, match="pathwise"):
        _fused(mu, var, lam, log_alpha, p, eps, 0.0)
    p = p._replace(membrane_noise="pathwise")
    with pytest.raises(ValueError, match=r"\[2H, H\]"):
        recurrent_lif_sequence(mu, var, torch.zeros(5, 5, dtype=torch.float64), p, eps)
    with pytest.raises(ValueError, match="one \\[T, B, H\\] shape"):
        recurrent_lif_sequence(mu, var[:-1], torch.zeros(10, 5, dtype=torch.float64), p, eps)

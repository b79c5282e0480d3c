"""Estimators against exact gradients: exact unbiasedness cases, REINFORCE, a wrong estimator.

Note on randomness: every sampled test uses fixed seeds, so it is deterministic; the tolerances
are 4 Monte Carlo standard errors (a false failure for a fresh seed would be < 1e−4).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from sbnn.diagnostics.exact import exact_gradient
from sbnn.diagnostics.metrics import gradient_metrics
from sbnn.diagnostics.sampling import estimator_gradients, reinforce_gradients
from sbnn.functional.estimators import IWST, ST, get_estimator
from sbnn.functional.noise import get_noise
from sbnn.models import NeuronSettings, SpikingMLP


def _expected_unit_gradient(estimator, theta: float, f, noise="gaussian") -> tuple[float, float]:
    """``(E[∂f(S)/∂θ], exact d/dθ E f(S))`` for one unit, the expectation summed over S exactly."""
    fam = get_noise(noise)
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    grads = {}
    for s, eps in ((1.0, 50.0), (0.0, -50.0)):  # ε that forces the spike; st/iwst do not use ε
        spike = estimator(th, torch.tensor(eps, dtype=torch.float64), fam)
        assert spike.item() == s
        (grads[s],) = torch.autograd.grad(f(spike), th)
    fire = float(fam.cdf(th.detach()))
    mean = fire * float(grads[1.0]) + (1 - fire) * float(grads[0.0])
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    exact = float(fam.pdf(th.detach())) * (f(one) - f(zero)).item()
    return mean, exact


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
@pytest.mark.parametrize("theta", [-2.0, -0.3, 0.0, 0.8, 2.5])
def test_iwst_half_is_exactly_unbiased_for_a_quadratic_loss(theta, noise):
    f = lambda s: (1.7 * s - 0.4) ** 2 + 0.3 * s  # noqa: E731
    mean, exact = _expected_unit_gradient(IWST(0.5, w_max=1e9), theta, f, noise)
    assert mean == pytest.approx(exact, rel=1e-12)
    # st is biased on the same quadratic (except at F = ½, i.e. θ = 0)
    st_mean, _ = _expected_unit_gradient(ST(), theta, f, noise)
    if theta != 0.0:
        assert abs(st_mean - exact) > 1e-3 * abs(exact)


@pytest.mark.parametrize("theta", [-1.5, 0.4, 3.0])
def test_st_is_exactly_unbiased_for_a_linear_loss(theta):
    f = lambda s: -2.3 * s + 0.7  # noqa: E731
    mean, exact = _expected_unit_gradient(ST(), theta, f)
    assert mean == pytest.approx(exact, rel=1e-12)


@dataclass(frozen=True)
class _Inflated(IWST):
    """A deliberately wrong estimator: iwst(½)'s factor times 2."""

    name = "inflated"

    def factor(self, theta, spikes, eps, noise):
        return 2.0 * super().factor(theta, spikes, eps, noise)


def test_a_wrong_estimator_is_detected_on_one_unit():
    f = lambda s: -2.3 * s + 0.7  # noqa: E731
    mean, exact = _expected_unit_gradient(_Inflated(w_max=1e9), 0.4, f)
    assert mean == pytest.approx(2.0 * exact, rel=1e-12)


def _small_problem():
    torch.manual_seed(3)
    net = SpikingMLP(5, (3, 2), 3, neuron=NeuronSettings(beta=0.6, membrane_noise='marginal', sigma0=0.3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, 5, dtype=torch.float64, generator=g).round()
    y = torch.randint(0, 3, (6,), generator=g)
    _, grads = exact_gradient(net, x, y)
    return net, x, y, torch.cat([v.flatten() for v in grads.values()])


def _flat(samples, prefix=""):
    return torch.cat([v.flatten(1) for k, v in samples.items() if k.startswith(prefix)], 1)


def test_reinforce_mean_converges_to_the_exact_gradient():
    net, x, y, g = _small_problem()
    samples = _flat(reinforce_gradients(net, x, y, 1500, seed=0))
    err = (samples.mean(0) - g).norm()
    se = (samples.var(0).sum() / samples.shape[0]).sqrt()
    assert err < 4 * se
    # and the variance is real: a single sample is far from g
    assert gradient_metrics(samples, g).variance > 1.0


def test_sampled_estimators_are_checked_against_the_exact_gradient():
    net, x, y, _ = _small_problem()
    # the first hidden layer, where the estimator acts twice (its own spikes and the next layer's)
    _, exact = exact_gradient(net, x, y)
    g = torch.cat([v.flatten() for k, v in exact.items() if k.startswith("layers.0.")])
    wrong = gradient_metrics(_flat(estimator_gradients(net, x, y, _Inflated(), 800, seed=0), "layers.0."), g)
    right = gradient_metrics(_flat(estimator_gradients(net, x, y, get_estimator("iwst"), 800, seed=0), "layers.0."), g)
    # the inflated estimator is detected as biased, far above its Monte Carlo resolution; iwst(½),
    # whose bias here is within its resolution, is not
    assert wrong.bias > 3 * wrong.bias_floor and wrong.bias > 1.0
    assert right.bias < 2 * right.bias_floor and right.bias < wrong.bias / 5
    assert right.mean_cosine > 0.9

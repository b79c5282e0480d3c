"""The ``iwst`` and ``agr`` factors written with CDF ratios equal their log-space definitions."""

from __future__ import annotations

import pytest
import torch

from sbnn.functional import estimators as E
from sbnn.functional.noise import get_noise


def _grid(dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # θ over the bulk and both tails (|θ| up to 45: Φ(−45) underflows even in float64), both spike values
    theta = torch.cat([torch.linspace(-45.0, 45.0, 1801, dtype=torch.float64), 4.0 * torch.randn(2000, dtype=torch.float64, generator=gen)])
    theta = theta.repeat(2)
    spikes = torch.cat([torch.zeros(theta.numel() // 2), torch.ones(theta.numel() // 2)]).double()
    return theta.to(dtype), spikes.to(dtype)


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
@pytest.mark.parametrize("p,w_max", [(0.5, 10.0), (0.3, 3.0), (0.8, 50.0)])
def test_iwst_factor_equals_logspace(gen, noise, p, w_max):
    theta, spikes = _grid(torch.float64, gen)
    family = get_noise(noise)
    fast = E._iwst_factor(theta, spikes, family, p, w_max)
    ref = E._iwst_factor_logspace(theta, spikes, family, p, w_max)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=0)
    assert torch.equal(E.IWST(p=p, w_max=w_max).factor(theta, spikes, theta, family), fast)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_agr_gaussian_factor_equals_logspace_including_the_underflow_tail(gen, tau):
    theta, spikes = _grid(torch.float64, gen)
    family = get_noise("gaussian")
    fast = E._agr_gaussian_factor(theta, spikes, family, tau)
    ref = E._agr_gaussian_factor_logspace(theta, spikes, family, tau)
    assert bool((E._cdf(family, theta * (2 * spikes - 1)) < torch.finfo(theta.dtype).tiny).any())  # the tail branch is exercised
    torch.testing.assert_close(fast, ref, rtol=1e-11, atol=0)
    assert torch.equal(E.AGR(tau=tau).factor(theta, spikes, theta, family), fast)


@pytest.mark.parametrize("estimator", [E.IWST(p=0.5, w_max=10.0), E.AGR(tau=1.0)], ids=["iwst", "agr"])
def test_float32_factors_are_as_accurate_as_the_logspace_ones(gen, estimator):
    """In float32 both forms carry the rounding of θ (``θ²/2`` in the tails); the new one adds none."""
    theta, spikes = _grid(torch.float32, gen)
    family = get_noise("gaussian")
    if isinstance(estimator, E.IWST):
        def old(t, s):
            return E._iwst_factor_logspace(t, s, family, 0.5, 10.0)
    else:
        def old(t, s):
            return E._agr_gaussian_factor_logspace(t, s, family, 1.0)
    ref = old(theta.double(), spikes.double())
    tiny = torch.finfo(torch.float32).tiny
    mask = ref > 1e3 * tiny  # away from the float32 floor of safe_exp

    def rel_error(x: torch.Tensor) -> float:
        return float(((x.double() - ref).abs() / ref)[mask].max())

    assert rel_error(estimator.factor(theta, spikes, theta, family)) <= 2.0 * rel_error(old(theta, spikes)) + 1e-6


@pytest.mark.parametrize("name", ["iwst", "agr"])
def test_spike_gradient_uses_the_factor(gen, name):
    theta = torch.randn(50, dtype=torch.float64, generator=gen).requires_grad_()
    eps = torch.randn(50, dtype=torch.float64, generator=gen)
    est = E.get_estimator(name)
    spikes = est(theta, eps, "gaussian")
    upstream = torch.randn(50, dtype=torch.float64, generator=gen)
    (grad,) = torch.autograd.grad((spikes * upstream).sum(), theta)
    family = get_noise("gaussian")
    if name == "iwst":
        ref = E._iwst_factor_logspace(theta.detach(), spikes.detach(), family, est.p, est.w_max)
    else:
        ref = E._agr_gaussian_factor_logspace(theta.detach(), spikes.detach(), family, est.tau)
    torch.testing.assert_close(grad, upstream * ref, rtol=1e-12, atol=0)

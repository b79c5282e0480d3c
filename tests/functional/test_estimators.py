"""The IW-ST estimator family (``sbnn.functional.estimators``): formulas, forward, Monte Carlo bias.

Note [Randomized statistical tests]
-----------------------------------
Some tests below compare a Monte Carlo mean with an exact value. Each comparison passes when
``|mean − exact| ≤ 5·SE``, with the standard error ``SE`` estimated from the same samples (sample
standard deviation / √n, n ≥ 10⁵, so the estimate of SE is itself accurate to < 1 %). Under a
correct implementation a 5-SE deviation of an (asymptotically normal) mean has probability about
6e-7, so with the ~60 comparisons in this file a fresh random seed would fail with probability
below 1e-4. The seeds are fixed (the ``gen`` fixture, or ``torch.manual_seed`` drawn from it inside
``torch.random.fork_rng`` for the estimators that use the global RNG), so the tests are
deterministic; a failure after a seed change should be re-run with another seed before it is
believed, and a failure with the fixed seeds is a real change of behaviour. Each statistical test
is paired with a deliberately wrong variant that the same check rejects, so the checks can fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import integrate, special

from sbnn.functional.estimators import (
    AGR,
    ESTIMATORS,
    IWST,
    ST,
    Estimator,
    GumbelRao,
    HardThreshold,
    Relaxed,
    get_estimator,
    spike,
)
from sbnn.functional.noise import Gaussian, get_noise

FAMILIES = ("gaussian", "logistic")
N_SE = 5.0  # tolerance of every Monte Carlo comparison, in standard errors (see the Note above)

# --------------------------------------------------------------------------------------------------
# Reference formulas, written independently of the library (math / scipy only)
# --------------------------------------------------------------------------------------------------


def ref_pdf(family: str, x: float) -> float:
    if family == "gaussian":
        return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    a = math.exp(-abs(x))
    return a / (1.0 + a) ** 2


def ref_cdf(family: str, x: float) -> float:
    if family == "gaussian":
        return float(special.ndtr(x))
    return float(special.expit(x))


def ref_prob_spike(family: str, theta: float, s: int) -> float:
    """``P(S = s | θ)``."""
    return ref_cdf(family, theta) if s == 1 else ref_cdf(family, -theta)


def ref_agr_quad(family: str, theta: float, s: int, tau: float) -> float:
    """``E[p((θ+ε)/τ)/τ | S = s]`` by adaptive quadrature over ``ε`` (definition, no substitution)."""

    def integrand(e: float) -> float:
        return ref_pdf(family, (theta + e) / tau) / tau * ref_pdf(family, e)

    if s == 1:
        num, _ = integrate.quad(integrand, -theta, np.inf, epsabs=0.0, epsrel=1e-10, limit=200)
    else:
        num, _ = integrate.quad(integrand, -np.inf, -theta, epsabs=0.0, epsrel=1e-10, limit=200)
    return num / ref_prob_spike(family, theta, s)


def t64(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64)


def factor_of(est: Estimator, family: str, theta: float, s: int, eps: float = 0.0) -> float:
    th = t64([theta])
    return est.factor(th, t64([float(s)]), t64([eps]), get_noise(family)).item()


# --------------------------------------------------------------------------------------------------
# Backward factors against their formulas, on hand-computed values
# --------------------------------------------------------------------------------------------------

THETAS = (-3.0, -1.0, -0.25, 0.0, 0.5, 2.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_st_factor_is_the_noise_density(family):
    theta = t64([t for t in THETAS for _ in (0, 1)])
    spikes = t64([s for _ in THETAS for s in (0.0, 1.0)])
    eps = t64(np.linspace(-2.0, 2.0, theta.numel()))  # st ignores the draw
    got = ST().factor(theta, spikes, eps, get_noise(family))
    expected = t64([ref_pdf(family, t) for t in theta.tolist()])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_iwst_factor_is_density_times_importance_weight(family, p):
    # moderate θ: every weight q_p(S)/P(S) stays below w_max = 1e3, no clipping
    for theta in THETAS:
        for s in (0, 1):
            q = p if s == 1 else 1.0 - p
            expected = ref_pdf(family, theta) * q / ref_prob_spike(family, theta, s)
            got = factor_of(IWST(p=p, w_max=1e3), family, theta, s)
            assert got == pytest.approx(expected, rel=1e-12), (theta, s)


@pytest.mark.parametrize("family", FAMILIES)
def test_iwst_factor_keeps_float64_precision(family):
    theta = t64([0.0, 0.0, -3.0, 1.1])
    spikes = t64([1.0, 0.0, 0.0, 1.0])
    got = IWST(p=0.3, w_max=1e3).factor(theta, spikes, theta * 0, get_noise(family))
    assert got.dtype == torch.float64
    expected = t64([ref_pdf(family, t) * (0.3 if s else 0.7) / ref_prob_spike(family, t, int(s))
                    for t, s in zip(theta.tolist(), spikes.tolist())])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_iwst_clips_the_weight_at_w_max(family):
    theta = -4.0  # S = 1 is rare: P(S=1) = Φ(−4) ≈ 3e-5 (Gaussian), σ(−4) ≈ 0.018 (logistic)
    raw_weight = 0.5 / ref_prob_spike(family, theta, 1)
    assert raw_weight > 20.0
    pdf = ref_pdf(family, theta)
    assert factor_of(IWST(p=0.5, w_max=10.0), family, theta, 1) == pytest.approx(10.0 * pdf, rel=1e-10)
    assert factor_of(IWST(p=0.5, w_max=3.0), family, theta, 1) == pytest.approx(3.0 * pdf, rel=1e-10)
    # a clip above the weight leaves it untouched, and the likely outcome is never clipped
    assert factor_of(IWST(p=0.5, w_max=1e7), family, theta, 1) == pytest.approx(raw_weight * pdf, rel=1e-6)
    w0 = 0.5 / ref_prob_spike(family, theta, 0)
    assert factor_of(IWST(p=0.5, w_max=10.0), family, theta, 0) == pytest.approx(w0 * pdf, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_iwst_with_p_equal_to_firing_probability_is_st(family):
    for theta in (-1.3, 0.0, 0.4, 2.2):
        est = IWST(p=ref_cdf(family, theta), w_max=1e3)
        for s in (0, 1):
            assert factor_of(est, family, theta, s) == pytest.approx(ref_pdf(family, theta), rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_relaxed_factor_is_scaled_density_at_the_drawn_noise(family, tau):
    for theta, eps in [(-1.0, 1.7), (0.3, -0.1), (2.0, -2.5), (0.0, 0.0), (-0.2, 0.15)]:
        s = 1 if theta + eps >= 0 else 0
        expected = ref_pdf(family, (theta + eps) / tau) / tau
        assert factor_of(Relaxed(tau=tau), family, theta, s, eps) == pytest.approx(expected, rel=1e-10)


# docs/design.md §1.4 (logistic) and §7 (Gaussian) check values of E[p(X/τ)/τ | S], X = θ + ε, at τ = 1:
# (θ, value for S = 1, value for S = 0); 5 decimals, so compared to ±6e-6.
AGR_CHECK_VALUES = [
    ("logistic", 0.0, 0.16667, 0.16667),
    ("logistic", 1.0, 0.13959, 0.18182),
    ("logistic", 3.0, 0.06655, 0.19147),
    ("logistic", -2.0, 0.18870, 0.10313),
    ("gaussian", 0.0, 0.28209, 0.28209),
    ("gaussian", 1.0, 0.19852, 0.33199),
    ("gaussian", 3.0, 0.02927, 0.37328),
]


@pytest.mark.parametrize("family, theta, v1, v0", AGR_CHECK_VALUES)
def test_agr_design_check_values(family, theta, v1, v0):
    assert factor_of(AGR(tau=1.0), family, theta, 1) == pytest.approx(v1, abs=6e-6)
    assert factor_of(AGR(tau=1.0), family, theta, 0) == pytest.approx(v0, abs=6e-6)


def test_agr_design_check_values_small_tau_logistic():
    # τ → 0 at θ = 1: p(1)/(2P(S)) = 0.13447 (S=1), 0.36553 (S=0). At τ = 1e-4 the O(τ) term
    # (≈ τ·ln2·|σ''(1)|/P(S) ≈ 1e-5) is on top of the 5-decimal rounding, hence the 3e-5.
    assert factor_of(AGR(tau=1e-4), "logistic", 1.0, 1) == pytest.approx(0.13447, abs=3e-5)
    assert factor_of(AGR(tau=1e-4), "logistic", 1.0, 0) == pytest.approx(0.36553, abs=3e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
def test_agr_matches_quadrature(family, tau):
    # The logistic factor is a tabulated Simpson rule with linear log-interpolation (documented
    # relative error < 1e-4); the Gaussian one is closed form. Both against scipy's adaptive quad.
    for theta in (-6.0, -2.5, -0.7, 0.0, 0.3, 1.9, 4.0, 7.5):
        for s in (0, 1):
            expected = ref_agr_quad(family, theta, s, tau)
            got = factor_of(AGR(tau=tau), family, theta, s)
            assert got == pytest.approx(expected, rel=1e-4), (theta, s)


@pytest.mark.parametrize("family", FAMILIES)
def test_agr_tends_to_iwst_half_as_tau_goes_to_zero(family):
    # τ → 0: E[p(X/τ)/τ | S] → p(θ)/(2 P(S)), the iwst(½) factor (unclipped); the gap is O(τ).
    theta = t64([t for t in np.linspace(-4.0, 4.0, 17) for _ in (0, 1)])
    spikes = t64([s for _ in range(17) for s in (0.0, 1.0)])
    noise = get_noise(family)
    limit = IWST(p=0.5, w_max=1e8).factor(theta, spikes, torch.zeros_like(theta), noise)
    hand = t64([ref_pdf(family, t) / (2 * ref_prob_spike(family, t, int(s)))
                for t, s in zip(theta.tolist(), spikes.tolist())])
    torch.testing.assert_close(limit, hand, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(AGR(tau=1e-4).factor(theta, spikes, theta * 0, noise), limit, rtol=1e-3, atol=0.0)
    # ... and at τ = 0.5 it is visibly not the limit, so the comparison above has power
    far = AGR(tau=0.5).factor(theta, spikes, theta * 0, noise)
    assert ((far - limit).abs() / limit).max() > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_agr_symmetry_between_spike_and_silence(family):
    # The noise law is symmetric, so E[· | S=1] at θ equals E[· | S=0] at −θ.
    theta = t64(np.linspace(-9.0, 9.0, 37))
    noise = get_noise(family)
    for tau in (0.5, 1.0):  # τ values other tests use too: the logistic tables are cached
        one = AGR(tau=tau).factor(theta, torch.ones_like(theta), theta * 0, noise)
        zero = AGR(tau=tau).factor(-theta, torch.zeros_like(theta), theta * 0, noise)
        torch.testing.assert_close(one, zero, rtol=1e-12, atol=0.0)


def test_agr_rejects_a_noise_family_without_an_analytic_form():
    @dataclass(frozen=True)
    class Other(Gaussian):
        name: str = "other"

    th = t64([0.5])
    with pytest.raises(ValueError, match="other"):
        AGR(tau=1.0).factor(th, torch.ones_like(th), th * 0, Other())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_factors_are_finite_and_nonnegative_far_from_threshold(family, dtype):
    theta = torch.tensor([-100.0, -40.0, -25.0, 0.0, 25.0, 40.0, 100.0], dtype=dtype).repeat(2)
    spikes = torch.cat([torch.ones(7), torch.zeros(7)]).to(dtype)
    eps = torch.zeros_like(theta)
    noise = get_noise(family)
    with torch.random.fork_rng(devices=[]):
        for est in (ST(), IWST(), IWST(p=0.2, w_max=1e6), Relaxed(0.5), GumbelRao(0.5, 4), AGR(0.1), AGR(3.0)):
            f = est.factor(theta, spikes, eps, noise)
            assert f.dtype == dtype and f.shape == theta.shape
            assert torch.isfinite(f).all() and (f >= 0).all(), est


# --------------------------------------------------------------------------------------------------
# Through real autograd: HardThreshold / spike / Estimator.__call__
# --------------------------------------------------------------------------------------------------

# (estimator, reference factor, rtol): the
# logistic agr factor is a table with documented relative error below 1e-4.
AUTOGRAD_CASES = [
    (ST(), lambda fam, t, s, e: ref_pdf(fam, t), 1e-10),
    (IWST(p=0.3, w_max=50.0),
     lambda fam, t, s, e: ref_pdf(fam, t) * min((0.3 if s else 0.7) / ref_prob_spike(fam, t, s), 50.0), 1e-10),
    (Relaxed(tau=0.7), lambda fam, t, s, e: ref_pdf(fam, (t + e) / 0.7) / 0.7, 1e-10),
    (AGR(tau=1.0), lambda fam, t, s, e: ref_agr_quad(fam, t, s, 1.0), 1e-4),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("est, ref, rtol", AUTOGRAD_CASES, ids=lambda v: getattr(v, "name", ""))
def test_backward_through_spike_is_upstream_grad_times_factor(family, est, ref, rtol, gen):
    theta0 = t64([-2.0, -0.5, 0.0, 0.4, 1.5, 3.0])
    eps = get_noise(family).sample(theta0.shape, like=theta0, generator=gen)
    upstream = t64([0.3, -1.2, 2.0, 0.7, -0.4, 1.1])
    theta = theta0.clone().requires_grad_()
    out = spike(theta, eps, est, family)
    out.backward(upstream)
    spikes = (theta0 + eps >= 0).tolist()
    expected = t64([
        g * ref(family, t, int(s), e)
        for g, t, s, e in zip(upstream.tolist(), theta0.tolist(), spikes, eps.tolist())
    ])
    torch.testing.assert_close(theta.grad, expected, rtol=rtol, atol=0.0)
    # the estimator object is itself callable with the same result
    theta2 = theta0.clone().requires_grad_()
    est(theta2, eps, family).backward(upstream)
    torch.testing.assert_close(theta2.grad, theta.grad, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_gumbel_rao_backward_averages_relaxed_factor_over_conditional_draws(family, gen):
    # GumbelRao draws u ~ U(0,1)^(K, ...) from the global RNG in backward; replay those draws.
    est = GumbelRao(tau=0.6, k=7)
    noise = get_noise(family)
    theta0 = t64([-2.0, -0.5, 0.0, 0.4, 1.5, 3.0])
    eps = noise.sample(theta0.shape, like=theta0, generator=gen)
    upstream = t64([0.3, -1.2, 2.0, 0.7, -0.4, 1.1])
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    theta = theta0.clone().requires_grad_()
    with torch.random.fork_rng(devices=[]):
        out = spike(theta, eps, est, family)
        torch.manual_seed(seed)
        out.backward(upstream)
        torch.manual_seed(seed)
        u = torch.rand((est.k, *theta0.shape), dtype=torch.float64)
    draws = noise.sample_given_spike(theta0.expand(est.k, -1), out.detach().expand(est.k, -1), u)
    # every replayed draw is consistent with the observed spike
    assert torch.equal((theta0 + draws >= 0).to(out.dtype), out.detach().expand(est.k, -1))
    relaxed = t64([[ref_pdf(family, (t + d) / est.tau) / est.tau for t, d in zip(theta0.tolist(), row)]
                   for row in draws.tolist()])
    torch.testing.assert_close(theta.grad, upstream * relaxed.mean(0), rtol=1e-10, atol=0.0)


def test_backward_sums_over_broadcast_noise(gen):
    # One θ per row shared by 4 draws (broadcast): its gradient sums the per-draw estimates.
    theta = t64([[-0.3], [0.8], [1.5]]).requires_grad_()
    eps = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    out = spike(theta, eps, Relaxed(tau=0.5), "gaussian")
    assert out.shape == (3, 4)
    out.sum().backward()
    expected = t64([[sum(ref_pdf("gaussian", (t + e) / 0.5) / 0.5 for e in row)]
                    for t, row in zip(theta.detach().flatten().tolist(), eps.tolist())])
    torch.testing.assert_close(theta.grad, expected, rtol=1e-10, atol=0.0)


# --------------------------------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("est", [ST(), IWST(), Relaxed(), GumbelRao(), AGR()], ids=lambda e: e.name)
def test_forward_is_heaviside_of_theta_plus_eps_with_h0_equal_1(est, dtype):
    theta = torch.tensor([-1.0, 0.0, 0.5, -0.5, 2.0, -3.0, 0.25], dtype=dtype)
    eps = torch.tensor([1.0, 0.0, -0.5, 0.25, -1.0, 2.5, -0.5], dtype=dtype)
    # θ + ε = 0, 0, 0, −0.25, 1, −0.5, −0.25 (all exact in every dtype)
    out = spike(theta, eps, est, "gaussian")
    assert out.dtype == dtype and out.shape == theta.shape
    assert out.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert HardThreshold.apply(theta, eps, est, get_noise("logistic")).tolist() == out.tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_heaviside_on_random_draws(family, gen):
    noise = get_noise(family)
    theta = torch.randn(5000, generator=gen) * 2.0
    eps = noise.sample(theta.shape, like=theta, generator=gen)
    out = spike(theta, eps, AGR(0.5), family)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out, torch.where(theta + eps >= 0, 1.0, 0.0))


@pytest.mark.parametrize("est", [ST(), IWST(), Relaxed(), GumbelRao(), AGR()], ids=lambda e: e.name)
def test_no_gradient_flows_to_eps(est, gen):
    theta = torch.randn(20, dtype=torch.float64, generator=gen).requires_grad_()
    eps = torch.randn(20, dtype=torch.float64, generator=gen).requires_grad_()
    with torch.random.fork_rng(devices=[]):
        spike(theta, eps, est).backward(torch.ones(20, dtype=torch.float64))
    assert eps.grad is None
    assert theta.grad is not None and (theta.grad > 0).all()
    # with only ε requiring grad, backward yields nothing at all for ε
    eps2 = eps.detach().clone().requires_grad_()
    spike(theta.detach(), eps2, est).sum().backward()
    assert eps2.grad is None


# --------------------------------------------------------------------------------------------------
# Monte Carlo on a one-unit toy (see the Note [Randomized statistical tests] at the top)
# --------------------------------------------------------------------------------------------------
# The unit S = H(θ + ε) feeds a continuous quantity u = w·S + z, and f(S) = g(u) with a smooth g,
# so f'(1) ≠ f'(0): the estimators' pathwise derivative g_S = w·g'(w·S + z) is taken at the sample.

W, Z = 1.3, -0.4


def cubic(u):
    return u**3 - 0.5 * u**2 + 2.0 * u


def cubic_prime(u):
    return 3.0 * u**2 - u + 2.0


def quadratic(u):
    return 0.8 * u**2 - 1.5 * u


def f_of(g, s):
    return g(W * s + Z)


def fprime_of(gprime, s):
    return W * gprime(W * s + Z)


def mc_gradients(est: Estimator, family: str, theta0: float, g, n: int, gen) -> torch.Tensor:
    """Per-sample estimates of d/dθ E[f(S)], one per independent draw of ε, through autograd."""
    noise = get_noise(family)
    theta = torch.full((n,), theta0, dtype=torch.float64, requires_grad=True)
    eps = noise.sample((n,), like=theta.detach(), generator=gen)
    g(W * spike(theta, eps, est, noise) + Z).sum().backward()
    return theta.grad


def within_n_se(samples: torch.Tensor, expected: float, n_se: float = N_SE) -> tuple[bool, float, float]:
    mean = samples.mean().item()
    se = samples.std().item() / math.sqrt(samples.numel())
    return abs(mean - expected) <= n_se * se, mean, se


def exact_gradient(family: str, theta0: float, g) -> float:
    return ref_pdf(family, theta0) * (f_of(g, 1.0) - f_of(g, 0.0))


N_MC = 100_000
MC_THETAS = (-0.7, 1.2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta0", MC_THETAS)
def test_st_mean_gradient_matches_its_expectation(family, theta0, gen):
    F = ref_cdf(family, theta0)
    expected = ref_pdf(family, theta0) * (F * fprime_of(cubic_prime, 1.0) + (1 - F) * fprime_of(cubic_prime, 0.0))
    samples = mc_gradients(ST(), family, theta0, cubic, N_MC, gen)
    ok, mean, se = within_n_se(samples, expected)
    assert ok, f"st mean {mean} vs {expected} (SE {se})"
    # the expectation is not the exact gradient (st is biased for curved f), beyond the tolerance
    assert abs(expected - exact_gradient(family, theta0, cubic)) > 10 * N_SE * se


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta0", MC_THETAS)
def test_iwst_mean_gradient_matches_its_expectation(family, theta0, gen):
    p = 0.3  # at these θ both weights q_p(S)/P(S) stay below w_max = 10: no clipping
    expected = ref_pdf(family, theta0) * (p * fprime_of(cubic_prime, 1.0) + (1 - p) * fprime_of(cubic_prime, 0.0))
    samples = mc_gradients(IWST(p=p), family, theta0, cubic, N_MC, gen)
    ok, mean, se = within_n_se(samples, expected)
    assert ok, f"iwst(0.3) mean {mean} vs {expected} (SE {se})"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta0", MC_THETAS)
def test_iwst_half_is_unbiased_for_quadratic_downstream(family, theta0, gen):
    expected = exact_gradient(family, theta0, quadratic)  # p(θ)(f(1) − f(0))
    samples = mc_gradients(IWST(p=0.5), family, theta0, quadratic, N_MC, gen)
    ok, mean, se = within_n_se(samples, expected)
    assert ok, f"iwst(1/2) mean {mean} vs exact {expected} (SE {se})"
    # st on the same problem is detectably biased (F(θ) ≠ ½), so the check has power here
    st = mc_gradients(ST(), family, theta0, quadratic, N_MC, gen)
    assert not within_n_se(st, expected)[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta0", (-2.0, 0.0, 0.9))
def test_st_is_exactly_unbiased_for_linear_downstream(family, theta0, gen):
    def linear(u):
        return 2.5 * u - 0.3

    samples = mc_gradients(ST(), family, theta0, linear, 1000, gen)
    expected = exact_gradient(family, theta0, linear)  # = p(θ)·2.5·W, whatever the sample
    torch.testing.assert_close(samples, torch.full_like(samples, expected), rtol=1e-12, atol=0.0)


@dataclass(frozen=True)
class DoubledST(Estimator):
    """A deliberately wrong estimator: twice the noise density."""

    name = "doubled_st"

    def factor(self, theta, spikes, eps, noise):
        return 2.0 * noise.pdf(theta)


@dataclass(frozen=True)
class SwappedIWST(Estimator):
    """A deliberately wrong iwst(½): importance weight divided by the probability of the *other* outcome."""

    name = "swapped_iwst"

    def factor(self, theta, spikes, eps, noise):
        return noise.pdf(theta) * 0.5 / noise.log_prob_spike(theta, 1.0 - spikes).exp()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("wrong", [DoubledST(), SwappedIWST()], ids=lambda e: e.name)
def test_unbiasedness_check_detects_a_wrong_estimator(family, wrong, gen):
    # θ = −0.7 (at θ = 1.2 the doubled st happens to land near the exact value for this f)
    theta0 = -0.7
    expected = exact_gradient(family, theta0, quadratic)
    samples = mc_gradients(wrong, family, theta0, quadratic, N_MC, gen)
    ok, mean, se = within_n_se(samples, expected)
    assert not ok, f"wrong estimator {wrong.name} passed: mean {mean} vs {expected} (SE {se})"
    # and for linear f the doubled density is off by exactly a factor 2 (no statistics needed)
    if isinstance(wrong, DoubledST):
        lin = mc_gradients(wrong, family, theta0, lambda u: 2.5 * u, 100, gen)
        assert torch.allclose(lin, torch.full_like(lin, 2 * exact_gradient(family, theta0, lambda u: 2.5 * u)))


@pytest.mark.parametrize("family", FAMILIES)
def test_relaxed_conditional_mean_given_spike_is_agr(family, gen):
    # E[p((θ+ε)/τ)/τ | S] is the agr factor: check both spike outcomes from one sample of ε.
    theta0, tau, n = 0.8, 0.5, N_MC
    noise = get_noise(family)
    theta = torch.full((n,), theta0, dtype=torch.float64)
    eps = noise.sample((n,), like=theta, generator=gen)
    spikes = (theta + eps >= 0).double()
    f = Relaxed(tau=tau).factor(theta, spikes, eps, noise)
    for s in (0, 1):
        group = f[spikes == s]
        assert group.numel() > 10_000
        expected = ref_agr_quad(family, theta0, s, tau)
        ok, mean, se = within_n_se(group, expected)
        assert ok, f"S={s}: relaxed conditional mean {mean} vs agr {expected} (SE {se})"
        assert not within_n_se(group, ref_agr_quad(family, theta0, 1 - s, tau))[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta0, s", [(-1.5, 1), (-1.5, 0), (0.3, 1), (2.0, 0), (2.0, 1)])
def test_gumbel_rao_converges_to_agr(family, theta0, s, gen):
    tau = 0.7
    noise = get_noise(family)
    agr = factor_of(AGR(tau=tau), family, theta0, s)
    theta = torch.full((50_000,), theta0, dtype=torch.float64)
    spikes = torch.full_like(theta, float(s))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        single = GumbelRao(tau=tau, k=1).factor(theta, spikes, theta * 0, noise)  # one draw each
        sixteen = GumbelRao(tau=tau, k=16).factor(theta, spikes, theta * 0, noise)
        big_k = 200_000
        many = GumbelRao(tau=tau, k=big_k).factor(theta[:1], spikes[:1], theta[:1] * 0, noise).item()
    ok, mean, se = within_n_se(single, agr)
    assert ok, f"K=1 mean {mean} vs agr {agr} (SE {se})"
    ok, mean16, se16 = within_n_se(sixteen, agr)
    assert ok, f"K=16 mean {mean16} vs agr {agr} (SE {se16})"
    # averaging K draws divides the variance by K (ratio of sample variances within ±10 %: with
    # 5e4 samples each the relative SE of a variance ratio is about 1–3 %)
    ratio = sixteen.var().item() / single.var().item()
    assert 0.9 / 16 < ratio < 1.1 / 16
    # a single factor with K = 2e5 draws sits within 5 SE of agr, SE = sd(single draw)/√K
    assert abs(many - agr) <= N_SE * single.std().item() / math.sqrt(big_k)


# --------------------------------------------------------------------------------------------------
# Construction, registry and bad input
# --------------------------------------------------------------------------------------------------


def test_registry_names_and_classes():
    assert set(ESTIMATORS) == {"st", "iwst", "relaxed", "gumbel_rao", "agr"}
    for name, cls in ESTIMATORS.items():
        assert cls.name == name
        assert isinstance(get_estimator(name), cls)
    assert get_estimator("iwst", p=0.25, w_max=4.0) == IWST(p=0.25, w_max=4.0)
    assert get_estimator("gumbel_rao", tau=0.2, k=3) == GumbelRao(tau=0.2, k=3)
    est = AGR(tau=0.3)
    assert get_estimator(est) is est


def test_unknown_estimator_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        get_estimator("iw-st")
    for name in ESTIMATORS:
        assert name in str(info.value)
    with pytest.raises(ValueError):
        get_estimator(None)


@pytest.mark.parametrize("name", ["relaxed", "gumbel_rao", "agr"])
@pytest.mark.parametrize("tau", [0.0, -0.5, math.inf, math.nan, "1.0"])
def test_non_positive_temperature_is_rejected(name, tau):
    with pytest.raises(ValueError, match="tau"):
        get_estimator(name, tau=tau)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_iwst_proposal_outside_open_unit_interval_is_rejected(p):
    with pytest.raises(ValueError, match=r"\bp\b"):
        get_estimator("iwst", p=p)
    with pytest.raises(ValueError, match=r"\bp\b"):
        IWST(p=p)


@pytest.mark.parametrize("w_max", [0.0, -1.0, math.nan, math.inf])
def test_iwst_non_positive_clip_is_rejected(w_max):
    with pytest.raises(ValueError, match="w_max"):
        get_estimator("iwst", w_max=w_max)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_gumbel_rao_needs_at_least_one_draw(k):
    with pytest.raises(ValueError, match=r"\bk\b"):
        get_estimator("gumbel_rao", k=k)


@pytest.mark.parametrize("name, kwargs", [("st", {"tau": 1.0}), ("iwst", {"q": 0.5}), ("agr", {"k": 3}),
                                          ("relaxed", {"temperature": 1.0})])
def test_wrong_keyword_is_a_type_error(name, kwargs):
    with pytest.raises(TypeError, match=name):
        get_estimator(name, **kwargs)


def test_keywords_with_an_estimator_instance_are_a_type_error():
    with pytest.raises(TypeError):
        get_estimator(IWST(), p=0.3)


@pytest.mark.parametrize("bad", ["cauchy", "Gaussian", None])
def test_unknown_noise_family_lists_the_valid_ones(bad):
    theta = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        spike(theta, theta, ST(), bad)
    assert "gaussian" in str(info.value) and "logistic" in str(info.value)
    with pytest.raises(ValueError, match="gaussian"):
        ST()(theta, theta, bad)

"""Noise families of the stochastic binary unit (``sbnn.functional.noise``) against scipy.stats.

Note [Randomized statistical tests]
-----------------------------------
The sampler tests compare draws with their law: a Kolmogorov–Smirnov test passes when its p-value
exceeds 1e-3 (so a correct sampler fails one such check with probability 1e-3 for a fresh seed),
and means pass within 5 standard errors estimated from the samples (failure probability ~6e-7 per
check). Seeds are fixed through the function-scoped ``gen`` fixture, so the tests are deterministic;
after a change of seed a single failing KS check should be re-run with another seed before it is
believed (about 40 KS checks run here, so ~4 % of fresh seeds would see one spurious failure).
The exact-support checks (``H(θ + ε) = S``) are not statistical: they must hold for every draw.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sbnn.functional.noise import NOISE_FAMILIES, Gaussian, Logistic, NoiseFamily, get_noise

FAMILIES = ("gaussian", "logistic")
SCIPY = {"gaussian": stats.norm, "logistic": stats.logistic}
KS_ALPHA = 1e-3
N_SE = 5.0


def t64(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_and_lookup():
    assert set(NOISE_FAMILIES) == {"gaussian", "logistic"}
    assert isinstance(get_noise("gaussian"), Gaussian)
    assert isinstance(get_noise("logistic"), Logistic)
    for name, fam in NOISE_FAMILIES.items():
        assert fam.name == name and get_noise(fam) is fam
    custom = Logistic()
    assert get_noise(custom) is custom


@pytest.mark.parametrize("bad", ["cauchy", "normal", "", None, 3])
def test_unknown_noise_family_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        get_noise(bad)
    assert "gaussian" in str(info.value) and "logistic" in str(info.value)


def test_families_compare_by_value_hash_and_pickle():
    assert Gaussian() == get_noise("gaussian") and hash(Gaussian()) == hash(get_noise("gaussian"))
    assert Gaussian() != Logistic()
    assert len({Gaussian(), Gaussian(), Logistic()}) == 2
    for fam in NOISE_FAMILIES.values():
        assert pickle.loads(pickle.dumps(fam)) == fam


def test_std_to_scale_matches_the_standard_deviations():
    # a family's scale parameter is std·std_to_scale: the standard law's std times it is 1
    assert Gaussian().std_to_scale == 1.0
    assert stats.norm.std() * Gaussian().std_to_scale == pytest.approx(1.0, rel=1e-15)
    assert stats.logistic.std() * Logistic().std_to_scale == pytest.approx(1.0, rel=1e-15)


# --------------------------------------------------------------------------------------------------
# Densities and distribution functions against scipy
# --------------------------------------------------------------------------------------------------

GRID = np.linspace(-12.0, 12.0, 97)


@pytest.mark.parametrize("family", FAMILIES)
def test_density_and_cdf_match_scipy_float64(family):
    noise, ref = get_noise(family), SCIPY[family]
    x = t64(GRID)
    np.testing.assert_allclose(noise.log_pdf(x).numpy(), ref.logpdf(GRID), rtol=1e-13, atol=0)
    np.testing.assert_allclose(noise.pdf(x).numpy(), ref.pdf(GRID), rtol=1e-12, atol=0)
    np.testing.assert_allclose(noise.log_cdf(x).numpy(), ref.logcdf(GRID), rtol=1e-12, atol=0)
    np.testing.assert_allclose(noise.cdf(x).numpy(), ref.cdf(GRID), rtol=1e-12, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_density_and_cdf_match_scipy_float32(family):
    noise, ref = get_noise(family), SCIPY[family]
    x = torch.tensor(GRID, dtype=torch.float32)
    exact = x.double().numpy()  # compare with scipy at the float32-rounded points
    for got, want in [
        (noise.log_pdf(x), ref.logpdf(exact)),
        (noise.pdf(x), ref.pdf(exact)),
        (noise.log_cdf(x), ref.logcdf(exact)),
        (noise.cdf(x), ref.cdf(exact)),
    ]:
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_icdf_matches_scipy_ppf(family):
    u = np.array([1e-300, 1e-30, 1e-8, 0.01, 0.2, 0.5, 0.77, 0.99, 1.0 - 1e-12])
    got = get_noise(family).icdf(t64(u)).numpy()
    np.testing.assert_allclose(got, SCIPY[family].ppf(u), rtol=1e-10, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_space_tails_are_finite_and_accurate_at_40(family, dtype):
    noise, ref = get_noise(family), SCIPY[family]
    x = torch.tensor([-40.0, 40.0], dtype=dtype)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    log_cdf, log_pdf = noise.log_cdf(x), noise.log_pdf(x)
    assert log_cdf.dtype == dtype and log_pdf.dtype == dtype
    assert torch.isfinite(log_cdf).all() and torch.isfinite(log_pdf).all()
    np.testing.assert_allclose(log_pdf.double().numpy(), ref.logpdf([-40.0, 40.0]), rtol=rtol)
    # log F(−40): −804.608 (Gaussian), −40 (logistic); log F(40) is −e^{−40}-ish and may round to 0
    assert log_cdf[0].item() == pytest.approx(ref.logcdf(-40.0), rel=rtol)
    assert -1e-15 <= log_cdf[1].item() <= 0.0
    # log P(S | θ) in both directions
    theta = torch.tensor([40.0, 40.0, -40.0, -40.0], dtype=dtype)
    spikes = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype)
    lp = noise.log_prob_spike(theta, spikes)
    assert torch.isfinite(lp).all()
    assert lp[1].item() == pytest.approx(ref.logcdf(-40.0), rel=rtol)
    assert lp[2].item() == pytest.approx(ref.logcdf(-40.0), rel=rtol)
    # the linear-space values underflow gracefully: no NaN, inside [0, 1]
    cdf = noise.cdf(x)
    assert not torch.isnan(cdf).any() and cdf[0] >= 0 and cdf[1] == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_spike_is_a_bernoulli_log_probability(family):
    noise, ref = get_noise(family), SCIPY[family]
    theta = t64(np.linspace(-30.0, 30.0, 61))
    lp1 = noise.log_prob_spike(theta, torch.ones_like(theta))
    lp0 = noise.log_prob_spike(theta, torch.zeros_like(theta))
    np.testing.assert_allclose(lp1.numpy(), ref.logcdf(theta.numpy()), rtol=1e-12)
    np.testing.assert_allclose(lp0.numpy(), ref.logsf(theta.numpy()), rtol=1e-12)
    torch.testing.assert_close(torch.logaddexp(lp0, lp1), torch.zeros_like(theta), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# Unconditional sampling
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_shape_dtype_reproducibility(family, dtype):
    noise = get_noise(family)
    like = torch.zeros(2, dtype=dtype)
    a = noise.sample(torch.Size([3, 4]), like=like, generator=torch.Generator().manual_seed(7))
    b = noise.sample(torch.Size([3, 4]), like=like, generator=torch.Generator().manual_seed(7))
    c = noise.sample(torch.Size([3, 4]), like=like, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, 4) and a.dtype == dtype
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_matches_the_law(family, gen):
    noise, ref = get_noise(family), SCIPY[family]
    x = noise.sample((30_000,), like=torch.zeros((), dtype=torch.float64), generator=gen)
    assert stats.kstest(x.numpy(), ref.cdf).pvalue > KS_ALPHA
    se = x.std().item() / math.sqrt(x.numel())
    assert abs(x.mean().item()) <= N_SE * se
    # the draws shifted by a tenth of their spread are rejected by the same check (it has power)
    assert stats.kstest(x.numpy() + 0.1 * x.std().item(), ref.cdf).pvalue < KS_ALPHA


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_samples_are_always_finite(family, gen):
    x = get_noise(family).sample((1_000_000,), like=torch.zeros(()), generator=gen)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


# --------------------------------------------------------------------------------------------------
# Sampling the noise conditioned on the observed spike (used by Gumbel–Rao)
# --------------------------------------------------------------------------------------------------

COND_THETAS = (-25.0, -10.0, -3.0, -0.5, 0.0, 0.5, 3.0, 10.0, 25.0)
# below torch's parallel grain size (32768): many small element-wise ops stay single-threaded,
# which keeps these loops fast on a loaded 2-core machine
N_COND = 30_000


def conditional_draws(family, theta, s, n, gen, dtype=torch.float64):
    theta_t = torch.full((n,), theta, dtype=dtype)
    spikes = torch.full((n,), float(s), dtype=dtype)
    u = torch.rand(n, dtype=dtype, generator=gen)
    return theta_t, spikes, get_noise(family).sample_given_spike(theta_t, spikes, u)


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_draws_always_reproduce_the_spike_float64(family, gen):
    for theta in COND_THETAS:
        for s in (0, 1):
            theta_t, spikes, eps = conditional_draws(family, theta, s, N_COND, gen)
            assert eps.dtype == torch.float64 and torch.isfinite(eps).all()
            assert torch.equal((theta_t + eps >= 0).double(), spikes), (theta, s)
    # u at the ends of torch.rand's range [0, 1): u = 0 may give ±inf, still on the right side
    noise = get_noise(family)
    for theta in COND_THETAS:
        for s in (0.0, 1.0):
            u = t64([0.0, 2.0**-53, 1e-3, 0.999])
            th, sp = torch.full_like(u, theta), torch.full_like(u, s)
            eps = noise.sample_given_spike(th, sp, u)
            assert torch.isfinite(eps[1:]).all(), (theta, s)
            assert torch.equal((th + eps >= 0).double(), sp), (theta, s)


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_draws_reproduce_the_spike_float32(family, gen):
    # S = 1 everywhere, and S = 0 where θ ≤ 0 (S = 0 at large θ: see the regression test below)
    for theta in COND_THETAS:
        for s in ((0, 1) if theta <= 0 else (1,)):
            theta_t, spikes, eps = conditional_draws(family, theta, s, N_COND, gen, torch.float32)
            assert eps.dtype == torch.float32 and torch.isfinite(eps).all()
            assert torch.equal((theta_t + eps >= 0).float(), spikes), (theta, s)


def test_conditional_draws_reproduce_a_rare_silence_float32(gen):
    # Gaussian: the excess beyond the boundary is ≈ Exp(25), so ~25·ulp(25)/2 ≈ 2.4e-5 of the
    # draws fall within rounding distance of it (about 24 expected in 1e6 draws)
    theta_t, spikes, eps = conditional_draws("gaussian", 25.0, 0, 1_000_000, gen, torch.float32)
    assert torch.equal((theta_t + eps >= 0).float(), spikes)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta, s", [(-35.0, 1), (35.0, 0)])
def test_conditional_draws_reproduce_the_spike_beyond_30(family, theta, s, gen):
    theta_t, spikes, eps = conditional_draws(family, theta, s, 1000, gen)
    assert torch.equal((theta_t + eps >= 0).double(), spikes)


def truncated_cdf(family, theta, s):
    """CDF of ε given H(θ + ε) = s, from scipy's log-space functions (accurate in the tails)."""
    ref = SCIPY[family]
    b = -theta
    if s == 1:  # ε ≥ −θ
        return lambda x: -np.expm1(ref.logsf(np.maximum(x, b)) - ref.logsf(b))
    return lambda x: np.exp(ref.logcdf(np.minimum(x, b)) - ref.logcdf(b))  # ε < −θ


def truncated_mean(family, theta, s):
    ref = SCIPY[family]
    b = -theta
    if s == 1:  # E[ε | ε ≥ b] = b + ∫_b^∞ sf(x)/sf(b) dx
        tail, _ = integrate.quad(lambda x: math.exp(ref.logsf(x) - ref.logsf(b)), b, np.inf, epsrel=1e-10)
        return b + tail
    head, _ = integrate.quad(lambda x: math.exp(ref.logcdf(x) - ref.logcdf(b)), -np.inf, b, epsrel=1e-10)
    return b - head


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("theta", [-25.0, -3.0, 0.0, 1.5, 25.0])
def test_conditional_draws_follow_the_truncated_law(family, theta, gen):
    for s in (0, 1):
        _, _, eps = conditional_draws(family, theta, s, 20_000, gen)
        x = eps.numpy()
        pvalue = stats.kstest(x, truncated_cdf(family, theta, s)).pvalue
        assert pvalue > KS_ALPHA, (theta, s, pvalue)
        se = x.std() / math.sqrt(x.size)
        assert abs(x.mean() - truncated_mean(family, theta, s)) <= N_SE * se, (theta, s)
        # draws shifted by a quarter of their spread are rejected by the same test (it has power)
        assert stats.kstest(x + 0.25 * x.std(), truncated_cdf(family, theta, s)).pvalue < KS_ALPHA


@pytest.mark.parametrize("theta, s", [(-25.0, 1), (25.0, 0), (-3.0, 1), (2.0, 0)])
def test_gaussian_conditional_mean_matches_scipy_truncnorm(theta, s, gen):
    _, _, eps = conditional_draws("gaussian", theta, s, N_COND, gen)
    law = stats.truncnorm(-theta, np.inf) if s == 1 else stats.truncnorm(-np.inf, -theta)
    se = eps.std().item() / math.sqrt(eps.numel())
    assert abs(eps.mean().item() - law.mean()) <= N_SE * se
    # deep in the tail the excess over the boundary is ≈ Exp(|θ|): mean excess ≈ 1/25
    if abs(theta) == 25.0:
        assert abs((eps.abs() - 25.0).mean().item() - 0.04) < 0.002


def test_base_interface_is_abstract():
    base = NoiseFamily()
    with pytest.raises(NotImplementedError):
        base.log_pdf(torch.zeros(1))

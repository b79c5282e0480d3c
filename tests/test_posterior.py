"""BernoulliSign: moments, log-probabilities, KL against direct computation and Monte Carlo."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.distributions import kl_divergence

from sbnn.posterior import BernoulliSign, kl_bernoulli_sign, sign_mode, sign_variance


def test_moments_match_definition():
    lam = torch.tensor([-2.0, -0.3, 0.0, 0.7, 5.0], dtype=torch.float64)
    q = BernoulliSign(lam=lam)
    p_plus = torch.sigmoid(2 * lam)
    torch.testing.assert_close(q.probs, p_plus)
    torch.testing.assert_close(q.mean, p_plus - (1 - p_plus))  # E[w] = q+ - q-
    torch.testing.assert_close(q.variance, 1 - q.mean**2)
    torch.testing.assert_close(q.mean, torch.tanh(lam))


def test_variance_stays_positive_for_large_lambda():
    # 1 - tanh(12)^2 rounds to 0 in float32; the sech^2 form keeps the true value ~1.5e-10
    v = sign_variance(torch.tensor([12.0]))
    assert v.item() > 0
    assert math.isclose(v.item(), 4 * math.exp(-24), rel_tol=1e-3)


def test_mode_ties_go_to_plus_one():
    assert sign_mode(torch.tensor([-1e-9, 0.0, 3.0])).tolist() == [-1.0, 1.0, 1.0]


def test_exactly_one_parameterisation():
    with pytest.raises(ValueError, match="not both"):
        BernoulliSign(lam=torch.zeros(2), probs=torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="not both"):
        BernoulliSign()
    q = BernoulliSign(probs=torch.tensor([0.2, 0.9], dtype=torch.float64))
    torch.testing.assert_close(torch.sigmoid(2 * q.lam), q.probs)


def test_log_prob_and_entropy():
    lam = torch.tensor([0.4, -1.3], dtype=torch.float64)
    q = BernoulliSign(lam=lam, validate_args=True)
    for w in (1.0, -1.0):
        expected = torch.where(torch.tensor(w) > 0, q.probs, 1 - q.probs).log()
        torch.testing.assert_close(q.log_prob(torch.full((2,), w, dtype=torch.float64)), expected)
    h = -(q.probs * q.probs.log() + (1 - q.probs) * (1 - q.probs).log())
    torch.testing.assert_close(q.entropy(), h)
    with pytest.raises(ValueError):
        q.log_prob(torch.tensor([0.0, 1.0], dtype=torch.float64))  # 0 is outside {-1, +1}


def test_sample_frequencies(gen):
    q = BernoulliSign(lam=torch.tensor([0.5]))
    w = q.sample((200_000,), generator=gen)
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    freq = (w == 1).float().mean().item()
    p = q.probs.item()
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / 200_000)


def test_kl_matches_direct_computation_and_is_zero_at_prior():
    lam = torch.tensor([-3.0, -0.5, 0.0, 1.0, 2.5], dtype=torch.float64)
    lam0 = torch.tensor(0.3, dtype=torch.float64)
    qp, pp = torch.sigmoid(2 * lam), torch.sigmoid(2 * lam0)
    direct = qp * torch.log(qp / pp) + (1 - qp) * torch.log((1 - qp) / (1 - pp))
    torch.testing.assert_close(kl_bernoulli_sign(lam, lam0), direct)
    torch.testing.assert_close(kl_bernoulli_sign(lam, lam), torch.zeros_like(lam))
    # the torch.distributions registry dispatches to the same closed form
    torch.testing.assert_close(kl_divergence(BernoulliSign(lam=lam), BernoulliSign(lam=lam0.expand(5))), direct)
    # uniform prior: KL = log 2 - H(q)
    torch.testing.assert_close(kl_bernoulli_sign(lam), math.log(2) - BernoulliSign(lam=lam).entropy())


def test_kl_matches_monte_carlo(gen):
    q, p = BernoulliSign(lam=torch.tensor([0.8])), BernoulliSign(lam=torch.tensor([-0.4]))
    w = q.sample((400_000,), generator=gen)
    terms = q.log_prob(w) - p.log_prob(w)
    se = terms.std().item() / math.sqrt(terms.numel())
    assert abs(terms.mean().item() - kl_divergence(q, p).item()) < 5 * se


def test_kl_finite_for_extreme_parameters():
    kl = kl_bernoulli_sign(torch.tensor([30.0, -30.0]), torch.tensor(-30.0))
    assert torch.isfinite(kl).all()
    # q+ = 1, p+ = sigmoid(-60): KL = -log sigmoid(-60) = 60 + log1p(e^-60) ~ 60
    assert math.isclose(kl[0].item(), 60.0, rel_tol=1e-5)
    assert kl[1].item() == pytest.approx(0.0, abs=1e-6)


def test_kl_float32_within_an_ulp_of_u_of_the_float64_value():
    """One logsigmoid (``log q− = log q+ − 2λ``): each element within half an ulp of ``2λ`` (plus
    rounding) of the float64 value, across the range where the two log-probabilities part ways."""
    lam = torch.linspace(-40.0, 40.0, 4001)
    for prior in (0.0, -1.5, 7.0):
        got = kl_bernoulli_sign(lam, prior).double()
        ref = kl_bernoulli_sign(lam.double(), torch.tensor(prior, dtype=torch.float64))
        ulp_u = torch.finfo(torch.float32).eps * (2.0 * lam.double().abs()).clamp_min(1.0)
        assert ((got - ref).abs() <= ulp_u + 2e-6 * ref.abs()).all()
        assert (got >= -ulp_u).all()  # a KL ≥ 0, up to the same rounding


def test_kl_gradient_factor_and_the_no_graph_value_agree(gen):
    lam = (4.0 * torch.randn(50, dtype=torch.float64, generator=gen)).requires_grad_()
    prior = torch.tensor(0.4, dtype=torch.float64)
    with_graph = kl_bernoulli_sign(lam, prior)
    with torch.no_grad():
        without = kl_bernoulli_sign(lam, prior)
    assert torch.equal(with_graph.detach(), without)
    (g,) = torch.autograd.grad(with_graph.sum(), lam)
    torch.testing.assert_close(g, (sign_variance(lam) * (lam - prior)).detach(), rtol=1e-12, atol=0)


def test_expand_and_pickle():
    q = BernoulliSign(lam=torch.tensor([0.2]))
    e = q.expand((3, 1))
    assert e.batch_shape == (3, 1)
    torch.testing.assert_close(e.mean, q.mean.expand(3, 1))
    r = pickle.loads(pickle.dumps(q))
    torch.testing.assert_close(r.probs, q.probs)

"""The binary latent: closed-form KL, exact binarity, estimator selection and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.functional.estimators import ESTIMATORS
from sbnn.hybrid.latent import BinaryLatent, binary_kl_uniform


def test_kl_matches_direct_computation(gen):
    logits = torch.randn(50, generator=gen, dtype=torch.float64) * 4
    q = torch.sigmoid(logits)
    direct = q * torch.log(q / 0.5) + (1 - q) * torch.log((1 - q) / 0.5)
    torch.testing.assert_close(binary_kl_uniform(logits), direct)
    torch_kl = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(probs=q), torch.distributions.Bernoulli(probs=torch.full_like(q, 0.5))
    )
    torch.testing.assert_close(binary_kl_uniform(logits), torch_kl)


def test_kl_hand_values_and_saturation():
    # q = 1/2 costs nothing; a saturated unit costs log 2 and stays finite
    out = binary_kl_uniform(torch.tensor([0.0, 200.0, -200.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, math.log(2), math.log(2)]))


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_samples_are_exactly_binary_for_every_estimator(name, gen):
    z = BinaryLatent(name)(torch.randn(64, 30, generator=gen) * 3, generator=gen)
    assert set(z.unique().tolist()) <= {0.0, 1.0}


def test_sample_frequency_is_sigmoid_of_logit(gen):
    # 20000 draws per unit: the standard error of a frequency is <= 0.0036; tolerance 5 s.e.
    logits = torch.tensor([-2.0, 0.0, 1.5])
    z = BinaryLatent("st")(logits.expand(20000, 3), generator=gen)
    torch.testing.assert_close(z.mean(0), torch.sigmoid(logits), atol=0.018, rtol=0)


def test_st_gradient_is_logistic_density(gen):
    logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    BinaryLatent("st")(logits, generator=gen).sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, s * (1 - s))


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown estimator 'nope'.*\['agr'"):
        BinaryLatent("nope")


def test_mode_ties_to_one():
    assert BinaryLatent.mode(torch.tensor([-0.1, 0.0, 0.1])).tolist() == [0.0, 1.0, 1.0]

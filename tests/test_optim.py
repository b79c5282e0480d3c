"""BayesBiNN and Bop: hand-computed updates, the τ → 0 limit, and argument checks."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from sbnn import BernoulliLinear
from sbnn.training.optim import BayesBiNN, Bop, relaxed_sample


def _quadratic_layer(lam):
    layer = BernoulliLinear(2, 1, bias=False, learn_scale=False)
    with torch.no_grad():
        layer.log_scale.zero_()  # α = 1: the output is x·w
        layer.lam.copy_(torch.tensor([lam]))
    return layer


def _hand_direction(lam, u, x, y, tau, n, prior, kl, eps):
    """One sample of BayesBiNN's natural-gradient direction, in float64 from the paper's formulas."""
    lam, u = lam.double(), u.double()
    delta = 0.5 * torch.log(u / (1 - u))
    w = torch.tanh((lam + delta) / tau)
    g = 2.0 * ((x * w).sum() - y) * x  # d/dw (x·w − y)²
    s = (1 - w**2 + eps) / (tau * (1 - torch.tanh(lam) ** 2 + eps))
    return n * s * g + kl * (lam - prior)


def test_bayesbinn_two_steps_match_hand_computation():
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5]])
    layer = _quadratic_layer([0.3, -0.2])
    layer.set_prior(torch.tensor([[0.1, 0.0]]))
    gen = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    lr, beta, tau, n, kl, eps = 0.01, 0.5, 0.5, 10, 0.7, 1e-10
    opt = BayesBiNN(layer, train_size=n, lr=lr, momentum=beta, temperature=tau, num_samples=1,
                    lam_init=None, kl_weight=kl, eps=eps, generator=gen)
    closure = lambda: ((layer(x) - y) ** 2).mean()  # noqa: E731

    lam0 = layer.lam.detach().clone()
    u1 = torch.rand((1, 2), generator=replay)
    d1 = _hand_direction(lam0, u1, x.double(), 0.5, tau, n, torch.tensor([[0.1, 0.0]]).double(), kl, eps)
    m1 = (1 - beta) * d1
    lam1 = lam0.double() - lr * m1 / (1 - beta)
    opt.step(closure)
    torch.testing.assert_close(layer.lam.detach().double(), lam1, rtol=1e-5, atol=1e-6)

    u2 = torch.rand((1, 2), generator=replay)
    d2 = _hand_direction(lam1.float(), u2, x.double(), 0.5, tau, n, torch.tensor([[0.1, 0.0]]).double(), kl, eps)
    m2 = beta * m1 + (1 - beta) * d2
    lam2 = lam1 - lr * m2 / (1 - beta**2)  # Adam-style bias correction of the momentum
    opt.step(closure)
    torch.testing.assert_close(layer.lam.detach().double(), lam2, rtol=1e-5, atol=1e-6)
    assert layer.mode == "sample"  # the layer's mode is restored after the step


def test_bayesbinn_averages_samples_and_scales_by_train_size():
    """S samples: the update uses the mean of the S scaled gradients (checked with β = 0, κ = 0)."""
    x, y = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.2]])
    layer = _quadratic_layer([0.5, 1.5])
    gen, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    opt = BayesBiNN(layer, train_size=4, lr=0.1, temperature=1.0, num_samples=3, lam_init=None, kl_weight=0.0, generator=gen)
    lam0 = layer.lam.detach().clone()
    dirs = [_hand_direction(lam0, torch.rand((1, 2), generator=replay), x.double(), 0.2, 1.0, 4, 0.0, 0.0, 1e-10) for _ in range(3)]
    opt.step(lambda: ((layer(x) - y) ** 2).mean())
    torch.testing.assert_close(layer.lam.detach().double(), lam0.double() - 0.1 * torch.stack(dirs).mean(0), rtol=1e-5, atol=1e-6)


def test_relaxed_sample_tends_to_a_hard_bernoulli_sample(gen):
    lam = torch.randn(2000, generator=gen) * 2
    u = torch.rand(2000, generator=gen).clamp(1e-6, 1 - 1e-6)
    hard = torch.where(u > torch.sigmoid(-2 * lam), 1.0, -1.0)  # P(+1) = σ(2λ)
    assert torch.equal(relaxed_sample(lam, 1e-8, u), hard)
    soft = relaxed_sample(lam, 1.0, u)
    assert bool((soft.abs() < 1).all()) and not torch.equal(soft, hard)


def test_bayesbinn_at_tiny_temperature_runs_the_network_on_hard_signs():
    layer = _quadratic_layer([0.4, -0.3])
    gen, replay = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    seen = []

    def closure():
        seen.append(layer.mode_state().weight.detach().clone())
        return (layer(torch.ones(1, 2)) ** 2).mean()

    opt = BayesBiNN(layer, train_size=1, lr=1e-3, temperature=1e-8, num_samples=1, lam_init=None, generator=gen)
    lam = layer.lam.detach().clone()
    opt.step(closure)
    u = torch.rand((1, 2), generator=replay)
    assert torch.equal(seen[0], torch.where(u > torch.sigmoid(-2 * lam), 1.0, -1.0))


def test_bayesbinn_initialises_lambda_to_plus_minus_lam_init_and_trains_other_params(gen):
    net = nn.Sequential(BernoulliLinear(3, 8), nn.Tanh(), BernoulliLinear(8, 2))
    opt = BayesBiNN(net, train_size=10, lam_init=15.0, generator=gen)
    lams = torch.cat([p.detach().flatten() for n, p in net.named_parameters() if n.endswith("lam")])
    assert bool((lams.abs() == 15).all()) and 0 < int((lams > 0).sum()) < lams.numel()
    x, y = torch.randn(5, 3, generator=gen), torch.tensor([0, 1, 0, 1, 1])
    opt.step(lambda: nn.functional.cross_entropy(net(x), y))
    # scales and biases get the MC-averaged gradient for a companion optimiser; λ holds none
    assert net[0].bias.grad is not None and net[0].log_scale.grad is not None
    assert net[0].lam.grad is None


def test_set_prior_from_posterior():
    layer = _quadratic_layer([0.3, -2.0])
    opt = BayesBiNN(layer, train_size=1, lam_init=None)
    opt.set_prior_from_posterior()
    assert torch.equal(layer.prior_lam, layer.lam.detach())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=-1), "num_samples"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(lr=0.0), "lr"),
        (dict(train_size=0), "train_size"),
        (dict(lam_init=-10.0), "lam_init"),
        (dict(kl_weight=-1.0), "kl_weight"),
    ],
)
def test_bayesbinn_rejects_bad_hyper_parameters(kwargs, match):
    args = dict(train_size=10) | kwargs
    with pytest.raises(ValueError, match=match):
        BayesBiNN(BernoulliLinear(2, 2), **args)


def test_bayesbinn_says_when_the_model_has_no_bernoulli_layers():
    with pytest.raises(ValueError, match="no Bernoulli layers"):
        BayesBiNN(nn.Sequential(nn.Linear(2, 2)), train_size=10)


def test_bop_flips_exactly_the_weights_whose_average_exceeds_the_threshold_with_matching_sign():
    w = nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]))
    opt = Bop([w], threshold=0.1, adaptivity=0.5)
    w.grad = torch.tensor([0.5, -0.5, -0.5, 0.1, 0.1])  # m = γg = [.25, −.25, −.25, .05, .05]
    opt.step()
    assert w.detach().tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]
    w.grad = torch.zeros(5)  # m halves; no |m| > 0.1 agrees in sign with the new weights
    opt.step()
    assert w.detach().tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]
    torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor([0.125, -0.125, -0.125, 0.025, 0.025]))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(threshold=-1e-8), "threshold"), (dict(adaptivity=0.0), "adaptivity"), (dict(adaptivity=1.5), "adaptivity")],
)
def test_bop_rejects_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Bop([nn.Parameter(torch.ones(3))], **kwargs)


def test_bop_requires_binary_parameters():
    with pytest.raises(ValueError, match="±1"):
        Bop([nn.Parameter(torch.tensor([1.0, 0.5]))])

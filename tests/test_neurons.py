"""StochasticLIF module: the snnTorch neuron contract, recursive reset, module contracts, bad input."""

from __future__ import annotations

import io

import pytest
import snntorch as snn
import torch
from torch import nn

import sbnn
from sbnn import StochasticLIF


def test_return_arity_follows_snntorch():
    x = torch.full((2, 3), 0.5)
    spk, mem = StochasticLIF()(x)
    assert spk.shape == mem.shape == (2, 3)
    hidden = StochasticLIF(init_hidden=True)
    assert isinstance(hidden(x), torch.Tensor)
    out = StochasticLIF(init_hidden=True, output=True)(x)
    assert isinstance(out, tuple) and len(out) == 2
    with pytest.raises(TypeError, match="should not be passed"):
        hidden(x, torch.zeros(2, 3))


def test_explicit_state_threading_matches_hidden_state():
    x = torch.tensor([[0.6], [0.6], [0.6], [0.2]])
    a = StochasticLIF(beta=0.5, init_hidden=True, output=True)
    b = StochasticLIF(beta=0.5)
    sbnn.set_mode(a, "mode")
    sbnn.set_mode(b, "mode")
    mem = None
    for x_t in x:
        spk_a, mem_a = a(x_t)
        spk_b, mem = b(x_t, mem)
        assert torch.equal(spk_a, spk_b) and torch.equal(mem_a, mem)
    assert spk_a.item() == 0.0 and mem.item() == pytest.approx(0.525 + 0.2 - 1.0)


def test_moments_input_sets_posterior_noise():
    lif = StochasticLIF(beta=0.0, reset_mechanism="none", sigma0=0.0)
    n = 100_000
    mu, var = torch.full((n,), 0.5), torch.full((n,), 0.25)
    spk, _ = lif(sbnn.Moments(mu, var))
    # P(S = 1) = Phi((0.5 - 1)/0.5) = Phi(-1) = 0.1587
    assert abs(spk.mean().item() - 0.158655) < 5 * (0.1587 * 0.8413 / n) ** 0.5


def test_wrong_shaped_hidden_state_raises_not_rezeroes():
    lif = StochasticLIF(init_hidden=True)
    lif(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="sbnn.reset"):
        lif(torch.zeros(4, 3))
    sbnn.reset(lif)
    assert lif(torch.zeros(4, 3)).shape == (4, 3)


def test_reset_reaches_nested_modules_and_only_that_model():
    inner = StochasticLIF(init_hidden=True)
    leaky = snn.Leaky(beta=0.9, init_hidden=True)
    model = nn.Sequential(nn.Sequential(nn.Identity(), inner), nn.Sequential(nn.Sequential(leaky)))
    other = StochasticLIF(init_hidden=True)
    x = torch.full((2, 3), 3.0)
    model[0](x)
    leaky(x)
    other(x)
    assert inner.mem.numel() > 0 and leaky.mem.abs().sum() > 0
    sbnn.reset(model)
    assert inner.mem.numel() == 0
    assert leaky.mem.abs().sum() == 0
    assert other.mem.numel() > 0  # a different model keeps its state


def test_mode_makes_neuron_deterministic_and_sequence_leaves_hidden_state():
    lif = StochasticLIF(init_hidden=True)
    x = torch.randn(8, 2, 5)
    sbnn.set_mode(lif, "mode")
    a, mem_a = lif.sequence(x)
    b, mem_b = lif.sequence(x)
    assert torch.equal(a, b) and torch.equal(mem_a, mem_b)
    assert lif.mem.numel() == 0
    sbnn.set_mode(lif, "sample")
    c1, _ = lif.sequence(x, generator=torch.Generator().manual_seed(1))
    c2, _ = lif.sequence(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(c1, c2)


def test_constants_are_buffers_or_parameters(tmp_path):
    lif = StochasticLIF(beta=0.8, threshold=1.5, learn_beta=True)
    assert isinstance(lif.beta, nn.Parameter) and "threshold" in dict(lif.named_buffers())
    lif64 = lif.to(torch.float64)
    assert lif64.beta.dtype == torch.float64 and lif64.threshold.dtype == torch.float64
    assert set(lif.state_dict()) == {"beta", "threshold"}
    buf = io.BytesIO()
    torch.save(StochasticLIF(estimator=sbnn.get_estimator("agr", tau=0.5)), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.estimator == sbnn.get_estimator("agr", tau=0.5)


def test_learned_beta_receives_gradient():
    lif = StochasticLIF(beta=0.5, learn_beta=True)
    spk, mem = lif.sequence(torch.full((4, 1, 2), 0.4))
    mem.sum().backward()
    assert lif.beta.grad is not None and lif.beta.grad.abs().item() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beta": 1.5}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"sigma0": -0.1}, "sigma0"),
        ({"threshold": 0.0}, "threshold"),
        ({"eps_min": 0.0}, "eps_min"),
        ({"reset_mechanism": "soft"}, "reset_mechanism"),
        ({"estimator": "nope"}, "valid names"),
        ({"noise": "uniform"}, "noise family"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StochasticLIF(**kwargs)


def test_bad_input():
    lif = StochasticLIF()
    with pytest.raises(ValueError, match="non-finite"):
        lif(torch.tensor([float("inf")]))
    with pytest.raises(ValueError, match="variance shape"):
        lif(sbnn.Moments(torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        lif.sequence(torch.zeros(5))

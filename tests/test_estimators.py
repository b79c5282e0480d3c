"""Public estimator API (``sbnn.estimators``): the snnTorch ``spike_grad`` adapter and interop.

Training tests use fixed seeds (``torch.manual_seed`` for the initial weights, the ``gen`` fixture
pattern for data) and assert a deterministic decrease of the loss, not a statistical property.
"""

from __future__ import annotations

import io
import math
import pickle

import pytest
import snntorch as snn
import torch
from torch import nn

import sbnn
from sbnn.estimators import AGR, IWST, ST, GumbelRao, Relaxed, SpikeGrad, get_estimator, spike_grad
from sbnn.functional import estimators as functional_estimators
from sbnn.functional.noise import Gaussian, Logistic


def phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def Phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def logistic_pdf(x: float) -> float:
    a = math.exp(-abs(x))
    return a / (1.0 + a) ** 2


def test_public_names_are_the_functional_ones():
    assert sbnn.spike_grad is spike_grad and sbnn.get_estimator is get_estimator
    for name in ("ST", "IWST", "Relaxed", "GumbelRao", "AGR", "ESTIMATORS", "get_estimator", "spike"):
        assert getattr(sbnn.estimators, name) is getattr(functional_estimators, name)


# --------------------------------------------------------------------------------------------------
# The adapter: forward H(x), backward factor(x/scale)/scale
# --------------------------------------------------------------------------------------------------

X_HAND = [-0.4, -0.1, 0.0, 0.15, 0.6]


def adapter_grad(sg: SpikeGrad, xs, dtype=torch.float64):
    x = torch.tensor(xs, dtype=dtype, requires_grad=True)
    out = sg(x)
    out.backward(torch.ones_like(x))
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adapter_forward_is_deterministic_heaviside(dtype):
    sg = spike_grad("agr", tau=0.5, scale=0.3)
    x = torch.tensor(X_HAND, dtype=dtype)
    out = sg(x)
    assert out.dtype == dtype
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # H(0) = 1
    assert torch.equal(sg(x), out)  # no noise in the forward


def test_adapter_st_backward_by_hand_gaussian():
    # θ = x/0.5; ∂S/∂x = φ(θ)/0.5. x = 0.15 → θ = 0.3 → φ(0.3)/0.5 = 0.381388/0.5 = 0.762775
    _, grad = adapter_grad(spike_grad("st", scale=0.5), X_HAND)
    expected = [phi(x / 0.5) / 0.5 for x in X_HAND]
    assert grad[3].item() == pytest.approx(0.762775, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_adapter_iwst_backward_by_hand_gaussian():
    # forward S = H(x) (ε = 0), so P(S) = Φ(|θ|) and the factor is φ(θ)·½/Φ(|θ|)
    scale = 0.25
    _, grad = adapter_grad(spike_grad("iwst", p=0.5, scale=scale), X_HAND)
    expected = [phi(x / scale) * 0.5 / Phi(abs(x / scale)) / scale for x in X_HAND]
    # x = −0.4: θ = −1.6, φ = 0.110921, Φ(1.6) = 0.945201 → 0.110921·0.5/0.945201/0.25 = 0.234705
    assert grad[0].item() == pytest.approx(0.234705, abs=2e-6)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_adapter_agr_and_relaxed_backward_by_hand_gaussian():
    scale, tau = 0.5, 0.5
    c = math.sqrt(1 + tau**2)
    _, grad = adapter_grad(spike_grad("agr", tau=tau, scale=scale), X_HAND)
    expected = []
    for x in X_HAND:
        th = x / scale
        sgn = 1.0 if th >= 0 else -1.0
        expected.append(phi(th / c) / c * Phi(sgn * tau * th / c) / Phi(sgn * th) / scale)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)
    # relaxed at ε = 0: φ(θ/τ)/τ/scale
    _, grad = adapter_grad(spike_grad("relaxed", tau=tau, scale=scale), X_HAND)
    expected = [phi(x / scale / tau) / tau / scale for x in X_HAND]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)


def test_adapter_logistic_width_is_variance_matched():
    # logistic noise of standard deviation `scale` has scale parameter scale·√3/π
    scale = 0.4
    width = scale * math.sqrt(3.0) / math.pi
    sg = spike_grad("st", noise="logistic", scale=scale)
    assert isinstance(sg.noise, Logistic)
    _, grad = adapter_grad(sg, X_HAND)
    expected = [logistic_pdf(x / width) / width for x in X_HAND]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)


def test_adapter_gradient_integrates_to_one_for_st():
    # ∫ ∂S/∂x dx = 1 for st (a density in x): the surrogate is a smoothed step of the right height
    x = torch.linspace(-5.0, 5.0, 20001, dtype=torch.float64, requires_grad=True)
    spike_grad("st", scale=0.5)(x).sum().backward()
    assert torch.trapezoid(x.grad, x.detach()).item() == pytest.approx(1.0, abs=1e-8)


def test_adapter_accepts_an_estimator_instance_and_a_noise_instance():
    sg = spike_grad(IWST(p=0.3), noise=Gaussian(), scale=0.2)
    assert sg == SpikeGrad(IWST(p=0.3), Gaussian(), 0.2)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0, 0.0, -0.5, math.inf, math.nan])
def test_adapter_rejects_a_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        spike_grad("st", scale=scale)


def test_adapter_bad_names_and_keywords():
    with pytest.raises(ValueError) as info:
        spike_grad("atan")
    assert all(name in str(info.value) for name in ("st", "iwst", "relaxed", "gumbel_rao", "agr"))
    with pytest.raises(ValueError) as info:
        spike_grad("st", noise="cauchy")
    assert "gaussian" in str(info.value) and "logistic" in str(info.value)
    with pytest.raises(TypeError):
        spike_grad("st", alpha=2.0)
    with pytest.raises(TypeError):
        spike_grad(IWST(), p=0.2)
    with pytest.raises(ValueError, match=r"\bp\b"):
        spike_grad("iwst", p=1.5)
    with pytest.raises(ValueError, match="tau"):
        spike_grad("agr", tau=0.0)


# --------------------------------------------------------------------------------------------------
# Value semantics: equality, hashing, pickling
# --------------------------------------------------------------------------------------------------


def test_estimators_compare_by_value_and_are_hashable():
    assert IWST(p=0.5) == get_estimator("iwst", p=0.5) == IWST()
    assert IWST(p=0.5) != IWST(p=0.4) and IWST(w_max=5.0) != IWST()
    assert AGR(tau=0.5) != Relaxed(tau=0.5)  # same field values, different estimators
    assert ST() == ST() and hash(ST()) == hash(ST())
    table = {IWST(p=0.5): "a", AGR(tau=0.5): "b", GumbelRao(tau=0.5, k=3): "c"}
    assert table[get_estimator("agr", tau=0.5)] == "b"
    assert len({IWST(), IWST(p=0.5), IWST(p=0.2), ST(), ST()}) == 3
    with pytest.raises(Exception):  # frozen: hyper-parameters cannot drift after construction
        IWST().p = 0.3


def test_spike_grads_compare_by_value_and_are_hashable():
    a = spike_grad("agr", tau=0.5, scale=0.3)
    assert a == spike_grad("agr", tau=0.5, scale=0.3) and hash(a) == hash(spike_grad("agr", tau=0.5, scale=0.3))
    assert a != spike_grad("agr", tau=0.5, scale=0.4)
    assert a != spike_grad("agr", tau=0.5, scale=0.3, noise="logistic")
    assert len({a, spike_grad("agr", tau=0.5, scale=0.3), spike_grad("st")}) == 2


@pytest.mark.parametrize(
    "obj", [ST(), IWST(p=0.2, w_max=3.0), Relaxed(tau=0.3), GumbelRao(tau=0.2, k=4), AGR(tau=2.0),
            spike_grad("iwst", p=0.5), spike_grad("agr", tau=0.5, noise="logistic", scale=0.2)],
    ids=repr,
)
def test_pickle_round_trip(obj):
    assert pickle.loads(pickle.dumps(obj)) == obj


def test_torch_save_of_a_leaky_with_sbnn_spike_grad_round_trips():
    lif = snn.Leaky(beta=0.9, spike_grad=spike_grad("iwst", p=0.5), init_hidden=False)
    buffer = io.BytesIO()
    torch.save(lif, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.spike_grad == lif.spike_grad
    # the loaded neuron computes the same spikes and the same surrogate gradients
    cur = torch.tensor([[0.3, 0.9, 1.2, 1.05]])
    grads = []
    for neuron in (lif, loaded):
        x = cur.clone().requires_grad_()
        spk, _ = neuron(x, torch.zeros_like(cur))
        spk.sum().backward()
        grads.append((spk.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    # plain pickle works too
    assert pickle.loads(pickle.dumps(lif)).spike_grad == lif.spike_grad


def test_torch_save_check_fails_for_a_closure_spike_grad():
    # the control: the same round trip fails for a locally defined function (snnTorch's surrogates
    # are such closures), so the test above has power
    def local_surrogate(x):
        return (x >= 0).float()

    with pytest.raises((AttributeError, pickle.PicklingError, TypeError)):
        torch.save(snn.Leaky(beta=0.9, spike_grad=local_surrogate), io.BytesIO())


# --------------------------------------------------------------------------------------------------
# snnTorch interop
# --------------------------------------------------------------------------------------------------


def test_leaky_first_step_gradient_is_the_adapter_surrogate():
    # first step from rest: mem = input, spk = H(mem − 1), ∂spk/∂input = factor((x − 1)/s)/s
    scale = 0.5
    lif = snn.Leaky(beta=0.9, threshold=1.0, spike_grad=spike_grad("st", scale=scale))
    cur = torch.tensor([0.2, 0.8, 1.0, 1.3], dtype=torch.float64, requires_grad=True)
    spk, mem = lif(cur, torch.zeros_like(cur))
    assert spk.tolist() == [0.0, 0.0, 1.0, 1.0]
    spk.sum().backward()
    expected = [phi((x - 1.0) / scale) / scale for x in cur.tolist()]
    torch.testing.assert_close(cur.grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def synthetic_spikes(T: int = 12, B: int = 32, N: int = 16):
    """Time-major ``[T, B, N]`` spikes; class 0 fires mostly on low channels, class 1 on high ones."""
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(B) % 2
    ramp = torch.linspace(0.05, 0.6, N)
    rates = torch.where(y[:, None] == 0, ramp, ramp.flip(0))
    return torch.bernoulli(rates.expand(T, B, N), generator=gen), y


def train_leaky_net(sg, *, steps: int = 30, freeze_readout: bool = False):
    x, y = synthetic_spikes()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 32), snn.Leaky(beta=0.9, spike_grad=sg, init_hidden=True), nn.Linear(32, 2)
    )
    if freeze_readout:
        net[2].requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses, first_grad = [], None
    for _ in range(steps):
        net[1].reset_mem()
        logits = sum(net(x_t) for x_t in x.unbind(0)) / x.shape[0]  # summed (membrane) readout
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        if first_grad is None:
            first_grad = net[0].weight.grad.clone()
        opt.step()
        losses.append(loss.item())
    return losses, first_grad


SPIKE_GRADS = [("iwst", {"p": 0.5}), ("st", {}), ("agr", {"tau": 0.5})]


@pytest.mark.parametrize("name, kwargs", SPIKE_GRADS, ids=[n for n, _ in SPIKE_GRADS])
def test_leaky_network_trains_with_sbnn_spike_grad(name, kwargs):
    losses, first_grad = train_leaky_net(spike_grad(name, **kwargs))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]
    # the gradient reached the input layer through the spikes
    assert torch.isfinite(first_grad).all() and first_grad.abs().sum() > 0


@pytest.mark.parametrize("name, kwargs", SPIKE_GRADS, ids=[n for n, _ in SPIKE_GRADS])
def test_leaky_network_learns_through_the_spikes_alone(name, kwargs):
    # with the readout frozen, the only path for learning is the estimator's surrogate gradient
    losses, _ = train_leaky_net(spike_grad(name, **kwargs), freeze_readout=True)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]

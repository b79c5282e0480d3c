"""Lean training paths: the fused recurrent layer in a whole network, closed-form backward passes,
and the activation memory a training step keeps for backward (as ratios against dense references)."""

from __future__ import annotations

import pytest
import snntorch
import torch
from torch import nn

import sbnn
from sbnn.diagnostics import saved_for_backward_bytes
from sbnn.functional.layers import joint_lrt_weight
from sbnn.functional.signs import sign_mean, sign_variance
from sbnn.models import NeuronSettings, SpikingRecurrentNet, stages
from sbnn.posterior import _kl_bernoulli_sign_value, kl_bernoulli_sign


def _net(gen, spike_grad: float, estimator: str = "st", reset: str = "subtract") -> tuple[SpikingRecurrentNet, torch.Tensor]:
    torch.manual_seed(7)
    net = SpikingRecurrentNet(
        10, (8, 8), 3, recurrent_spike_grad=spike_grad,
        neuron=NeuronSettings(beta=0.9, estimator=estimator, reset_mechanism=reset),
    ).double()
    x = (torch.rand(12, 4, 10, generator=gen) < 0.4).double()
    net.calibrate(x)
    with torch.no_grad():
        for rec in net.recurrent:
            rec.log_scale.fill_(-0.5)  # make the recurrence matter
    return net, x


def _run(net, x, y, stepwise: bool, monkeypatch) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    with monkeypatch.context() as m:
        if stepwise:
            m.setattr(stages, "recurrent_sequence", stages.recurrent_sequence_stepwise)
        torch.manual_seed(3)  # the same noise: B·H = 32 draws per step come out of one stream alike
        logits, spikes = net.forward_with_spikes(x)
        loss = sbnn.ELBOLoss(n_train=100, kl_weight=0.1)(logits, y, net).loss
    return logits, spikes, list(torch.autograd.grad(loss, list(net.parameters())))


@pytest.mark.parametrize("spike_grad", [0.0, 1.0])
@pytest.mark.parametrize("estimator,reset", [("st", "subtract"), ("iwst", "zero"), ("agr", "none")])
def test_recurrent_net_fused_equals_stepwise(gen, monkeypatch, spike_grad, estimator, reset):
    net, x = _net(gen, spike_grad, estimator, reset)
    y = torch.tensor([0, 1, 2, 1])
    logits, spikes, grads = _run(net, x, y, False, monkeypatch)
    ref_logits, ref_spikes, ref_grads = _run(net, x, y, True, monkeypatch)
    assert all(0 < float(s.detach().mean()) < 1 for s in spikes)
    for s, r in zip(spikes, ref_spikes):
        assert torch.equal(s, r)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-12, atol=1e-12)
    names = [n for n, _ in net.named_parameters()]
    assert any(n.startswith("recurrent") for n in names)
    for name, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


def test_deterministic_modes_keep_the_stepwise_path(gen, monkeypatch):
    net, x = _net(gen, 0.0)
    calls = []
    original = stages.recurrent_sequence_stepwise
    monkeypatch.setattr(stages, "recurrent_sequence_stepwise", lambda *a: calls.append(1) or original(*a))
    with sbnn.evaluation(net, "mode"), torch.no_grad():
        net(x)
    assert len(calls) == 2  # one per recurrent layer: 'mode' weights are applied as α·(x wᵀ), exactly
    calls.clear()
    with torch.no_grad():
        net(x)
    assert calls == []


def test_kl_closed_form_gradient_equals_autograd(gen):
    lam = (3.0 * torch.randn(6, 7, dtype=torch.float64, generator=gen)).requires_grad_()
    prior = torch.randn(6, 7, dtype=torch.float64, generator=gen).requires_grad_()
    weights = torch.randn(6, 7, dtype=torch.float64, generator=gen)
    fused = kl_bernoulli_sign(lam, prior)
    plain = _kl_bernoulli_sign_value(lam, prior)
    assert torch.equal(fused, plain)
    for g, r in zip(torch.autograd.grad((fused * weights).sum(), (lam, prior)),
                    torch.autograd.grad((plain * weights).sum(), (lam, prior))):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    # a scalar prior gets its gradient summed
    scalar = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    g = torch.autograd.grad(kl_bernoulli_sign(lam, scalar).sum(), scalar)[0]
    torch.testing.assert_close(g, (torch.tanh(scalar) - torch.tanh(lam)).sum().detach())


@pytest.mark.parametrize("alpha_shape", [(1,), (5,)])
def test_joint_lrt_weight_equals_autograd(gen, alpha_shape):
    lam = torch.randn(5, 4, dtype=torch.float64, generator=gen).requires_grad_()
    alpha = (0.5 + torch.rand(alpha_shape, dtype=torch.float64, generator=gen)).requires_grad_()
    weights = torch.randn(10, 4, dtype=torch.float64, generator=gen)
    a = alpha.reshape(-1, 1)
    plain = torch.cat([sign_mean(lam) * a, sign_variance(lam) * a.square()])
    fused = joint_lrt_weight(lam, alpha)
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    for g, r in zip(torch.autograd.grad((fused * weights).sum(), (lam, alpha)),
                    torch.autograd.grad((plain * weights).sum(), (lam, alpha))):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)


# -- memory kept for backward -------------------------------------------------------------------
class _RLeakyNet(nn.Module):
    """snnTorch's recurrent network, time-batched: Linear → RLeaky → RLeaky → Linear → leaky readout."""

    def __init__(self, sizes: tuple[int, ...], beta: float = 0.95) -> None:
        super().__init__()
        self.ff = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.lif = nn.ModuleList(snntorch.RLeaky(beta=beta, linear_features=h) for h in sizes[1:-1])
        self.out = nn.Linear(sizes[-2], sizes[-1])
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for ff, lif in zip(self.ff, self.lif):
            cur = ff(x)
            spk, mem = lif.init_rleaky()
            out = []
            for c in cur.unbind(0):
                spk, mem = lif(c, spk, mem)
                out.append(spk)
            x = torch.stack(out)
        h = self.out(x)
        mem, acc = torch.zeros_like(h[0]), torch.zeros_like(h[0])
        for h_t in h.unbind(0):
            mem = self.beta * mem + h_t
            acc = acc + mem
        return acc / len(h)


def test_recurrent_step_saves_about_what_snntorch_saves(gen):
    """The SHD network's shape scaled down (T·B/H as in 700→256→256→20, T 100, B 32)."""
    sizes, steps, batch = (70, 32, 32, 5), 50, 16
    x = (torch.rand(steps, batch, sizes[0], generator=gen) < 0.05).float()
    y = torch.randint(0, sizes[-1], (batch,), generator=gen)
    net = SpikingRecurrentNet(sizes[0], sizes[1:-1], sizes[-1])
    net.calibrate(x)
    loss = sbnn.ELBOLoss(n_train=1000, kl_weight=0.1)
    ours = saved_for_backward_bytes(net, lambda: loss(net(x), y, net).loss)
    stepwise = stages.recurrent_sequence
    try:
        stages.recurrent_sequence = stages.recurrent_sequence_stepwise
        before = saved_for_backward_bytes(net, lambda: loss(net(x), y, net).loss)
    finally:
        stages.recurrent_sequence = stepwise
    reference = _RLeakyNet(sizes)
    dense = saved_for_backward_bytes(reference, lambda: nn.functional.cross_entropy(reference(x), y))
    assert ours <= 1.5 * dense, (ours, dense)
    assert ours <= 0.4 * before, (ours, before)

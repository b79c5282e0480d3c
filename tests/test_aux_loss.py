"""The bias-reducing auxiliary loss: its derivation checked on one unit, its value by hand."""

from __future__ import annotations

import pytest
import torch

from sbnn.functional.neurons import time_average_weights
from sbnn.functional.noise import get_noise
from sbnn.models import NeuronSettings, SpikingMLP
from sbnn.neurons import record_drives
from sbnn.tasks import SpikingClassificationTask
from sbnn.training import BiasProxyLoss, ELBOLoss, bias_proxy_terms


@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
@pytest.mark.parametrize("theta_j, theta_k", [(0.7, 0.9), (-1.2, -0.6), (1.5, 1.3)])
def test_second_order_bias_matches_the_exact_st_bias_for_small_flips(noise, theta_j, theta_k):
    # unit j feeds unit k; a spike of j moves θ_k by a/s = 0.1 ⇒ f(S) = F(θ_k + 0.1 S − 0.05)
    fam = get_noise(noise)
    d = 0.1
    f = lambda s: fam.cdf(torch.tensor(theta_k + d * s - d / 2, dtype=torch.float64))  # noqa: E731
    fp = lambda s: d * fam.pdf(torch.tensor(theta_k + d * s - d / 2, dtype=torch.float64))  # noqa: E731
    tj = torch.tensor(theta_j, dtype=torch.float64)
    fire, density = fam.cdf(tj), fam.pdf(tj)
    st_mean = density * (fire * fp(1.0) + (1 - fire) * fp(0.0))
    exact = density * (f(1.0) - f(0.0))
    proxy = density * (fire - 0.5) * fam.pdf_derivative(torch.tensor(theta_k, dtype=torch.float64)) * d**2
    # third-order terms are O(d) relative: 3 % at d = 0.1
    assert float(st_mean - exact) == pytest.approx(float(proxy), rel=0.05)


def test_pdf_derivative_matches_autograd():
    x = torch.linspace(-4, 4, 17, dtype=torch.float64, requires_grad=True)
    for name in ("gaussian", "logistic"):
        fam = get_noise(name)
        (g,) = torch.autograd.grad(fam.pdf(x).sum(), x)
        torch.testing.assert_close(fam.pdf_derivative(x.detach()), g)


def test_value_by_hand_on_two_layers():
    torch.manual_seed(0)
    net = SpikingMLP(6, (4, 3), 2, neuron=NeuronSettings(beta=0.5))
    aux = BiasProxyLoss()
    x = torch.rand(5, 3, 6).round()
    torch.manual_seed(1)
    with record_drives(net) as drives:
        net(x)
    d0, d1 = drives["neurons.0"], drives["neurons.1"]
    fam = get_noise("gaussian")
    am1 = net.layers[1].scale.reshape(-1, 1) * torch.tanh(net.layers[1].lam)  # [3, 4]
    amo = net.output.scale.reshape(-1, 1) * torch.tanh(net.output.lam)  # [2, 3]
    w = time_average_weights(5, net.readout_beta)
    # the readout's mean logits for the recorded spikes, and their softmax
    probs = (torch.einsum("t,tbj->bj", w, d1.spikes) @ amo.T).softmax(-1)
    total = 0.0
    for t in range(5):
        for b in range(3):
            for j in range(4):
                c = sum(abs(float(fam.pdf_derivative(d1.theta[t, b, k]))) * float(am1[k, j]) ** 2 / float(d1.scale[t, b, k]) ** 2 for k in range(3))
                th = d0.theta[t, b, j]
                total += float(fam.pdf(th) * (fam.cdf(th) - 0.5).abs()) * c
            for j in range(3):
                d = amo[:, j]
                variance = float((probs[b] * d**2).sum() - (probs[b] * d).sum() ** 2)
                th = d1.theta[t, b, j]
                total += float(fam.pdf(th) * (fam.cdf(th) - 0.5).abs()) * float(w[t]) ** 2 * variance
    assert float(aux(net, drives)) == pytest.approx(total / 15, rel=1e-5)
    assert [tuple(t.shape) for t in bias_proxy_terms(net, drives)] == [(5, 3, 4), (5, 3, 3)]
    # attached, the loss records the same drives itself
    attached = BiasProxyLoss().attach(net)
    torch.manual_seed(1)
    net(x)
    assert float(attached(net)) == pytest.approx(total / 15, rel=1e-5)


def test_aux_loss_needs_recorded_drives_and_reaches_the_parameters():
    net = SpikingMLP(6, (4,), 2)
    net(torch.rand(3, 2, 6).round())
    with pytest.raises(RuntimeError, match="attach"):
        BiasProxyLoss()(net)
    aux = BiasProxyLoss().attach(net)
    terms = ELBOLoss(100, aux_weight=0.5, aux_fn=aux)(net(torch.rand(3, 2, 6).round()), torch.tensor([0, 1]), net)
    assert terms.aux > 0
    terms.loss.backward()
    assert net.layers[0].lam.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="attach"):  # the drives (and their graph) were released
        aux(net)


def test_task_uses_the_bias_proxy_without_changing_the_network(recwarn):
    """The drives are recorded for the training step only: no flag left on the user's network and
    no drive (holding the step's autograd graph) kept alive after it."""
    torch.manual_seed(0)
    net = SpikingMLP(6, (4,), 2)
    task = SpikingClassificationTask(net, aux_weight=0.1, train_size=10)
    assert isinstance(task.aux_fn, BiasProxyLoss)
    x, y = torch.rand(3, 2, 6).round(), torch.tensor([0, 1])
    torch.manual_seed(1)
    with_aux = task.training_step((x, y), 0)
    net(x)  # a forward after the step records nothing: the hooks were removed with the step
    with pytest.raises(RuntimeError, match="attach"):  # and the step's drives were released
        task.aux_fn(net)
    torch.manual_seed(1)
    without = SpikingClassificationTask(net, train_size=10).training_step((x, y), 0)
    assert float(with_aux) > float(without)  # the auxiliary term was computed from the step's drives
    assert SpikingClassificationTask(SpikingMLP(6, (4,), 2), train_size=10).aux_fn is None


def test_recorded_drives_do_not_block_copy_or_pickle():
    import copy
    import pickle

    net = SpikingMLP(6, (4,), 2)
    aux = BiasProxyLoss().attach(net)
    x = torch.rand(3, 2, 6).round()
    net(x)
    clone = copy.deepcopy(net)
    pickle.loads(pickle.dumps(net))(x)
    assert float(aux(net)) > 0  # the original's hooks recorded its pass
    clone(x)  # a copy comes without the hooks: it feeds nothing to the loss
    with pytest.raises(RuntimeError, match="attach"):
        aux(net)
    assert pickle.loads(pickle.dumps(aux)).detach_drive == aux.detach_drive


def test_detach_drive_trains_only_the_flip_to_noise_ratio():
    torch.manual_seed(0)
    net = SpikingMLP(6, (4,), 3)
    x = torch.rand(3, 2, 6).round()
    grads = {}
    for detach in (True, False):
        aux = BiasProxyLoss(detach_drive=detach).attach(net)
        net.zero_grad()
        net(x)
        aux(net).backward()
        hidden = net.layers[0].lam.grad
        grads[detach] = (0.0 if hidden is None else float(hidden.abs().sum()), float(net.output.lam.grad.abs().sum()))
    # one hidden layer: with detached drives only the readout's flip sizes get gradient
    assert grads[True][0] == 0 and grads[True][1] > 0
    assert grads[False][0] > 0

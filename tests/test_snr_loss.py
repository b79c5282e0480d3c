"""The signal-to-noise auxiliary loss: its value by hand, its gradients, every network family."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.models import NeuronSettings, ResidualSpikingMLP, SpikingConvNet, SpikingMLP, SpikingRecurrentNet, SpikingResNet
from sbnn.neurons import StochasticLIF, record_drives
from sbnn.tasks import SpikingClassificationTask
from sbnn.training import ELBOLoss, SNRLoss


def _hand_ratios(net: SpikingMLP, x: torch.Tensor, eps: torch.Tensor, marginal: bool) -> torch.Tensor:
    """``m/s`` of the single hidden layer, replayed step by step from the layer's LRT moments."""
    mu, var = net.layers[0].moments(x)
    neuron = net.neurons[0]
    beta, thr = float(neuron.beta), float(neuron.threshold)
    floor = neuron.sigma0**2 + neuron.eps_min**2
    kappa = neuron.noise.std_to_scale
    mem = torch.zeros_like(mu[0])
    spk = torch.zeros_like(mu[0])
    acc = torch.zeros_like(mu[0])
    out = []
    for t in range(mu.shape[0]):
        mean = beta * mem + mu[t] - thr * spk  # membrane before firing (subtract reset)
        if marginal:
            acc = beta * beta * acc + var[t] + floor
            sd = acc.sqrt()
        else:
            sd = (var[t] + floor).sqrt()
        out.append(mean / sd)
        noisy = mean + kappa * sd * eps[t]
        spk = (noisy >= thr).to(mu.dtype)
        mem = mean if marginal else noisy
    return torch.stack(out)


@pytest.mark.parametrize("membrane_noise", ["pathwise", "marginal"])
@pytest.mark.parametrize("noise", ["gaussian", "logistic"])
def test_value_by_hand(membrane_noise, noise):
    torch.manual_seed(0)
    net = SpikingMLP(6, (5,), 3, neuron=NeuronSettings(beta=0.7, membrane_noise=membrane_noise, noise=noise)).double()
    x = torch.rand(4, 3, 6, dtype=torch.float64).round()
    with torch.no_grad(), record_drives(net) as drives:
        net(x)
    with torch.no_grad():
        ratios = _hand_ratios(net, x, drives["neurons.0"].eps, membrane_noise == "marginal")
    total = float(ratios.square().sum())
    assert float(SNRLoss("sum")(net, drives)) == pytest.approx(total / 3, rel=1e-10)  # Σ_t mean_b Σ_units
    assert float(SNRLoss()(net, drives)) == pytest.approx(total / (3 * 4 * 5), rel=1e-10)  # mean over unit-steps


def test_sum_adds_layers_and_mean_pools_their_unit_steps():
    torch.manual_seed(1)
    net = SpikingMLP(6, (5, 2), 3).double()
    with record_drives(net) as drives:
        net(torch.rand(4, 3, 6, dtype=torch.float64).round())
    alone = [SNRLoss("sum")(net, {k: drives[k]}) for k in ("neurons.0", "neurons.1")]
    assert float(SNRLoss("sum")(net, drives)) == pytest.approx(float(sum(alone)), rel=1e-12)
    assert float(SNRLoss()(net, drives)) == pytest.approx(float(sum(alone)) / (4 * (5 + 2)), rel=1e-12)


def test_gradient_reaches_means_and_variances_and_matches_finite_differences():
    torch.manual_seed(2)
    net = SpikingMLP(6, (4,), 2, neuron=NeuronSettings(beta=0.0, reset_mechanism="none")).double()
    x = torch.rand(1, 3, 6, dtype=torch.float64).round()
    with record_drives(net) as drives:
        net(x)
    eps = drives["neurons.0"].eps
    loss = SNRLoss("sum")(net, drives)
    (g,) = torch.autograd.grad(loss, net.layers[0].lam)
    assert float(g.abs().sum()) > 0
    # T = 1, β = 0: the loss is a smooth function of λ; central differences on one entry
    lam = net.layers[0].lam
    h = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            lam[1, 2] += sign * h
        values.append(float(_hand_ratios(net, x, eps, False).square().sum() / 3))
        with torch.no_grad():
            lam[1, 2] -= sign * h
    assert float(g[1, 2]) == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5)


FAMILIES = {
    "mlp": (lambda: SpikingMLP(6, (5, 4), 3), (4, 2, 6)),
    "recurrent": (lambda: SpikingRecurrentNet(6, (5,), 3), (4, 2, 6)),
    "conv": (lambda: SpikingConvNet(2, 8, (3,), 3, fc=(4,)), (3, 2, 2, 8, 8)),
    "resnet-membrane": (lambda: SpikingResNet(2, 3, depth=4, widths=(3,), input_size=(6, 6)), (3, 2, 2, 6, 6)),
    "resnet-spike": (lambda: SpikingResNet(2, 3, depth=4, widths=(3,), input_size=(6, 6), shortcut="spike"), (3, 2, 2, 6, 6)),
    "residual-mlp": (lambda: ResidualSpikingMLP(6, 3, depth=4, width=5), (4, 2, 6)),
    "spike-count": (lambda: SpikingMLP(6, (5,), 3, readout="spike_count"), (4, 2, 6)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_records_every_neuron_and_gets_gradients(family):
    torch.manual_seed(3)
    build, shape = FAMILIES[family]
    net = build()
    x = torch.rand(*shape).round()
    net.calibrate(x)
    aux = SNRLoss().attach(net)
    terms = ELBOLoss(100, aux_weight=0.01, aux_fn=aux)(net(x), torch.tensor([0, 1]), net)
    neurons = {name for name, m in net.named_modules() if isinstance(m, StochasticLIF)}
    assert terms.aux > 0 and math.isfinite(float(terms.aux))
    net.zero_grad()
    terms.aux.backward()
    # every layer that feeds a neuron gets a gradient from the loss (the readout of a membrane readout does not)
    fed = [n for n, p in net.named_parameters() if n.endswith("lam") and p.grad is not None and p.grad.abs().sum() > 0]
    assert fed, family
    assert not any(n.startswith("output.") for n in fed) or family == "spike-count"
    assert len(neurons) >= 1
    aux.detach()


def test_every_neuron_that_ran_is_counted():
    torch.manual_seed(4)
    net = SpikingResNet(2, 3, depth=4, widths=(3,), input_size=(6, 6))
    with record_drives(net) as drives:
        net(torch.rand(3, 2, 2, 6, 6).round())
    assert set(drives) == {n for n, m in net.named_modules() if isinstance(m, StochasticLIF)}


def test_needs_recorded_drives_and_releases_them():
    net = SpikingMLP(6, (4,), 2)
    with pytest.raises(RuntimeError, match="attach"):
        SNRLoss()(net)
    aux = SNRLoss().attach(net)
    net(torch.rand(3, 2, 6).round())
    assert float(aux(net)) > 0
    with pytest.raises(RuntimeError, match="attach"):
        aux(net)


def test_bad_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        SNRLoss("max")


def test_task_selects_the_snr_loss_for_a_conv_net():
    torch.manual_seed(5)
    net = SpikingConvNet(2, 8, (3,), 2, fc=())
    task = SpikingClassificationTask(net, aux_weight=0.5, aux_loss="snr", train_size=10)
    assert isinstance(task.aux_fn, SNRLoss)
    x, y = torch.rand(3, 2, 2, 8, 8).round(), torch.tensor([0, 1])
    torch.manual_seed(6)
    with_aux = task.training_step((x, y), 0)
    torch.manual_seed(6)
    without = SpikingClassificationTask(net, train_size=10).training_step((x, y), 0)
    assert float(with_aux) > float(without)
    with pytest.raises(RuntimeError, match="attach"):  # the step's drives were released
        task.aux_fn(net)


def test_task_default_stays_the_bias_proxy():
    from sbnn.training import BiasProxyLoss

    assert isinstance(SpikingClassificationTask(SpikingMLP(6, (4,), 2), aux_weight=0.1, train_size=10).aux_fn, BiasProxyLoss)


@pytest.mark.parametrize("kwargs, match", [
    ({"aux_weight": -1e-6, "aux_loss": "snr"}, "aux_weight"),
    ({"aux_weight": 0.1, "aux_loss": "snr2"}, "aux_loss"),
])
def test_task_refuses_bad_aux_settings_before_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikingClassificationTask(SpikingMLP(6, (4,), 2), train_size=10, **kwargs)


def test_pickles_without_its_drives():
    import pickle

    net = SpikingMLP(6, (4,), 2)
    aux = SNRLoss("sum").attach(net)
    net(torch.rand(3, 2, 6).round())
    clone = pickle.loads(pickle.dumps(aux))
    assert clone.reduction == "sum"
    with pytest.raises(RuntimeError, match="attach"):
        clone(net)


def test_recurrent_net_counts_every_step_by_hand():
    """A recurrent layer runs its neuron one step at a time: every step's drive counts.

    With the recurrent weights' scale at ~0 the layer is the feed-forward one, so the hand replay
    of ``_hand_ratios`` applies to the noise the steps drew.
    """
    torch.manual_seed(7)
    net = SpikingRecurrentNet(6, (5,), 3, neuron=NeuronSettings(beta=0.7)).double()
    with torch.no_grad():
        net.recurrent[0].log_scale.fill_(-60.0)
    x = torch.rand(4, 3, 6, dtype=torch.float64).round()
    steps = []
    handle = net.neurons[0].register_drive_hook(lambda neuron, drive: steps.append(drive))
    aux = SNRLoss("sum").attach(net)
    torch.manual_seed(8)
    net(x)
    handle.remove()
    assert len(steps) == 4  # one drive per step
    loss = aux(net)
    with torch.no_grad():
        ratios = _hand_ratios(net, x, torch.cat([d.eps for d in steps]), False)
    assert float(loss) == pytest.approx(float(ratios.square().sum()) / 3, rel=1e-9)
    assert float(SNRLoss()(net, {"neurons.0": steps})) == pytest.approx(float(ratios.square().sum()) / (3 * 4 * 5), rel=1e-9)

"""Every network family with real-weight Gaussian layers: the one setting, training steps, the paper's YAML."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import sbnn
from sbnn import GaussianConv2d, GaussianLinear
from sbnn.models import (
    LayerSettings,
    NeuronSettings,
    ResidualSpikingMLP,
    SpikingConvNet,
    SpikingMLP,
    SpikingRecurrentNet,
    SpikingResNet,
)
from sbnn.tasks import SpikingClassificationTask
from sbnn.training.optim import noise_scale_parameters
from sbnn.weight_families import weight_layers

GAUSSIAN = LayerSettings(weights="gaussian")
#: the SBNN paper's neuron: accumulated variance, learned σ_b, reset with gradient
PAPER_NEURON = NeuronSettings(
    beta=0.9, sigma0=0.0, eps_min=1e-6, membrane_noise="marginal", sigma_b=0.127, learn_sigma_b=True, detach_reset=False
)


def _spikes(*shape, p=0.3):
    return (torch.rand(*shape) < p).float()


FAMILIES = {
    "SpikingMLP": (lambda **kw: SpikingMLP(12, (10,), 3, binary_input=True, **kw), lambda: _spikes(6, 8, 12)),
    "SpikingRecurrentNet": (lambda **kw: SpikingRecurrentNet(12, (10, 8), 3, **kw), lambda: _spikes(6, 8, 12)),
    "SpikingConvNet": (lambda **kw: SpikingConvNet(2, 8, (4,), 3, fc=(6,), **kw), lambda: _spikes(4, 8, 2, 8, 8)),
    "SpikingResNet": (
        lambda **kw: SpikingResNet(2, 3, depth=8, widths=(3, 4, 4), input_size=(8, 8), **kw),
        lambda: _spikes(3, 8, 2, 8, 8),
    ),
    "ResidualSpikingMLP": (lambda **kw: ResidualSpikingMLP(12, 3, depth=4, width=8, **kw), lambda: _spikes(5, 8, 12)),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_setting_builds_every_layer_of_the_family(name):
    build, _ = FAMILIES[name]
    net = build(layer={"weights": "gaussian"})
    layers = weight_layers(net)
    assert layers and all(isinstance(m, (GaussianLinear, GaussianConv2d)) for m in layers)
    assert not any(n.endswith(".lam") for n, _ in net.named_parameters())
    assert all(isinstance(m, (sbnn.BernoulliLinear, sbnn.BernoulliConv2d)) for m in weight_layers(build()))


def test_recurrent_matrices_have_a_zero_diagonal():
    net = SpikingRecurrentNet(12, (10,), 3, layer=GAUSSIAN)
    assert net.recurrent[0].zero_diagonal and not net.layers[0].zero_diagonal
    assert float(net.recurrent[0].sigma.detach()) == pytest.approx(0.5 / 10**0.5, rel=1e-5)  # its own σ, fan-in 10


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_few_task_steps_train_every_parameter_and_lower_the_loss(name):
    """The paper's configuration through SpikingClassificationTask: every weight, σ_w and σ_b gets a gradient."""
    torch.manual_seed(0)
    build, data = FAMILIES[name]
    net = build(layer=GAUSSIAN, neuron=PAPER_NEURON)
    task = SpikingClassificationTask(net, lr=1e-2, sigma_lr=5e-2, kl_weight=0.0, calibrate=False, train_size=8,
                                     mode_finetune_epochs=0)
    opt = task.configure_optimizers()["optimizer"]
    sigma_ids = {id(p) for p in noise_scale_parameters(net)}
    assert sigma_ids and any(g["lr"] == 5e-2 and {id(p) for p in g["params"]} == sigma_ids for g in opt.param_groups)
    x, y = data(), torch.arange(8) % 3
    net.calibrate(x)  # un-normalised deep nets start silent from the uniform initialisation alone

    def mode_nll():
        with torch.no_grad(), sbnn.evaluation(net, "mode"):
            return float(F.cross_entropy(net(x), y))

    before = mode_nll()
    for step in range(25):
        opt.zero_grad()
        with warnings.catch_warnings():  # Lightning warns about self.log without a Trainer
            warnings.simplefilter("ignore")
            loss = task.training_step((x, y), step)
        loss.backward()
        if step == 0:
            missing = [n for n, p in net.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
            assert not missing, missing
        assert torch.isfinite(loss)
        opt.step()
    assert mode_nll() < before


@pytest.mark.parametrize("name", ["SpikingMLP", "SpikingRecurrentNet", "SpikingResNet"])
def test_calibration_rescales_real_weight_posteriors(name):
    torch.manual_seed(0)
    build, data = FAMILIES[name]
    net = build(layer=GAUSSIAN)
    before = {n: (m.weight.detach().clone(), float(m.sigma.detach())) for n, m in net.named_modules() if isinstance(m, (GaussianLinear, GaussianConv2d))}
    rates = net.calibrate(data())
    assert all(r > 0 for r in rates)
    for n, m in net.named_modules():
        if n in before:
            w0, s0 = before[n]
            factor = float(m.sigma.detach()) / s0
            torch.testing.assert_close(m.weight.detach(), w0 * factor, rtol=1e-4, atol=1e-7)  # W̄ and σ_w scaled together


def test_recurrent_marginal_neuron_carries_its_variance_across_steps():
    """A recurrent layer runs its neurons one step at a time: the accumulated variance must survive."""
    torch.manual_seed(0)
    net = SpikingRecurrentNet(12, (10,), 3, layer=GAUSSIAN, neuron=PAPER_NEURON)
    x = _spikes(6, 4, 12)
    seen = []
    net.neurons[0].register_drive_hook(lambda neuron, drive: seen.append(drive.scale.detach()))
    net(x)
    scales = torch.cat(seen)  # [T, B, H], one step per call
    sb2 = float(net.neurons[0].sigma_b) ** 2
    # V[0] = v[0]; V[t] > β² V[t−1]: the scale never falls back to the per-step one
    v = torch.stack([net.layers[0].moments(x)[1][t] for t in range(6)])
    assert torch.allclose(scales[0] ** 2, v[0] + sb2 + 1e-12, rtol=1e-4)
    assert bool((scales[1:] ** 2 - sb2 > 0.81 * (scales[:-1] ** 2 - sb2) - 1e-6).all())


def test_the_papers_configuration_is_reachable_from_yaml_alone():
    """A recipe selects real weights, the accumulated-variance neuron, σ_b and the σ learning rate by settings."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SpikingClassificationTask, "model", sub_configs=True)
    cfg = parser.parse_string(
        """
model:
  network:
    class_path: sbnn.models.SpikingRecurrentNet
    init_args:
      in_features: 12
      hidden: [10, 10]
      num_classes: 3
      readout_beta: 0.0
      layer: {weights: gaussian, sigma_init: 0.5, variance_input_grad: false}
      neuron: {beta: 0.9048, sigma0: 0.0, eps_min: 1.0e-6, membrane_noise: marginal,
               sigma_b: 0.126928, learn_sigma_b: true, detach_reset: false, estimator: st}
  lr: 0.005
  sigma_lr: 0.05
  kl_weight: 0.0
  calibrate: false
"""
    )
    task = parser.instantiate_classes(cfg).model
    net = task.network
    assert isinstance(net.layers[1], GaussianLinear) and net.recurrent[1].zero_diagonal
    assert not net.layers[0].variance_input_grad
    assert net.neurons[0].membrane_noise == "marginal" and float(net.neurons[0].sigma_b_rho) == pytest.approx(-2.0, abs=1e-4)
    opt = task.configure_optimizers()["optimizer"]
    assert sorted(g["lr"] for g in opt.param_groups) == [0.005, 0.05]


def test_the_bias_proxy_reads_a_gaussian_layer_through_its_mean_weights():
    from sbnn.neurons import record_drives
    from sbnn.training.losses import bias_proxy_terms

    torch.manual_seed(0)
    net, x = SpikingMLP(12, (10,), 3, binary_input=True, layer=GAUSSIAN), _spikes(6, 8, 12)
    net.calibrate(x)
    with record_drives(net) as drives:
        net(x)
    terms = bias_proxy_terms(net, drives)
    assert len(terms) == 1 and torch.isfinite(terms[0]).all() and float(terms[0].sum()) > 0
    # the readout term is the softmax spread of the mean weights W̄: it moves with them
    with torch.no_grad():
        net.output.weight.mul_(2.0)
    assert float(bias_proxy_terms(net, drives)[0].sum()) > float(terms[0].sum())

"""Contracts every public module and model keeps, and the layering of the pure packages.

For each module: ``.to(float64)`` moves every constant; a ``state_dict`` round trip gives the
same outputs; pickle and ``copy.deepcopy`` give an independent equal module; ``sbnn.reset``
reaches nested neurons; ``evaluation()`` restores the whole mode state (mode and weight).
"""

from __future__ import annotations

import ast
import copy
import io
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import sbnn
from sbnn import BernoulliConv2d, BernoulliLinear, GaussianConv2d, GaussianLinear, StochasticLIF, evaluation
from sbnn.layers import BernoulliLayer
from sbnn.weight_families import weight_layers
from sbnn.models import (
    BinaryMLP,
    LayerSettings,
    NeuronSettings,
    ResidualSpikingMLP,
    SpikingConvNet,
    SpikingMLP,
    SpikingRecurrentNet,
    SpikingResNet,
)
from sbnn.models.blocks import ConvResidualBlock, LinearResidualBlock
from sbnn.neurons import record_drives

PACKAGE = Path(sbnn.__file__).parent


def _spikes(*shape: int) -> torch.Tensor:
    return (torch.rand(*shape) < 0.3).float()


# (name, constructor, input) — every public module and model, small
CASES = {
    "BernoulliLinear": (lambda: BernoulliLinear(6, 4), lambda: torch.randn(3, 2, 6)),
    "BernoulliConv2d": (lambda: BernoulliConv2d(2, 3, 3, padding=1), lambda: torch.randn(3, 2, 2, 5, 5)),
    "StochasticLIF": (lambda: StochasticLIF(beta=0.8), lambda: torch.randn(4, 2, 5)),
    "LinearResidualBlock": (lambda: LinearResidualBlock(6, 8), lambda: torch.randn(3, 2, 6)),
    "ConvResidualBlock": (lambda: ConvResidualBlock(2, 4, stride=2), lambda: torch.randn(3, 2, 2, 6, 6)),
    "SpikingMLP": (lambda: SpikingMLP(6, (5, 4), 3, binary_input=True), lambda: _spikes(5, 2, 6)),
    "SpikingMLP-spike_count": (lambda: SpikingMLP(6, (5,), 3, readout="spike_count"), lambda: _spikes(5, 2, 6)),
    "SpikingRecurrentNet": (lambda: SpikingRecurrentNet(6, (5,), 3), lambda: _spikes(5, 2, 6)),
    "SpikingConvNet": (lambda: SpikingConvNet(2, 8, (3,), 3, fc=(5,)), lambda: _spikes(4, 2, 2, 8, 8)),
    "SpikingResNet": (
        lambda: SpikingResNet(2, 3, depth=8, widths=(2, 4, 4), input_size=(8, 8)),
        lambda: _spikes(3, 2, 2, 8, 8),
    ),
    "ResidualSpikingMLP": (lambda: ResidualSpikingMLP(6, 3, depth=4, width=5), lambda: _spikes(4, 2, 6)),
    "SpikingRecurrentNet-time_affine": (
        lambda: SpikingRecurrentNet(6, (5,), 3, layer=LayerSettings(time_affine_steps=5)), lambda: _spikes(5, 2, 6),
    ),
    "SpikingResNet-time_affine": (
        lambda: SpikingResNet(2, 3, depth=4, widths=(3,), input_size=(6, 6), layer=LayerSettings(time_affine_steps=3)),
        lambda: _spikes(3, 2, 2, 6, 6),
    ),
    "BinaryMLP": (lambda: BinaryMLP(4, (5,), 3), lambda: torch.randn(1, 2, 4)),
    "GaussianLinear": (lambda: GaussianLinear(6, 4, prior_std=1.0), lambda: torch.randn(3, 2, 6)),
    "GaussianConv2d": (lambda: GaussianConv2d(2, 3, 3, padding=1), lambda: torch.randn(3, 2, 2, 5, 5)),
    "StochasticLIF-learned-sigma_b": (
        lambda: StochasticLIF(beta=0.8, membrane_noise="marginal", sigma_b=0.2, learn_sigma_b=True),
        lambda: torch.randn(4, 2, 5),
    ),
    "SpikingRecurrentNet-gaussian": (
        lambda: SpikingRecurrentNet(
            6, (5,), 3, layer=LayerSettings(weights="gaussian"),
            neuron=NeuronSettings(membrane_noise="marginal", sigma_b=0.2, learn_sigma_b=True),
        ),
        lambda: _spikes(5, 2, 6),
    ),
    "SpikingResNet-gaussian": (
        lambda: SpikingResNet(2, 3, depth=8, widths=(2, 4, 4), input_size=(8, 8), layer=LayerSettings(weights="gaussian")),
        lambda: _spikes(3, 2, 2, 8, 8),
    ),
}


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A deterministic output of ``module`` (``mode`` network, or seeded noise for a neuron)."""
    torch.manual_seed(0)
    if isinstance(module, StochasticLIF):
        return module.sequence(x)[0]
    with evaluation(module, "mode"):
        out = module(x)
    if isinstance(out, tuple):  # residual blocks: (stream, spikes)
        out = out[0].mean
    return out


@pytest.fixture(params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    build, data = CASES[request.param]
    return build(), data()


def test_to_float64_moves_every_constant(case):
    module, x = case
    module = module.to(torch.float64)
    assert all(t.dtype == torch.float64 for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())
    assert _run(module, x.double()).dtype == torch.float64


def test_state_dict_round_trip_through_torch_save(case):
    module, x = case
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(module)
    for p in fresh.parameters():  # scramble, then load: every value must come back
        p.data.normal_()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(_run(fresh, x), _run(module, x))


def test_pickle_and_deepcopy_give_an_equal_independent_module(case):
    module, x = case
    with record_drives(module):  # registered hooks must not block (or travel with) a copy
        for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
            assert torch.equal(_run(clone, x), _run(module, x))
            first = next(clone.parameters(), None) if not isinstance(clone, StochasticLIF) else clone.beta
            before = _run(module, x)
            with torch.no_grad():
                first.add_(1.0)
            assert torch.equal(_run(module, x), before)  # the original is untouched


def test_reset_reaches_nested_neurons(case):
    module, x = case
    neurons = [m for m in module.modules() if isinstance(m, StochasticLIF)]
    for n in neurons:
        n.init_hidden = True
        n(torch.randn(2, 3))
        assert n.mem.numel() > 0
    assert sbnn.reset(module) is module
    assert all(n.mem.numel() == 0 for n in neurons)


def test_evaluation_restores_the_whole_mode_state(case):
    module, x = case
    layers = weight_layers(module)
    neurons = [m for m in module.modules() if isinstance(m, StochasticLIF)]
    weights = [torch.ones_like(layer.lam if isinstance(layer, BernoulliLayer) else layer.weight) for layer in layers]
    for layer, w in zip(layers, weights):
        layer.set_fixed_weight(w)
    neurons_before = [n.stochastic for n in neurons]
    for mode in ("mc", "mode", "sample", "mean"):
        with evaluation(module, mode):
            pass
        for layer, w in zip(layers, weights):
            state = layer.mode_state()
            assert state.mode == "fixed" and state.weight is w
        assert [n.stochastic for n in neurons] == neurons_before


def test_evaluation_restores_a_fixed_weight_after_mc():
    """After ``with evaluation(net, "mc")`` a layer given ``w`` runs ``w`` again, not the last random draw."""
    torch.manual_seed(0)
    layer = BernoulliLinear(8, 4)
    w = -torch.ones_like(layer.lam)
    layer.set_fixed_weight(w)
    x = torch.rand(3, 8)
    expected = layer(x)
    with evaluation(layer, "mc"):
        drawn = layer(x)
    assert not torch.equal(drawn, expected)  # mc really ran another network
    assert layer.mode == "fixed"
    assert torch.equal(layer(x), expected)


def test_evaluation_restores_a_drawn_weight_kept_outside_the_fixed_mode():
    torch.manual_seed(0)
    layer = BernoulliLinear(8, 4)
    w = layer.draw_weights().clone()
    layer.set_mode("mode")
    with evaluation(layer, "mc"):
        pass
    assert layer.mode == "mode" and torch.equal(layer.mode_state().weight, w)
    layer.set_mode("fixed")
    assert torch.equal(layer.mode_state().weight, w)


def test_calibration_does_not_touch_the_mode_state():
    torch.manual_seed(0)
    net = SpikingMLP(6, (5,), 3, binary_input=True)
    w = [torch.ones_like(layer.lam) for layer in (net.layers[0], net.output)]
    for layer, weight in zip((net.layers[0], net.output), w):
        layer.set_fixed_weight(weight)
    net.calibrate(_spikes(5, 4, 6))
    assert [layer.mode_state().weight for layer in (net.layers[0], net.output)] == w
    assert all(layer.mode == "fixed" and layer.bias is None for layer in (net.layers[0], net.output))


def test_unit_moments_leave_the_layer_unchanged():
    layer = BernoulliLinear(6, 4, bias=True)
    with torch.no_grad():
        layer.log_scale.fill_(0.7)
        layer.bias.fill_(0.3)
    layer.set_mode("mode")
    x = torch.randn(2, 6)
    mu, var = layer.unit_moments(x)
    m = torch.tanh(layer.lam)
    torch.testing.assert_close(mu, x @ m.T)
    torch.testing.assert_close(var, (x * x) @ (1 - m * m).T)
    assert layer.mode == "mode"
    assert torch.equal(layer.log_scale.detach(), torch.tensor([0.7])) and bool((layer.bias == 0.3).all())


def test_a_trained_step_keeps_no_graph_on_the_network():
    """After a task-style step with the auxiliary loss, no tensor on the network holds a graph."""
    from sbnn.training import BiasProxyLoss, ELBOLoss

    net = SpikingMLP(6, (5,), 3)
    aux = BiasProxyLoss().attach(net)
    loss = ELBOLoss(10, aux_weight=0.1, aux_fn=aux)(net(_spikes(4, 2, 6)), torch.tensor([0, 1]), net)
    loss.loss.backward()
    held = [t for m in net.modules() for t in vars(m).values() if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    held += [t for t in net.buffers() if t.grad_fn is not None]
    assert not held


def test_settings_reject_bad_values_and_unknown_keys():
    with pytest.raises(ValueError, match="neuron.beta"):
        NeuronSettings(beta=1.5)
    with pytest.raises(ValueError, match="valid names"):
        NeuronSettings(estimator="nope")
    with pytest.raises(ValueError, match="layer.lam_std"):
        LayerSettings(lam_std=0.0)
    with pytest.raises(ValueError, match=r"unknown keys \['betta'\]"):
        SpikingMLP(4, (3,), 2, neuron={"betta": 0.5})
    with pytest.raises(ValueError, match="must be a NeuronSettings"):
        SpikingMLP(4, (3,), 2, neuron=0.5)
    assert SpikingMLP(4, (3,), 2, neuron={"beta": 0.5}).neurons[0].beta == 0.5


# -- layering ---------------------------------------------------------------------------------------
def _imports(path: Path) -> list[tuple[str, int]]:
    """``(module, level)`` of every import statement in ``path`` (``level`` > 0: relative)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", node.level))
    return out


@pytest.mark.parametrize("package", ["models", "functional"])
def test_pure_packages_import_no_framework(package):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    for path in files:
        for module, level in _imports(path):
            if level == 0:
                assert module.split(".")[0] not in {"lightning", "jsonargparse", "tonic"}, (path.name, module)


def test_functional_imports_nothing_else_of_sbnn():
    for path in sorted((PACKAGE / "functional").rglob("*.py")):
        for module, level in _imports(path):
            assert level <= 1, (path.name, module)  # a sibling under functional/, never a parent
            assert not module.startswith("sbnn"), (path.name, module)


def test_calibration_defaults_are_the_recipes_targets():
    """Spiking nets calibrate to (2ϑ, logit std 3), the residual nets to a logit std of 0.5."""
    for net in (SpikingMLP(4, (3,), 2), SpikingRecurrentNet(4, (3,), 2), SpikingConvNet(1, 4, (2,), 2, fc=())):
        assert (net.calibration.hidden_gain, net.calibration.readout_std) == (2.0, 3.0)
    for net in (ResidualSpikingMLP(4, 2, depth=4, width=3), SpikingResNet(1, 2, depth=8, widths=(2, 2, 2), input_size=(4, 4))):
        assert (net.calibration.hidden_gain, net.calibration.readout_std) == (2.0, 0.5)


def test_nested_settings_parse_as_a_cli_config():
    """The YAML form ``neuron: {...}`` fills a settings record; unset fields keep the model's defaults."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SpikingRecurrentNet, "net")
    cfg = parser.parse_string("net:\n  hidden: [3]\n  neuron:\n    estimator: agr\n    estimator_kwargs: {tau: 0.5}\n")
    net = parser.instantiate_classes(cfg).net
    assert net.neuron_settings == NeuronSettings(beta=0.95, estimator="agr", estimator_kwargs={"tau": 0.5})
    assert float(net.neurons[0].beta) == pytest.approx(0.95) and net.neurons[0].estimator == sbnn.get_estimator("agr", tau=0.5)

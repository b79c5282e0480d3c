"""Training methods on sbnn's layers: each one trains, keeps its invariants, and is CLI-selectable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sbnn.cli import run_cli
from sbnn.data import moons_tensors
from sbnn.training import METHODS, BayesBiNNMethod, QuantizerMethod, fit, make_method, predict_samples, weights_from
from sbnn.models import BinaryMLP, SpikingMLP
from sbnn.training import bernoulli_layers

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

FAST = {
    "sbnn": dict(kl_weight=0.1),
    "bayesbinn": dict(lr=1e-3, temperature=1.0, num_samples=2, momentum=0.9, lam_init=10.0),
    "ste": dict(lr=0.05),
    "bnn": dict(lr=0.05),
    "bnn+": dict(lr=0.05),
    "bnn++": dict(lr=0.05),
    "bop": dict(threshold=1e-6, adaptivity=1e-2),
    "adam": dict(lr=1e-2),
}


def _moons_loader():
    x, y = moons_tensors(50, 0.1, seed=0)
    return DataLoader(TensorDataset(x[:, 0], y), batch_size=25, shuffle=True, generator=torch.Generator().manual_seed(0)), x[:, 0], y


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_a_binary_mlp_and_leaves_the_network_intact(name):
    loader, x, y = _moons_loader()
    net = BinaryMLP(2, (16,), 2)
    names = [n for n, _ in net.named_parameters()]
    method = make_method(name, **FAST[name])
    method.setup(net, 100, epochs=15)  # BayesBiNN and Bop re-initialise λ here
    before = torch.nn.functional.cross_entropy(predict_samples(net, method, x)[0], y)
    history = fit(net, method, loader, epochs=15, setup=False)
    after = torch.nn.functional.cross_entropy(predict_samples(net, method, x, "mc", 4).softmax(-1).mean(0).log(), y)
    assert all(math.isfinite(h) for h in history)
    assert history[-1] < history[0] and float(after) < float(before)
    # no parameter was added or lost, and every layer is back in its own mode
    assert [n for n, _ in net.named_parameters()] == names
    assert all(layer.mode == "sample" for layer in bernoulli_layers(net))
    lams = torch.cat([layer.lam.detach().flatten() for layer in bernoulli_layers(net)])
    if name == "bop":
        assert bool((lams.abs() == 1).all())  # Bop only ever flips ±1 weights
    if name == "ste":
        assert float(lams.abs().max()) <= 1.0  # weight clipping


def test_predict_samples_shapes_and_mode_equals_sign_network():
    net = BinaryMLP(2, (8,), 3)
    x = torch.randn(1, 5, 2)
    assert predict_samples(net, make_method("bayesbinn"), x, "mc", 4).shape == (4, 5, 3)
    assert predict_samples(net, make_method("ste"), x, "mc", 4).shape == (1, 5, 3)  # no posterior: mode only
    with weights_from(net, lambda lam: torch.where(lam >= 0, 1.0, -1.0)):
        ref = net(x)
    torch.testing.assert_close(predict_samples(net, make_method("ste"), x)[0], ref)
    full = predict_samples(net, make_method("adam"), x)[0]  # full precision evaluates λ itself
    with weights_from(net, lambda lam: lam * 1.0):
        torch.testing.assert_close(full, net(x))


def test_methods_run_on_a_spiking_mlp():
    x = torch.rand(6, 8, 5).round()
    y = torch.randint(0, 3, (8,))
    for name in ("bayesbinn", "ste", "bop"):
        net = SpikingMLP(5, (12,), 3, binary_input=True)
        net.calibrate(x)
        method = make_method(name, **FAST[name])
        history = fit(net, method, [(x, y)], epochs=2, n_train=8)
        assert all(math.isfinite(h) for h in history)
        assert all(n.stochastic for n in net.neurons)  # neuron settings restored


def test_bad_method_arguments():
    with pytest.raises(ValueError, match="method"):
        make_method("sgd")
    with pytest.raises(ValueError, match="temperature"):
        BayesBiNNMethod(temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        BayesBiNNMethod(momentum=1.0)
    with pytest.raises(ValueError, match="mu_final"):
        QuantizerMethod("bnn++", mu=5.0, mu_final=1.0)
    with pytest.raises(ValueError, match="no Bernoulli layers"):
        make_method("ste").setup(torch.nn.Linear(2, 2), 10, 1)


def test_bnn_plus_plus_sharpens_over_training():
    method = QuantizerMethod("bnn++", mu=1.0, mu_final=16.0)
    method.setup(BinaryMLP(2, (4,), 2), 10, epochs=5)
    mus = []
    for epoch in range(5):
        mus.append(method.mu)
        method.epoch_end(epoch)
    assert mus[0] == pytest.approx(1.0) and mus[-1] == pytest.approx(16.0) and mus == sorted(mus)


def _short(tmp_path):
    return [
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--trainer.check_val_every_n_epoch", "1",
        "--model.init_args.mc_samples", "2",
    ]


@pytest.mark.parametrize("method", [None, "sbnn.training.STEMethod", "sbnn.training.BopMethod", "sbnn.training.SBNNMethod"])
def test_moons_recipe_runs_with_methods_selected_from_the_cli(tmp_path, capsys, method):
    extra = [] if method is None else ["--model.init_args.method", method]
    cli = run_cli(["fit", "--config", str(RECIPES / "moons.yaml"), *_short(tmp_path), *extra])
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    m = cli.trainer.callback_metrics
    for kind in ("mode", "mc"):
        assert 0.0 <= float(m[f"test_acc_{kind}"]) <= 1.0 and 0.0 <= float(m[f"test_ece_{kind}"]) <= 1.0
    expected = {None: "BayesBiNNMethod", "sbnn.training.STEMethod": "STEMethod"}.get(method, method and method.split(".")[-1])
    assert type(cli.model.method).__name__ == expected


def test_bad_method_value_in_the_cli_fails_before_training(tmp_path, capsys):
    with pytest.raises((ValueError, SystemExit)) as info:
        run_cli(["fit", "--config", str(RECIPES / "moons.yaml"), *_short(tmp_path), "--model.init_args.method.temperature", "0"])
    assert "temperature" in str(info.value) + capsys.readouterr().err


def test_digits_methods_recipe_calibrates_after_the_method_initialised_lambda(tmp_path, capsys):
    cli = run_cli(["fit", "--config", str(RECIPES / "digits_methods.yaml"), *_short(tmp_path), "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2"])
    out = capsys.readouterr().out
    assert "scales calibrated" in out and "sbnn: final test accuracy" in out
    lam = cli.model.network.layers[0].lam.detach()
    # BayesBiNN's ±10 initialisation happened (3 small steps barely move it) and was not undone
    assert float(lam.abs().median()) > 5.0

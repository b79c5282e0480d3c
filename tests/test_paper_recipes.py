"""The SBNN paper's recipes (``recipes/paper_*.yaml``): their networks are the paper's, and they train.

Two kinds of check:

- **structure**: each recipe is parsed and built by the CLI (nothing runs) and its network,
  data framing and optimisation are compared with the authors' settings (``train_shd.py``,
  ``train_dvs.py``, ``train_cifar.py``; Walker et al. 2025, arXiv 2505.17962): layer counts and
  widths, recurrence, time steps, λ, learning rates, the cosine floor; and the one setting
  ``layer.weights bernoulli`` turns every weight layer into a ±1 Bernoulli layer and nothing else;
- **end to end**: the installed ``sbnn fit`` runs each recipe in a subprocess on generated data
  in the real on-disk format, shrunk through command-line overrides, in both weight families:
  exit status 0, the final test line with the one-sample accuracy, and a checkpoint whose
  weight layers are of the family asked for.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from sbnn import BernoulliConv2d, BernoulliLinear, GaussianConv2d, GaussianLayer, GaussianLinear
from sbnn.cli import SBNNCLI
from sbnn.data._fixtures import write_dvs_frames, write_shd
from sbnn.models.time_affine import TimeAffine
from sbnn.training import SNRLoss

from .data.test_cifar10 import write_cifar10

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
WEIGHTS = "--model.init_args.network.init_args.layer.weights"

# the authors' settings, read from their code (see docs/recipes/paper.md)
SOFTPLUS_M2, SOFTPLUS_M1 = math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0))  # σ_b at the start: SHD, DVS
BETA = math.exp(-1.0 / math.log1p(math.exp(10.0)))  # exp(-Δt/softplus(10))


def build(recipe: str, *extra: str) -> SBNNCLI:
    """Parse and instantiate ``recipes/<recipe>.yaml`` (model, data, trainer) without running it."""
    return SBNNCLI(
        model_class=L.LightningModule, datamodule_class=L.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, run=False,
        args=["--config", str(RECIPES / f"{recipe}.yaml"), "--data.init_args.root", "unused",
              "--trainer.logger", "false", *extra],
    )


def convs(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, (GaussianConv2d, BernoulliConv2d))]


def check_paper_optimisation(task, *, lam: float, floor: float, affine_lr: float | None) -> None:
    """λ with the authors' normalisation, Adam groups and the cosine floor, as their code has them."""
    h = task.hparams
    assert h.snr_reduction == "sum" and isinstance(task.aux_fn, SNRLoss) and task.aux_fn.reduction == "sum"
    assert h.aux_loss == "snr" and h.aux_weight == pytest.approx(lam) and h.kl_weight == 0.0
    assert (h.lr, h.sigma_lr, h.lr_min_factor, h.mode_finetune_epochs) == (5e-3, 5e-2, floor, 0)
    assert h.calibrate is False  # the authors' uniform initialisation, not sbnn's calibration
    conf = task.configure_optimizers()
    lrs = {len(g["params"]): g["lr"] for g in conf["optimizer"].param_groups}
    sigma = [p for m in task.network.modules() if isinstance(m, GaussianLayer) for p in [m.sigma_rho]]
    affine = [p for m in task.network.modules() if isinstance(m, TimeAffine) for p in m.parameters()]
    groups = conf["optimizer"].param_groups
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(by_id[id(p)] == 5e-2 for p in sigma)
    assert all(by_id[id(p)] == (affine_lr or 5e-3) for p in affine)
    assert all(by_id[id(m.weight)] == 5e-3 for m in task.network.modules() if isinstance(m, GaussianLayer))
    assert lrs  # at least one group
    # the cosine of their adjust_learning_rate: min + (init − min)(1 + cos(π e/E))/2, min = init·floor
    schedule = conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
    epochs = schedule.max_epochs
    for e in (0, epochs // 2, epochs - 1):
        assert schedule(e) == pytest.approx(floor + (1 - floor) * (1 + math.cos(math.pi * e / epochs)) / 2)


def check_paper_neuron(net, *, sigma_b: float, threshold: float = 1.0) -> None:
    s = net.neuron_settings
    assert s.membrane_noise == "marginal" and s.sigma0 == 0.0 and s.estimator == "st" and not s.detach_reset
    assert s.beta == pytest.approx(BETA, abs=1e-4) and s.threshold == threshold
    assert s.sigma_b == pytest.approx(sigma_b, abs=1e-4) and s.learn_sigma_b == (sigma_b > 0)
    layer = net.layer_settings
    assert (layer.weights, layer.sigma_init, layer.variance_input_grad) == ("gaussian", 0.5, False)


# -- structure ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, hidden, bins, epochs", [("paper_shd", 256, 100, 30), ("paper_shd_cpu", 128, 50, 20)])
def test_shd_recipes_are_the_papers_recurrent_network(recipe, hidden, bins, epochs):
    cli = build(recipe)
    net, dm, task = cli.model.network, cli.datamodule, cli.model
    assert type(net).__name__ == "SpikingRecurrentNet"
    assert [(m.in_features, m.out_features) for m in net.layers] == [(700, hidden), (hidden, hidden)]
    assert net.output.in_features == hidden and net.num_classes == 20
    # both hidden layers recurrent, without self-connections, full BPTT through the recurrent spikes
    assert len(net.recurrent) == 2 and all(isinstance(r, GaussianLinear) and r.zero_diagonal for r in net.recurrent)
    assert net.recurrent_spike_grad == 1.0 and net.readout_beta == 0.0 and not net.binary_input
    check_paper_neuron(net, sigma_b=SOFTPLUS_M2)
    # σ_w = 0.5/√fan_in at the start: the feed-forward ones and the recurrent one of each layer
    assert float(net.layers[0].sigma.detach()) == pytest.approx(0.5 / math.sqrt(700), rel=1e-5)
    assert float(net.recurrent[1].sigma.detach()) == pytest.approx(0.5 / math.sqrt(hidden), rel=1e-5)
    # 1.4 s in `bins` equal bins of spike counts, batch 32, per-step gain and bias on every step
    hp = dm.hparams
    assert hp.duration == 1.4e6 and round(hp.duration / hp.time_window) == bins and hp.binary is False
    assert hp.downsample == 1 and hp.batch_size == 32
    assert net.layer_settings.time_affine_steps == bins
    assert cli.trainer.max_epochs == epochs
    check_paper_optimisation(task, lam=1e-6, floor=0.1, affine_lr=5e-2)


def _resnet_widths(net) -> list[int]:
    return [m.out_channels for m in convs(net)]


@pytest.mark.parametrize(
    "recipe, widths, per_stage, steps, batch, epochs, lam, in_channels",
    [
        ("paper_dvs_gesture", (32, 64, 128), 3, 49, 16, 70, 1e-10, 2),
        ("paper_cifar10", (64, 128, 256, 512), 3, 1, 256, 200, 1e-8, 3),
        ("paper_cifar10_cpu", (8, 16, 32, 64), 1, 1, 64, 6, 1e-8, 3),
    ],
)
def test_residual_recipes_are_the_papers_networks(recipe, widths, per_stage, steps, batch, epochs, lam, in_channels):
    cli = build(recipe)
    net, dm, task = cli.model.network, cli.datamodule, cli.model
    assert type(net).__name__ == "SpikingResNet"
    # stem + two convolutions per block: 19 (DVS) or 25 (CIFAR-10) conv layers, 3×3, stage widths
    expected = [widths[0]] * (1 + 2 * per_stage) + [w for w in widths[1:] for _ in range(2 * per_stage)]
    assert _resnet_widths(net) == expected
    assert len(expected) == {"paper_dvs_gesture": 19, "paper_cifar10": 25}.get(recipe, len(expected))
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in convs(net))
    assert convs(net)[0].in_channels == in_channels
    # stride 2 exactly on the first convolution of every later stage; no projection shortcut anywhere
    strides = [m.stride[0] for m in convs(net)]
    firsts = {1 + 2 * per_stage * s for s in range(1, len(widths))}
    assert strides == [2 if i in firsts else 1 for i in range(len(strides))]
    assert all(b.shortcut == "spike" and b.downsample == "pool" and b.proj is None for b in net.blocks)
    # the branch's spikes are added with a fixed 1: γ is a buffer, not a parameter
    assert all(float(b.gamma) == 1.0 and "gamma" in dict(b.named_buffers()) for b in net.blocks)
    assert not any(n.endswith("gamma") for n, _ in net.named_parameters())
    assert net.readout_pool == "avg" and net.readout_beta == 0.0 and net.input_size == (32, 32)
    check_paper_neuron(net, sigma_b=SOFTPLUS_M1 if in_channels == 2 else 0.0, threshold=1.0 if in_channels == 2 else 1e-3)
    assert net.layer_settings.time_affine_steps == steps
    # every conv has its per-step gain and bias; the readout has none
    assert sum(isinstance(getattr(m, "time_affine", None), TimeAffine) for m in convs(net)) == len(expected)
    assert getattr(net.output, "time_affine", None) is None
    hp = dm.hparams
    if in_channels == 2:
        assert (hp.n_time_bins, 128 // hp.downsample) == (steps, 32)
    else:
        assert (hp.n_steps, hp.encoding, hp.augment) == (steps, "direct", True)
    assert hp.batch_size == batch and cli.trainer.max_epochs == epochs
    check_paper_optimisation(task, lam=lam, floor=0.02, affine_lr=None)


@pytest.mark.parametrize("recipe", ["paper_shd_cpu", "paper_dvs_gesture", "paper_cifar10_cpu"])
def test_one_setting_switches_every_weight_layer_to_pm1(recipe):
    paper = build(recipe).model.network
    pm1 = build(recipe, WEIGHTS, "bernoulli").model.network
    kinds = lambda net, types: [type(m).__name__ for m in net.modules() if isinstance(m, types)]  # noqa: E731
    gaussian = kinds(paper, (GaussianLinear, GaussianConv2d))
    bernoulli = kinds(pm1, (BernoulliLinear, BernoulliConv2d))
    assert gaussian and not kinds(paper, (BernoulliLinear, BernoulliConv2d))
    assert not kinds(pm1, GaussianLayer)
    assert [k.replace("Gaussian", "") for k in gaussian] == [k.replace("Bernoulli", "") for k in bernoulli]
    # nothing else changes: neurons, per-step gains, time steps
    assert paper.neuron_settings == pm1.neuron_settings
    assert sum(isinstance(m, TimeAffine) for m in paper.modules()) == sum(isinstance(m, TimeAffine) for m in pm1.modules())


# -- end to end through the installed CLI ----------------------------------------------------------


def sbnn_script() -> list[str]:
    beside = Path(sys.executable).parent / "sbnn"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("sbnn")
    return [found] if found else [sys.executable, "-m", "sbnn.cli"]


def shd_data(root: Path) -> list[str]:
    write_shd(root, n_train=20, n_test=4)
    # 10 bins of 140 ms over the same 1.4 s keep the run short
    return ["--data.root", str(root), "--data.init_args.time_window", "140000.0",
            "--model.init_args.network.init_args.layer.time_affine_steps", "10",
            "--model.init_args.network.init_args.hidden", "[6, 6]", "--data.init_args.batch_size", "4"]


def dvs_data(root: Path) -> list[str]:
    write_dvs_frames(root, (1, 1, 1), classes=(0, 4, 7))
    return ["--data.root", str(root), "--data.init_args.n_time_bins", "3",
            "--model.init_args.network.init_args.widths", "[2, 4, 4]", "--data.init_args.batch_size", "2"]


def dvs_convnet_data(root: Path) -> list[str]:
    write_dvs_frames(root, (1, 1, 1), classes=(0, 4, 7))
    return ["--data.root", str(root), "--data.init_args.n_time_bins", "3", "--data.init_args.batch_size", "2",
            "--model.init_args.network.init_args.channels", "[2, 4]", "--model.init_args.network.init_args.fc", "[4]"]


def cifar_data(root: Path) -> list[str]:
    write_cifar10(root, per_batch=4)
    return ["--data.init_args.root", str(root), "--data.init_args.n_val", "4", "--data.init_args.batch_size", "4",
            "--model.init_args.network.init_args.widths", "[2, 4, 4, 4]"]


DATA = {"paper_shd": shd_data, "paper_shd_cpu": shd_data, "paper_dvs_gesture": dvs_data,
        "paper_dvs_gesture_cpu": dvs_convnet_data, "paper_cifar10": cifar_data, "paper_cifar10_cpu": cifar_data}
PRESENT = sorted(r for r in DATA if (RECIPES / f"{r}.yaml").is_file())


def test_every_paper_recipe_is_exercised():
    assert {p.stem for p in RECIPES.glob("paper_*.yaml")} <= set(DATA)


def fit_args(recipe: str, weights: str, tmp_path: Path) -> list[str]:
    out = tmp_path / "runs"
    return [
        "fit", "--config", str(RECIPES / f"{recipe}.yaml"), *DATA[recipe](tmp_path / "data"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1",
        "--data.init_args.num_workers", "0", "--model.init_args.mc_samples", "2", "--threads", "1", WEIGHTS, weights,
    ]


def check_run(stdout: str, out: Path, weights: str) -> None:
    """The final test line with the one-sample accuracy, and a checkpoint of the weight family asked for."""
    assert "sbnn: final test accuracy" in stdout and "sample" in stdout.split("final test accuracy")[-1]
    (ckpt,) = (out / "logs" / "version_0" / "checkpoints").glob("last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    # Gaussian layers carry σ_w (sigma_rho), Bernoulli layers λ (lam)
    n_sigma = sum(k.endswith("sigma_rho") for k in state)
    n_lam = sum(k.endswith(".lam") for k in state)
    assert (n_sigma > 0, n_lam > 0) == ((True, False) if weights == "gaussian" else (False, True))
    assert any(".time_affine.gain" in k for k in state)


@pytest.mark.parametrize(
    "recipe, weights",
    [("paper_shd_cpu", "gaussian"), ("paper_dvs_gesture", "bernoulli"), ("paper_cifar10_cpu", "gaussian")],
)
def test_recipe_trains_through_the_cli_entry_point(tmp_path, capsys, recipe, weights):
    # in-process (no interpreter start): one run per data set, both weight families among them
    from sbnn.cli import main

    assert main(fit_args(recipe, weights, tmp_path)) == 0
    check_run(capsys.readouterr().out, tmp_path / "runs", weights)


@pytest.mark.slow  # each run starts an interpreter and imports torch and Lightning: 15-30 s on 2 busy cores
@pytest.mark.parametrize("weights", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("recipe", PRESENT)
def test_recipe_trains_through_the_installed_cli(tmp_path, recipe, weights):
    env = {k: v for k, v in os.environ.items() if k != "SBNN_DEBUG"}
    proc = subprocess.run([*sbnn_script(), *fit_args(recipe, weights, tmp_path)], cwd=tmp_path,
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_run(proc.stdout, tmp_path / "runs", weights)


def test_fixed_residual_gain_adds_the_branch_spikes_with_one():
    from sbnn.models.blocks import ConvResidualBlock

    block = ConvResidualBlock(2, 4, stride=2, shortcut="spike", downsample="pool", gamma_init=1.0, learn_gamma=False)
    assert "gamma" not in dict(block.named_parameters()) and block.state_dict()["gamma"] == 1.0
    x = torch.rand(3, 2, 2, 6, 6).round()
    stream, (_, spk_out) = block(x)
    # average-pooled input spikes, zero-padded to 4 channels, plus the output spikes times 1
    pooled = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 2).reshape(3, 2, 2, 3, 3)
    expected = torch.cat([pooled, torch.zeros_like(pooled)], dim=2) + spk_out
    assert torch.allclose(stream.mean, expected)
    assert block.to(torch.float64).gamma.dtype == torch.float64
    learned = ConvResidualBlock(2, 4, stride=2, shortcut="spike", downsample="pool", gamma_init=1.0)
    assert isinstance(learned.gamma, torch.nn.Parameter)  # default unchanged

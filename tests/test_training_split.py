"""The Lightning-free training package, the tasks, and the task-level trust guarantees:
layering, divergence detection, seeded evaluation, prediction, float64 training."""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sbnn.cli import run_cli as main
from sbnn.data import RandmanDataModule
from sbnn.models import SpikingMLP
from sbnn.tasks import MethodTask, SpikingClassificationTask
from sbnn.training import (
    ClassificationSums,
    SBNNMethod,
    TrainingDivergedError,
    accuracy,
    expected_calibration_error,
    fit,
    negative_log_likelihood,
    predict,
    predictive_entropy,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
FORBIDDEN = {"lightning", "pytorch_lightning", "jsonargparse", "tonic"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_training_package_imports_no_lightning_nor_cli_library():
    files = sorted((ROOT / "sbnn" / "training").glob("*.py"))
    assert len(files) >= 8
    offenders = {f.name: _imports(f) & FORBIDDEN for f in files if _imports(f) & FORBIDDEN}
    assert not offenders


def test_lightning_is_imported_only_by_the_tasks_the_cli_and_the_lightning_components():
    # the CLI; the Lightning callbacks (EpochSeed, the gradient-flow monitor); data modules; tasks
    allowed = {"cli.py", "callbacks.py", "diagnostics/flow.py"}
    users = set()
    for f in (ROOT / "sbnn").rglob("*.py"):
        rel = f.relative_to(ROOT / "sbnn").as_posix()
        if "lightning" in _imports(f) and rel.split("/")[0] not in {"tasks", "data"}:
            users.add(rel)
    assert users <= allowed
    assert "lightning" in _imports(ROOT / "sbnn" / "tasks" / "base.py")
    assert not (ROOT / "sbnn" / "lightning.py").exists() and not (ROOT / "sbnn" / "methods.py").exists()


def test_top_level_reexports_still_work():
    import sbnn

    assert sbnn.kl_divergence is sbnn.training.kl_divergence
    assert sbnn.ELBOLoss is sbnn.training.ELBOLoss


# -- exact sums ----------------------------------------------------------------------------------
def test_classification_sums_over_uneven_parts_equal_the_whole_set():
    torch.manual_seed(0)
    probs = torch.rand(23, 4).softmax(-1)
    y = torch.randint(0, 4, (23,))
    parts = [ClassificationSums() for _ in range(3)]
    for part, idx in zip(parts, (slice(0, 2), slice(2, 15), slice(15, 23))):
        part.update(probs[idx], y[idx])
    total = sum(p.state() for p in parts)  # what an all-reduce (sum) over ranks gives
    m = parts[0].compute(total)
    assert float(m["acc"]) == pytest.approx(float(accuracy(probs, y)), abs=1e-7)
    assert float(m["nll"]) == pytest.approx(float(negative_log_likelihood(probs, y)), rel=1e-6)
    assert float(m["entropy"]) == pytest.approx(float(predictive_entropy(probs)), rel=1e-6)
    assert float(m["ece"]) == pytest.approx(float(expected_calibration_error(probs, y)), abs=1e-7)
    # a mean of the parts' means is not the same number here (the parts are 2, 13 and 8 long)
    mean_of_means = sum(float(p.compute()["acc"]) for p in parts) / 3
    assert abs(mean_of_means - float(m["acc"])) > 1e-3


# -- the plain loop ------------------------------------------------------------------------------
def _randman(n=64, batch=16):
    dm = RandmanDataModule(n_train=n, n_val=8, n_test=n, batch_size=batch, n_channels=20, n_classes=3, n_steps=10)
    dm.setup()
    return dm


def test_fit_and_predict_without_lightning_are_seeded_and_complete():
    torch.manual_seed(0)
    dm = _randman()
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    history = fit(net, SBNNMethod(), dm.train_dataloader(), epochs=1)
    assert len(history) == 1 and math.isfinite(history[0])
    a = predict(net, dm.test_dataloader(), mc_samples=3, eval_seed=5)
    torch.rand(7)  # the global RNG's state does not matter
    b = predict(net, dm.test_dataloader(), mc_samples=3, eval_seed=5)
    assert set(a) == {"mode", "mc", "lrt", "sample"}
    for kind in a:
        assert a[kind].shape == (64, 3)
        assert torch.allclose(a[kind].sum(-1), torch.ones(64))
        assert torch.equal(a[kind], b[kind])
    c = predict(net, dm.test_dataloader(), mc_samples=3, eval_seed=6)
    assert torch.equal(a["mode"], c["mode"]) and not torch.equal(a["mc"], c["mc"])


def test_mc_predictions_do_not_depend_on_the_batching():
    """The C drawn networks are the same for every batch: an example's MC probabilities are its own."""
    torch.manual_seed(0)
    dm = _randman()
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    x = torch.cat([xb for xb, _ in dm.test_dataloader()], dim=1)
    whole = predict(net, [x], kinds=("mode", "mc"), mc_samples=4)
    split = predict(net, [x[:, :5], x[:, 5:]], kinds=("mode", "mc"), mc_samples=4)
    for kind in ("mode", "mc"):
        assert torch.allclose(whole[kind], split[kind], atol=1e-6)


def test_fit_stops_at_a_nan_weight_before_training():
    dm = _randman()
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    with torch.no_grad():
        net.layers[0].lam[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"layers\.0\.lam.*before step 0.*checkpoint"):
        fit(net, SBNNMethod(), dm.train_dataloader(), epochs=1)


# -- the tasks under Lightning -------------------------------------------------------------------
def _trainer(tmp_path, **kwargs):
    from lightning.pytorch.callbacks import ModelCheckpoint

    return L.Trainer(
        max_epochs=kwargs.pop("max_epochs", 1), accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)], **kwargs,
    )


def test_a_nan_weight_stops_training_at_step_0_and_writes_no_checkpoint(tmp_path):
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    with torch.no_grad():
        net.output.lam[1, 2] = float("nan")
    task = SpikingClassificationTask(net, calibrate=False, mode_finetune_epochs=0)
    with pytest.raises(TrainingDivergedError, match=r"output\.lam.*before step 0"):
        _trainer(tmp_path).fit(task, datamodule=_randman())
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_huge_learning_rate_is_reported_with_what_to_change(tmp_path):
    """lr 1e6 drives the scales α to 0 (a constant, silent network at chance): warned, with the fix."""
    torch.manual_seed(0)
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    task = SpikingClassificationTask(net, lr=1e6, lam_lr=1e6, mode_finetune_epochs=0)
    with pytest.warns(UserWarning) as record:
        _trainer(tmp_path, max_epochs=2).fit(task, datamodule=_randman())
    text = " ".join(str(w.message) for w in record)
    assert "scale α of layer layers.0" in text and "Lower the learning rate" in text
    assert "no spike in the whole of epoch 1" in text
    for ckpt in tmp_path.rglob("*.ckpt"):  # whatever was saved is finite
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_loss_that_turns_nan_stops_at_that_step_before_its_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import Callback

    class PoisonAtStep2(Callback):  # a parameter turns NaN in step 2's update
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 2:
                pl_module.network.output.log_scale.grad.fill_(float("nan"))

    net = SpikingMLP(20, (16,), 3, binary_input=True)
    task = SpikingClassificationTask(net, mode_finetune_epochs=0)
    trainer = _trainer(tmp_path)
    trainer.callbacks.append(PoisonAtStep2())
    with pytest.raises(TrainingDivergedError, match=r"at step 2: parameter network\.output\.log_scale.*learning rate"):
        trainer.fit(task, datamodule=_randman())
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert "epoch=0-step=2.ckpt" in saved and "epoch=0-step=3.ckpt" not in saved
    for ckpt in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_collapse_and_silence_warnings_say_what_to_change(tmp_path):
    torch.manual_seed(0)
    net = SpikingMLP(20, (16,), 3, binary_input=True)
    with torch.no_grad():
        for layer in (*net.layers, net.output):
            layer.log_scale.fill_(-40.0)  # α = e^-40: a network that outputs a constant
            layer.lam.zero_()  # a uniform posterior
    task = SpikingClassificationTask(net, calibrate=False, mode_finetune_epochs=0, lr=1e-12, lam_lr=1e-12)
    with pytest.warns(UserWarning) as record:
        _trainer(tmp_path).fit(task, datamodule=_randman())
    text = " ".join(str(w.message) for w in record)
    assert "scale α of layer" in text and "recalibrate" in text
    assert "uniform prior" in text and "kl_weight" in text
    assert "no spike in the whole of epoch 0" in text


def test_the_task_leaves_the_network_modes_as_it_found_them(tmp_path):
    from sbnn import get_mode, set_mode

    net = SpikingMLP(20, (16,), 3, binary_input=True)
    set_mode(net, "mean")
    task = SpikingClassificationTask(net, mode_finetune_epochs=1, mc_samples=2)
    trainer = _trainer(tmp_path)
    trainer.fit(task, datamodule=_randman())
    trainer.test(task, datamodule=_randman())
    assert get_mode(net) == "mean"
    assert not any(n.stochastic for n in net.neurons)


def test_method_task_builds_its_optimisers_without_touching_the_network(tmp_path):
    from sbnn.training import BayesBiNNMethod

    net = SpikingMLP(20, (16,), 3, binary_input=True)
    task = MethodTask(net, BayesBiNNMethod(lam_init=10.0, lr=1e-3, temperature=1.0))
    before = net.layers[0].lam.detach().clone()

    class _Trainer:  # what configure_optimizers reads
        max_epochs, datamodule = 2, None

    task.hparams.train_size = 64
    task._trainer = _Trainer()
    try:
        task.configure_optimizers()
    finally:
        task._trainer = None
    assert torch.equal(net.layers[0].lam.detach(), before)


# -- through the CLI -----------------------------------------------------------------------------
def _short(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.n_train", "64",
        "--data.init_args.n_val", "16",
        "--data.init_args.n_test", "40",
        "--model.init_args.mc_samples", "3",
        "--model.init_args.mode_finetune_epochs", "0",
    ]


def _test_metrics(tmp_path, run: str) -> dict[str, float]:
    (log,) = (tmp_path / run).rglob("metrics.csv")
    rows = [r for r in csv.DictReader(log.open()) if r.get("test_acc_mode")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("test_") and v}


def test_checkpoint_tests_predicts_and_reproduces_through_the_cli(tmp_path, capsys):
    fit_cli = main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path)])
    fitted = {k: float(v) for k, v in fit_cli.trainer.callback_metrics.items() if k.startswith("test_")}
    (ckpt,) = tmp_path.rglob("last.ckpt")
    runs = []
    for i in range(2):
        cli = main(["test", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path / f"t{i}"), "--ckpt_path", str(ckpt)])
        runs.append({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test_")})
    # the MC and LRT noise is seeded by eval_seed: the same numbers on every run, and as at the end of fit
    assert runs[0] == runs[1] == fitted
    assert {"test_acc_mc", "test_acc_lrt", "test_ece_mc", "test_nll_lrt"} <= set(runs[0])

    cli = main(["predict", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path / "p"), "--ckpt_path", str(ckpt)])
    batches = cli.trainer.predict_loop.predictions
    assert sum(b["mode"].shape[0] for b in batches) == 40  # the test split, by default
    probs = {k: torch.cat([b[k] for b in batches]) for k in ("mode", "mc", "lrt")}
    for p in probs.values():
        assert p.shape == (40, 10) and torch.allclose(p.sum(-1), torch.ones(40), atol=1e-5)
    y = torch.cat([yb for _, yb in cli.datamodule.test_dataloader()])
    assert float(accuracy(probs["mode"], y)) == pytest.approx(runs[0]["test_acc_mode"], abs=1e-6)
    assert float(accuracy(probs["mc"], y)) == pytest.approx(runs[0]["test_acc_mc"], abs=1e-6)


def test_float64_training_through_the_cli(tmp_path, capsys):
    cli = main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *_short(tmp_path), "--trainer.precision", "64"])
    assert "sbnn: final test accuracy" in capsys.readouterr().out
    assert cli.model.network.layers[0].lam.dtype == torch.float64
    assert bool(cli.model.calibrated)
    assert all(math.isfinite(float(v)) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test_"))


@pytest.mark.slow
def test_ddp_metrics_equal_the_single_process_ones(tmp_path, capsys):
    """The same checkpoint tested on 1 process and under DDP on 2 CPU processes, with a test set of
    41 (shards of 21 and 20: the distributed sampler repeats one sample, which must not count)."""
    import os
    import subprocess
    import sys

    short = [*_short(tmp_path / "fit"), "--data.init_args.n_test", "41", "--data.init_args.batch_size", "8"]
    main(["fit", "--config", str(RECIPES / "quickstart.yaml"), *short])
    (ckpt,) = (tmp_path / "fit").rglob("last.ckpt")
    args = ["test", "--config", str(RECIPES / "quickstart.yaml"), "--ckpt_path", str(ckpt)]
    main([*args, *_short(tmp_path / "one"), "--data.init_args.n_test", "41", "--data.init_args.batch_size", "8"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sbnn.cli", *args, *_short(tmp_path / "two"), "--data.init_args.n_test", "41",
         "--data.init_args.batch_size", "8", "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.accelerator", "cpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _test_metrics(tmp_path, "one"), _test_metrics(tmp_path, "two")
    assert set(one) == set(two) and len(one) == 16
    assert {"test_acc_lrt", "test_nll_lrt", "test_entropy_lrt", "test_ece_lrt", "test_acc_sample"} <= set(one)
    for name, value in one.items():
        # every accuracy is a count over the 41 real examples, on both, and the same count
        if name.startswith("test_acc"):
            assert round(value * 41, 3) == round(value * 41) and round(two[name] * 41, 3) == round(two[name] * 41)
            assert round(two[name] * 41) == round(value * 41), name
        # mode, MC, LRT and one sample alike (the LRT noise is keyed by example): the same numbers up to
        # float rounding (sums in another order, rows rounded in other batch shapes)
        assert two[name] == pytest.approx(value, abs=1e-6), name

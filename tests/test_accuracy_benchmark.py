"""``benchmarks/accuracy.py --suite paper``: the four configurations it compares, built and run small.

The script's own functions are loaded from the file and run on a shrunken Randman data set, so a
change to the library that breaks the benchmark fails here rather than in a long run.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sbnn import BernoulliLinear, GaussianLinear, StochasticLIF
from sbnn.data import RandmanDataModule
from sbnn.models.time_affine import TimeAffine
from sbnn.training import FullPrecisionMethod, SNRLoss, STEMethod

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def script():
    spec = importlib.util.spec_from_file_location("accuracy_script", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_torch_globals():
    """The script's worker setup sets one thread and flush-denormal: put both back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_paper_suite_arguments(script):
    args = script.parse_args(["--suite", "paper"])
    assert args.methods == list(script.PAPER_METHODS)
    assert args.epochs_sbnn == args.epochs_float == args.epochs == script.PAPER_EPOCHS  # one budget for all
    assert args.out == "benchmarks/results/accuracy_paper.json"
    quick = script.parse_args(["--suite", "paper", "--quick"])
    assert quick.seeds == [0] and quick.epochs_sbnn == quick.epochs_float == 2
    default = script.parse_args([])  # the baselines suite is unchanged
    assert default.methods == list(script.METHODS) and (default.epochs_sbnn, default.epochs_float) == (80, 80)
    assert default.out == "benchmarks/results/accuracy.json"
    with pytest.raises(SystemExit):
        script.parse_args(["--suite", "paper", "--epochs", "0"])


def test_paper_configuration(script):
    net = script.suite_network("paper", 6, 3, n_steps=5, hidden=8)
    assert [type(m) for m in (*net.layers, net.output)] == [GaussianLinear, GaussianLinear]
    assert not net.layers[0].variance_input_grad
    affines = [m for m in net.modules() if isinstance(m, TimeAffine)]
    assert len(affines) == 1 and net.layers[0].time_affine is affines[0]  # the hidden layer only, not the readout
    assert affines[0].gain.shape[0] == 5
    (neuron,) = [m for m in net.modules() if isinstance(m, StochasticLIF)]
    assert neuron.membrane_noise == "marginal" and float(neuron.sigma0) == 0.0
    assert isinstance(neuron.sigma_b_rho, torch.nn.Parameter)
    assert math.isclose(float(neuron.sigma_b.detach()), script.PAPER_SIGMA_B, rel_tol=1e-5)
    task = script.suite_task("paper", net)
    assert task.hparams.kl_weight == 0.0 and task.hparams.aux_weight == script.PAPER_SNR_WEIGHT == 1e-6
    assert isinstance(task.aux_fn, SNRLoss) and task.aux_fn.reduction == "sum"
    assert not task.hparams.calibrate and task.hparams.mode_finetune_epochs == 0
    optimizer = task.configure_optimizers()["optimizer"]
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    sigmas = [m.sigma_rho for m in net.modules() if isinstance(m, GaussianLinear)] + [neuron.sigma_b_rho]
    assert {lrs[id(p)] for p in sigmas} == {script.PAPER_SIGMA_LR}
    others = [p for p in net.parameters() if all(p is not q for q in sigmas)]
    assert others and {lrs[id(p)] for p in others} == {script.PAPER_LR}


def test_binary_and_float_configurations(script):
    for method in ("sbnn", "ste_method", "fp_method"):
        net = script.suite_network(method, 6, 3, n_steps=5, hidden=8)
        assert [type(m) for m in (*net.layers, net.output)] == [BernoulliLinear, BernoulliLinear]
        assert not any(isinstance(m, TimeAffine) for m in net.modules())
    bn = script.suite_network("fp_bn", 6, 3, n_steps=5, hidden=8)
    assert [type(m) for m in (*bn.layers, bn.output)] == [BernoulliLinear, BernoulliLinear]
    affines = [m for m in bn.modules() if isinstance(m, TimeAffine)]
    assert affines == [bn.layers[0].time_affine] and affines[0].batch_norm  # one BatchNorm per step, hidden layer only
    assert affines[0].running_mean.shape == (5, 8)
    task = script.suite_task("sbnn", script.suite_network("sbnn", 6, 3, 5, 8), {"kl_weight": 0.03})
    assert task.hparams.kl_weight == 0.03 and task.hparams.lam_lr == 0.1 and task.hparams.mode_finetune_epochs == 3
    ste = script.suite_method("ste_method")
    assert type(ste) is STEMethod and ste.lr == script.STE_METHOD_LR
    for method in ("fp_bn", "fp_method"):
        fp = script.suite_method(method)
        assert type(fp) is FullPrecisionMethod and fp.lr == script.FP_METHOD_LR
    with pytest.raises(ValueError, match="unknown paper-suite method 'float'"):
        script.suite_network("float", 6, 3, 5)
    with pytest.raises(ValueError, match="not trained by SpikingClassificationTask"):
        script.suite_task("ste_method", script.suite_network("ste_method", 6, 3, 5, 8))
    with pytest.raises(ValueError, match="not an sbnn.training method"):
        script.suite_method("paper")


def _tiny_randman(name: str) -> RandmanDataModule:
    assert name == "randman"
    dm = RandmanDataModule(n_classes=3, n_channels=6, n_steps=5, n_train=16, n_val=6, n_test=9, batch_size=8)
    dm.setup()
    return dm


@pytest.mark.filterwarnings("ignore")
def test_every_method_trains_and_is_tabulated(script, monkeypatch, restore_torch_globals):
    monkeypatch.setattr(script, "make_datamodule", _tiny_randman)
    monkeypatch.setattr(script, "HIDDEN", 8)
    results = []
    for method in script.SUITE_METHODS:
        job = {"dataset": "randman", "method": method, "seed": 0, "epochs": 1, "task_kwargs": {}, "label": "sbnn"}
        r = script.run_one(job)
        assert r["label"] == method and r["epochs"] == 1 and len(r["curves"]["epoch_s"]) == 1
        kinds = ("mode", "mc", "lrt", "sample") if method in script.TASK_METHODS else ()
        for key in ("test_acc", "train_acc_final", *(f"test_acc_{k}" for k in kinds)):
            assert 0.0 <= r[key] <= 1.0, (method, key)
            # accuracies of 9 test / 16 train examples
            assert r[key] * (9 if key.startswith("test") else 16) == pytest.approx(round(r[key] * (9 if key.startswith("test") else 16)), abs=1e-4)
        results.append(r)
    assert results.pop()["method"] == "fp_method"  # runs on request; the suite tabulates the four
    summary = script.summarise(results, ["randman"], list(script.PAPER_METHODS))
    assert set(summary) == {f"randman/{m}" for m in script.PAPER_METHODS}
    assert "test_acc_sample" in summary["randman/paper"] and "test_acc_sample" not in summary["randman/fp_bn"]
    table = script.print_table(results, ["randman"], list(script.PAPER_METHODS), 1, sample=True)
    assert "1 sample" in table[2] and len(table) == 4 + len(script.PAPER_METHODS)
    lines, targets = script.evaluate_paper_targets(summary, ["randman"])
    mode, one = summary["randman/sbnn"]["test_acc_mode"]["mean"], summary["randman/paper"]["test_acc_sample"]["mean"]
    assert targets["randman: sbnn mode within 3 of paper one sample"] == (mode >= one - 3.0)
    assert len(lines) == 2

"""Task options the SBNN paper's recipes need: the cosine floor, the gains' learning rate, the SNR sum.

The authors' schedule (``adjust_learning_rate`` in their train_*.py) sets, at the start of epoch
``e`` of ``E``, ``lr = min + (init − min)(1 + cos(π e/E))/2`` with ``min = init/10`` (SHD) or
``init/50`` (DVS Gesture, CIFAR-10); the values below are computed by hand from that formula.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP
from sbnn.models.time_affine import TimeAffine
from sbnn.tasks import SpikingClassificationTask
from sbnn.training import SNRLoss, TwoPhaseCosine


def test_cosine_floor_against_hand_values():
    s = TwoPhaseCosine(10, 0, 0.3, floor=0.02)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.51)  # 0.02 + 0.98 · ½
    assert s(2) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + 0.8090169943749475))  # cos(π/5)
    assert s(10) == pytest.approx(0.02) and s(14) == pytest.approx(0.02)
    # the fine-tune restart is unchanged; the main phase ends at the floor
    ft = TwoPhaseCosine(10, 2, 0.3, floor=0.1)
    assert ft(4) == pytest.approx(0.55) and ft(8) == pytest.approx(0.3) and ft(9) == pytest.approx(0.15)
    # default: today's schedule, down to 0
    assert TwoPhaseCosine(10, 0, 0.3)(10) == 0.0 and TwoPhaseCosine(10, 0, 0.3)(5) == pytest.approx(0.5)


@pytest.mark.parametrize("floor", [-0.1, 1.5, float("nan")])
def test_cosine_floor_outside_0_1_is_refused(floor):
    with pytest.raises(ValueError, match="floor must lie in"):
        TwoPhaseCosine(10, 0, 0.3, floor=floor)


def _paper_mlp() -> SpikingMLP:
    return SpikingMLP(
        6, [5], 3,
        layer=LayerSettings(weights="gaussian", variance_input_grad=False, time_affine_steps=4),
        neuron=NeuronSettings(membrane_noise="marginal", sigma0=0.0, sigma_b=0.3, learn_sigma_b=True),
    )


def _lrs_over_epochs(task: SpikingClassificationTask, epochs: int) -> list[list[float]]:
    task.trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    out = []
    for _ in range(epochs):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_task_groups_and_floor_follow_the_authors_shd_schedule():
    net = _paper_mlp()
    task = SpikingClassificationTask(net, lr=5e-3, sigma_lr=5e-2, affine_lr=5e-2, lr_min_factor=0.1, kl_weight=0.0,
                                     mode_finetune_epochs=0)
    conf = task.configure_optimizers()
    by_id = {id(p): g["lr"] for g in conf["optimizer"].param_groups for p in g["params"]}
    affine = [p for m in net.modules() if isinstance(m, TimeAffine) for p in m.parameters()]
    assert affine and all(by_id[id(p)] == 5e-2 for p in affine)
    assert by_id[id(net.layers[0].sigma_rho)] == 5e-2 and by_id[id(net.layers[0].weight)] == 5e-3
    assert len(by_id) == sum(1 for _ in net.parameters())  # every parameter in exactly one group
    lrs = _lrs_over_epochs(task, 30)
    for e, expected_factor in [(0, 1.0), (15, 0.55), (29, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))]:
        assert sorted(lrs[e]) == pytest.approx(sorted([5e-3 * expected_factor] + [5e-2 * expected_factor] * 2))


def test_defaults_keep_todays_groups_and_schedule():
    net = _paper_mlp()
    task = SpikingClassificationTask(net, lr=1e-3)
    conf = task.configure_optimizers()
    groups = conf["optimizer"].param_groups
    affine = {id(p) for m in net.modules() if isinstance(m, TimeAffine) for p in m.parameters()}
    # the gains ride with the other float parameters at lr, and the cosine ends at 0
    (rest,) = [g for g in groups if any(id(p) in affine for p in g["params"])]
    assert rest["lr"] == 1e-3 and len(rest["params"]) > len(affine)
    task2 = SpikingClassificationTask(_paper_mlp(), lr=1e-3, mode_finetune_epochs=0)
    assert _lrs_over_epochs(task2, 4)[2][0] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert task.hparams.snr_reduction == "mean"


def test_snr_reduction_reaches_the_loss():
    net = _paper_mlp()
    task = SpikingClassificationTask(net, aux_loss="snr", aux_weight=1e-6, snr_reduction="sum")
    assert isinstance(task.aux_fn, SNRLoss) and task.aux_fn.reduction == "sum"
    mean_task = SpikingClassificationTask(net, aux_loss="snr", aux_weight=1e-6)
    assert mean_task.aux_fn.reduction == "mean"
    # the sum over 4 steps × 5 units, averaged over the batch, is 20× the mean of the same drives
    x = torch.rand(4, 3, 6).round()
    task.aux_fn.attach(net)
    mean_task.aux_fn.attach(net)
    net(x)
    total, mean = task.aux_fn(net), mean_task.aux_fn(net)
    assert float(total.detach()) == pytest.approx(20 * float(mean.detach()), rel=1e-5)


def test_snr_signal_and_sigma_b_weight_reach_the_loss():
    net = _paper_mlp()
    task = SpikingClassificationTask(
        net, aux_loss="snr", aux_weight=1e-6, snr_reduction="sum", snr_signal="current", snr_sigma_b_weight=2.0
    )
    assert (task.aux_fn.reduction, task.aux_fn.signal, task.aux_fn.sigma_b_weight) == ("sum", "current", 2.0)
    x = torch.rand(4, 3, 6).round()
    losses = (task.aux_fn, SNRLoss("sum", signal="current", sigma_b_weight=2.0), SNRLoss("sum"))
    for loss in losses:
        loss.attach(net)
    net(x)  # one forward; every loss reads the same drives
    ours, reference, membrane = (float(loss(net).detach()) for loss in losses)
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours != pytest.approx(membrane, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"lr_min_factor": 1.5}, "lr_min_factor"), ({"lr_min_factor": -0.1}, "lr_min_factor"),
     ({"affine_lr": 0.0}, "affine_lr"), ({"snr_reduction": "max"}, "snr_reduction"),
     ({"snr_signal": "voltage"}, "snr_signal"), ({"snr_sigma_b_weight": -1.0}, "snr_sigma_b_weight")],
)
def test_bad_option_values_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikingClassificationTask(_paper_mlp(), **kwargs)

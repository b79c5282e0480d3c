"""Gradient-flow statistics: by hand on a forward pass, and the Lightning callback in a short fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from sbnn.data import RandmanDataModule
from sbnn.diagnostics import FlowAccumulator, GradientFlowMonitor, layer_statistics
from sbnn.models import NeuronSettings, SpikingMLP
from sbnn.neurons import record_drives
from sbnn.tasks import SpikingClassificationTask
from sbnn.posterior import sign_mean


def test_vanishing_share_and_rate_by_hand():
    net = SpikingMLP(4, (3,), 2, neuron=NeuronSettings(estimator='st', sigma0=0.1))
    acc = FlowAccumulator(threshold=1e-3)
    acc.attach(net)
    with record_drives(net) as drives:
        net(torch.rand(6, 5, 4).round())
    drive = drives["neurons.0"]
    density = torch.exp(-0.5 * drive.theta.detach() ** 2) / math.sqrt(2 * math.pi)  # st: factor = φ(θ)
    acc.update(net)
    stats = acc.compute()["neurons.0"]
    assert stats["vanishing"] == pytest.approx(float((density < 1e-3).double().mean()))
    assert stats["rate"] == pytest.approx(float(drive.spikes.mean()))
    # a deterministic (mode) pass records nothing
    net.neurons[0].set_stochastic(False)
    net(torch.zeros(6, 5, 4))
    acc.update(net)
    assert acc.compute()["neurons.0"] == stats
    acc.detach()  # the hooks are gone: a noisy pass adds nothing either
    net.neurons[0].set_stochastic(True)
    net(torch.rand(6, 5, 4).round())
    acc.update(net)
    assert acc.compute()["neurons.0"] == stats


def test_layer_statistics_by_hand():
    net = SpikingMLP(4, (3,), 2)
    stats = layer_statistics(net)
    lam = net.layers[0].lam.detach()
    assert stats["layers.0"]["mean_abs_m"] == pytest.approx(float(sign_mean(lam).abs().mean()))
    assert stats["output"]["kl_per_weight"] == pytest.approx(float(net.output.kl()) / net.output.lam.numel())


def test_monitor_logs_per_epoch_in_a_fit(tmp_path):
    dm = RandmanDataModule(n_classes=3, n_channels=10, n_steps=10, n_train=64, n_val=16, n_test=16, batch_size=32)
    task = SpikingClassificationTask(SpikingMLP(10, (8,), 3, binary_input=True), mode_finetune_epochs=0)
    monitor = GradientFlowMonitor()
    trainer = L.Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert [row["epoch"] for row in monitor.history] == [0.0, 1.0]
    row = monitor.history[-1]
    assert 0.0 <= row["flow/network.neurons.0/vanishing"] <= 1.0
    assert 0.0 <= row["flow/network.neurons.0/rate"] <= 1.0
    assert row["flow/network.layers.0/mean_abs_m"] == pytest.approx(
        float(sign_mean(task.network.layers[0].lam.detach()).abs().mean())
    )
    assert "flow/network.output/kl_per_weight" in trainer.callback_metrics

"""Divergence checks kept on the device (no host read per step) still name the first bad step."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sbnn.data import RandmanDataModule
from sbnn.models import SpikingMLP
from sbnn.tasks import SpikingClassificationTask
from sbnn.tasks.guards import DivergenceGuard
from sbnn.training import SBNNMethod, TrainingDivergedError, fit
from sbnn.training.divergence import FiniteRecord


def _randman(n=64, batch=8):
    dm = RandmanDataModule(n_train=n, n_val=8, n_test=8, batch_size=batch, n_channels=20, n_classes=3, n_steps=10)
    dm.setup()
    return dm


def test_finite_record_keeps_the_earliest_bad_step():
    record = FiniteRecord()
    assert record.first_bad() is None
    record.record(FiniteRecord.LOSS, 0, [torch.tensor(1.0)])
    record.record(FiniteRecord.PARAMETER, 1, [torch.ones(3), torch.tensor([1.0, float("inf")])])
    record.record(FiniteRecord.PARAMETER, 2, [torch.tensor([float("nan")])])
    record.record(FiniteRecord.LOSS, 3, [torch.tensor(float("nan"))])
    record.record(FiniteRecord.INPUT, 4, [torch.arange(3)])  # integer tensors are not checked
    assert record.first_bad() == (FiniteRecord.PARAMETER, 1)
    with pytest.raises(TrainingDivergedError, match=r"at step 1: parameter w became NaN/inf"):
        record.raise_if_bad("input batch", [("w", torch.tensor([float("nan")]))])


def test_fit_with_deferred_checks_names_the_first_bad_step():
    torch.manual_seed(0)
    dm = _randman()
    calls = []

    def loss_fn(logits, y):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if len(calls) == 5 else loss  # step 4's loss is NaN

    net = SpikingMLP(20, (16,), 3, binary_input=True)
    with pytest.raises(TrainingDivergedError, match=r"at step 4: the loss became NaN"):
        fit(net, SBNNMethod(), dm.train_dataloader(), epochs=1, loss_fn=loss_fn, check_every=3)
    assert len(calls) == 6  # read back after step 5, the end of its group of three
    with pytest.raises(ValueError, match="check_every"):
        fit(net, SBNNMethod(), dm.train_dataloader(), epochs=1, check_every=0)


def test_deferred_guard_stops_before_the_checkpoint_of_a_diverged_state(tmp_path):
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class PoisonAtStep2(Callback):  # a parameter turns NaN in step 2's update
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if trainer.global_step == 2:
                pl_module.network.output.log_scale.grad.fill_(float("nan"))

    class Task(SpikingClassificationTask):
        def configure_callbacks(self):
            return [DivergenceGuard(check_every=50)]

    net = SpikingMLP(20, (16,), 3, binary_input=True)
    task = Task(net, mode_finetune_epochs=0)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True), PoisonAtStep2()],
    )
    with pytest.raises(TrainingDivergedError, match=r"at step 2: parameter network\.output\.log_scale"):
        trainer.fit(task, datamodule=_randman())
    saved = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert "epoch=0-step=2.ckpt" in saved and "epoch=0-step=3.ckpt" not in saved
    for ckpt in (tmp_path / "ckpt").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_guard_refuses_a_bad_check_every():
    with pytest.raises(ValueError, match="check_every"):
        DivergenceGuard(check_every=0)

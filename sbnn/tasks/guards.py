"""``DivergenceGuard``: stop a Lightning run at the first non-finite value, before any checkpoint.

Installed by every sbnn task (:meth:`sbnn.tasks.SpikingTask.configure_callbacks`); Lightning runs
the callbacks a module returns there before its ``ModelCheckpoint``, so a diverged state is never
saved. The checks themselves are :mod:`sbnn.training.divergence`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ..training.divergence import check_inputs, check_loss, check_parameters

__all__ = ["DivergenceGuard"]


class DivergenceGuard(L.Callback):
    """Raise :class:`sbnn.training.TrainingDivergedError` at the first NaN/inf input, loss or parameter.

    At the start of a fit and before its first step: the parameters (a corrupt initial network
    or checkpoint).
    Before every step: the input batch. After every step: the loss and every parameter.
    """

    def __init__(self) -> None:
        # our own count of training batches: under manual optimisation Lightning's global_step
        # does not see the methods' optimisers
        self.step = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a checkpoint's weights are restored, before calibration and the sanity check
        check_parameters(pl_module.named_parameters(), trainer.global_step, after_update=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step
        check_parameters(pl_module.named_parameters(), self.step, after_update=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            check_inputs(x, self.step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, self.step = self.step, self.step + 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            check_loss(loss, step)
        check_parameters(pl_module.named_parameters(), step, after_update=True)

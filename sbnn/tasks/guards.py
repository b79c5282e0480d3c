"""``DivergenceGuard``: stop a Lightning run at the first non-finite value, before any checkpoint.

Installed by every sbnn task (:meth:`sbnn.tasks.SpikingTask.configure_callbacks`); Lightning runs
the callbacks a module returns there before its ``ModelCheckpoint``, so a diverged state is never
saved. The checks themselves are :mod:`sbnn.training.divergence`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ..training.divergence import FiniteRecord, check_inputs, check_loss, check_parameters

__all__ = ["DivergenceGuard"]


class DivergenceGuard(L.Callback):
    """Raise :class:`sbnn.training.TrainingDivergedError` at the first NaN/inf input, loss or parameter.

    At the start of a fit and before its first step: the parameters (a corrupt initial network
    or checkpoint).
    Before every step: the input batch. After every step: the loss and every parameter.

    Args:
        check_every: read the checks back every ``check_every`` steps. ``1`` raises in the step
            itself; larger values keep the checks on the device
            (:class:`~sbnn.training.divergence.FiniteRecord`), so a step on an accelerator never
            waits for the host; the error still names the first non-finite step, and the record
            is read before every validation, checkpoint and the end of every epoch. ``None``
            (default): 1 on the CPU (where reading a flag costs nothing), 50 on an accelerator.
    """

    def __init__(self, check_every: int | None = None) -> None:
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1):
            raise ValueError(f"DivergenceGuard: check_every must be a positive integer or None, got {check_every!r}")
        # our own count of training batches: under manual optimisation Lightning's global_step
        # does not see the methods' optimisers
        self.step = 0
        self.check_every = check_every
        self._record = FiniteRecord()
        self._pl_module: L.LightningModule | None = None

    def _every(self, pl_module: L.LightningModule) -> int:
        if self.check_every is not None:
            return self.check_every
        return 1 if pl_module.device.type == "cpu" else 50

    def _flush(self) -> None:
        if self._pl_module is not None:
            record, self._record = self._record, FiniteRecord()
            record.raise_if_bad("input batch", self._pl_module.named_parameters())

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after a checkpoint's weights are restored, before calibration and the sanity check
        self._pl_module = pl_module
        check_parameters(pl_module.named_parameters(), trainer.global_step, after_update=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step = trainer.global_step
        check_parameters(pl_module.named_parameters(), self.step, after_update=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, torch.Tensor):
            if self._every(pl_module) == 1:
                check_inputs(x, self.step)
            else:
                self._record.record(FiniteRecord.INPUT, self.step, [x])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, self.step = self.step, self.step + 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        every = self._every(pl_module)
        if every == 1:
            if isinstance(loss, torch.Tensor):
                check_loss(loss, step)
            check_parameters(pl_module.named_parameters(), step, after_update=True)
            return
        if isinstance(loss, torch.Tensor):
            self._record.record(FiniteRecord.LOSS, step, [loss])
        self._record.record(FiniteRecord.PARAMETER, step, [p for _, p in pl_module.named_parameters()])
        if self.step % every == 0:
            self._flush()

    # the record is read before anything that could keep a diverged state
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._flush()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()

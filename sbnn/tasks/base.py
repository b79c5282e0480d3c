"""``SpikingTask``: the LightningModule base that sbnn's tasks share.

What every task needs and writes once here:

- ``n_train`` for the KL term (:func:`training_set_size`);
- the first-batch preparation: the subclass's one-time network initialisation (at ``setup``,
  before the optimisers are built), then at ``on_fit_start`` the scale calibration (``network.calibrate(x)``), then, under DDP, rank 0's
  parameters and buffers broadcast to every rank; a persisted ``calibrated`` buffer keeps a run
  resumed from a checkpoint from repeating it;
- divergence checks (:class:`~sbnn.tasks.guards.DivergenceGuard`, installed by
  :meth:`configure_callbacks` so that it runs before any checkpoint callback);
- validation and test metrics as exact sums (:class:`sbnn.training.ClassificationSums`): summed
  over batches and all-reduced over ranks before dividing, with the samples that a distributed
  sampler repeats to even out the shards left out, so they equal one pass over the data on one
  process;
- seeded evaluation noise (``eval_seed``; :mod:`sbnn.training.evaluation`) and a ``predict_step``
  returning ``{kind: class probabilities [B, K]}``;
- every batch cast to the module's floating dtype (``--trainer.precision 64`` works).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from ..functional.sparse import SpikeIndices
from ..models.index_input import indices_to
from ..training.evaluation import PREDICTION_KINDS, predict_probabilities
from ..training.metrics import ClassificationSums
from .guards import DivergenceGuard

__all__ = ["SpikingTask", "training_set_size", "calibrate_network"]

def training_set_size(module: L.LightningModule, owner: str) -> int:
    """``N_train`` for the KL term: ``hparams.train_size``, else the datamodule's ``n_train``, else
    the length of the training set."""
    if module.hparams.get("train_size") is not None:
        return int(module.hparams.train_size)
    dm = getattr(module.trainer, "datamodule", None)
    if dm is not None and getattr(dm, "n_train", None):
        return int(dm.n_train)
    try:
        return len(module.trainer.train_dataloader.dataset)
    except (AttributeError, TypeError):
        raise ValueError(
            f"{owner} needs the number of training examples for the KL term: "
            "give train_size=... or use a datamodule with an n_train attribute"
        ) from None


def calibrate_network(network: nn.Module, x: Tensor) -> list[float]:
    """``network.calibrate(x)``: the calibration targets belong to the network, not the task.

    Returns the hidden layers' firing rates after calibration.
    """
    return network.calibrate(x)


class SpikingTask(L.LightningModule):
    """Base of :class:`~sbnn.tasks.SpikingClassificationTask` and :class:`~sbnn.tasks.MethodTask`.

    Subclasses implement ``training_step`` and may override :meth:`initialize_network` (one-time
    changes to the network before calibration), :meth:`prediction_kinds` and :meth:`predict`.
    They call ``save_hyperparameters`` themselves.

    Args:
        network: the model, returning logits ``[B, K]`` for batches ``x [T, B, N]``.
        mc_samples: ``C``, drawn networks of MC evaluation (and LRT passes averaged).
        calibrate: set the scales from the first training batch before training.
        train_size: training-set size; read from the datamodule when ``None``.
        eval_seed: seed of the MC and LRT evaluation noise (see :mod:`sbnn.training.evaluation`).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        # persisted, so that a run resumed from a checkpoint does not prepare the network again
        self.register_buffer("calibrated", torch.tensor(False))
        self._sums: dict[str, ClassificationSums] = {}
        self._seen = 0

    def forward(self, x: Tensor | SpikeIndices) -> Tensor:
        return self.network(self.cast(x))

    def cast(self, x: Tensor | SpikeIndices) -> Tensor | SpikeIndices:
        """``x`` on the module's device, floating inputs in the module's dtype.

        A batch of :class:`~sbnn.functional.sparse.SpikeIndices` (a data module's
        ``input_format="indices"``) is moved as it is: the network's first layer gathers from it.
        """
        if isinstance(x, SpikeIndices):
            return indices_to(x, self.device)
        if x.is_floating_point() and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return x.to(self.device)

    # -- preparation -------------------------------------------------------------------------------
    def n_train(self) -> int:
        """The number of training examples ``N_train`` (the KL term is per example)."""
        return training_set_size(self, type(self).__name__)

    def initialize_network(self) -> None:
        """One-time changes to the network before calibration (default: none)."""

    def configure_callbacks(self) -> list[L.Callback]:
        # callbacks returned here run before any ModelCheckpoint (Lightning orders those last)
        return [DivergenceGuard()]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # checkpoints written before the flag existed come from prepared networks
        checkpoint.get("state_dict", {}).setdefault("calibrated", torch.tensor(True))

    def setup(self, stage: str) -> None:
        # before configure_optimizers, which may need the initialised λ (Bop takes ±1 values
        # only); a resumed run's checkpoint is loaded after this and overwrites it
        if stage == "fit" and not bool(self.calibrated):
            self.initialize_network()

    def on_fit_start(self) -> None:
        if bool(self.calibrated):
            return
        if self.hparams.calibrate and hasattr(self.network, "calibrate"):
            x, _ = next(iter(self._first_loader()))
            rates = calibrate_network(self.network, self.cast(x))
            self.print(f"sbnn: scales calibrated on a first batch; hidden firing rates {[round(r, 4) for r in rates]}")
        self.calibrated.fill_(True)
        self._broadcast_from_rank_zero()

    def _first_loader(self):
        if self.trainer.datamodule is not None:
            return self.trainer.datamodule.train_dataloader()
        self.trainer.fit_loop.setup_data()  # idempotent: the loop reuses the loader it builds here
        return self.trainer.train_dataloader

    def _broadcast_from_rank_zero(self) -> None:
        """Under DDP every rank prepared on its own first batch: keep rank 0's parameters everywhere.

        (DDP broadcasts the parameters only once, when it wraps the model, which is before
        ``on_fit_start``.)
        """
        import torch.distributed as dist

        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for tensor in [*self.network.parameters(), *self.network.buffers()]:
                dist.broadcast(tensor.data, src=0)

    # -- evaluation --------------------------------------------------------------------------------
    def prediction_kinds(self) -> tuple[str, ...]:
        """The kinds reported by test and predict (``mode``, ``mc``, ``lrt``, ``sample``)."""
        return PREDICTION_KINDS

    def predict(self, x: Tensor, kinds: tuple[str, ...], stream: int) -> dict[str, Tensor]:
        """``{kind: class probabilities [B, K]}`` for the batch ``x`` (noise stream ``stream``)."""
        return predict_probabilities(
            self.network, self.cast(x), kinds=kinds, mc_samples=self.hparams.mc_samples,
            seed=self.hparams.eval_seed, stream=stream,
        )

    def _stream(self, batch_idx: int, dataloader_idx: int = 0) -> int:
        # distinct per (loader, batch, rank); the same on every run of the same data order
        world, rank = self.trainer.world_size if self._trainer else 1, self.global_rank
        return ((dataloader_idx * 1_000_003) + batch_idx) * world + rank

    def _kept(self, n: int, loaders: Any, dataloader_idx: int) -> Tensor | None:
        """Mask of the batch's real samples: a ``DistributedSampler`` pads the last shards by
        repeating samples; positions ``rank + k·world ≥ len(dataset)`` are such repeats."""
        start = self._seen
        self._seen += n
        if not self._trainer:
            return None
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[dataloader_idx]
        sampler = getattr(loaders, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
            return None
        positions = sampler.rank + sampler.num_replicas * (start + torch.arange(n))
        return positions < len(sampler.dataset)

    def _start_sums(self, kinds: tuple[str, ...]) -> None:
        self._sums = {kind: ClassificationSums() for kind in kinds}
        self._seen = 0

    def _update_sums(self, probs: dict[str, Tensor], y: Tensor, keep: Tensor | None) -> None:
        if keep is not None:
            keep = keep.to(y.device)
            probs, y = {k: p[keep] for k, p in probs.items()}, y[keep]
        for kind, p in probs.items():
            self._sums[kind].update(p, y)

    def _log_sums(self, stage: str) -> dict[str, float]:
        """All-reduce (sum) every kind's sums, then log ``{stage}_{metric}_{kind}``."""
        logged = {}
        for kind, sums in self._sums.items():
            state = sums.state().to(self.device)
            if self._trainer and self.trainer.world_size > 1:
                state = self.trainer.strategy.reduce(state, reduce_op="sum")
            for metric, value in sums.compute(state).items():
                # identical on every rank after the reduction: no further syncing
                self.log(f"{stage}_{metric}_{kind}", value.float(), rank_zero_only=False, sync_dist=False)
                logged[f"{stage}_{metric}_{kind}"] = float(value)
        return logged

    def on_validation_epoch_start(self) -> None:
        self._start_sums(("mode",))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        keep = self._kept(y.shape[0], self.trainer.val_dataloaders if self._trainer else None, dataloader_idx)
        self._update_sums(self.predict(x, ("mode",), self._stream(batch_idx, dataloader_idx)), y, keep)

    def on_validation_epoch_end(self) -> None:
        self._log_sums("val")

    def on_test_epoch_start(self) -> None:
        self._start_sums(self.prediction_kinds())

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Sum accuracy, NLL, entropy and calibration bins of every prediction kind."""
        x, y = batch
        if not self._sums:  # test_step called outside trainer.test
            self.on_test_epoch_start()
        keep = self._kept(y.shape[0], self.trainer.test_dataloaders if self._trainer else None, dataloader_idx)
        self._update_sums(self.predict(x, self.prediction_kinds(), self._stream(batch_idx, dataloader_idx)), y, keep)

    def on_test_epoch_end(self) -> None:
        self._log_sums("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{kind: class probabilities [B, K]}`` for ``mode``, ``mc`` (and ``lrt``, ``sample``).

        Batches are ``(x, y)`` pairs (``y`` ignored) or bare inputs ``x``.
        """
        x = batch[0] if isinstance(batch, (tuple, list)) and not isinstance(batch, SpikeIndices) else batch
        return self.predict(x, self.prediction_kinds(), self._stream(batch_idx, dataloader_idx))

    # -- end of epoch ------------------------------------------------------------------------------
    def warn_on_collapse(self, texts: list[str]) -> None:
        for text in texts:
            rank_zero_warn(text)

"""``SpikingClassificationTask``: the LightningModule that trains SBNN classifiers.

Training minimises :class:`sbnn.ELBOLoss` in ``sample`` (LRT) mode. Before the first step the
scales ``α`` are set from the first training batch (:meth:`sbnn.models.SpikingMLP.calibrate`).
The last ``mode_finetune_epochs`` epochs also train the deployed ``mode`` network (weights
``sign(λ)``, straight-through on ``λ``) alongside the LRT loss, which closes most of the
train–deploy gap (DESIGN §7). Validation reports the ``mode`` network; testing reports ``mode``,
MC (``mc_samples`` drawn binary networks) and LRT-averaged accuracy, NLL, expected calibration
error and mean predictive entropy (:mod:`sbnn.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
# constrained floats/ints: LightningCLI rejects bad values at parse time; Python callers get the
# same checks in __init__
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ._validation import check_in_range, check_positive_int
from .layers import BernoulliLayer
from .losses import BiasProxyLoss, ELBOLoss
from .metrics import CalibrationAccumulator, accuracy, negative_log_likelihood, predictive_entropy
from .modes import evaluation, lrt_predict, mc_predict
from .posterior import sign_mean

__all__ = ["SpikingClassificationTask", "TwoPhaseCosine", "training_set_size"]


@dataclass(frozen=True)
class TwoPhaseCosine:
    """Learning-rate factor per epoch: cosine from 1 to 0 over the main phase, then a restart.

    The last ``finetune_epochs`` (the ``mode`` fine-tune) restart at ``finetune_factor`` and
    decay by cosine again. A single cosine over all epochs would leave the fine-tune at < 0.4 % of
    the base rate, where it changes nothing (measured: no change in train NLL, mean ``|m|`` or
    validation accuracy during it).
    """

    max_epochs: int
    finetune_epochs: int
    finetune_factor: float

    def __call__(self, epoch: int) -> float:
        main = max(self.max_epochs - self.finetune_epochs, 1)
        if epoch < main or self.finetune_epochs == 0:
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, main) / main))
        k = epoch - main
        return self.finetune_factor * 0.5 * (1.0 + math.cos(math.pi * k / self.finetune_epochs))


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


class SpikingClassificationTask(L.LightningModule):
    """Train a spiking Bayesian classifier on time-major batches ``(x [T, B, N], y [B])``.

    Args:
        network: the model, returning logits ``[B, K]`` (e.g. :class:`sbnn.models.SpikingMLP`).
        lr: Adam learning rate of the float parameters (scales, biases, leaks).
        lam_lr: Adam learning rate of the natural parameters ``λ`` (a logit scale: ≈ 0.1, DESIGN §7).
        kl_weight: weight of ``KL/N_train`` (0.1 by default for small data sets, DESIGN §7).
        aux_weight: weight of the bias-reducing auxiliary loss (0 disables it; see
            :class:`sbnn.losses.BiasProxyLoss`).
        mc_samples: number of binary networks drawn for MC evaluation (and LRT passes averaged).
        mode_finetune_epochs: final epochs that also train the ``mode`` network.
        mode_finetune_lr_factor: the learning rates restart at this fraction of their base values
            for the fine-tune (see :class:`TwoPhaseCosine`).
        calibrate: set the scales from the first training batch before training.
        hidden_gain: calibration target of the hidden free-membrane std, in thresholds.
        readout_std: calibration target of the logits' std.
        train_size: number of training examples; read from the datamodule (``n_train`` attribute
            or its training set's length) when ``None``.
        aux_fn: the auxiliary loss, ``aux_fn(network) -> Tensor`` (default
            :class:`~sbnn.losses.BiasProxyLoss` when ``aux_weight > 0``).
    """

    def __init__(
        self,
        network: nn.Module,
        lr: PositiveFloat = 1e-3,
        lam_lr: PositiveFloat = 0.1,
        kl_weight: NonNegativeFloat = 0.1,
        aux_weight: NonNegativeFloat = 0.0,
        mc_samples: PositiveInt = 10,
        mode_finetune_epochs: NonNegativeInt = 3,
        mode_finetune_lr_factor: NonNegativeFloat = 0.3,
        calibrate: bool = True,
        hidden_gain: PositiveFloat = 2.0,
        readout_std: PositiveFloat = 3.0,
        train_size: PositiveInt | None = None,
        aux_fn: Any = None,
    ) -> None:
        super().__init__()
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("lam_lr", lam_lr, 0.0, low_open=True)
        check_in_range("kl_weight", kl_weight, 0.0)
        check_in_range("aux_weight", aux_weight, 0.0)
        check_positive_int("SpikingClassificationTask", mc_samples=mc_samples)
        if not isinstance(mode_finetune_epochs, int) or mode_finetune_epochs < 0:
            raise ValueError(f"mode_finetune_epochs must be a non-negative integer, got {mode_finetune_epochs!r}")
        check_in_range("mode_finetune_lr_factor", mode_finetune_lr_factor, 0.0)
        if aux_weight > 0 and aux_fn is None:
            aux_fn = BiasProxyLoss()
        self.save_hyperparameters(ignore=["network", "aux_fn"])
        self.network = network
        self.aux_fn = aux_fn
        if aux_weight > 0 and hasattr(aux_fn, "attach"):
            aux_fn.attach(network)
        self.loss_fn: ELBOLoss | None = None
        # persisted, so that a run resumed from a checkpoint does not re-calibrate
        self.register_buffer("calibrated", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    # -- setup -------------------------------------------------------------------------------------
    def _n_train(self) -> int:
        return training_set_size(self, "SpikingClassificationTask")

    def on_fit_start(self) -> None:
        self.loss_fn = ELBOLoss(
            self._n_train(), self.hparams.kl_weight, self.hparams.aux_weight, self.aux_fn
        )
        if self.hparams.calibrate and not bool(self.calibrated) and hasattr(self.network, "calibrate"):
            x, _ = next(iter(self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else self.trainer.train_dataloader))
            rates = self.network.calibrate(
                x.to(self.device), hidden_gain=self.hparams.hidden_gain, readout_std=self.hparams.readout_std
            )
            self.calibrated.fill_(True)
            self._broadcast_from_rank_zero()
            self.print(f"sbnn: scales calibrated on a first batch; hidden firing rates {[round(r, 4) for r in rates]}")

    def _broadcast_from_rank_zero(self) -> None:
        """Under DDP every rank calibrated on its own first batch: keep rank 0's scales everywhere.

        (DDP broadcasts the parameters only once, when it wraps the model, which is before
        ``on_fit_start``.)
        """
        import torch.distributed as dist

        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            for tensor in [*self.network.parameters(), *self.network.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def configure_optimizers(self):
        lam = [p for n, p in self.network.named_parameters() if n.endswith(".lam") or n == "lam"]
        lam_ids = {id(p) for p in lam}
        rest = [p for p in self.network.parameters() if id(p) not in lam_ids]
        groups = [{"params": lam, "lr": self.hparams.lam_lr}, {"params": rest, "lr": self.hparams.lr}]
        optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        max_epochs = self.trainer.max_epochs if self.trainer and self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        schedule = TwoPhaseCosine(max_epochs, self.hparams.mode_finetune_epochs, self.hparams.mode_finetune_lr_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- steps -------------------------------------------------------------------------------------
    def _in_mode_finetune(self) -> bool:
        max_epochs = self.trainer.max_epochs or 0
        return self.hparams.mode_finetune_epochs > 0 and self.current_epoch >= max_epochs - self.hparams.mode_finetune_epochs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.loss_fn is None:  # training_step called outside fit (e.g. by a user's loop)
            self.on_fit_start()
        with evaluation(self.network, "sample"):
            logits, spikes = self._forward_with_spikes(x)
            terms = self.loss_fn(logits, y, self.network)
        loss = terms.loss
        b = y.shape[0]
        if self._in_mode_finetune():
            with evaluation(self.network, "mode"):
                mode_nll = F.cross_entropy(self.network(x), y)
            loss = loss + mode_nll
            self.log("train_mode_nll", mode_nll, batch_size=b)
        self.log_dict(
            {"train_loss": loss, "train_nll": terms.nll, "train_kl": terms.kl, "train_aux": terms.aux},
            batch_size=b,
        )
        self.log("train_acc", (logits.argmax(-1) == y).float().mean(), batch_size=b, prog_bar=True)
        if spikes:
            self.log("train_rate", torch.stack([s.detach().mean() for s in spikes]).mean(), batch_size=b, prog_bar=True)
        return loss

    def _forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if hasattr(self.network, "forward_with_spikes"):
            return self.network.forward_with_spikes(x)
        return self.network(x), []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        with evaluation(self.network, "mode"):
            logits = self.network(x)
        self.log("val_acc_mode", (logits.argmax(-1) == y).float().mean(), batch_size=y.shape[0], prog_bar=True)
        self.log("val_nll_mode", F.cross_entropy(logits, y), batch_size=y.shape[0])

    def on_test_epoch_start(self) -> None:
        self._calibration = {name: CalibrationAccumulator() for name in ("mode", "mc", "lrt")}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Log accuracy, NLL and mean predictive entropy of the ``mode``, MC and LRT predictions."""
        x, y = batch
        b = y.shape[0]
        if not hasattr(self, "_calibration"):  # test_step called outside trainer.test
            self.on_test_epoch_start()
        with evaluation(self.network, "mode"):
            mode_probs = self.network(x).softmax(-1)
        n = self.hparams.mc_samples
        predictions = {"mode": mode_probs, "mc": mc_predict(self.network, x, n), "lrt": lrt_predict(self.network, x, n)}
        for name, probs in predictions.items():
            self.log(f"test_acc_{name}", accuracy(probs, y), batch_size=b)
            self.log(f"test_nll_{name}", negative_log_likelihood(probs, y), batch_size=b)
            self.log(f"test_entropy_{name}", predictive_entropy(probs), batch_size=b)
            self._calibration[name].update(probs, y)

    def on_test_epoch_end(self) -> None:
        # ECE is not a mean of per-batch values: sum the bins over batches and ranks, then compute
        for name, acc in self._calibration.items():
            state = self.trainer.strategy.reduce(acc.state(), reduce_op="sum") if self._trainer else acc.state()
            self.log(f"test_ece_{name}", acc.compute(state))

    def on_train_epoch_end(self) -> None:
        layers = [m for m in self.network.modules() if isinstance(m, BernoulliLayer)]
        if not layers:
            return
        mean_abs_m = torch.cat([sign_mean(m.lam.detach()).abs().flatten() for m in layers]).mean()
        self.log("mean_abs_m", mean_abs_m)
        rate = self.trainer.callback_metrics.get("train_rate")
        # the collapse guard (DESIGN §7): a uniform posterior with a silent network is absorbing
        if float(mean_abs_m) < 0.05 and rate is not None and float(rate) < 1e-3:
            rank_zero_warn(
                f"sbnn: the posterior is collapsing to the uniform prior (mean |m| = {float(mean_abs_m):.3f}) "
                f"while the network is silent (firing rate {float(rate):.1e}); lower kl_weight "
                f"(now {self.hparams.kl_weight}) or raise hidden_gain"
            )

"""``MethodTask``: any :class:`sbnn.training.TrainingMethod` under Lightning (manual optimisation)."""

from __future__ import annotations

from jsonargparse.typing import NonNegativeInt, PositiveInt
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int
from ..training.divergence import collapse_warnings
from ..training.evaluation import predict_probabilities
from ..training.methods import TrainingMethod
from ..training.optim import bernoulli_layers
from .base import SpikingTask

__all__ = ["MethodTask"]


class MethodTask(SpikingTask):
    """Train a classifier with any :class:`~sbnn.training.TrainingMethod` (manual optimisation).

    Select the method from the CLI/YAML, e.g.::

        model:
          class_path: sbnn.tasks.MethodTask
          init_args:
            network: {class_path: sbnn.models.BinaryMLP, init_args: {in_features: 2}}
            method: {class_path: sbnn.training.BayesBiNNMethod, init_args: {lr: 1.0e-3, temperature: 1.0}}

    Before the first step the method re-initialises ``λ`` (:meth:`TrainingMethod.initialize`,
    e.g. BayesBiNN's ``±lam_init``), then the scales are calibrated for that ``λ``; a resumed run
    does neither. Validation logs the deterministic ``val_*_mode`` metrics; testing logs accuracy,
    NLL, ECE and mean predictive entropy of ``mode`` and ``mc`` predictions (``mc`` equals
    ``mode`` for methods without a posterior), exactly reduced across ranks.

    Args:
        network: the model (Bernoulli layers inside), returning logits ``[B, K]``.
        method: the training method.
        mc_samples: binary networks drawn for MC evaluation.
        calibrate: set the scales from the first training batch (networks with ``calibrate``).
        train_size: training-set size; read from the datamodule when ``None``.
        eval_seed: seed of the MC test noise (see :mod:`sbnn.training.evaluation`).
    """

    def __init__(
        self,
        network: nn.Module,
        method: TrainingMethod,
        mc_samples: PositiveInt = 10,
        calibrate: bool = True,
        train_size: PositiveInt | None = None,
        eval_seed: NonNegativeInt = 0,
    ) -> None:
        if not isinstance(method, TrainingMethod):
            raise ValueError(f"method must be a sbnn.training.TrainingMethod (e.g. BayesBiNNMethod), got {type(method).__name__}")
        if not bernoulli_layers(network):
            raise ValueError("MethodTask: the network has no Bernoulli layers for the method to train")
        check_positive_int("MethodTask", mc_samples=mc_samples)
        if not isinstance(eval_seed, int) or eval_seed < 0:
            raise ValueError(f"eval_seed must be a non-negative integer, got {eval_seed!r}")
        super().__init__(network)
        self.save_hyperparameters(ignore=["network", "method"])
        self.method = method
        self.automatic_optimization = False

    def initialize_network(self) -> None:
        # the method first (BayesBiNN and Bop re-initialise λ), then the scales for that λ
        self.method.initialize(self.network)

    def configure_optimizers(self):
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        return self.method.build(self.network, self.n_train(), epochs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.method.train_step(self.network, F.cross_entropy, self.cast(x), y)
        self.log("train_loss", loss, batch_size=y.shape[0], prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        self.method.epoch = self.current_epoch  # right after a resume too (QuantizerMethod's μ)

    def on_train_epoch_end(self) -> None:
        self.method.epoch_end(self.current_epoch)
        if self.method.posterior:
            self.warn_on_collapse(collapse_warnings(self.network))

    def prediction_kinds(self) -> tuple[str, ...]:
        return ("mode", "mc")

    def predict(self, x: Tensor, kinds: tuple[str, ...], stream: int) -> dict[str, Tensor]:
        return predict_probabilities(
            self.network, self.cast(x), kinds=kinds, mc_samples=self.hparams.mc_samples,
            seed=self.hparams.eval_seed, stream=stream, method=self.method,
        )

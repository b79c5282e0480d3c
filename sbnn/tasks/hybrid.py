"""HyBNN as a LightningModule and a DataModule (``sbnn fit --config recipes/hybnn.yaml``).

:class:`HyBNNTask` runs HyBNN's three phases: at the start of ``fit`` it trains its binary-latent VAE
on the DataModule's general images (all training digits, no labels) and freezes the encoder
(representation learning); every step encodes the batch (feature extraction) and trains the head
(training phase). The VAE's final ELBO, reconstruction and KL are logged as ``vae_elbo``,
``vae_recon`` and ``vae_kl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ..hybrid.data import digits_split, mnist_split, pair_task
from ..hybrid.heads import HyBNN, SBNNHead, STEHead, clip_latent_weights_
from ..hybrid.training import fit_vae
from ..hybrid.vae import BinaryVAE, FrozenEncoder
from ..modes import evaluation
from ..training.losses import kl_divergence

__all__ = ["HyBNNDataModule", "HyBNNTask"]


class HyBNNDataModule(L.LightningDataModule):
    """A two-digit task, plus the unlabelled general images the VAE trains on.

    Args:
        task: the two digits, relabelled 0 and 1 (the paper's tasks: 0/1, 2/3, 4/5, 6/7, 8/9).
        root: a directory with MNIST's four IDX files; ``None`` uses scikit-learn's 8x8 digits.
        batch_size: batch size of the task loaders.
        seed: seed of the digits train/test split.
    """

    def __init__(self, task: tuple[int, int] = (2, 3), root: str | None = None, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        task = tuple(int(d) for d in task)
        if len(task) != 2 or task[0] == task[1] or not all(0 <= d <= 9 for d in task):
            raise ValueError(f"HyBNNDataModule: task must be two different digits 0..9, got {task}")
        if root is not None and not Path(root).is_dir():
            raise FileNotFoundError(f"HyBNNDataModule: --data.root {root} is not a directory with MNIST IDX files")
        if batch_size < 1:
            raise ValueError(f"HyBNNDataModule: batch_size must be >= 1, got {batch_size}")
        self.task, self.root, self.batch_size, self.seed = task, root, batch_size, seed
        self.general: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        split = mnist_split(self.root) if self.root is not None else digits_split(seed=self.seed)
        self.general = split.x_train
        self.train_set = TensorDataset(*pair_task(split.x_train, split.y_train, self.task))
        self.test_set = TensorDataset(*pair_task(split.x_test, split.y_test, self.task))

    def general_images(self) -> Tensor:
        """All training images of every class, ``[N, C, H, W]`` (the VAE's unlabelled data)."""
        if self.general is None:
            raise RuntimeError("HyBNNDataModule.setup has not run")
        return self.general

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # a held-out test split only: the tasks have a few hundred images
        return DataLoader(self.test_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class HyBNNTask(L.LightningModule):
    """Binary-latent VAE (trained at fit start, then frozen) + a binary head.

    Args:
        head: ``"sbnn"`` (:class:`SBNNHead`, ELBO with a tempered KL) or ``"ste"`` (the paper's BNN).
        image_shape: ``(C, H, W)`` of the inputs (``[1, 8, 8]`` digits, ``[1, 28, 28]`` MNIST).
        n_latent: binary latent units.
        latent_estimator: estimator of the VAE's binary latent (``st``, ``iwst``, ``agr``, ...).
        vae_epochs, vae_lr, vae_kl_weight: the VAE's training.
        hidden: head hidden units.
        head_estimator: spike-gradient estimator of the SBNN head's neurons.
        lr: head learning rate (Adam).
        kl_weight: KL temperature of the SBNN head (``CE + kl_weight · KL / N``).
    """

    def __init__(
        self,
        head: Literal["sbnn", "ste"] = "sbnn",
        image_shape: tuple[int, int, int] = (1, 8, 8),
        n_latent: int = 200,
        latent_estimator: str = "st",
        vae_epochs: int = 20,
        vae_lr: float = 2e-3,
        vae_kl_weight: float = 0.05,
        hidden: int = 128,
        head_estimator: str = "st",
        lr: float = 0.1,
        kl_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if head not in ("sbnn", "ste"):
            raise ValueError(f"HyBNNTask: head must be 'sbnn' or 'ste', got {head!r}")
        if vae_epochs < 0:
            raise ValueError(f"HyBNNTask: vae_epochs must be >= 0, got {vae_epochs}")
        self.save_hyperparameters()
        self.vae = BinaryVAE(tuple(image_shape), n_latent, estimator=latent_estimator, kl_weight=vae_kl_weight)
        head_net = SBNNHead(n_latent, hidden, estimator=head_estimator) if head == "sbnn" else STEHead(n_latent, hidden)
        self.net = HyBNN(FrozenEncoder(self.vae), head_net)
        self.register_buffer("vae_trained", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> "HyBNNTask":
        """Lightning's ``train()`` recursion would reach the VAE, whose encoder modules the frozen
        encoder shares: once the VAE is trained it stays in eval mode (batch-norm statistics fixed)."""
        super().train(mode)
        if bool(self.vae_trained):
            self.vae.train(False)
        return self

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.head.parameters(), lr=self.hparams.lr)

    def on_fit_start(self) -> None:
        if bool(self.vae_trained):
            return
        images = self.trainer.datamodule.general_images().to(self.device)
        with torch.enable_grad():
            for p in self.vae.parameters():
                p.requires_grad_(True)
            history = fit_vae(self.vae, images, epochs=self.hparams.vae_epochs, lr=self.hparams.vae_lr)
            for p in self.vae.parameters():
                p.requires_grad_(False)
        if history:
            last = history[-1]
            for key in ("loss", "recon", "kl"):
                name = "vae_elbo" if key == "loss" else f"vae_{key}"
                for logger in self.loggers:
                    logger.log_metrics({name: last[key]}, step=0)
        self.vae.eval()
        self.vae_trained.fill_(True)

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(self.net(x), y)
        if self.hparams.head == "sbnn":
            loss = loss + self.hparams.kl_weight * kl_divergence(self.net.head) / len(self.trainer.datamodule.train_set)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self._loss(x, y)
        self.log("train_loss", loss, batch_size=len(y), prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        clip_latent_weights_(self.net.head)

    def _accuracy(self, x: Tensor, y: Tensor) -> Tensor:
        if self.hparams.head == "sbnn":
            with evaluation(self.net.head, "mode"):
                return (self.net(x).argmax(-1) == y).float().mean()
        return (self.net(x).argmax(-1) == y).float().mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc_mode", self._accuracy(x, y), batch_size=len(y), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc_mode", self._accuracy(x, y), batch_size=len(y))

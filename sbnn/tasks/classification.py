"""``SpikingClassificationTask``: the LightningModule that trains SBNN classifiers.

Training minimises :class:`sbnn.training.ELBOLoss` in ``sample`` (LRT) mode. Before the first
step the scales ``α`` are set from the first training batch (``network.calibrate``; see
:class:`~sbnn.tasks.SpikingTask`). The last ``mode_finetune_epochs`` epochs also train the deployed
``mode`` network (weights ``sign(λ)``, straight-through on ``λ``) alongside the LRT loss, which
closes most of the train–deploy gap (docs/design.md §7). Validation reports the ``mode`` network; testing
reports ``mode``, MC (``mc_samples`` drawn binary networks), LRT-averaged and one-noisy-sample
(``sample``) accuracy, NLL,
expected calibration error and mean predictive entropy (:mod:`sbnn.training.metrics`), exactly
reduced across ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Literal

# constrained floats/ints: LightningCLI rejects bad values at parse time; Python callers get the
# same checks in __init__
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_in_range, check_positive_int
from ..models.time_affine import TimeAffine
from ..modes import evaluation
from ..runtime import compile_training
from ..training.divergence import collapse_warnings, silence_warning
from ..training.losses import BiasProxyLoss, ELBOLoss
from ..training.optim import noise_scale_parameters
from ..training.schedules import TwoPhaseCosine
from ..training.snr import SNR_REDUCTIONS, SNR_SIGNALS, SNRLoss
from .base import SpikingTask

__all__ = ["SpikingClassificationTask", "AUX_LOSSES"]

#: the auxiliary losses ``aux_loss`` selects
AUX_LOSSES = ("bias_proxy", "snr")


@contextlib.contextmanager
def _drives_recorded(network: nn.Module, aux_fn: Any, enabled: bool) -> Iterator[None]:
    """Attach the auxiliary loss's drive hooks for one training step only: afterwards the hooks
    are removed and the drives, which hold the step's autograd graph, are dropped."""
    if not enabled or not hasattr(aux_fn, "attach"):
        yield
        return
    aux_fn.attach(network)
    try:
        yield
    finally:
        aux_fn.detach()


class SpikingClassificationTask(SpikingTask):
    """Train a spiking Bayesian classifier on time-major batches ``(x [T, B, N], y [B])``.

    Args:
        network: the model, returning logits ``[B, K]`` (e.g. :class:`sbnn.models.SpikingMLP`).
        lr: Adam learning rate of the float parameters (scales, biases, leaks).
        lam_lr: Adam learning rate of the natural parameters ``λ`` (a logit scale: ≈ 0.1, docs/design.md §7).
        kl_weight: weight of ``KL/N_train`` (0.1 by default for small data sets, docs/design.md §7).
        aux_weight: weight ``λ`` of the bias-reducing auxiliary loss (``≥ 0``; 0 disables it).
        mc_samples: number of binary networks drawn for MC evaluation (and LRT passes averaged).
        mode_finetune_epochs: final epochs that also train the ``mode`` network.
        mode_finetune_lr_factor: the learning rates restart at this fraction of their base values
            for the fine-tune (see :class:`sbnn.training.TwoPhaseCosine`).
        calibrate: set the scales from the first training batch before training (the targets
            are the network's own).
        train_size: number of training examples; read from the datamodule (``n_train`` attribute
            or its training set's length) when ``None``.
        aux_fn: the auxiliary loss, ``aux_fn(network) -> Tensor`` (default: the one ``aux_loss``
            names, when ``aux_weight > 0``); given, it is used whatever ``aux_loss`` says.
        eval_seed: seed of the MC and LRT test noise: the same checkpoint gives the same numbers
            on every run (see :mod:`sbnn.training.evaluation`).
        sigma_lr: Adam learning rate of the learned noise scales (Gaussian layers' ``σ_w``,
            neurons' ``σ_b``; :func:`sbnn.training.optim.noise_scale_parameters`); ``None``: ``lr``.
            The SBNN paper's code uses 10× the weights' rate (5e-2 against 5e-3).
        aux_loss: which auxiliary loss ``aux_weight`` weighs: ``"bias_proxy"`` (default,
            :class:`~sbnn.training.BiasProxyLoss`, MLP-shaped networks) or ``"snr"``
            (:class:`~sbnn.training.SNRLoss`, every network family; the paper's loss, with
            ``aux_weight`` on the per-unit-step mean scale, docs/diagnostics.md).
        lr_min_factor: the cosine ends at this fraction of every group's base learning rate
            instead of 0 (in ``[0, 1]``; :class:`sbnn.training.TwoPhaseCosine` ``floor``). The SBNN
            paper's code: 0.1 on SHD, 0.02 on DVS Gesture and CIFAR-10.
        affine_lr: Adam learning rate of the per-time-step gains and biases
            (:class:`~sbnn.models.time_affine.TimeAffine`, ``layer.time_affine_steps``); ``None``:
            ``lr``. The SBNN paper's code trains them at the noise scales' rate on SHD (5e-2) and
            at the weights' rate on DVS Gesture and CIFAR-10 (5e-3).
        snr_reduction: how ``aux_loss="snr"`` reduces ``r²`` (:class:`~sbnn.training.SNRLoss`):
            ``"mean"`` (default, over every unit-step) or ``"sum"`` (the authors' sum over layers,
            steps and units, mean over the batch, for which their ``λ`` values are given).
        snr_signal: what the SNR term divides by the noise (:class:`~sbnn.training.SNRLoss`
            ``signal``): ``"membrane"`` (default; the authors' DVS Gesture and CIFAR-10 form) or
            ``"current"`` (each step's input current over that step's noise: their SHD form).
        snr_sigma_b_weight: how many times ``σ_b²`` enters the noise of the SNR term (their SHD
            code counts it twice: 2.0).
        compile: run the training step's forward pass and ELBO loss under ``torch.compile`` (the
            backward by AOTAutograd; :func:`sbnn.runtime.compile_training`: torch's own random
            draws, so the noise is eager mode's). The neuron's time loops stay one opaque operator
            each (:mod:`sbnn.functional.neurons`); the compiler fuses the elementwise work around them.
            The event-driven first layer chooses its path inside one operator
            (:class:`sbnn.layers.BernoulliLinear`). Measured on the CPU (``benchmarks/README.md``):
            0.83–1.02× the eager step (``st``, ``iwst``, ``agr``, marginal membrane; 3 %, 10 %
            and dense input, one and two threads; 1.02× in one of 26 settings). The first step compiles (tens of seconds). Not with
            ``aux_weight > 0``: the auxiliary loss attaches its drive hooks for each step.
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
        train_size: PositiveInt | None = None,
        aux_fn: Any = None,
        eval_seed: NonNegativeInt = 0,
        sigma_lr: PositiveFloat | None = None,
        aux_loss: Literal["bias_proxy", "snr"] = "bias_proxy",
        lr_min_factor: NonNegativeFloat = 0.0,
        affine_lr: PositiveFloat | None = None,
        snr_reduction: Literal["mean", "sum"] = "mean",
        snr_signal: Literal["membrane", "current"] = "membrane",
        snr_sigma_b_weight: NonNegativeFloat = 1.0,
        compile: bool = False,
    ) -> None:
        super().__init__(network)
        if sigma_lr is not None:
            check_in_range("sigma_lr", sigma_lr, 0.0, low_open=True)
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("lam_lr", lam_lr, 0.0, low_open=True)
        check_in_range("kl_weight", kl_weight, 0.0)
        if isinstance(aux_weight, (int, float)) and aux_weight < 0:
            raise ValueError(
                f"aux_weight (λ, the weight of the auxiliary loss) must be >= 0, got {aux_weight}; "
                "use 0 to switch the auxiliary loss off"
            )
        check_in_range("aux_weight", aux_weight, 0.0)
        check_positive_int("SpikingClassificationTask", mc_samples=mc_samples)
        if not isinstance(mode_finetune_epochs, int) or mode_finetune_epochs < 0:
            raise ValueError(f"mode_finetune_epochs must be a non-negative integer, got {mode_finetune_epochs!r}")
        check_in_range("mode_finetune_lr_factor", mode_finetune_lr_factor, 0.0)
        if not isinstance(eval_seed, int) or eval_seed < 0:
            raise ValueError(f"eval_seed must be a non-negative integer, got {eval_seed!r}")
        check_choice("aux_loss", aux_loss, AUX_LOSSES)
        check_in_range("lr_min_factor", lr_min_factor, 0.0, 1.0)
        if affine_lr is not None:
            check_in_range("affine_lr", affine_lr, 0.0, low_open=True)
        check_choice("snr_reduction", snr_reduction, SNR_REDUCTIONS)
        check_choice("snr_signal", snr_signal, SNR_SIGNALS)
        check_in_range("snr_sigma_b_weight", snr_sigma_b_weight, 0.0)
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be true or false, got {compile!r}")
        if compile and aux_weight > 0:
            raise ValueError(
                f"compile=True with aux_weight={aux_weight}: the auxiliary loss attaches drive hooks for each step, "
                "which a compiled step cannot follow; set aux_weight: 0 or compile: false"
            )
        if aux_weight > 0 and aux_fn is None:
            aux_fn = SNRLoss(snr_reduction, snr_signal, snr_sigma_b_weight) if aux_loss == "snr" else BiasProxyLoss()
        self.save_hyperparameters(ignore=["network", "aux_fn"])
        self.aux_fn = aux_fn
        self.loss_fn: ELBOLoss | None = None
        self._epoch_spikes = 0.0
        self._compiled_terms = None  # the compiled forward + loss, built on the first compiled step

    # -- setup -------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.loss_fn = self._make_loss()
        super().on_fit_start()

    def _make_loss(self) -> ELBOLoss:
        return ELBOLoss(self.n_train(), self.hparams.kl_weight, self.hparams.aux_weight, self.aux_fn)

    def configure_optimizers(self):
        lam = [p for n, p in self.network.named_parameters() if n.endswith(".lam") or n == "lam"]
        lam_ids = {id(p) for p in lam}
        sigma = noise_scale_parameters(self.network) if self.hparams.get("sigma_lr") is not None else []
        affine_lr = self.hparams.get("affine_lr")
        affine = [p for m in self.network.modules() if isinstance(m, TimeAffine) for p in m.parameters()] if affine_lr is not None else []
        taken = lam_ids | {id(p) for p in sigma} | {id(p) for p in affine}
        rest = [p for p in self.network.parameters() if id(p) not in taken]
        groups = [{"params": lam, "lr": self.hparams.lam_lr}, {"params": rest, "lr": self.hparams.lr}]
        if sigma:
            groups.append({"params": sigma, "lr": self.hparams.sigma_lr})
        if affine:
            groups.append({"params": affine, "lr": affine_lr})
        optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        schedule = TwoPhaseCosine(
            self._max_epochs(), self.hparams.mode_finetune_epochs, self.hparams.mode_finetune_lr_factor,
            floor=self.hparams.get("lr_min_factor", 0.0),  # checkpoints from before the option have none
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _max_epochs(self) -> int:
        max_epochs = self.trainer.max_epochs if self._trainer else None
        return max_epochs if max_epochs and max_epochs > 0 else 1

    # -- steps -------------------------------------------------------------------------------------
    def _in_mode_finetune(self) -> bool:
        if not self._trainer:  # a training_step called by hand
            return False
        max_epochs = self.trainer.max_epochs or 0
        return self.hparams.mode_finetune_epochs > 0 and self.current_epoch >= max_epochs - self.hparams.mode_finetune_epochs

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x = self.cast(x)
        loss_fn = self.loss_fn if self.loss_fn is not None else self._make_loss()
        with _drives_recorded(self.network, self.aux_fn, self.hparams.aux_weight > 0), evaluation(self.network, "sample"):
            if self.hparams.get("compile"):
                if self._compiled_terms is None:
                    self._compiled_terms = compile_training(self._terms)
                logits, spikes, terms = self._compiled_terms(x, y, loss_fn)
            else:
                logits, spikes, terms = self._terms(x, y, loss_fn)
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
            rates = torch.stack([s.detach().mean() for s in spikes])
            # summed on the device, read once at the end of the epoch: no host read per step
            self._epoch_spikes = self._epoch_spikes + torch.stack([s.detach().sum() for s in spikes]).sum()
            self.log("train_rate", rates.mean(), batch_size=b, prog_bar=True)
        else:
            self._epoch_spikes = float("nan")  # no spikes to count: no silence warning
        return loss

    def _terms(self, x: Tensor, y: Tensor, loss_fn: ELBOLoss) -> tuple[Tensor, list[Tensor], Any]:
        """``(logits, spikes, loss terms)`` of one training batch: what ``compile`` compiles."""
        logits, spikes = self._forward_with_spikes(x)
        return logits, spikes, loss_fn(logits, y, self.network)

    def _forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if hasattr(self.network, "forward_with_spikes"):
            return self.network.forward_with_spikes(x)
        return self.network(x), []

    def on_train_epoch_start(self) -> None:
        self._epoch_spikes = 0.0

    def on_train_epoch_end(self) -> None:
        from ..training.optim import bernoulli_layers
        from ..posterior import sign_mean

        layers = bernoulli_layers(self.network)
        if layers:
            mean_abs_m = torch.cat([sign_mean(m.lam.detach()).abs().flatten() for m in layers]).mean()
            self.log("mean_abs_m", mean_abs_m)
        self.warn_on_collapse(collapse_warnings(self.network, self.hparams.kl_weight))
        spikes = float(self._epoch_spikes)
        text = silence_warning(spikes, self.current_epoch) if spikes == spikes else None
        if text:
            self.warn_on_collapse([text])

"""Test accuracy of SBNN against a float-weight SNN and a ±1 straight-through SNN, several seeds.

One command, one printed table::

    python benchmarks/accuracy.py            # full default run: 2 data sets x 3 methods x 3 seeds
    python benchmarks/accuracy.py --quick    # ~1-minute smoke configuration

Data (fixed: the data set, its split and the training shuffle order are the same for every
method and seed; only the model seed varies):

* ``randman``: ``RandmanDataModule()`` defaults (2-D manifolds, 10 classes, 50 channels, 50 steps,
  1000 train / 200 val / 500 test, batch 32, data seed 42).
* ``digits``: ``DigitsDataModule(encoding="rate", n_steps=20)`` (64 channels, 10 classes,
  1257 train / 180 val / 360 test, batch 32, data seed 42).

Architecture, the same for every method: ``N → 128 → K``, hidden LIF with ``β = 0.9``, threshold 1,
subtract reset (reset detached), no biases (``SpikingMLP``'s default), membrane readout = the
time-averaged membrane ``U[t] = βU[t−1] + h[t]`` of a non-spiking leaky output layer (``β = 0.9``).

Methods:

1. ``sbnn``: ``SpikingClassificationTask(SpikingMLP(N, (128,), K))`` with all defaults (``st``
   estimator, λ at lr 0.1 and the rest at 1e-3 under Adam + cosine, ``kl_weight`` 0.1, calibration
   on a first batch, 3-epoch ``mode`` fine-tune), trained by a plain Lightning
   ``Trainer(max_epochs=E, enable_progress_bar=False, logger=False, enable_checkpointing=False,
   accelerator="cpu")`` and tested with ``trainer.test``: ``mode`` (the deployed ``sign(λ)``
   network), MC (10 drawn binary networks) and LRT (10 noisy passes averaged).
2. ``float``: ``nn.Linear`` weights + ``snntorch.Leaky(beta=0.9)`` with snnTorch's default surrogate
   (ATan), Adam lr ``FLOAT_LR`` with a per-epoch cosine schedule, cross-entropy.
3. ``ste``: ±1 weights by the plain straight-through estimator (BinaryConnect): latent float weights
   ``w`` (init ``U(−1, 1)``), forward ``sign(w)·α`` with the per-layer scale
   ``α = g/sqrt(fan_in)``, ``g`` a learnable gain (``exp`` of a learnable log-gain); backward the
   clipped identity (gradient zero where ``|w| > 1``); latent weights clipped to ``[−1, 1]``
   after every step; snnTorch ``Leaky`` neurons; Adam (latent weights at ``STE_LR``, gains at
   ``GAIN_LR``) with a per-epoch cosine schedule.

Initial scale of the baselines (``--float-init`` / ``--ste-init``): ``calibrated`` applies the
data-dependent targets ``SpikingMLP.calibrate`` uses, on the same first training batch — hidden
free-membrane std ``2ϑ``, readout logit std 3 — to the float weights (a multiplicative factor on
PyTorch's init) or to the STE gains ``g``; ``default`` keeps PyTorch's ``nn.Linear`` init (float)
or ``g = 1`` (STE). Chosen by the light tuning: float ``default`` (its hidden layer starts silent
and the ATan surrogate still trains it), STE ``calibrated``.

Epochs: one budget for all three methods (80 by default): docs/design.md §7 says SBNN wants about 2x the
epochs of a float SNN, and its measurements ran the float and STE baselines for 80 epochs as well.
Every method reports the network after the last epoch (no early stopping, no checkpoint picking).

Baseline hyper-parameters were tuned only lightly, on Randman with one seed, and are used
unchanged on both data sets (see benchmarks/README.md).

Targets printed at the end: (i) SBNN ``mode`` ≥ the STE ±1 baseline on both data sets (means over
seeds); (ii) LRT − ``mode`` < 2 points on both data sets.

**Paper suite** (``--suite paper``): the SBNN paper's configuration beside three ±1 / float
methods, all on sbnn's own ``SpikingMLP(N, (128,), K)`` (the architecture above, hidden LIF
``β = 0.9``, threshold 1, membrane readout) with the same data, batches and epoch budget
(``--epochs``, 40 by default)::

    python benchmarks/accuracy.py --suite paper              # 2 data sets x 4 methods x 3 seeds
    python benchmarks/accuracy.py --suite paper --quick      # smoke run: seed 0, 2 epochs

* ``paper``: the SBNN paper's configuration (Walker et al. 2025, arXiv 2505.17962): real weights
  with a per-layer Gaussian posterior (``LayerSettings(weights="gaussian",
  variance_input_grad=False, time_affine_steps=T)``), the accumulated-variance membrane with a
  learned threshold noise (``NeuronSettings(membrane_noise="marginal", sigma_b=0.3133,
  learn_sigma_b=True, sigma0=0.0, estimator="st")``), no weight KL, the SNR auxiliary loss at the
  authors' λ = 1e-6 on their sum scale (``SNRLoss(reduction="sum")``), Adam lr 5e-3 (weights,
  gains, biases) and 5e-2 (noise scales), no calibration and no ``mode`` fine-tune, through
  ``SpikingClassificationTask``. Tested as ``mode`` (the mean weights), MC, LRT and one noisy
  sample (``sample``, the paper's evaluation).
* ``sbnn``: ±1 SBNN exactly as method 1 above (``SpikingClassificationTask`` defaults).
* ``ste_method``: ±1 STE, :class:`sbnn.training.STEMethod` (``STE_METHOD_LR`` on the latent
  weights, 1e-3 on the scales; gradient-norm and weight clipping at 1) on the same Bernoulli
  ``SpikingMLP``, scales calibrated on the first batch; neurons deterministic.
* ``fp_bn``: full-precision surrogate-gradient training with BatchNorm, the paper's own baseline:
  :class:`sbnn.training.FullPrecisionMethod` (lr 1e-2 on the weights, 1e-3 on the scales) on the
  same network with a BatchNorm per time step on the hidden layer's pre-activation
  (``LayerSettings(time_affine_steps=T, time_batch_norm=True)``), scales calibrated on the first
  batch. ``fp_method`` (only with ``--methods``): the same without the BatchNorm.

Every method uses the cosine schedule over the epochs (its own learning rates);
``ste_method``, ``fp_bn`` and ``fp_method`` are tested with their deterministic network
(``mode``; BatchNorm with its running statistics).

Runs go to a process pool (``--jobs``, each process ``torch.set_num_threads(1)`` and
``torch.set_flush_denormal(True)``); all numbers, per-epoch curves included, go to ``--out`` as JSON.
Extra SBNN configurations (through the task's constructor) can be run with
``--methods sbnn --sbnn-kwargs '{"kl_weight": 0.03}'``; they are labelled ``sbnn[kl_weight=0.03]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN = 128
BETA = 0.9
THRESHOLD = 1.0
FLOAT_LR = 1e-2  # Adam lr of the float SNN (light tuning on Randman, seed 0: see README)
STE_LR = 1e-1  # Adam lr of the STE latent weights (light tuning on Randman, seed 0: see README)
FLOAT_INIT = "default"  # PyTorch's nn.Linear init (light tuning: better than the calibrated scale)
STE_INIT = "calibrated"  # gains set to SBNN's calibration targets (light tuning: better than g = 1)
GAIN_LR = 1e-3  # Adam lr of the STE per-layer gains (as SBNN's float parameters)
HIDDEN_GAIN = 2.0  # calibration target: hidden free-membrane std in thresholds (as SpikingMLP.calibrate)
READOUT_STD = 3.0  # calibration target: std of the logits (as SpikingMLP.calibrate)
EVAL_SAMPLES = 10  # MC networks / LRT passes

DATASETS = ("randman", "digits")
METHODS = ("sbnn", "float", "ste")

# the paper suite (--suite paper)
PAPER_METHODS = ("paper", "sbnn", "ste_method", "fp_bn")
SUITE_METHODS = (*PAPER_METHODS, "fp_method")  # fp_method: fp_bn without the BatchNorm, on request
SUITES = ("baselines", "paper")
PAPER_EPOCHS = 40  # one budget for every method of the paper suite
PAPER_LR = 5e-3  # the paper's Adam lr of the weights, gains and biases
PAPER_SIGMA_LR = 5e-2  # ... and of the noise scales (σ_w, σ_b)
PAPER_SIGMA_B = 0.3133  # initial learned threshold noise σ_b
PAPER_SNR_WEIGHT = 1e-6  # SNR auxiliary loss weight on the authors' sum scale (their SHD value)
STE_METHOD_LR = 1e-2  # STEMethod's latent-weight lr (BayesBiNN table 9, as compare_methods.py)
FP_METHOD_LR = 1e-2  # FullPrecisionMethod's weight lr (as compare_methods.py), with or without BatchNorm
TASK_METHODS = ("sbnn", "paper")  # trained by SpikingClassificationTask under Lightning


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def make_datamodule(name: str):
    from sbnn.data import DigitsDataModule, RandmanDataModule

    if name == "randman":
        dm = RandmanDataModule()
    elif name == "digits":
        dm = DigitsDataModule(encoding="rate", n_steps=20)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    dm.setup()
    return dm


def full_split(dm, split: str) -> tuple[Tensor, Tensor]:
    """The whole split as one time-major batch ``([T, S, N], [S])``."""
    from sbnn.data import time_major_collate

    dataset = getattr(dm, f"{split}_set")
    return time_major_collate([dataset[i] for i in range(len(dataset))])


def accuracy(logits_or_probs: Tensor, y: Tensor) -> float:
    return float((logits_or_probs.argmax(-1) == y).float().mean())


# --------------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------------
class _SignSTE(torch.autograd.Function):
    """Forward ``sign(w)`` (``sign(0) = +1``); backward the clipped identity ``g·1[|w| ≤ 1]``."""

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


class SignLinear(nn.Module):
    """``h = x (sign(w)·g/sqrt(fan_in))ᵀ``: ±1 weights by STE, one learnable gain ``g`` per layer."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1.0, 1.0))
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.fan_in = in_features

    @property
    def alpha(self) -> Tensor:
        return self.log_gain.exp() / math.sqrt(self.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, _SignSTE.apply(self.latent) * self.alpha)

    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        self.log_gain.add_(math.log(factor))

    @torch.no_grad()
    def clip_(self) -> None:
        self.latent.clamp_(-1.0, 1.0)


class FloatLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        self.weight.mul_(factor)

    def clip_(self) -> None:
        pass


def _leaky(h: Tensor, beta: float) -> Tensor:
    """Non-spiking leaky integrator ``U[t] = βU[t−1] + h[t]`` over ``[T, B, ...]``."""
    mem, out = torch.zeros_like(h[0]), []
    for h_t in h.unbind(0):
        mem = beta * mem + h_t
        out.append(mem)
    return torch.stack(out)


class BaselineSNN(nn.Module):
    """``Linear → snntorch.Leaky → Linear → leaky membrane readout (time mean)``; time-batched matmuls."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, binary: bool) -> None:
        super().__init__()
        import snntorch

        layer = SignLinear if binary else FloatLinear
        self.fc1 = layer(n_in, n_hidden)
        self.lif1 = snntorch.Leaky(beta=BETA, threshold=THRESHOLD)  # default surrogate: ATan
        self.fc2 = layer(n_hidden, n_out)

    def hidden_spikes(self, x: Tensor) -> Tensor:
        cur = self.fc1(x)  # [T, B, H], all steps in one matmul
        mem = self.lif1.init_leaky()
        spikes = []
        for c in cur.unbind(0):
            spk, mem = self.lif1(c, mem)
            spikes.append(spk)
        return torch.stack(spikes)

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spk = self.hidden_spikes(x)
        return _leaky(self.fc2(spk), BETA).mean(0), spk

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> float:
        """Same targets as ``SpikingMLP.calibrate``; returns the hidden firing rate after it."""
        std = float(_leaky(self.fc1(x), BETA).std())
        if std > 1e-8:
            self.fc1.rescale_(HIDDEN_GAIN * THRESHOLD / std)
        spk = self.hidden_spikes(x)
        std = float(_leaky(self.fc2(spk), BETA).mean(0).std())
        if std > 1e-8:
            self.fc2.rescale_(READOUT_STD / std)
        return float(spk.mean())

    def clip_(self) -> None:
        self.fc1.clip_()
        self.fc2.clip_()


def run_baseline(
    dataset: str, method: str, seed: int, epochs: int, init: str, float_lr: float = FLOAT_LR, ste_lr: float = STE_LR
) -> dict[str, Any]:
    import lightning as L

    dm = make_datamodule(dataset)
    xv, yv = full_split(dm, "val")
    xt, yt = full_split(dm, "test")
    xtr, ytr = full_split(dm, "train")
    L.seed_everything(seed, verbose=False)
    net = BaselineSNN(dm.input_size, HIDDEN, dm.num_classes, binary=method == "ste")
    initial_rate = None
    if init == "calibrated":
        x0, _ = next(iter(dm.train_dataloader()))
        initial_rate = net.calibrate(x0)
    if method == "ste":
        latent = [net.fc1.latent, net.fc2.latent]
        gains = [net.fc1.log_gain, net.fc2.log_gain]
        optimizer = torch.optim.Adam([{"params": latent, "lr": ste_lr}, {"params": gains, "lr": GAIN_LR}])
        lrs = {"latent_lr": ste_lr, "gain_lr": GAIN_LR}
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=float_lr)
        lrs = {"lr": float_lr}
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    curves: dict[str, list[float]] = {k: [] for k in ("train_acc", "train_nll", "train_rate", "val_acc", "epoch_s")}
    t_fit = time.perf_counter()
    for _ in range(epochs):
        net.train()
        t0 = time.perf_counter()
        n = correct = nll = rate = 0.0
        for x, y in dm.train_dataloader():
            optimizer.zero_grad(set_to_none=True)
            logits, spk = net.forward_with_spikes(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            net.clip_()
            b = y.shape[0]
            n += b
            correct += float((logits.argmax(-1) == y).sum())
            nll += float(loss.detach()) * b
            rate += float(spk.detach().mean()) * b
        scheduler.step()
        curves["epoch_s"].append(time.perf_counter() - t0)
        curves["train_acc"].append(correct / n)
        curves["train_nll"].append(nll / n)
        curves["train_rate"].append(rate / n)
        net.eval()
        with torch.no_grad():
            curves["val_acc"].append(accuracy(net(xv), yv))
    fit_s = time.perf_counter() - t_fit
    with torch.no_grad():
        test_acc = accuracy(net(xt), yt)
        train_acc_final = accuracy(net(xtr), ytr)
    extra: dict[str, Any] = {}
    if method == "ste":
        extra["alpha"] = [float(net.fc1.alpha.detach()), float(net.fc2.alpha.detach())]
        lat = torch.cat([net.fc1.latent.detach().flatten(), net.fc2.latent.detach().flatten()])
        extra["latent_at_bound"] = float((lat.abs() >= 1.0).float().mean())
    return {
        "dataset": dataset, "method": method, "seed": seed, "epochs": epochs, "init": init, **lrs,
        "test_acc": test_acc, "train_acc_final": train_acc_final, "initial_rate": initial_rate,
        "fit_s": fit_s, "s_per_epoch": statistics.mean(curves["epoch_s"]), "curves": curves, **extra,
    }


# --------------------------------------------------------------------------------------------
# the paper suite: four configurations of one sbnn network
# --------------------------------------------------------------------------------------------
def suite_network(method: str, n_in: int, n_out: int, n_steps: int, hidden: int = HIDDEN) -> nn.Module:
    """The ``SpikingMLP(n_in, (hidden,), n_out)`` of paper-suite ``method`` for ``n_steps``-step inputs.

    ``paper``: real Gaussian weights, per-time-step gains and biases for ``n_steps`` steps, the
    accumulated-variance membrane with a learned ``σ_b`` (the SBNN paper's configuration);
    ``fp_bn``: sbnn's default Bernoulli layers (their ``λ`` trained as full-precision weights) with
    a BatchNorm per time step on the hidden pre-activation; every other method: sbnn's default
    Bernoulli layers and neurons.
    """
    from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP

    if method not in SUITE_METHODS:
        raise ValueError(f"unknown paper-suite method {method!r}; choose from {SUITE_METHODS}")
    if method == "fp_bn":
        return SpikingMLP(n_in, (hidden,), n_out, layer=LayerSettings(time_affine_steps=n_steps, time_batch_norm=True))
    if method == "paper":
        layer = LayerSettings(weights="gaussian", variance_input_grad=False, time_affine_steps=n_steps)
        neuron = NeuronSettings(membrane_noise="marginal", sigma_b=PAPER_SIGMA_B, learn_sigma_b=True, sigma0=0.0,
                                estimator="st")
        return SpikingMLP(n_in, (hidden,), n_out, layer=layer, neuron=neuron)
    return SpikingMLP(n_in, (hidden,), n_out)


def suite_task(method: str, network: nn.Module, task_kwargs: dict[str, Any] | None = None):
    """The ``SpikingClassificationTask`` training ``network`` for ``paper`` or ``sbnn``.

    ``paper``: no weight KL, the SNR loss (sum scale, λ = ``PAPER_SNR_WEIGHT``), lr ``PAPER_LR``
    and ``PAPER_SIGMA_LR`` for the noise scales, no calibration and no ``mode`` fine-tune;
    ``sbnn``: the task's defaults updated by ``task_kwargs``.
    """
    from sbnn.tasks import SpikingClassificationTask
    from sbnn.training import SNRLoss

    if method == "paper":
        return SpikingClassificationTask(
            network, lr=PAPER_LR, sigma_lr=PAPER_SIGMA_LR, kl_weight=0.0, aux_loss="snr",
            aux_weight=PAPER_SNR_WEIGHT, aux_fn=SNRLoss(reduction="sum"), mode_finetune_epochs=0, calibrate=False,
        )
    if method == "sbnn":
        return SpikingClassificationTask(network, **(task_kwargs or {}))
    raise ValueError(f"{method!r} is not trained by SpikingClassificationTask; those are {TASK_METHODS}")


def suite_method(method: str):
    """The :class:`sbnn.training.TrainingMethod` of ``ste_method``, ``fp_bn`` or ``fp_method``."""
    from sbnn.training import FullPrecisionMethod, STEMethod

    if method == "ste_method":
        return STEMethod(lr=STE_METHOD_LR)
    if method in ("fp_bn", "fp_method"):
        return FullPrecisionMethod(lr=FP_METHOD_LR)
    raise ValueError(f"{method!r} is not an sbnn.training method of the paper suite; those are ste_method, fp_bn, fp_method")


def run_method(dataset: str, method: str, seed: int, epochs: int) -> dict[str, Any]:
    """Train a paper-suite ``ste_method`` / ``fp_bn`` / ``fp_method`` network with sbnn's plain loop; test its ``mode`` network."""
    import lightning as L

    from sbnn.training import predict_samples

    dm = make_datamodule(dataset)
    xv, yv = full_split(dm, "val")
    xt, yt = full_split(dm, "test")
    xtr, ytr = full_split(dm, "train")
    L.seed_everything(seed, verbose=False)
    net = suite_network(method, dm.input_size, dm.num_classes, xt.shape[0])
    training = suite_method(method)
    loader = dm.train_dataloader()
    training.setup(net, dm.n_train, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        initial_rate = net.calibrate(next(iter(loader))[0])
    curves: dict[str, list[float]] = {k: [] for k in ("train_nll", "val_acc", "epoch_s")}
    t_fit = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        t0 = time.perf_counter()
        total = count = 0.0
        for x, y in loader:
            loss = training.train_step(net, F.cross_entropy, x, y)
            total, count = total + float(loss) * y.shape[0], count + y.shape[0]
        training.epoch_end(epoch)
        curves["epoch_s"].append(time.perf_counter() - t0)
        curves["train_nll"].append(total / count)
        curves["val_acc"].append(accuracy(predict_samples(net, training, xv, "mode")[0], yv))
    fit_s = time.perf_counter() - t_fit
    return {
        "dataset": dataset, "method": method, "seed": seed, "epochs": epochs,
        "lr": training.lr, "float_lr": training.float_lr, "initial_rate": initial_rate,
        "test_acc": accuracy(predict_samples(net, training, xt, "mode")[0], yt),
        "train_acc_final": accuracy(predict_samples(net, training, xtr, "mode")[0], ytr),
        "fit_s": fit_s, "s_per_epoch": statistics.mean(curves["epoch_s"]), "curves": curves,
    }


# --------------------------------------------------------------------------------------------
# SBNN through Lightning, exactly as users run it
# --------------------------------------------------------------------------------------------
def _make_curve_callback(xv: Tensor, yv: Tensor):
    import lightning as L

    from sbnn import evaluation
    from sbnn.layers import BernoulliLayer
    from sbnn.posterior import sign_mean

    class Curves(L.Callback):
        """Per epoch: running train metrics (batch-weighted), val accuracy of ``mode`` and of one LRT pass."""

        keys = ("train_acc", "train_nll", "train_kl", "train_rate", "train_mode_nll")

        def __init__(self) -> None:
            self.curves: dict[str, list[float]] = {
                k: [] for k in (*self.keys, "val_acc_mode", "val_acc_lrt1", "mean_abs_m", "epoch_s")
            }
            self._t0 = None
            self._sums: dict[str, float] = {}
            self._n = 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t0, self._sums, self._n = time.perf_counter(), {}, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            b = batch[1].shape[0]
            self._n += b
            for k in self.keys:
                v = trainer.callback_metrics.get(k)
                if v is not None:
                    self._sums[k] = self._sums.get(k, 0.0) + float(v) * b

        def _close_timer(self) -> None:
            if self._t0 is not None:
                self.curves["epoch_s"].append(time.perf_counter() - self._t0)
                self._t0 = None

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._close_timer()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._close_timer()
            for k in self.keys:
                self.curves[k].append(self._sums[k] / self._n if k in self._sums else float("nan"))
            net = pl_module.network
            with torch.no_grad():
                with evaluation(net, "mode"):
                    self.curves["val_acc_mode"].append(accuracy(net(xv), yv))
                with evaluation(net, "sample"):
                    self.curves["val_acc_lrt1"].append(accuracy(net(xv), yv))
                layers = [m for m in net.modules() if isinstance(m, BernoulliLayer)]
                if layers:  # real-weight (Gaussian) networks have no λ
                    m = torch.cat([sign_mean(l.lam).abs().flatten() for l in layers])
                    self.curves["mean_abs_m"].append(float(m.mean()))

    return Curves()


def run_sbnn(dataset: str, seed: int, epochs: int, task_kwargs: dict[str, Any], method: str = "sbnn") -> dict[str, Any]:
    """Train and test ``method`` (``sbnn``, or the paper suite's ``paper``) under a plain Lightning Trainer."""
    import lightning as L

    from sbnn import evaluation, lrt_predict
    from sbnn.layers import BernoulliLayer
    from sbnn.posterior import sign_mean

    dm = make_datamodule(dataset)
    xv, yv = full_split(dm, "val")
    xtr, ytr = full_split(dm, "train")
    L.seed_everything(seed, verbose=False)
    task = suite_task(method, suite_network(method, dm.input_size, dm.num_classes, xv.shape[0]), task_kwargs)
    curves = _make_curve_callback(xv, yv)
    trainer = L.Trainer(
        max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False,
        accelerator="cpu", callbacks=[curves], enable_model_summary=False,
    )
    printed = io.StringIO()
    t_fit = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        trainer.fit(task, datamodule=dm)
    fit_s = time.perf_counter() - t_fit
    with contextlib.redirect_stdout(printed):
        test = trainer.test(task, datamodule=dm, verbose=False)[0]
    net = task.network
    with torch.no_grad():
        with evaluation(net, "mode"):
            train_acc_mode = accuracy(net(xtr), ytr)
        train_acc_lrt = accuracy(lrt_predict(net, xtr, EVAL_SAMPLES), ytr)
        layers = [m for m in net.modules() if isinstance(m, BernoulliLayer)]
        m = torch.cat([sign_mean(l.lam).abs().flatten() for l in layers]) if layers else torch.full((1,), float("nan"))
    return {
        "dataset": dataset, "method": method, "seed": seed, "epochs": epochs, "task_kwargs": task_kwargs,
        "hparams": {k: v for k, v in dict(task.hparams).items() if isinstance(v, (int, float, str, bool, type(None)))},
        "test_acc_mode": float(test["test_acc_mode"]), "test_acc_mc": float(test["test_acc_mc"]),
        "test_acc_lrt": float(test["test_acc_lrt"]), "test_nll_mc": float(test["test_nll_mc"]),
        "test_nll_lrt": float(test["test_nll_lrt"]), "test_acc_sample": float(test["test_acc_sample"]),
        "test_acc": float(test["test_acc_mode"]),
        "train_acc_final": train_acc_mode, "train_acc_final_lrt": train_acc_lrt,
        "mean_abs_m": float(m.mean()), "frac_abs_m_gt_0.9": float((m > 0.9).float().mean()),
        "printed": printed.getvalue().strip().splitlines()[:5],
        "fit_s": fit_s, "s_per_epoch": statistics.mean(curves.curves["epoch_s"]), "curves": curves.curves,
    }


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
def _worker_init() -> None:
    import lightning  # noqa: F401  (configures its loggers on import: quieten them after)

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                 "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    _worker_init()
    t0 = time.perf_counter()
    if job["method"] in TASK_METHODS:
        out = run_sbnn(job["dataset"], job["seed"], job["epochs"], job["task_kwargs"], job["method"])
        out["label"] = job["label"] if job["method"] == "sbnn" else job["method"]
    elif job["method"] in SUITE_METHODS:
        out = run_method(job["dataset"], job["method"], job["seed"], job["epochs"])
        out["label"] = job["method"]
    else:
        out = run_baseline(job["dataset"], job["method"], job["seed"], job["epochs"], job["init"],
                           job["float_lr"], job["ste_lr"])
        out["label"] = job["method"]
    out["wall_s"] = time.perf_counter() - t0
    return out


def sbnn_label(kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return "sbnn"
    return "sbnn[" + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + "]"


def mean_std(values: list[float], scale: float = 100.0) -> tuple[float, float]:
    values = [v * scale for v in values]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:5.1f} ± {s:3.1f}"


def summarise(results: list[dict[str, Any]], datasets: list[str], labels: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for d in datasets:
        for lab in labels:
            runs = [r for r in results if r["dataset"] == d and r["label"] == lab]
            if not runs:
                continue
            s: dict[str, Any] = {"n_seeds": len(runs), "epochs": runs[0]["epochs"]}
            keys = ["test_acc", "train_acc_final"]
            if runs[0]["method"] in TASK_METHODS:
                keys += ["test_acc_mode", "test_acc_mc", "test_acc_lrt", "train_acc_final_lrt"]
                keys += ["test_acc_sample"] if all("test_acc_sample" in r for r in runs) else []
                gaps = [r["test_acc_lrt"] - r["test_acc_mode"] for r in runs]
                s["gap_lrt_minus_mode"] = dict(zip(("mean", "std"), mean_std(gaps)))
            for k in keys:
                s[k] = dict(zip(("mean", "std"), mean_std([r[k] for r in runs])))
            s["s_per_epoch"] = statistics.mean(r["s_per_epoch"] for r in runs)
            summary[f"{d}/{lab}"] = s
    return summary


def print_table(
    results: list[dict[str, Any]], datasets: list[str], labels: list[str], n_seeds: int, sample: bool = False
) -> list[str]:
    """The accuracy table; ``sample`` adds the one-noisy-sample column of the task-trained methods."""
    w = max([24, *(len(lab) for lab in labels)])
    one = f" {'1 sample':>12}" if sample else ""
    lines = [
        f"test accuracy in %, mean ± std over {n_seeds} seed(s); final-epoch network; "
        f"SBNN: mode | MC{EVAL_SAMPLES} | LRT{EVAL_SAMPLES}{' | one noisy sample' if sample else ''}; "
        "train acc = final network on the whole train set (SBNN: mode)",
        "",
        f"{'dataset':<8} {'method':<{w}} {'ep':>3} {'test (mode)':>12} {'MC10':>12} {'LRT10':>12}{one} "
        f"{'LRT-mode':>12} {'train acc':>12} {'s/epoch':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    for d in datasets:
        for lab in labels:
            runs = [r for r in results if r["dataset"] == d and r["label"] == lab]
            if not runs:
                continue
            sb = runs[0]["method"] in TASK_METHODS
            mc = fmt([r["test_acc_mc"] for r in runs]) if sb else "—"
            one = (f" {fmt([r['test_acc_sample'] for r in runs]) if sb else '—':>12}") if sample else ""
            lrt = fmt([r["test_acc_lrt"] for r in runs]) if sb else "—"
            gap = fmt([r["test_acc_lrt"] - r["test_acc_mode"] for r in runs]) if sb else "—"
            sec = statistics.mean(r["s_per_epoch"] for r in runs)
            lines.append(
                f"{d:<8} {lab:<{w}} {runs[0]['epochs']:>3} {fmt([r['test_acc'] for r in runs]):>12} {mc:>12} "
                f"{lrt:>12}{one} {gap:>12} {fmt([r['train_acc_final'] for r in runs]):>12} {sec:>8.2f}"
            )
    return lines


def evaluate_targets(summary: dict[str, Any], datasets: list[str], label: str = "sbnn") -> tuple[list[str], dict[str, Any]]:
    lines, targets = [], {}
    for d in datasets:
        sb, ste = summary.get(f"{d}/{label}"), summary.get(f"{d}/ste")
        if sb and ste:
            ok = sb["test_acc_mode"]["mean"] >= ste["test_acc"]["mean"]
            targets[f"{d}: sbnn mode >= ste"] = ok
            lines.append(
                f"  (i)  {d:<8} SBNN mode {sb['test_acc_mode']['mean']:.1f} >= STE ±1 {ste['test_acc']['mean']:.1f}: "
                f"{'MET' if ok else 'NOT MET'} ({sb['test_acc_mode']['mean'] - ste['test_acc']['mean']:+.1f})"
            )
        if sb:
            gap = sb["gap_lrt_minus_mode"]["mean"]
            ok = gap < 2.0
            targets[f"{d}: lrt - mode < 2"] = ok
            lines.append(f"  (ii) {d:<8} LRT - mode = {gap:+.1f} points < 2: {'MET' if ok else 'NOT MET'}")
    return lines, targets


def evaluate_paper_targets(summary: dict[str, Any], datasets: list[str], label: str = "sbnn") -> tuple[list[str], dict[str, Any]]:
    """Paper suite: is ±1 SBNN's ``mode`` within 3 points of the paper configuration (its one-sample
    accuracy, the paper's evaluation, and its best evaluation)?"""
    lines, targets = [], {}
    for d in datasets:
        sb, paper = summary.get(f"{d}/{label}"), summary.get(f"{d}/paper")
        if not (sb and paper):
            continue
        mode = sb["test_acc_mode"]["mean"]
        evals = {k: paper[f"test_acc_{k}"]["mean"] for k in ("mode", "mc", "lrt", "sample") if f"test_acc_{k}" in paper}
        best = max(evals, key=evals.get)
        for name, ref in (("one sample", evals.get("sample")), (f"best ({best})", evals[best])):
            if ref is None:
                continue
            ok = mode >= ref - 3.0
            targets[f"{d}: sbnn mode within 3 of paper {name}"] = ok
            lines.append(f"  {d:<8} ±1 SBNN mode {mode:.1f} vs paper {name} {ref:.1f}: {mode - ref:+.1f} points, "
                         f"within 3: {'MET' if ok else 'NOT MET'}")
    return lines, targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (default 0 1 2)")
    p.add_argument("--epochs-float", type=int, default=80, help="epochs of the float and STE baselines (default 80)")
    p.add_argument("--epochs-sbnn", type=int, default=80, help="epochs of SBNN (default 80)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--suite", choices=SUITES, default="baselines",
                   help="baselines: sbnn / float / ste (default); paper: the SBNN paper's configuration beside "
                        "±1 SBNN, STEMethod and FullPrecisionMethod on one network and one epoch budget")
    p.add_argument("--methods", nargs="+", default=None, choices=list(dict.fromkeys(METHODS + SUITE_METHODS)),
                   help="default: the suite's methods")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"one epoch budget for every method (paper suite default {PAPER_EPOCHS})")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes, one thread each (default 2)")
    p.add_argument("--out", default=None, help="JSON with every number (default benchmarks/results/accuracy.json; "
                                                 "paper suite: benchmarks/results/accuracy_paper.json)")
    p.add_argument("--quick", action="store_true", help="smoke configuration (~40 s): seed 0, 2 epochs for the baselines, 4 for SBNN")
    p.add_argument("--float-init", choices=("calibrated", "default"), default=FLOAT_INIT,
                   help=f"initial weight scale of the float SNN (default {FLOAT_INIT})")
    p.add_argument("--ste-init", choices=("calibrated", "default"), default=STE_INIT,
                   help=f"initial gains of the STE SNN (default {STE_INIT})")
    p.add_argument("--float-lr", type=float, default=FLOAT_LR, help=f"Adam lr of the float SNN (default {FLOAT_LR})")
    p.add_argument("--ste-lr", type=float, default=STE_LR, help=f"Adam lr of the STE latent weights (default {STE_LR})")
    p.add_argument("--sbnn-kwargs", default="{}",
                   help="JSON dict of extra SpikingClassificationTask arguments (labels the runs sbnn[...])")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = f"benchmarks/results/accuracy{'_paper' if args.suite == 'paper' else ''}.json"
    if args.methods is None:
        args.methods = list(PAPER_METHODS if args.suite == "paper" else METHODS)
    if args.suite == "paper" and args.epochs is None:
        args.epochs = PAPER_EPOCHS
    if args.epochs is not None:
        if args.epochs < 1:
            p.error(f"--epochs must be a positive integer, got {args.epochs}")
        args.epochs_float = args.epochs_sbnn = args.epochs
    if args.quick:
        args.seeds, args.epochs_float, args.epochs_sbnn = [0], 2, (2 if args.suite == "paper" else 4)
        args.epochs = 2 if args.suite == "paper" else args.epochs
    args.task_kwargs = json.loads(args.sbnn_kwargs)
    if not isinstance(args.task_kwargs, dict):
        p.error("--sbnn-kwargs must be a JSON object")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _worker_init()
    label = sbnn_label(args.task_kwargs)
    jobs = []
    for d in args.datasets:
        for method in args.methods:
            for seed in args.seeds:
                epochs = args.epochs_sbnn if method in TASK_METHODS else args.epochs_float
                jobs.append({"dataset": d, "method": method, "seed": seed, "epochs": epochs,
                             "task_kwargs": args.task_kwargs, "label": label, "init": args.float_init if method == "float" else args.ste_init,
                             "float_lr": args.float_lr, "ste_lr": args.ste_lr})
    # longest first (SBNN, then Randman's 50 steps) so the pool drains evenly
    jobs.sort(key=lambda j: (j["method"] not in TASK_METHODS, j["dataset"] != "randman", j["method"] != "ste"))
    print(f"accuracy benchmark: {len(jobs)} runs on {args.jobs} process(es), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}", flush=True)
    t0 = time.perf_counter()
    results = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        futures = {pool.submit(run_one, j): j for j in jobs}
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            extra = (f" mode/MC/LRT/1 {100 * r['test_acc_mode']:.1f}/{100 * r['test_acc_mc']:.1f}/"
                     f"{100 * r['test_acc_lrt']:.1f}/{100 * r['test_acc_sample']:.1f}"
                     if r["method"] in TASK_METHODS else f" test {100 * r['test_acc']:.1f}")
            print(f"[{time.perf_counter() - t0:7.1f}s] {len(results):2d}/{len(jobs)} {r['dataset']:<8} {r['label']:<24} "
                  f"seed {r['seed']}:{extra}, train {100 * r['train_acc_final']:.1f}, {r['s_per_epoch']:.2f} s/epoch",
                  flush=True)
    wall = time.perf_counter() - t0
    labels = [label if m == "sbnn" else m for m in args.methods]
    summary = summarise(results, args.datasets, labels)
    paper = args.suite == "paper"
    lines = print_table(results, args.datasets, labels, len(args.seeds), sample=paper)
    target_lines, targets = (evaluate_paper_targets if paper else evaluate_targets)(summary, args.datasets, label)
    print()
    print("\n".join(lines))
    if target_lines:
        print("\ntargets:")
        print("\n".join(target_lines))
    if paper:
        print(f"\npaper: Adam lr {PAPER_LR} (weights, gains, biases), {PAPER_SIGMA_LR} (noise scales), SNR loss "
              f"{PAPER_SNR_WEIGHT} (sum scale), KL 0, no calibration; ste_method lr {STE_METHOD_LR}; fp_bn / fp_method lr "
              f"{FP_METHOD_LR}; sbnn: task defaults; cosine schedule over the epochs; batch 32")
    else:
        print(f"\nbaselines: float Adam lr {args.float_lr}; STE latent lr {args.ste_lr}, gain lr {GAIN_LR}; init float {args.float_init}, STE {args.ste_init}; "
              f"cosine schedule over the epochs; batch 32")
    print(f"wall time {wall:.0f} s ({args.jobs} process(es), 1 thread each); s/epoch = training passes only, "
          "measured while the other process(es) ran")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "config": {k: v for k, v in vars(args).items()},
            "constants": {"hidden": HIDDEN, "beta": BETA, "threshold": THRESHOLD, "float_lr": FLOAT_LR,
                          "ste_lr": STE_LR, "float_init": FLOAT_INIT, "ste_init": STE_INIT, "gain_lr": GAIN_LR, "hidden_gain": HIDDEN_GAIN,
                          "readout_std": READOUT_STD, "eval_samples": EVAL_SAMPLES, "paper_lr": PAPER_LR,
                          "paper_sigma_lr": PAPER_SIGMA_LR, "paper_sigma_b": PAPER_SIGMA_B,
                          "paper_snr_weight": PAPER_SNR_WEIGHT, "ste_method_lr": STE_METHOD_LR,
                          "fp_method_lr": FP_METHOD_LR},
            "environment": {"torch": torch.__version__, "python": sys.version.split()[0],
                            "platform": platform.platform(), "cpu_count": os.cpu_count()},
            "wall_s": wall, "summary": summary, "targets": targets, "table": lines, "runs": results,
        }, f, indent=1)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

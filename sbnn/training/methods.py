r"""Training methods for binary networks, run on the same sbnn architectures, side by side.

Every method trains a network built from sbnn's Bernoulli layers (:class:`sbnn.models.SpikingMLP`,
:class:`sbnn.models.BinaryMLP`, or any module holding :class:`sbnn.BernoulliLayer` s). The layers'
parameter ``λ`` is read in the way each method needs:

- ``sbnn`` (:class:`SBNNMethod`): ``λ`` is the natural parameter; LRT samples in training; Adam on
  ``λ`` + ``kl_weight``·KL; evaluated as ``mode`` and MC.
- ``bayesbinn`` (:class:`BayesBiNNMethod`): natural parameter; relaxed samples ``tanh((λ+δ)/τ)``;
  :class:`sbnn.training.BayesBiNN`; evaluated as ``mode`` and MC.
- ``ste`` (:class:`STEMethod`): latent real weight; ``sign(λ)`` forward, clipped-identity
  backward; Adam with gradient and weight clipping; evaluated with ``sign(λ)``.
- ``bnn`` / ``bnn+`` / ``bnn++`` (:class:`QuantizerMethod`): latent real weight through a
  ProxConnect++ pair (:mod:`sbnn.quantizers`); Adam; evaluated with ``sign(λ)``.
- ``bop`` (:class:`BopMethod`): ``λ`` is the ±1 weight itself; :class:`sbnn.training.Bop`.
- ``adam`` (:class:`FullPrecisionMethod`): ``λ`` is a full-precision weight, in training and
  evaluation; Adam.

Weights are swapped in without touching the layers' code: a method puts each layer in its
``fixed`` mode with the weight ``Q(λ)`` (``Q`` the method's weight function, carrying the
gradient back to ``λ``) for the duration of one forward/backward pass. The scale ``α`` and the
biases stay float parameters and are trained by Adam in every method (they are BayesBiNN's and
Bop's "other parameters"). Outside ``sbnn``, stochastic neurons run deterministically (``ε = 0``;
their spike gradient is the estimator's surrogate of width ``sqrt(σ0² + ε_min²)``).

:class:`sbnn.tasks.MethodTask` drives a method under Lightning (``sbnn fit`` with
``model.class_path: sbnn.tasks.MethodTask`` and ``model.init_args.method.class_path`` one of
the classes below); :func:`sbnn.training.fit` and :func:`predict_samples` are the same code
without Lightning, used by ``benchmarks/compare_methods.py``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_in_range, check_positive_int
from .losses import kl_divergence
from ..modes import deterministic_neurons, evaluation, set_mode
from .optim import BayesBiNN, Bop, bernoulli_layers, random_sign_
from .schedules import TwoPhaseCosine, cosine
from ..quantizers import bnn_quantize, get_quantizer

__all__ = [
    "TrainingMethod",
    "SBNNMethod",
    "BayesBiNNMethod",
    "STEMethod",
    "QuantizerMethod",
    "BopMethod",
    "FullPrecisionMethod",
    "METHODS",
    "make_method",
    "weights_from",
    "predict_samples",
]


@contextlib.contextmanager
def weights_from(network: nn.Module, fn: Callable[[Tensor], Tensor]) -> Iterator[nn.Module]:
    """Run every Bernoulli layer with weight ``fn(λ)`` (and neurons deterministic), then restore.

    ``fn`` is applied once on entry, so use one context per forward/backward pass.
    """
    layers = bernoulli_layers(network)
    saved = [(layer, layer.mode_state()) for layer in layers]
    try:
        for layer in layers:
            layer.set_fixed_weight(fn(layer.lam))
        with deterministic_neurons(network):
            yield network
    finally:
        for layer, state in saved:
            layer.restore_mode_state(state)


def _float_params(network: nn.Module) -> list[Tensor]:
    lam_ids = {id(layer.lam) for layer in bernoulli_layers(network)}
    return [p for p in network.parameters() if id(p) not in lam_ids and p.requires_grad]


def _identity(w: Tensor) -> Tensor:
    return w


class TrainingMethod:
    """One way of training a network of Bernoulli layers (see the module docstring).

    Lifecycle: :meth:`setup` once, then :meth:`train_step` per batch and :meth:`epoch_end` after
    every epoch (learning-rate schedules). :meth:`setup` is :meth:`initialize` (the method's
    one-time re-initialisation of ``λ``, e.g. BayesBiNN's ``±lam_init``) followed by
    :meth:`build` (the optimisers, no change to the network); a resumed run calls :meth:`build`
    only. ``posterior`` says whether the
    method learns a distribution (MC predictions differ from ``mode``); ``eval_weight`` is the
    weight function of the deterministic evaluation (``None``: the layers' ``mode``, ``sign(λ)``).
    """

    name: str = ""
    posterior: bool = False
    eval_weight: Callable[[Tensor], Tensor] | None = None

    def __init__(self) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.epochs = 1
        self.epoch = 0

    def setup(self, network: nn.Module, n_train: int, epochs: int) -> list[torch.optim.Optimizer]:
        """:meth:`initialize` then :meth:`build`: a fresh start on ``network``."""
        self._check_network(network)
        check_positive_int(type(self).__name__, n_train=n_train, epochs=epochs)
        self.initialize(network)
        return self.build(network, n_train, epochs)

    def _check_network(self, network: nn.Module) -> None:
        if not bernoulli_layers(network):
            raise ValueError(
                f"{type(self).__name__}: the network has no Bernoulli layers (sbnn.BernoulliLinear / "
                "BernoulliConv2d) whose λ it could train"
            )

    def initialize(self, network: nn.Module) -> None:
        """Re-initialise ``λ`` as the method needs before its first step (default: keep it)."""

    def build(self, network: nn.Module, n_train: int, epochs: int) -> list[torch.optim.Optimizer]:
        """The optimisers for ``network`` (``n_train`` examples, ``epochs`` epochs); ``λ`` is untouched."""
        self._check_network(network)
        check_positive_int(type(self).__name__, n_train=n_train, epochs=epochs)
        self.n_train, self.epochs, self.epoch = n_train, epochs, 0
        self.optimizers = self._build(network)
        self._base_lrs = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        return self.optimizers

    def _build(self, network: nn.Module) -> list[torch.optim.Optimizer]:  # pragma: no cover - interface
        raise NotImplementedError

    def _lr_factor(self, epoch: int) -> float:
        return cosine(epoch, self.epochs)

    def epoch_end(self, epoch: int) -> None:
        """Set the learning rates for epoch ``epoch + 1`` (cosine over ``epochs`` by default)."""
        self.epoch = epoch + 1
        factor = self._lr_factor(self.epoch)
        for opt, lrs in zip(self.optimizers, self._base_lrs):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * factor

    def train_step(self, network: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
        """One update on the batch ``(x, y)``; ``loss_fn(output, y)`` is the mean batch loss."""
        raise NotImplementedError  # pragma: no cover - interface

    def _zero(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)


class _LatentWeightMethod(TrainingMethod):
    """Adam on latent real weights ``λ`` seen through a weight function ``Q`` (plus float params)."""

    def __init__(self, lr: float, float_lr: float, grad_clip: float | None = None, weight_clip: float | None = None) -> None:
        super().__init__()
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("float_lr", float_lr, 0.0, low_open=True)
        if grad_clip is not None:
            check_in_range("grad_clip", grad_clip, 0.0, low_open=True)
        if weight_clip is not None:
            check_in_range("weight_clip", weight_clip, 0.0, low_open=True)
        self.lr, self.float_lr, self.grad_clip, self.weight_clip = lr, float_lr, grad_clip, weight_clip

    def weight(self, lam: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _build(self, network: nn.Module) -> list[torch.optim.Optimizer]:
        self._lams = [layer.lam for layer in bernoulli_layers(network)]
        groups = [{"params": self._lams, "lr": self.lr}]
        rest = _float_params(network)
        if rest:
            groups.append({"params": rest, "lr": self.float_lr})
        return [torch.optim.Adam(groups)]

    def train_step(self, network, loss_fn, x, y):
        self._zero()
        with weights_from(network, self.weight):
            loss = loss_fn(network(x), y)
            loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._lams, self.grad_clip)
        self.optimizers[0].step()
        if self.weight_clip is not None:
            with torch.no_grad():
                for lam in self._lams:
                    lam.clamp_(-self.weight_clip, self.weight_clip)
        return loss.detach()


class STEMethod(_LatentWeightMethod):
    """STE-Adam (Courbariaux et al. 2015; BayesBiNN (Meng et al. 2020) table 9): ``sign(λ)`` forward, ``1{|λ|≤1}`` backward.

    Adam on the latent weights ``λ``, whose gradient norm is clipped at ``grad_clip`` and whose
    values are clipped to ``[−weight_clip, weight_clip]`` after every step (the BayesBiNN paper's "gradient
    clipping, weights clipping: yes"). Evaluated with ``sign(λ)``.

    Args:
        lr: Adam learning rate of ``λ`` (seed: 1e−2, moons 0.1), cosine-decayed.
        float_lr: Adam learning rate of the scales and biases.
        grad_clip: max gradient norm over all ``λ`` (``> 0``).
        weight_clip: latent weight bound (``> 0``).
    """

    name = "ste"

    def __init__(self, lr: float = 1e-2, float_lr: float = 1e-3, grad_clip: float = 1.0, weight_clip: float = 1.0) -> None:
        super().__init__(lr, float_lr, grad_clip, weight_clip)

    def weight(self, lam: Tensor) -> Tensor:
        return bnn_quantize(lam)


class QuantizerMethod(_LatentWeightMethod):
    """ProxConnect++ training with a forward–backward quantiser pair (Lu et al. 2023, arXiv:2402.17710).

    ``w̃ = F(λ)`` forward, ``∂ℓ/∂λ = B'(λ)·∂ℓ/∂w̃`` backward (:mod:`sbnn.quantizers`), Adam on
    ``λ``, no clipping. For ``bnn+`` and ``bnn++`` the sign-Swish sharpness ``μ`` rises
    geometrically from ``mu`` to ``mu_final`` over training, so BNN++'s smooth forward weights
    approach ``sign``; evaluation always uses ``sign(λ)``.

    Args:
        quantizer: ``"bnn"``, ``"bnn+"`` or ``"bnn++"``.
        lr: Adam learning rate of ``λ``, cosine-decayed.
        float_lr: Adam learning rate of the scales and biases.
        mu: initial ``μ > 0``.
        mu_final: final ``μ ≥ mu``.
    """

    def __init__(
        self,
        quantizer: Literal["bnn", "bnn+", "bnn++"] = "bnn++",
        lr: float = 1e-2,
        float_lr: float = 1e-3,
        mu: float = 1.0,
        mu_final: float = 20.0,
    ) -> None:
        super().__init__(lr, float_lr)
        check_choice("quantizer", quantizer, ("bnn", "bnn+", "bnn++"))
        check_in_range("mu", mu, 0.0, low_open=True)
        check_in_range("mu_final", mu_final, mu)
        self.quantizer, self.mu0, self.mu_final = quantizer, float(mu), float(mu_final)
        self.name = quantizer

    @property
    def mu(self) -> float:
        """The current sign-Swish sharpness (geometric schedule over the epochs)."""
        frac = min(self.epoch / max(self.epochs - 1, 1), 1.0)
        return self.mu0 * (self.mu_final / self.mu0) ** frac

    def weight(self, lam: Tensor) -> Tensor:
        return get_quantizer(self.quantizer, self.mu)(lam)


class FullPrecisionMethod(_LatentWeightMethod):
    """Full-precision Adam: ``λ`` is an ordinary real weight, in training and in evaluation.

    Args:
        lr: Adam learning rate of the weights (BayesBiNN table 9: 3e−4 … 1e−2), cosine-decayed.
        float_lr: Adam learning rate of the scales and biases.
    """

    name = "adam"
    eval_weight = staticmethod(_identity)

    def __init__(self, lr: float = 1e-2, float_lr: float = 1e-3) -> None:
        super().__init__(lr, float_lr)

    def weight(self, lam: Tensor) -> Tensor:
        return _identity(lam)


class BopMethod(TrainingMethod):
    """Bop (Helwegen et al. 2019) on the ±1 weights, Adam on the scales and biases.

    On setup ``λ ← sign(λ)``; the forward weight is ``λ`` itself (a ±1 tensor), so the gradient
    Bop averages is ``∂ℓ/∂w``. The adaptivity ``γ`` decays by cosine with the learning rates.

    Args:
        threshold: ``τ_b ≥ 0`` (BayesBiNN table 9: 1e−8).
        adaptivity: ``γ ∈ (0, 1]`` (seed: 1e−5 … 1e−4).
        float_lr: Adam learning rate of the scales and biases.
    """

    name = "bop"

    def __init__(self, threshold: float = 1e-8, adaptivity: float = 1e-4, float_lr: float = 1e-3) -> None:
        super().__init__()
        check_in_range("threshold", threshold, 0.0)
        check_in_range("adaptivity", adaptivity, 0.0, 1.0, low_open=True)
        check_in_range("float_lr", float_lr, 0.0, low_open=True)
        self.threshold, self.adaptivity, self.float_lr = threshold, adaptivity, float_lr

    def initialize(self, network: nn.Module) -> None:
        """``λ ← sign(λ)``: Bop's weights are the ±1 values themselves."""
        with torch.no_grad():
            for layer in bernoulli_layers(network):
                layer.lam.copy_(torch.where(layer.lam >= 0, 1.0, -1.0))

    def _build(self, network):
        lams = [layer.lam for layer in bernoulli_layers(network)]
        opts: list[torch.optim.Optimizer] = [Bop(lams, self.threshold, self.adaptivity)]
        rest = _float_params(network)
        if rest:
            opts.append(torch.optim.Adam(rest, lr=self.float_lr))
        # Bop's "learning rate" is γ; expose it as lr so the shared schedule decays it
        for group in opts[0].param_groups:
            group["lr"] = group["adaptivity"]
        return opts

    def epoch_end(self, epoch: int) -> None:
        super().epoch_end(epoch)
        for group in self.optimizers[0].param_groups:
            group["adaptivity"] = max(group["lr"], 1e-12)

    def train_step(self, network, loss_fn, x, y):
        self._zero()
        with weights_from(network, _identity):
            loss = loss_fn(network(x), y)
            loss.backward()
        for opt in self.optimizers:
            opt.step()
        return loss.detach()


class BayesBiNNMethod(TrainingMethod):
    """BayesBiNN (:class:`sbnn.training.BayesBiNN`) on ``λ``, Adam on the scales and biases.

    The learning rates decay by cosine over the epochs (BayesBiNN (Meng et al. 2020) table 9; tables 3–4 use step
    or exponential decays). Evaluated with the ``mode`` network ``sign(λ)`` and MC averages over
    ``w ~ q``.

    Args:
        lr, momentum, temperature, num_samples, lam_init, kl_weight: see
            :class:`sbnn.training.BayesBiNN` (``lam_init=None`` keeps the current ``λ``, e.g. for the
            next task of a continual-learning sequence).
        float_lr: Adam learning rate of the scales and biases.
    """

    name = "bayesbinn"
    posterior = True

    def __init__(
        self,
        lr: float = 1e-4,
        momentum: float = 0.0,
        temperature: float = 1e-10,
        num_samples: int = 1,
        lam_init: float | None = 10.0,
        kl_weight: float = 1.0,
        float_lr: float = 1e-3,
    ) -> None:
        super().__init__()
        # the optimiser re-checks all of these; checking here reports them before training starts
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
        check_in_range("temperature", temperature, 0.0, low_open=True)
        check_positive_int("BayesBiNNMethod", num_samples=num_samples)
        if lam_init is not None:
            check_in_range("lam_init", lam_init, 0.0, low_open=True)
        check_in_range("kl_weight", kl_weight, 0.0)
        check_in_range("float_lr", float_lr, 0.0, low_open=True)
        self.kwargs = dict(lr=lr, momentum=momentum, temperature=temperature, num_samples=num_samples,
                           lam_init=lam_init, kl_weight=kl_weight)
        self.float_lr = float_lr

    def initialize(self, network: nn.Module) -> None:
        """Random ``λ = ±lam_init`` in every layer (nothing when ``lam_init`` is ``None``)."""
        if self.kwargs["lam_init"] is not None:
            random_sign_(bernoulli_layers(network), self.kwargs["lam_init"])

    def _build(self, network):
        opts: list[torch.optim.Optimizer] = [BayesBiNN(network, self.n_train, **{**self.kwargs, "lam_init": None})]
        rest = _float_params(network)
        if rest:
            opts.append(torch.optim.Adam(rest, lr=self.float_lr))
        return opts

    def train_step(self, network, loss_fn, x, y):
        self._zero()
        with deterministic_neurons(network):
            loss = self.optimizers[0].step(lambda: loss_fn(network(x), y))
        for opt in self.optimizers[1:]:
            opt.step()
        return loss


class SBNNMethod(TrainingMethod):
    """sbnn's own training: Adam on ``λ`` through local reparameterisation, plus the tempered KL.

    ``loss = ℓ + kl_weight·KL(q‖p)/N`` in ``sample`` mode (posterior noise in the neurons), the
    same objective as :class:`sbnn.tasks.SpikingClassificationTask`; the last
    ``finetune_epochs`` also train the ``mode`` network (docs/design.md §7), with the learning rates
    restarted at ``finetune_factor`` (:class:`sbnn.training.TwoPhaseCosine`).

    Args:
        lam_lr: Adam learning rate of ``λ`` (≈ 0.1 on the logit scale).
        lr: Adam learning rate of the scales and biases.
        kl_weight: weight of ``KL/N``.
        finetune_epochs: final epochs that add the ``mode`` network's loss.
        finetune_factor: learning-rate restart factor of the fine-tune.
    """

    name = "sbnn"
    posterior = True

    def __init__(
        self,
        lam_lr: float = 0.1,
        lr: float = 1e-3,
        kl_weight: float = 0.1,
        finetune_epochs: int = 0,
        finetune_factor: float = 0.3,
    ) -> None:
        super().__init__()
        check_in_range("lam_lr", lam_lr, 0.0, low_open=True)
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("kl_weight", kl_weight, 0.0)
        if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be a non-negative integer, got {finetune_epochs!r}")
        check_in_range("finetune_factor", finetune_factor, 0.0)
        self.lam_lr, self.lr, self.kl_weight = lam_lr, lr, kl_weight
        self.finetune_epochs, self.finetune_factor = finetune_epochs, finetune_factor

    def _build(self, network):
        groups = [{"params": [layer.lam for layer in bernoulli_layers(network)], "lr": self.lam_lr}]
        rest = _float_params(network)
        if rest:
            groups.append({"params": rest, "lr": self.lr})
        return [torch.optim.Adam(groups)]

    def _lr_factor(self, epoch: int) -> float:
        return TwoPhaseCosine(self.epochs, self.finetune_epochs, self.finetune_factor)(epoch)

    def train_step(self, network, loss_fn, x, y):
        self._zero()
        with evaluation(network, "sample"):
            loss = loss_fn(network(x), y) + self.kl_weight * kl_divergence(network) / self.n_train
        if self.finetune_epochs and self.epoch >= self.epochs - self.finetune_epochs:
            with evaluation(network, "mode"):
                loss = loss + loss_fn(network(x), y)
        loss.backward()
        self.optimizers[0].step()
        return loss.detach()


#: name -> class; ``make_method(name, **kwargs)`` builds one
METHODS: dict[str, Callable[..., TrainingMethod]] = {
    "sbnn": SBNNMethod,
    "bayesbinn": BayesBiNNMethod,
    "ste": STEMethod,
    "bnn": functools.partial(QuantizerMethod, "bnn"),
    "bnn+": functools.partial(QuantizerMethod, "bnn+"),
    "bnn++": functools.partial(QuantizerMethod, "bnn++"),
    "bop": BopMethod,
    "adam": FullPrecisionMethod,
}


def make_method(name: str, **kwargs: Any) -> TrainingMethod:
    """Build the method called ``name`` (one of :data:`METHODS`) with its hyper-parameters."""
    check_choice("method", name, tuple(METHODS))
    return METHODS[name](**kwargs)


@torch.no_grad()
def predict_samples(network: nn.Module, method: TrainingMethod, x: Tensor, kind: Literal["mode", "mc"] = "mode", n_samples: int = 10, generator: torch.Generator | None = None) -> Tensor:
    """Network outputs under the method's evaluation: ``[1, B, K]`` (``mode``) or ``[C, B, K]`` (MC).

    ``mode`` is the deterministic network (``sign(λ)``, or ``λ`` for full precision). ``mc`` draws
    ``C`` binary networks ``w ~ q`` for methods with a posterior and falls back to ``mode``
    (one output) for the others.
    """
    check_choice("kind", kind, ("mode", "mc"))
    check_positive_int("predict_samples", n_samples=n_samples)
    was_training = network.training
    network.eval()
    try:
        if kind == "mc" and method.posterior:
            outs = []
            with evaluation(network, "mc", generator):
                for _ in range(n_samples):
                    set_mode(network, "mc", generator)
                    outs.append(network(x))
            return torch.stack(outs)
        if method.eval_weight is not None:
            with weights_from(network, method.eval_weight):
                return network(x)[None]
        with evaluation(network, "mode"):
            return network(x)[None]
    finally:
        network.train(was_training)

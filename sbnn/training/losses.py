r"""The training objective: a KL-weighted evidence lower bound.

.. math::
    \mathcal L = \mathrm{NLL}(\text{readout}, y)
        + \text{kl\_weight} \cdot \frac{KL(q \,\|\, p)}{N_\text{train}}
        + \text{aux\_weight} \cdot \mathcal L_\text{aux}

With ``kl_weight = 1`` this is the negative ELBO per training example. On small data sets
(``N_train ≈ 10³`` against ``≈ 10⁴`` weights) the full KL keeps the posterior broad and a weight
``≥ 10`` collapses it to the uniform prior, an absorbing state; ``0.1`` worked in sbnn's design runs
(docs/design.md §7). ``L_aux`` is the bias-reducing auxiliary loss: any callable ``aux_fn(model) -> Tensor``
computed from the forward pass just run; :class:`BiasProxyLoss` is sbnn's (derivation in
``docs/theory.md``, "The auxiliary loss").
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch.utils.hooks import RemovableHandle

from .._validation import check_in_range, check_positive_int
from ..functional.neurons import Drive, time_average_weights
from ..gaussian_layers import GaussianLayer
from ..layers import BernoulliLayer
from ..neurons import DriveRecorder, StochasticLIF
from ..posterior import sign_mean

__all__ = ["kl_divergence", "ELBOTerms", "ELBOLoss", "BiasProxyLoss", "bias_proxy_terms"]


def kl_divergence(model: nn.Module) -> Tensor:
    """``KL(q ‖ p)`` summed over every weight layer of ``model``, Bernoulli or Gaussian (0 if none)."""
    terms = [m.kl() for m in model.modules() if isinstance(m, (BernoulliLayer, GaussianLayer))]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


class ELBOTerms(NamedTuple):
    """The objective and its parts (all scalars): ``loss = nll + kl_term + aux_term``."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    aux: Tensor


class ELBOLoss(nn.Module):
    """``NLL + kl_weight·KL/N_train + aux_weight·L_aux`` for classifiers returning logits.

    Args:
        n_train: number of training examples ``N_train`` (the KL is per example).
        kl_weight: weight of the KL term (``≥ 0``).
        aux_weight: weight of the auxiliary loss (``≥ 0``; needs ``aux_fn`` when positive).
        aux_fn: ``aux_fn(model) -> Tensor`` — the hook for the bias-reducing auxiliary loss.

    Example:
        >>> from sbnn.models import SpikingMLP
        >>> net = SpikingMLP(4, (8,), 3)
        >>> terms = ELBOLoss(n_train=100)(net(torch.rand(5, 2, 4).round()), torch.tensor([0, 2]), net)
        >>> bool(terms.loss > terms.nll)
        True
    """

    def __init__(
        self,
        n_train: int,
        kl_weight: float = 1.0,
        aux_weight: float = 0.0,
        aux_fn: Callable[[nn.Module], Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("ELBOLoss (the number of training examples)", n_train=n_train)
        check_in_range("kl_weight", kl_weight, 0.0)
        check_in_range("aux_weight", aux_weight, 0.0)
        if aux_weight > 0 and aux_fn is None:
            raise ValueError("aux_weight > 0 needs an aux_fn(model) -> Tensor that computes the auxiliary loss")
        self.n_train, self.kl_weight, self.aux_weight, self.aux_fn = n_train, kl_weight, aux_weight, aux_fn

    def forward(self, logits: Tensor, target: Tensor, model: nn.Module) -> ELBOTerms:
        """Return :class:`ELBOTerms` for ``logits [B, K]`` and integer ``target [B]``."""
        nll = F.cross_entropy(logits, target)
        kl = kl_divergence(model).to(nll)
        aux = self.aux_fn(model) if (self.aux_fn is not None and self.aux_weight > 0) else nll.new_zeros(())
        loss = nll + self.kl_weight * kl / self.n_train + self.aux_weight * aux
        return ELBOTerms(loss, nll, kl, aux)


def _signed_weights(layer: nn.Module) -> Tensor:
    """The mean change of unit k's pre-activation when input j spikes, ``[out, in]``: ``α_k m_kj``
    for a Bernoulli layer, the mean weight ``W̄_kj`` for a Gaussian one."""
    if isinstance(layer, GaussianLayer):
        return layer.mean_weight()
    return layer.scale.reshape(-1, 1) * sign_mean(layer.lam)


def _readout_probabilities(model: nn.Module, spikes: Tensor, weights: Tensor) -> Tensor:
    """Softmax of the membrane readout's mean logits for the recorded last-layer spikes, ``[B, K]``."""
    out = model.output
    logits = torch.tensordot(weights, spikes, dims=1) @ _signed_weights(out).T
    if out.bias is not None:
        logits = logits + out.bias * weights.sum()
    return logits.softmax(-1)


def bias_proxy_terms(model: nn.Module, drives: Mapping[str, Drive], detach_drive: bool = False) -> list[Tensor]:
    r"""Per hidden layer, the second-order ``st`` bias bound of every unit-step, ``[T, B, n_l]``.

    .. math::
        b_j[t] = p(θ_j)\,\bigl|F(θ_j) − \tfrac12\bigr| \cdot c_j[t], \qquad
        c_j = \sum_k |p'(θ_k)| \frac{(α_k m_{kj})^2}{s_k^2}

    over the units ``k`` of the next stochastic layer (``s_k`` its noise scale), and for the last
    hidden layer under a membrane readout ``c_j[t] = w_t^2 \operatorname{Var}_{k∼p}(α_k m_{kj})``,
    the cross-entropy's curvature along the flip (``w_t`` the readout's time weights, ``p`` the
    softmax of the readout's mean logits for the recorded spikes).
    Needs the drives of the forward pass just run, by neuron name (:func:`sbnn.neurons.record_drives`
    returns them; :meth:`BiasProxyLoss.attach` records them). Works on
    :class:`sbnn.models.SpikingMLP`-shaped models (``layers``, ``neurons``, ``output`` and
    ``output_neuron`` attributes). With
    ``detach_drive`` the drive-dependent factors (``p(θ_j)|F(θ_j) − ½|`` and ``|p'(θ_k)|``) are
    weights without gradient, so only the flip-to-noise ratio ``(α_k m_kj / s_k)²`` is trained.
    """
    neurons = list(model.neurons)
    hidden = [drives.get(f"neurons.{i}") for i in range(len(neurons))]
    next_layers = list(model.layers[1:]) + [model.output]
    next_drives = hidden[1:] + [drives.get("output_neuron") if model.output_neuron is not None else None]
    if any(d is None for d in hidden) or (model.output_neuron is not None and next_drives[-1] is None):
        raise RuntimeError(
            "the bias proxy needs the drives of the last noisy forward pass: call BiasProxyLoss().attach(model) "
            "once before training, or run the forward pass inside sbnn.neurons.record_drives(model)"
        )
    terms = []
    for neuron, drive, layer, nxt in zip(neurons, hidden, next_layers, next_drives):
        theta = drive.theta
        noise = neuron.noise
        flip = _signed_weights(layer)  # [n_next, n]
        if nxt is not None:
            next_theta = nxt.theta.detach() if detach_drive else nxt.theta
            sensitivity = noise.pdf_derivative(next_theta).abs() / nxt.scale.square()  # [T, B, n_next]
            curvature = sensitivity @ flip.square()
        else:
            # membrane readout: a spike at step t moves the logits by d = w_t·α_k m_kj; the
            # cross-entropy's curvature along d is Var_p(d) under the softmax p of the readout
            w = time_average_weights(theta.shape[0], model.readout_beta, like=theta)
            probs = _readout_probabilities(model, drive.spikes, w)
            if detach_drive:
                probs = probs.detach()
            spread = probs @ flip.square() - (probs @ flip).square()  # [B, n]
            curvature = w.square()[:, None, None] * spread
        if detach_drive:
            theta = theta.detach()
        weight = noise.pdf(theta) * (noise.cdf(theta) - 0.5).abs()
        terms.append(weight * curvature)
    return terms


class DriveHookedLoss:
    """An auxiliary loss computed from the drives the neurons report during a forward pass.

    :meth:`attach` registers one drive hook on every :class:`~sbnn.StochasticLIF` of a model; the
    drives are kept here, not on the model, until the loss is next computed (they hold that
    forward pass's graph); :meth:`detach` removes the hooks. ``recorder`` makes a hook from the
    drive store and the neuron's name: :class:`~sbnn.neurons.DriveRecorder` keeps a neuron's last
    drive, a collector (e.g. :class:`sbnn.training.DriveCollector`) every drive of the pass.
    """

    recorder: Callable[[dict, str], Callable] = DriveRecorder

    def __init__(self) -> None:
        self._drives: dict = {}
        self._handles: list[RemovableHandle] = []

    def attach(self, model: nn.Module) -> "DriveHookedLoss":
        """Record the drive of every :class:`~sbnn.StochasticLIF` in ``model`` (a drive hook each)."""
        self.detach()
        for name, module in model.named_modules():
            if isinstance(module, StochasticLIF):
                self._handles.append(module.register_drive_hook(type(self).recorder(self._drives, name)))
        return self

    def detach(self) -> None:
        """Remove the hooks :meth:`attach` registered and forget the recorded drives."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._drives.clear()


class BiasProxyLoss(DriveHookedLoss):
    r"""The bias-reducing auxiliary loss: the mean over examples and steps of the summed bound.

    Args:
        detach_drive: train only the flip-to-noise ratio ``(α_k m_kj / s_k)²`` (the default);
            ``False`` also lets the gradient move the drives ``θ``, which can lower the bound by
            saturating units (``p(θ) → 0``): in sbnn's study that silenced small networks
            (docs/diagnostics.md).

    .. math::
        L_\text{aux} = \frac{1}{TB} \sum_{t,b} \sum_l \sum_j b^{(l)}_j[t, b]

    (see :func:`bias_proxy_terms`). It is small when units sit either near ``F(θ) = ½`` or far
    from threshold, and when a single input flip is small against the next layer's noise.

    .. note::
        sbnn's own construction from docs/design.md §1.5 (the paper's form is not public). Use it
        through ``SpikingClassificationTask(aux_weight=...)``, which attaches it; by hand::

            aux = BiasProxyLoss().attach(net)
            loss = ELBOLoss(n_train, aux_weight=0.1, aux_fn=aux)(net(x), y, net)
    """

    def __init__(self, detach_drive: bool = True) -> None:
        super().__init__()
        self.detach_drive = bool(detach_drive)

    def __call__(self, model: nn.Module, drives: Mapping[str, Drive] | None = None) -> Tensor:
        """The loss from ``drives`` (default: those recorded since :meth:`attach`, which are then released)."""
        recorded = drives is None
        terms = bias_proxy_terms(model, self._drives if recorded else drives, self.detach_drive)
        if recorded:
            self._drives.clear()  # one forward pass's graph: do not keep it past its loss
        steps_and_batch = terms[0].shape[0] * terms[0].shape[1]
        return torch.stack([t.sum() for t in terms]).sum() / steps_and_batch

    def __getstate__(self) -> dict:
        # hooks and drives belong to one attached model and one forward pass
        return {"detach_drive": self.detach_drive, "_drives": {}, "_handles": []}

    def __repr__(self) -> str:
        return f"BiasProxyLoss(detach_drive={self.detach_drive})"


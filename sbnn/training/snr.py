r"""The signal-to-noise auxiliary loss of Walker et al. 2025 (arXiv 2505.17962), for every network family.

Per stochastic neuron layer ``l``, step ``t``, example ``b`` and unit ``j``, the ratio of the
membrane mean the neuron compares with its threshold to the standard deviation of its noise:

.. math::
    r = \frac{m}{s}, \qquad m = θ\,κs_θ + ϑ, \qquad s = s_θ

where ``θ = (m − ϑ)/(κ s)`` is the standardised drive the estimator sees and ``κs`` the noise
scale in ``θ`` (:class:`~sbnn.functional.neurons.Drive`; ``κ`` the noise family's
``std_to_scale``). The loss is

.. math::
    L_\text{snr} = \sum_l \sum_t \frac1B \sum_b \sum_j r^2                       \quad(\texttt{"sum"}),
    \qquad
    L_\text{snr} = \frac{\sum_l \sum_t \frac1B \sum_b \sum_j r^2}{\sum_l T N_l}   \quad(\texttt{"mean"})

``"sum"`` is the authors' normalisation (their ``λ``: 1e-6 on SHD, 1e-10 on DVS Gesture, 1e-8 on
CIFAR-10); ``"mean"`` (the default) is the mean of ``r²`` over every unit-step, so one weight
suits networks of any width and length: ``λ_mean = λ_sum · T · Σ_l N_l`` (``N_l`` the units of
layer ``l``; for the paper's setups ``λ_mean`` ≈ 0.05 (SHD), 2e-3 (DVS Gesture), 8e-3 (CIFAR-10)).
Why a small penalty lowers the straight-through bias: ``docs/theory.md``, "The signal-to-noise
auxiliary loss".

.. note::
    What ``m`` and ``s`` are in the authors' code: on DVS Gesture the integrated membrane mean
    and the accumulated noise standard deviation ``sqrt(V[t] + σ_b²)`` — exactly sbnn's
    ``membrane_noise="marginal"`` drive; on CIFAR-10 (``T = 1``) the same; on SHD the step's
    input current over that step's noise standard deviation. sbnn uses the membrane form for
    every network; with the default ``"pathwise"`` membrane, ``m`` is the membrane given the
    past noise and ``s`` the step's noise standard deviation. ``SNRLoss(signal="current")``
    computes the SHD form instead (:func:`snr_current_ratio`): the step's input mean over the
    step's own noise standard deviation, ``r = μ[t]/sqrt(v[t] + σ0² + ε_min² + w·σ_b²)``; the
    authors' SHD code adds ``σ_b²`` twice there (``w = 2``, ``sigma_b_weight=2.0``).
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_in_range
from ..functional.neurons import Drive
from .losses import DriveHookedLoss

__all__ = ["SNR_REDUCTIONS", "SNR_SIGNALS", "snr_ratio", "snr_current_ratio", "SNRLoss", "DriveCollector"]

SNR_REDUCTIONS = ("mean", "sum")
SNR_SIGNALS = ("membrane", "current")


def snr_ratio(drive: Drive, threshold: Tensor | float, std_to_scale: float = 1.0) -> Tensor:
    r"""``r = m/s`` of every unit-step of one neuron layer, ``[T, B, ...]`` (with the drive's graph).

    .. math:: r = κ\,\frac{θ\,σ + ϑ}{σ}

    with ``σ = drive.scale`` (``κ s``), so ``θσ + ϑ`` is the membrane mean and ``σ/κ`` the noise
    standard deviation. Differentiable in the input mean (through ``θ``) and in the input
    variance (through ``σ``).

    Args:
        drive: the neuron's :class:`~sbnn.functional.neurons.Drive` from a noisy pass.
        threshold: its threshold ``ϑ`` (broadcasts over the unit dimensions).
        std_to_scale: the noise family's ``κ``.
    """
    return std_to_scale * (drive.theta * drive.scale + threshold) / drive.scale


def snr_current_ratio(drive: Drive, neuron: StochasticLIF, sigma_b_weight: float = 1.0) -> Tensor:
    r"""``r = μ[t]/s_step[t]`` of every unit-step of one neuron layer: the step's input over its own noise.

    .. math:: s_\text{step}^2 = v[t] + σ_0^2 + ε_\text{min}^2 + w\,σ_b^2

    with ``(μ[t], v[t])`` the input moments the neuron received at step ``t`` (after any gain and
    bias, a recurrent current included) and ``w`` = ``sigma_b_weight``. Differentiable in ``μ``,
    ``v`` and ``σ_b``.

    Raises:
        ValueError: when the drive carries no input moments.
    """
    if drive.input_mean is None:
        raise ValueError("snr_current_ratio: the drive carries no input moments (record it with StochasticLIF.sequence)")
    var = drive.input_var if drive.input_var is not None else torch.zeros_like(drive.input_mean)
    total = var + (neuron.sigma0**2 + neuron.eps_min**2)
    sigma_b = neuron.sigma_b
    if sigma_b is not None:
        total = total + sigma_b_weight * sigma_b.square()
    return drive.input_mean / total.sqrt()


class DriveCollector:
    """A drive hook (:meth:`~sbnn.StochasticLIF.register_drive_hook`) appending every drive to ``drives[name]``.

    A recurrent layer runs its neuron one step at a time, so one forward pass reports several
    drives per neuron; all of them count.
    """

    def __init__(self, drives: dict[str, list[Drive]], name: str) -> None:
        self.drives, self.name = drives, name

    def __call__(self, neuron: StochasticLIF, drive: Drive) -> None:
        self.drives.setdefault(self.name, []).append(drive)


class SNRLoss(DriveHookedLoss):
    r"""The signal-to-noise auxiliary loss ``L_snr`` (see the module docstring).

    Works on any model with :class:`~sbnn.StochasticLIF` neurons (MLP, recurrent, convolutional
    and residual networks): every neuron that ran a noisy sequence in the forward pass counts.

    Args:
        reduction: ``"mean"`` (default: mean of ``r²`` over every unit-step and example) or
            ``"sum"`` (the authors' sum over layers, steps and units, mean over the batch).
        signal: ``"membrane"`` (default: :func:`snr_ratio`, the membrane mean over the
            accumulated noise) or ``"current"`` (:func:`snr_current_ratio`, the step's input over
            the step's noise: the authors' SHD form).
        sigma_b_weight: ``w`` of :func:`snr_current_ratio` (``≥ 0``; the authors' SHD code: 2).

    Example:
        >>> from sbnn.models import SpikingMLP
        >>> net = SpikingMLP(4, (8,), 3)
        >>> aux = SNRLoss().attach(net)
        >>> _ = net(torch.rand(5, 2, 4).round())
        >>> bool(aux(net) > 0)
        True

    Use it through ``SpikingClassificationTask(aux_loss="snr", aux_weight=...)``, or by hand::

        aux = SNRLoss().attach(net)
        loss = ELBOLoss(n_train, aux_weight=0.01, aux_fn=aux)(net(x), y, net)
    """

    recorder = DriveCollector  # a recurrent layer reports one drive per step: keep them all

    def __init__(
        self, reduction: Literal["mean", "sum"] = "mean", signal: Literal["membrane", "current"] = "membrane",
        sigma_b_weight: float = 1.0,
    ) -> None:
        check_choice("SNRLoss reduction", reduction, SNR_REDUCTIONS)
        check_choice("SNRLoss signal", signal, SNR_SIGNALS)
        check_in_range("SNRLoss sigma_b_weight", sigma_b_weight, 0.0)
        super().__init__()
        self.reduction, self.signal, self.sigma_b_weight = reduction, signal, float(sigma_b_weight)

    def __call__(self, model: nn.Module, drives: Mapping[str, Drive | Sequence[Drive]] | None = None) -> Tensor:
        """The loss from ``drives`` (default: those recorded since :meth:`attach`, which are then released).

        ``drives`` maps a neuron's qualified name to its drive, or to the list of drives of one
        pass (a recurrent layer reports one per step; :func:`sbnn.neurons.record_drives` keeps
        only the last, so use :meth:`attach` for recurrent networks).

        Raises:
            RuntimeError: when no drive was recorded (no noisy pass ran, or nothing attached).
        """
        recorded = drives is None
        drives = dict(self._drives) if recorded else dict(drives)
        if recorded:
            self._drives.clear()  # one forward pass's graph: do not keep it past its loss
        if not drives:
            raise RuntimeError(
                "SNRLoss needs the drives of the last noisy forward pass: call SNRLoss().attach(model) once "
                "before training (in sample mode), or run the forward pass inside sbnn.neurons.record_drives(model)"
            )
        total, count, batch = None, 0, None
        for name, recorded_drives in drives.items():
            neuron = model.get_submodule(name)
            for drive in ([recorded_drives] if isinstance(recorded_drives, Drive) else recorded_drives):
                if self.signal == "current":
                    ratio = snr_current_ratio(drive, neuron, self.sigma_b_weight)
                else:
                    ratio = snr_ratio(drive, neuron.threshold, neuron.noise.std_to_scale)
                term = ratio.square().sum()
                total = term if total is None else total + term
                batch = ratio.shape[1]
                count += ratio.numel() // batch  # steps · units
        if self.reduction == "sum":
            return total / batch
        return total / (batch * count)

    def __getstate__(self) -> dict:
        # hooks and drives belong to one attached model and one forward pass
        return {
            "reduction": self.reduction, "signal": self.signal, "sigma_b_weight": self.sigma_b_weight,
            "_drives": {}, "_handles": [],
        }

    def __setstate__(self, state: dict) -> None:
        state.setdefault("signal", "membrane")  # pickles made before the option
        state.setdefault("sigma_b_weight", 1.0)
        self.__dict__.update(state)

    def __repr__(self) -> str:
        extra = "" if self.signal == "membrane" else f", signal={self.signal!r}, sigma_b_weight={self.sigma_b_weight:g}"
        return f"SNRLoss(reduction={self.reduction!r}{extra})"

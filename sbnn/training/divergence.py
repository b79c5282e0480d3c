"""Divergence checks: stop at the first non-finite input, loss or parameter, saying where and why.

Pure functions over named tensors, used by :func:`sbnn.training.fit` after every step and by the
Lightning tasks before any checkpoint can be written. Each raises :class:`TrainingDivergedError`
whose message names the step, the tensor and the likely cause. :func:`collapse_warnings` and
:func:`silence_warning` return the texts of the end-of-epoch warnings (``None`` when all is well).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ..layers import BernoulliLayer
from ..posterior import sign_mean

__all__ = [
    "TrainingDivergedError",
    "nonfinite_names",
    "check_parameters",
    "check_inputs",
    "check_loss",
    "collapse_warnings",
    "silence_warning",
    "FiniteRecord",
]


class TrainingDivergedError(RuntimeError):
    """Training produced (or was given) NaN/inf values; nothing after this point is trustworthy."""


def nonfinite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the tensors holding at least one NaN or inf."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_parameters(named: Iterable[tuple[str, Tensor]], step: int, *, after_update: bool) -> None:
    """Raise when a parameter (or buffer) is non-finite.

    Args:
        named: ``(name, tensor)`` pairs, e.g. ``module.named_parameters()``.
        step: the optimisation step (0-based) just run (``after_update``) or about to run.
        after_update: ``True`` when checked after step ``step``'s update, ``False`` before it.
    """
    bad = nonfinite_names(named)
    if not bad:
        return
    if after_update:
        raise TrainingDivergedError(
            f"training diverged at step {step}: parameter {_listed(bad)} became NaN/inf in that step's update. "
            "Likely cause: a learning rate too high for this network (lower lr / lam_lr, or the method's lr) "
            "or exploding gradients; no checkpoint of this state was written"
        )
    raise TrainingDivergedError(
        f"parameter {_listed(bad)} holds NaN/inf before step {step}, so training cannot start from it. "
        "Likely cause: the network's initial weights or the checkpoint resumed from are corrupt; "
        "rebuild the network or resume from an earlier checkpoint"
    )


def check_inputs(x: Tensor, step: int) -> None:
    """Raise when the batch ``x`` of step ``step`` holds NaN/inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise TrainingDivergedError(
            f"the input batch of step {step} holds NaN/inf values; check the data (the data module's "
            "encoding or the files it reads)"
        )


def check_loss(loss: Tensor, step: int) -> None:
    """Raise when the training loss of step ``step`` is NaN/inf (with the parameters finite)."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingDivergedError(
            f"training diverged at step {step}: the loss is {float(loss.detach().reshape(-1)[0])} with finite "
            "weights and input. Likely cause: a learning rate too high (lower lr / lam_lr) that drove the scales "
            "or membranes to overflow; no checkpoint of this state was written"
        )


class FiniteRecord:
    """The first step at which an input, a loss or a parameter was non-finite, kept on the device.

    The immediate checks above read one boolean per check back to the host, which on an
    accelerator waits for the step to finish (a host synchronisation per step). A record instead
    folds ``isfinite(...).all()`` into a device tensor of first-bad steps, and :meth:`raise_if_bad`
    reads it once every few steps (and before anything is saved): the run still stops with the
    first non-finite step named, a few steps later.
    """

    INPUT, LOSS, PARAMETER = 0, 1, 2

    def __init__(self) -> None:
        self._first: Tensor | None = None  # [3] int64, −1 where all was finite

    def record(self, kind: int, step: int, tensors: Iterable[Tensor]) -> None:
        """Fold the finiteness of ``tensors`` (floating point ones) at ``step`` into the record."""
        flags = [torch.isfinite(t.detach()).all() for t in tensors if t.is_floating_point()]
        if not flags:
            return
        bad = ~torch.stack(flags).all()
        if self._first is None:
            self._first = torch.full((3,), -1, dtype=torch.int64, device=flags[0].device)
        current = self._first[kind]
        self._first[kind] = torch.where(bad & (current < 0), torch.full_like(current, step), current)

    def first_bad(self) -> tuple[int, int] | None:
        """``(kind, step)`` of the earliest non-finite record, or ``None`` (one host read)."""
        if self._first is None:
            return None
        first = self._first.tolist()
        found = [(step, kind) for kind, step in enumerate(first) if step >= 0]
        if not found:
            return None
        step, kind = min(found)
        return kind, step

    def raise_if_bad(self, x_name: str, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """Raise :class:`TrainingDivergedError` for the earliest non-finite record, if any."""
        bad = self.first_bad()
        if bad is None:
            return
        kind, step = bad
        if kind == self.INPUT:
            raise TrainingDivergedError(
                f"the {x_name} of step {step} holds NaN/inf values; check the data (the data module's "
                "encoding or the files it reads)"
            )
        if kind == self.LOSS:
            raise TrainingDivergedError(
                f"training diverged at step {step}: the loss became NaN/inf with finite weights and input. Likely cause: "
                "a learning rate too high (lower lr / lam_lr) that drove the scales or membranes to overflow; no "
                "checkpoint of this state was written"
            )
        names = nonfinite_names(named_parameters)
        which = _listed(names) if names else "values"
        raise TrainingDivergedError(
            f"training diverged at step {step}: parameter {which} became NaN/inf in that step's update. "
            "Likely cause: a learning rate too high for this network (lower lr / lam_lr, or the method's lr) "
            "or exploding gradients; no checkpoint of this state was written"
        )


def collapse_warnings(network: nn.Module, kl_weight: float | None = None) -> list[str]:
    """Texts of the posterior-collapse warnings for ``network`` (empty when none applies).

    - a layer whose scales ``α`` have all underflowed (``max α < 1e−6``) outputs zero for every
      input: the network predicts at chance whatever ``λ`` holds;
    - a posterior at the uniform prior (mean ``|m| = |tanh λ|`` below 0.05) carries no weights.
    """
    texts = []
    layers = [(name, m) for name, m in network.named_modules() if isinstance(m, BernoulliLayer)]
    dead = [name or type(m).__name__ for name, m in layers if float(m.scale.detach().abs().max()) < 1e-6]
    if dead:
        texts.append(
            f"sbnn: the scale α of layer {_listed(dead)} has collapsed to 0: the network outputs a constant and "
            "predicts at chance. Lower the learning rate of the scales (lr) and recalibrate (calibrate=True)"
        )
    if layers:
        mean_abs_m = float(torch.cat([sign_mean(m.lam.detach()).abs().flatten() for _, m in layers]).mean())
        if mean_abs_m < 0.05:
            weight = f" (now {kl_weight})" if kl_weight is not None else ""
            texts.append(
                f"sbnn: the posterior has collapsed to the uniform prior (mean |m| = {mean_abs_m:.3f}): every weight is "
                f"a coin flip. Lower kl_weight{weight} or the λ learning rate (lam_lr)"
            )
    return texts


def silence_warning(spike_count: float, epoch: int) -> str | None:
    """The warning text when the hidden layers fired no spike in the whole epoch ``epoch``."""
    if spike_count > 0:
        return None
    return (
        f"sbnn: the network fired no spike in the whole of epoch {epoch}: no signal reaches the readout and "
        "λ gets no data gradient through the hidden layers. Recalibrate the scales (calibrate=True), "
        "raise the input activity or lower the neurons' threshold"
    )

r"""Gradient-flow statistics of real training runs, and the Lightning callback that logs them.

Per stochastic neuron layer, over the unit-steps of the forward passes seen:

- ``vanishing``: the share of unit-steps whose estimator factor ``p(θ)·w(S, θ)`` (the derivative
  the backward pass assigns to ``∂S/∂θ``) is below ``threshold`` (default ``1e−3``): those
  unit-steps pass (almost) no gradient;
- ``rate``: the firing rate.

Per Bernoulli layer: ``mean_abs_m`` (mean ``|tanh λ|``, 0 for the uniform posterior) and
``kl_per_weight`` (``KL(q‖p)`` divided by the number of weights).
"""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch
from torch import nn

from torch.utils.hooks import RemovableHandle

from ..functional.neurons import Drive
from ..layers import BernoulliLayer
from ..neurons import DriveRecorder, StochasticLIF
from ..posterior import sign_mean

__all__ = ["FlowAccumulator", "layer_statistics", "GradientFlowMonitor"]


class FlowAccumulator:
    """Sums, per neuron layer, the unit-steps, the vanishing ones and the spikes of recorded drives."""

    def __init__(self, threshold: float = 1e-3) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold!r}")
        self.threshold = threshold
        self._sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._drives: dict[str, Drive] = {}
        self._handles: list[RemovableHandle] = []

    @staticmethod
    def neurons(model: nn.Module) -> list[tuple[str, StochasticLIF]]:
        return [(n or "neuron", m) for n, m in model.named_modules() if isinstance(m, StochasticLIF)]

    def attach(self, model: nn.Module) -> None:
        """Record the drive of every neuron of ``model`` (drive hooks, removed by :meth:`detach`)."""
        self.detach()
        for name, neuron in self.neurons(model):
            self._handles.append(neuron.register_drive_hook(DriveRecorder(self._drives, name)))

    def detach(self) -> None:
        """Remove the hooks of :meth:`attach` and forget unread drives."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._drives.clear()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Add the drives recorded since the last update (``model``'s last noisy forward pass)."""
        for name, neuron in self.neurons(model):
            drive = self._drives.pop(name, None)
            if drive is None:
                continue
            factor = neuron.estimator.factor(drive.theta.detach(), drive.spikes.detach(), drive.eps, neuron.noise)
            sums = self._sums[name]
            sums[0] += factor.numel()
            sums[1] += float((factor < self.threshold).sum())
            sums[2] += float(drive.spikes.sum())

    def compute(self) -> dict[str, dict[str, float]]:
        return {
            name: {"vanishing": v / n, "rate": s / n} for name, (n, v, s) in self._sums.items() if n > 0
        }

    def reset(self) -> None:
        self._sums.clear()


@torch.no_grad()
def layer_statistics(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{layer name: {"mean_abs_m", "kl_per_weight"}}`` for every Bernoulli layer of ``model``."""
    out = {}
    for name, layer in model.named_modules():
        if isinstance(layer, BernoulliLayer):
            out[name or "layer"] = {
                "mean_abs_m": float(sign_mean(layer.lam).abs().mean()),
                "kl_per_weight": float(layer.kl()) / layer.lam.numel(),
            }
    return out


class GradientFlowMonitor(L.Callback):
    """Log per-layer gradient-flow statistics during training (off unless added to the trainer).

    Logs ``flow/<neuron>/vanishing`` and ``flow/<neuron>/rate`` per epoch (over every training
    step of the epoch), and ``flow/<layer>/mean_abs_m`` and ``flow/<layer>/kl_per_weight`` at each
    epoch end; ``history`` keeps one dict per epoch for plots. In a recipe::

        trainer:
          callbacks:
            - class_path: sbnn.diagnostics.GradientFlowMonitor

    Args:
        threshold: a unit-step's estimator factor below this counts as vanishing.
    """

    def __init__(self, threshold: float = 1e-3) -> None:
        super().__init__()
        self.accumulator = FlowAccumulator(threshold)
        self.history: list[dict[str, float]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.accumulator.attach(pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.accumulator.detach()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.accumulator.update(pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.accumulator.reset()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        for name, stats in self.accumulator.compute().items():
            row.update({f"flow/{name}/{k}": v for k, v in stats.items()})
        for name, stats in layer_statistics(pl_module).items():
            row.update({f"flow/{name}/{k}": v for k, v in stats.items()})
        self.history.append(row)
        pl_module.log_dict({k: v for k, v in row.items() if k != "epoch"})

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

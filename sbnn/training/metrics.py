r"""Predictive metrics for classifiers that output class probabilities ``[B, K]``.

- accuracy: ``mean(argmax p = y)``;
- negative log-likelihood: ``−mean log p_y`` (probabilities clamped at ``1e−12``);
- expected calibration error (Guo et al. 2017), equal-width confidence bins
  ``ECE = Σ_b (n_b / n) · |acc_b − conf_b|`` with ``conf = max_k p_k``;
- predictive entropy ``H[p] = −Σ_k p_k log p_k`` (nats), averaged over examples.

ECE is not an average of per-batch values, so :class:`CalibrationAccumulator` keeps per-bin
sums (three ``[n_bins]`` tensors, summable across batches and across distributed ranks).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "predictive_entropy",
    "expected_calibration_error",
    "CalibrationAccumulator",
    "ClassificationSums",
]


def _check_probs(probs: Tensor, target: Tensor | None = None) -> None:
    if probs.dim() != 2:
        raise ValueError(f"probs must be [B, K] class probabilities, got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf")
    if target is not None:
        if target.shape != probs.shape[:1]:
            raise ValueError(f"target must be [B] = [{probs.shape[0]}] integer labels, got shape {tuple(target.shape)}")
        if target.numel() and (target.min() < 0 or target.max() >= probs.shape[1]):
            raise ValueError(f"target labels must lie in [0, {probs.shape[1] - 1}]")


def accuracy(probs: Tensor, target: Tensor) -> Tensor:
    """Fraction of examples whose most probable class is the target."""
    _check_probs(probs, target)
    return (probs.argmax(-1) == target).float().mean()


def negative_log_likelihood(probs: Tensor, target: Tensor) -> Tensor:
    """``−mean_i log p_i[y_i]`` for probabilities ``[B, K]`` (clamped at 1e−12)."""
    _check_probs(probs, target)
    return -probs.gather(1, target[:, None]).clamp_min(1e-12).log().mean()


def predictive_entropy(probs: Tensor) -> Tensor:
    """Mean entropy ``−Σ_k p_k log p_k`` (nats) of the predictive distributions ``[B, K]``."""
    _check_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(-1).mean()


class CalibrationAccumulator:
    """Running per-bin sums for the expected calibration error.

    ``update(probs, target)`` adds a batch; ``compute()`` returns the ECE of everything seen.
    ``state()`` is the ``[3, n_bins]`` tensor (counts, correct, confidence sums) to all-reduce
    across ranks before ``compute(state)``.
    """

    def __init__(self, n_bins: int = 15) -> None:
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
        self.n_bins = n_bins
        self._sums = torch.zeros(3, n_bins, dtype=torch.float64)

    def update(self, probs: Tensor, target: Tensor) -> None:
        _check_probs(probs, target)
        conf, pred = probs.detach().double().max(-1)
        # bin b holds confidences in (b/n, (b+1)/n]; confidence ≥ 1/K > 0, so 0 never occurs
        idx = (conf * self.n_bins).ceil().long().clamp(1, self.n_bins) - 1
        sums = self._sums.to(probs.device)
        sums[0].index_add_(0, idx, torch.ones_like(conf))
        sums[1].index_add_(0, idx, (pred == target).double())
        sums[2].index_add_(0, idx, conf)
        self._sums = sums

    def state(self) -> Tensor:
        return self._sums

    def compute(self, state: Tensor | None = None) -> Tensor:
        count, correct, conf = self._sums if state is None else state
        n = count.sum()
        if n == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return ((correct - conf).abs().sum() / n).float()

    def reset(self) -> None:
        self._sums.zero_()


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    """ECE of one set of predictions (see the module docstring for the formula)."""
    acc = CalibrationAccumulator(n_bins)
    acc.update(probs, target)
    return acc.compute()


class ClassificationSums:
    """Sums behind accuracy, NLL, mean entropy and ECE, exact to reduce across batches and ranks.

    Every metric here is a ratio of sums over examples, so summing the numerators and the count
    over batches and over distributed ranks *before* dividing gives the value of one pass over the
    whole set (a mean of per-rank means would weight a short shard like a full one).

    ``state()`` is one float64 vector ``[4 + 3·n_bins]``: ``(n, Σ correct, Σ −log p_y, Σ H[p])``
    then the calibration bins of :class:`CalibrationAccumulator`; all-reduce it with a sum and
    pass it to :meth:`compute`.
    """

    def __init__(self, n_bins: int = 15) -> None:
        self._calibration = CalibrationAccumulator(n_bins)
        self._sums = torch.zeros(4, dtype=torch.float64)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch of probabilities ``[B, K]`` with labels ``[B]``."""
        _check_probs(probs, target)
        p = probs.detach().double()
        batch = torch.stack([
            torch.tensor(float(target.shape[0]), dtype=torch.float64, device=p.device),
            (p.argmax(-1) == target).double().sum(),
            -p.gather(1, target[:, None]).clamp_min(1e-12).log().sum(),
            -torch.special.xlogy(p, p).sum(),
        ])
        self._sums = self._sums.to(p.device) + batch
        self._calibration.update(probs, target)

    def state(self) -> Tensor:
        """The summable state ``[4 + 3·n_bins]`` (float64)."""
        return torch.cat([self._sums, self._calibration.state().to(self._sums.device).flatten()])

    def compute(self, state: Tensor | None = None) -> dict[str, Tensor]:
        """``{"acc", "nll", "entropy", "ece"}`` of everything summed into ``state`` (default: own)."""
        state = self.state() if state is None else state
        n, correct, nll, entropy = state[:4]
        bins = state[4:].reshape(3, -1)
        if n == 0:
            nan = torch.tensor(float("nan"))
            return {"acc": nan, "nll": nan, "entropy": nan, "ece": nan}
        return {
            "acc": (correct / n).float(),
            "nll": (nll / n).float(),
            "entropy": (entropy / n).float(),
            "ece": self._calibration.compute(bins),
        }

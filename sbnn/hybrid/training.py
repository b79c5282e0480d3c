"""Plain training loops for the HyBNN pieces (Lightning-free; the Lightning task lives in ``task.py``).

Each loop is full-batch-shuffled mini-batch Adam with an explicit ``torch.Generator``, so a run is
reproducible from its seed. The classifier loop also seeds the model's own noise (an SBNN head
samples from the global generator) on a forked generator, so the caller's random state is untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.training.losses import kl_divergence
from sbnn.modes import evaluation

from .heads import SBNNHead, clip_latent_weights_
from .vae import BinaryVAE

__all__ = ["fit_vae", "fit_classifier", "accuracy", "uses_posterior"]


def uses_posterior(model: nn.Module) -> bool:
    """Whether ``model`` contains an SBNN head (Bernoulli posterior: ELBO loss, ``mode`` evaluation)."""
    return any(isinstance(m, SBNNHead) for m in model.modules())


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    return perm.split(batch_size)


def fit_vae(
    vae: BinaryVAE, x: Tensor, *, epochs: int = 30, lr: float = 2e-3, batch_size: int = 64, seed: int = 0
) -> list[dict[str, float]]:
    """Train ``vae`` on images ``x`` ``[N, C, H, W]`` (no labels); returns per-epoch ELBO terms."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    history = []
    vae.train()
    for _ in range(epochs):
        sums, n = {"loss": 0.0, "recon": 0.0, "kl": 0.0}, 0
        for idx in _batches(len(x), batch_size, g):
            terms = vae.loss(x[idx], generator=g)
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
            for k, v in terms._asdict().items():
                sums[k] += float(v.detach()) * len(idx)
            n += len(idx)
        history.append({k: v / n for k, v in sums.items()})
    vae.eval()
    return history


def fit_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 64,
    kl_weight: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Train a classifier on ``(x, y)``; returns the per-epoch mean loss.

    For a model with an SBNN head the loss is sbnn's ELBO per example,
    ``CE + kl_weight · KL(q ‖ p) / N``; otherwise cross-entropy. Sign layers are clipped after
    each step.
    """
    if len(x) == 0:
        raise ValueError("fit_classifier: no training examples")
    # The head's noise draws from the global generator: fork it so that the run depends on `seed`
    # alone (not on what ran before in this process, e.g. in a reused simulation worker).
    with torch.random.fork_rng(devices=None if x.is_cuda else []):  # None: every CUDA device
        torch.manual_seed(seed)
        return _fit_classifier(model, x, y, epochs, lr, batch_size, kl_weight, seed)


def _fit_classifier(
    model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float, batch_size: int, kl_weight: float, seed: int
) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    bayes = uses_posterior(model)
    history = []
    model.train()
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(len(x), batch_size, g):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if bayes:
                loss = loss + kl_weight * kl_divergence(model) / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            clip_latent_weights_(model)
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test accuracy in eval mode; an SBNN head runs its deployed ``mode`` network (``sign(λ)`` weights)."""
    model.eval()
    if uses_posterior(model):
        with evaluation(model, "mode"):
            pred = model(x).argmax(-1)
    else:
        pred = model(x).argmax(-1)
    return float((pred == y).float().mean())

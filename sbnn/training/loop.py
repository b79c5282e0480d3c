"""A plain training and prediction loop, without Lightning.

:func:`fit` trains a network with any :class:`~sbnn.training.TrainingMethod` over an iterable of
``(x, y)`` batches and stops at the first non-finite input, loss or parameter
(:mod:`sbnn.training.divergence`); :func:`predict` returns the seeded ``mode``/MC/LRT class
probabilities of a whole loader (:func:`sbnn.training.predict_probabilities`).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int
from ..functional.sparse import SpikeIndices
from .divergence import FiniteRecord, check_inputs, check_loss, check_parameters
from .evaluation import PREDICTION_KINDS, cast_input, predict_probabilities
from .methods import TrainingMethod

__all__ = ["fit", "predict"]


def fit(
    network: nn.Module,
    method: TrainingMethod,
    loader: Any,
    epochs: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    n_train: int | None = None,
    setup: bool = True,
    check_every: int | None = None,
) -> list[float]:
    """Train ``network`` with ``method`` for ``epochs`` passes over ``loader``.

    Args:
        network: the model (Bernoulli layers inside), returning logits ``[B, K]``.
        method: the training method.
        loader: iterable of ``(x, y)`` batches (``x`` e.g. ``[T, B, N]``, ``y`` ``[B]``).
        epochs: number of passes (``≥ 1``).
        loss_fn: ``loss_fn(logits, y)``, the mean batch loss.
        n_train: training-set size (default ``len(loader.dataset)``).
        setup: call ``method.setup`` first (``False`` continues with the existing optimisers,
            e.g. for the next task of a continual-learning sequence).
        check_every: read the divergence checks back every ``check_every`` steps (and at the end
            of every epoch); in between they stay on the device
            (:class:`~sbnn.training.divergence.FiniteRecord`), so an accelerator never waits for
            the host inside an epoch. ``None``: 1 on the CPU, 50 on an accelerator. The error
            names the first non-finite step either way.

    Returns:
        The mean training loss of every epoch.

    Raises:
        TrainingDivergedError: an input batch, a loss or a parameter became NaN/inf (the message
            names the step, the tensor and the likely cause).
    """
    check_positive_int("fit", epochs=epochs)
    if check_every is not None:
        check_positive_int("fit", check_every=check_every)
    if setup:
        method.setup(network, n_train if n_train is not None else len(loader.dataset), epochs)
    check_parameters(network.named_parameters(), 0, after_update=False)
    network.train()
    if check_every is None:
        first = next(network.parameters(), None)
        check_every = 1 if first is None or first.device.type == "cpu" else 50
    history = []
    step = 0
    for epoch in range(epochs):
        total, count = None, 0
        record = FiniteRecord()
        for x, y in loader:
            if isinstance(x, SpikeIndices):
                pass  # integer indices: nothing to check for NaN/inf
            elif check_every == 1:
                check_inputs(x, step)
            else:
                record.record(FiniteRecord.INPUT, step, [x])
            loss = method.train_step(network, loss_fn, cast_input(x, network), y)
            if check_every == 1:
                check_loss(loss, step)
                check_parameters(network.named_parameters(), step, after_update=True)
            else:
                record.record(FiniteRecord.LOSS, step, [loss])
                record.record(FiniteRecord.PARAMETER, step, [p for _, p in network.named_parameters()])
                if (step + 1) % check_every == 0:
                    record.raise_if_bad("input batch", network.named_parameters())
                    record = FiniteRecord()
            # summed on the device: no host read per step
            weighted = loss.detach() * y.shape[0]
            total, count = (weighted if total is None else total + weighted), count + y.shape[0]
            step += 1
        record.raise_if_bad("input batch", network.named_parameters())
        method.epoch_end(epoch)
        history.append(float(total) / max(count, 1) if total is not None else 0.0)
    return history


def predict(
    network: nn.Module,
    loader: Any,
    *,
    kinds: Sequence[Literal["mode", "mc", "lrt", "sample"]] = PREDICTION_KINDS,
    mc_samples: int = 10,
    eval_seed: int = 0,
    method: TrainingMethod | None = None,
) -> dict[str, Tensor]:
    """Class probabilities ``{kind: [N, K]}`` over every batch of ``loader``, in loader order.

    Batches are ``(x, y)`` pairs (``y`` ignored) or bare inputs ``x``. The noise is seeded by
    ``eval_seed`` and keyed by example (see :mod:`sbnn.training.evaluation`), so two calls give
    the same numbers, whatever the batching.
    """
    check_positive_int("predict", mc_samples=mc_samples)
    was_training = network.training
    network.eval()
    parts: dict[str, list[Tensor]] = {k: [] for k in kinds}
    try:
        for i, batch in enumerate(loader):
            x = batch[0] if isinstance(batch, (tuple, list)) and not isinstance(batch, SpikeIndices) else batch
            probs = predict_probabilities(network, x, kinds=kinds, mc_samples=mc_samples, seed=eval_seed, stream=i, method=method)
            for k, p in probs.items():
                parts[k].append(p)
    finally:
        network.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}

r"""Seeded class probabilities of a network: the deployed ``mode``, MC, LRT and one-sample predictions.

:func:`predict_probabilities` is what :func:`sbnn.training.predict` and the Lightning tasks'
test and predict steps call, so every path gives the same numbers for the same seed.

How the evaluation noise is seeded (``seed``, the tasks' ``eval_seed`` hyperparameter):

- ``mode``: deterministic (``sign(λ)`` weights, noise-free neurons); no seed involved.
- ``mc``: the ``C`` binary networks ``w_c ~ q`` are drawn from a ``torch.Generator`` seeded with
  ``seed`` at every batch, so every batch (and every rank) sees the *same* ``C`` networks, as a
  deployment of ``C`` drawn networks would. An example's MC probabilities therefore depend on the
  example alone, not on the batch it falls in, the batch order or the number of processes.
- ``lrt``: the local-reparameterisation and neuron noise is *keyed by example*
  (:mod:`sbnn.functional.keyed`): every draw is a hash of ``(seed, the example's key, the draw's
  place in the forward pass, the element)``, where the draw's place names the layer, the time
  step of a step-by-step loop and the noisy pass, and the element names the time step and unit.
  The key is an exact hash of the example's own input values (bit for bit, along ``batch_dim``),
  so an example's LRT probabilities depend on the example and ``seed`` alone: not on the batch it
  falls in, its position there, the batch size, the data order or the number of processes, and a
  test under DDP gives the single-process numbers (to float rounding: a matmul may round a row
  differently in another batch shape, and the sums over ranks run in another order). Two
  examples with identical inputs get identical noise. Draws outside sbnn's draw sites (none in
  sbnn's networks) would come from torch's RNG, forked and seeded with :func:`stream_seed`
  ``(seed, stream)``, then restored, so training's own random stream is left untouched either way.
- ``sample``: one noisy pass in ``sample`` (LRT) mode, the evaluation of Walker et al. 2025
  (arXiv 2505.17962). Its noise is keyed exactly as ``lrt``'s (same helper, same seed), so it is
  the first of the passes ``lrt`` averages.

Cost: the keyed draws are int32 hashing plus Box–Muller instead of ``torch.randn``. Measured with
``benchmarks/eval_noise.py`` (1 thread, CPU, a 2-core machine at load average 14, 7 rounds,
median), LRT evaluation with ``mc_samples = 10`` took 1.54x the time of the same evaluation with
``torch.randn`` for the quickstart network (50→128→10, ``T = 50``, ``B = 32``; 425 against 275 ms)
and 1.47x for an SHD-sized one (700→256→20, ``T = 100``, ``B = 64``; 5.54 against 3.78 s).
Training never enters a keyed block and draws exactly as before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int
from ..functional.keyed import keyed_noise, sample_keys
from ..functional.sparse import SpikeIndices
from ..modes import evaluation, lrt_predict, mc_predict
from .methods import TrainingMethod, predict_samples

__all__ = ["PREDICTION_KINDS", "LRT_KINDS", "cast_input", "predict_probabilities", "seeded_rng", "stream_seed"]

#: the prediction kinds, in the order they are reported
PREDICTION_KINDS = ("mode", "mc", "lrt", "sample")

#: the kinds drawn from the LRT noise (sbnn's own training only)
LRT_KINDS = ("lrt", "sample")


def stream_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for noise stream ``stream`` of base seed ``seed`` (unrelated for nearby inputs)."""
    from ..callbacks import epoch_seed  # the same mixing the training epochs use

    return epoch_seed(seed, stream, 0)


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's RNG (CPU, and ``device`` if it is a CUDA device) seeded with
    ``seed``, then restore the previous RNG state."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def predict_probabilities(
    network: nn.Module,
    x: Tensor | SpikeIndices,
    *,
    kinds: Sequence[Literal["mode", "mc", "lrt", "sample"]] = PREDICTION_KINDS,
    mc_samples: int = 10,
    seed: int = 0,
    stream: int = 0,
    method: TrainingMethod | None = None,
    batch_dim: int = 1,
) -> dict[str, Tensor]:
    """Class probabilities ``{kind: [B, K]}`` of ``network`` on the batch ``x``.

    Args:
        network: returns logits ``[B, K]``.
        x: the batch (e.g. ``[T, B, N]``, or its :class:`~sbnn.functional.sparse.SpikeIndices`,
            made dense here); cast to the network's floating dtype.
        kinds: any of ``"mode"``, ``"mc"``, ``"lrt"``, ``"sample"`` (one noisy pass).
        mc_samples: ``C``, the drawn networks of ``mc`` and the noisy passes averaged by ``lrt``.
        seed: the evaluation seed (see the module docstring).
        stream: seeds torch's RNG for draws outside sbnn's keyed draw sites (none in sbnn's
            networks); ``lrt``'s own noise is keyed by example and does not depend on it.
        method: a :class:`~sbnn.training.TrainingMethod` whose evaluation to use (``mode`` with
            its evaluation weight; ``mc`` falls back to ``mode`` for methods without a
            posterior); ``lrt`` and ``sample`` need ``method=None`` (sbnn's own training).
        batch_dim: the batch axis of ``x`` (``1`` for time-major input), along which ``lrt``
            keys its noise by example.

    Returns:
        ``{kind: probabilities [B, K]}``, rows summing to 1, the network's modes unchanged.
    """
    check_positive_int("predict_probabilities", mc_samples=mc_samples)
    unknown = [k for k in kinds if k not in PREDICTION_KINDS]
    if unknown:
        raise ValueError(f"predict_probabilities: unknown kinds {unknown}; choose from {list(PREDICTION_KINDS)}")
    if method is not None and any(k in LRT_KINDS for k in kinds):
        raise ValueError(
            f"predict_probabilities: {[k for k in kinds if k in LRT_KINDS]} are sbnn's own evaluations; drop them "
            "from kinds when a method is given"
        )
    # indices made dense: the keyed noise hashes each example's values, so that an evaluated
    # batch gives the same predictions in either input format
    x = cast_input(x, network, dense=True)
    out: dict[str, Tensor] = {}
    for kind in kinds:
        if kind == "mode":
            if method is None:
                with evaluation(network, "mode"):
                    out[kind] = F.softmax(network(x), dim=-1)
            else:
                out[kind] = predict_samples(network, method, x, "mode")[0].softmax(-1)
        elif kind == "mc":
            generator = torch.Generator(device=x.device).manual_seed(seed)
            if method is None:
                out[kind] = mc_predict(network, x, mc_samples, generator)
            else:
                out[kind] = predict_samples(network, method, x, "mc", mc_samples, generator).softmax(-1).mean(0)
        else:  # lrt, sample: noise keyed by example; sample is lrt's first pass
            with seeded_rng(stream_seed(seed, stream), x.device), keyed_noise(sample_keys(x, batch_dim), seed):
                out[kind] = lrt_predict(network, x, mc_samples if kind == "lrt" else 1)
    return out


def cast_input(x: Tensor | SpikeIndices, network: nn.Module, *, dense: bool = False) -> Tensor | SpikeIndices:
    """``x`` in the floating dtype of ``network``'s parameters (float64 networks get float64 input).

    :class:`~sbnn.functional.sparse.SpikeIndices` pass unchanged (they hold no floats); with
    ``dense=True`` they are made dense in that dtype.
    """
    param = next((p for p in network.parameters() if p.is_floating_point()), None)
    if isinstance(x, SpikeIndices):
        return x.to_dense(param.dtype if param is not None else torch.get_default_dtype()) if dense else x
    if param is None or not x.is_floating_point() or x.dtype == param.dtype:
        return x
    return x.to(param.dtype)

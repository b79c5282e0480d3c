r"""Single-sample gradient estimates of a small :class:`~sbnn.models.SpikingMLP`'s expected loss.

:func:`estimator_gradients` runs the network exactly as training does (hidden layers in LRT
``sample`` mode, the fused neuron, the chosen member of the IW-ST family in the backward pass) with
the readout in ``mean`` mode, so that the objective is the one :mod:`.exact` enumerates.

:func:`reinforce_gradients` is the score-function baseline, unbiased for any size:

.. math::
    \hat g = \nabla_\phi \Big[\tfrac1B\sum_b \big(L_b - c_b\big)\,\log p_\phi(z_b) + L_b\Big]

with ``z`` the sampled hidden variables and ``c_b`` a per-example baseline from independent pilot
samples (a constant, so the estimate stays unbiased). For the marginal model (and ``β = 0``) the
latent variables are the spike trains with :func:`~sbnn.functional.neurons.spike_train_log_prob`;
for the pathwise model with ``β > 0`` they are the sampled membranes ``U[t] = Ū[t] + κ s[t] ε[t]``,
whose density given the past is the noise family's, so REINFORCE is a valid unbiased reference
there too (where enumeration is impossible).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional.estimators import Estimator, get_estimator
from ..functional.neurons import noise_scale, spike_train_log_prob, time_average_weights
from ..models import SpikingMLP
from .exact import check_inputs, diagnostic_mode

__all__ = ["trainable_parameters", "estimator_gradients", "reinforce_gradients", "swap_estimator"]


def trainable_parameters(net: SpikingMLP) -> dict[str, Tensor]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


@contextmanager
def _one_thread() -> Iterator[None]:
    # thousands of tiny forward/backward passes: intra-op threads only add synchronisation
    # (measured 8x slower with 2 threads on a loaded 2-core machine)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def swap_estimator(net: SpikingMLP, estimator: str | Estimator | None) -> Iterator[None]:
    """Use ``estimator`` (a name such as ``"iwst"``, or an estimator) in every hidden neuron for the duration.

    ``None`` keeps the network's own. An unknown name raises a ``ValueError`` listing the valid ones.
    """
    if estimator is not None:
        estimator = get_estimator(estimator)  # a name with default hyper-parameters, or the estimator itself
    saved = [n.estimator for n in net.neurons]
    try:
        if estimator is not None:
            for neuron in net.neurons:
                neuron.estimator = estimator
        yield
    finally:
        for neuron, est in zip(net.neurons, saved):
            neuron.estimator = est


def _flat_grads(loss: Tensor, params: dict[str, Tensor], retain: bool = False) -> dict[str, Tensor]:
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=retain)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)}


def _stack(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {n: torch.stack([s[n] for s in samples]) for n in samples[0]}


def estimator_gradients(
    net: SpikingMLP, x: Tensor, y: Tensor, estimator: str | Estimator | None, n_samples: int, *, seed: int = 0
) -> dict[str, Tensor]:
    """``n_samples`` independent single-sample gradients of the mean cross-entropy.

    Args:
        net: a :class:`~sbnn.models.SpikingMLP` with a membrane readout.
        x: ``[T, B, in_features]`` finite inputs.
        y: ``[B]`` integer labels in ``[0, num_classes)``.
        estimator: an estimator name (``"st"``, ``"iwst"``, ... with default hyper-parameters), an
            estimator object (``sbnn.get_estimator("iwst", p=0.5)``), or ``None`` for the network's own.
        n_samples: number of independent single-sample gradients (a positive int).
        seed: seed of the sampled noise.

    Returns:
        ``{parameter name: [n_samples, *shape]}``.

    Raises:
        ValueError: an unknown estimator name, bad labels or non-finite inputs.
    """
    check_inputs(net, x, y)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"estimator_gradients: n_samples must be a positive int, got {n_samples!r}")
    params = trainable_parameters(net)
    out = []
    with torch.random.fork_rng(), _one_thread(), diagnostic_mode(net), swap_estimator(net, estimator):
        torch.manual_seed(seed)
        for _ in range(n_samples):
            out.append(_flat_grads(F.cross_entropy(net(x), y), params))
    return _stack(out)


def _pathwise_log_density(neuron, mu: Tensor, var: Tensor, mem: Tensor, spk: Tensor) -> Tensor:
    """``log p(U[t] | U[<t])`` of sampled membranes under the pathwise model, ``[T, B, n]``."""
    p = neuron.parameters_tuple()
    scale = noise_scale(var, p, mu)
    prev_mem = torch.cat([torch.zeros_like(mem[:1]), mem[:-1]])
    prev_spk = torch.cat([torch.zeros_like(spk[:1]), spk[:-1]])
    beta, threshold = neuron.beta, neuron.threshold
    if p.reset_mechanism == "zero":
        ubar = beta * prev_mem * (1.0 - prev_spk) + mu
    else:
        ubar = beta * prev_mem + mu - (threshold * prev_spk if p.reset_mechanism == "subtract" else 0.0)
    return p.noise.log_pdf((mem - ubar) / scale) - scale.log()


def _sample_log_prob(net: SpikingMLP, x: Tensor) -> tuple[Tensor, Tensor]:
    """Draw one joint sample of the hidden layers; return ``(log p(z) per example [B], last spikes)``."""
    with torch.no_grad():
        inputs, trains = x, []
        for i, (layer, neuron) in enumerate(zip(net.layers, net.neurons)):
            moments = layer.moments(inputs, binary=i > 0 or net.binary_input, validate=False)
            spk, mem = neuron.sequence(moments, validate=False)
            trains.append((inputs, spk, mem))
            inputs = spk
    log_p = x.new_zeros(x.shape[1])
    for i, ((inputs, spk, mem), layer, neuron) in enumerate(zip(trains, net.layers, net.neurons)):
        mu, var = layer.moments(inputs, binary=i > 0 or net.binary_input, validate=False)
        if neuron.membrane_noise == "marginal" or not bool((neuron.beta != 0).any()):
            p = neuron.parameters_tuple()._replace(membrane_noise="marginal")
            step_log_p = spike_train_log_prob(mu, var, spk, p)
        else:
            step_log_p = _pathwise_log_density(neuron, mu, var, mem, spk)
        log_p = log_p + step_log_p.sum(0).flatten(1).sum(1)
    return log_p, trains[-1][1]


def _per_example_loss(net: SpikingMLP, last_spikes: Tensor, y: Tensor) -> Tensor:
    weights = time_average_weights(last_spikes.shape[0], net.readout_beta, like=last_spikes)
    return F.cross_entropy(net.output.time_weighted(last_spikes, weights), y, reduction="none")


def reinforce_gradients(
    net: SpikingMLP, x: Tensor, y: Tensor, n_samples: int, *, seed: int = 0, n_baseline: int = 32
) -> dict[str, Tensor]:
    """``n_samples`` single-sample score-function (REINFORCE) gradients, with a pilot baseline.

    The baseline ``c_b`` is the mean loss of example ``b`` over ``n_baseline`` independent pilot
    samples (0 disables it).
    """
    check_inputs(net, x, y)
    params = trainable_parameters(net)
    out = []
    with torch.random.fork_rng(), _one_thread(), diagnostic_mode(net):
        torch.manual_seed(seed)
        baseline = x.new_zeros(x.shape[1])
        if n_baseline > 0:
            with torch.no_grad():
                baseline = torch.stack([_per_example_loss(net, _sample_log_prob(net, x)[1], y) for _ in range(n_baseline)]).mean(0)
        for _ in range(n_samples):
            log_p, last = _sample_log_prob(net, x)
            loss = _per_example_loss(net, last, y)
            surrogate = ((loss.detach() - baseline) * log_p + loss).mean()
            out.append(_flat_grads(surrogate, params))
    return _stack(out)

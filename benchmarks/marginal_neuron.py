"""Step time of the accumulated-variance (marginal) neuron: the fused node against plain autograd.

Three neuron paths, on the same network and data:

* ``pathwise-st``: sbnn's default neuron (``membrane_noise="pathwise"``, estimator ``st``), fused;
* ``marginal-fused``: ``membrane_noise="marginal"`` through the fused node
  (:class:`sbnn.functional.neurons._MarginalSequence`), with a learned ``σ_b``;
* ``marginal-autograd``: the same model through the step-by-step recursion run by autograd (the
  reference the tests compare against; what the marginal model ran before the fused node).

Two levels: the neuron alone (``[T, B, H]`` moments in, forward + backward of a linear loss on
the spikes) and one training step of an SHD-sized ``SpikingMLP`` (700 → 256 → 20, ``T`` = 100,
batch 32; ``zero_grad`` + forward + cross-entropy + backward + ``Adam.step``) with real-weight
Gaussian layers (the SBNN paper's configuration: ``layer.weights = "gaussian"``, reset with
gradient). Variants alternate in rounds after a warm-up, in one process, with
``torch.set_num_threads(threads)``; the result is the ratio of median times.

Usage::

    python benchmarks/marginal_neuron.py --threads 1 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import sbnn.functional.neurons as fn
from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP

PAPER = dict(sigma0=0.0, eps_min=1e-6, sigma_b=0.127, learn_sigma_b=True, detach_reset=False)


def _neuron_step(model: str, autograd: bool, t: int, b: int, h: int) -> Callable[[], None]:
    neuron = NeuronSettings(beta=0.9, membrane_noise=model, **(PAPER if model == "marginal" else {})).build()
    mu = (torch.randn(t, b, h) * 0.5 + 0.5).requires_grad_()
    var = (torch.rand(t, b, h) * 0.2).requires_grad_()
    w = torch.randn(t, b, h)

    def step() -> None:
        with _unfused(autograd):
            spk, _ = neuron.sequence((mu, var), validate=False)
        (spk * w).sum().backward()
        mu.grad = var.grad = None

    return step


def _net_step(model: str, autograd: bool, t: int, b: int, weights: str = "bernoulli") -> Callable[[], None]:
    torch.manual_seed(0)
    neuron = NeuronSettings(beta=0.9, membrane_noise=model, **(PAPER if model == "marginal" else {}))
    layer = LayerSettings(weights=weights)
    net = SpikingMLP(700, (256,), 20, neuron=neuron, layer=layer, binary_input=True)
    x = (torch.rand(t, b, 700) < 0.05).float()
    y = torch.randint(0, 20, (b,))
    net.calibrate(x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        with _unfused(autograd):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return step


class _unfused:
    """Route the marginal model through the autograd reference while active."""

    def __init__(self, active: bool) -> None:
        self.active = active

    def __enter__(self) -> None:
        self.saved = fn._fused_marginal_sequence
        if self.active:
            fn._fused_marginal_sequence = fn._marginal_sequence

    def __exit__(self, *exc) -> None:
        fn._fused_marginal_sequence = self.saved


def _time(variants: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    for step in variants.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    t, b = args.steps, args.batch
    print(f"threads={args.threads} T={t} B={b} rounds={args.rounds} torch={torch.__version__}")
    for level, make in (
        ("neuron [T, B, 256]", lambda m, a: _neuron_step(m, a, t, b, 256)),
        ("SpikingMLP 700-256-20 step, ±1 Bernoulli weights", lambda m, a: _net_step(m, a, t, b)),
    ):
        variants = {
            "pathwise-st": make("pathwise", False),
            "marginal-fused": make("marginal", False),
            "marginal-autograd": make("marginal", True),
        }
        if level.startswith("SpikingMLP"):
            variants["paper (gaussian, fused)"] = _net_step("marginal", False, t, b, "gaussian")
            variants["paper (gaussian, autograd)"] = _net_step("marginal", True, t, b, "gaussian")
        med = _time(variants, args.rounds)
        print(f"\n{level}: median ms")
        for name, value in med.items():
            print(f"  {name:28s} {1e3 * value:8.1f}")
        print(f"  marginal autograd / fused    {med['marginal-autograd'] / med['marginal-fused']:.2f}x")
        print(f"  marginal fused / pathwise-st {med['marginal-fused'] / med['pathwise-st']:.2f}x")
        if "paper (gaussian, fused)" in med:
            paper = med["paper (gaussian, fused)"]
            print(f"  paper autograd / fused       {med['paper (gaussian, autograd)'] / paper:.2f}x")
            print(f"  paper fused / pathwise-st    {paper / med['pathwise-st']:.2f}x")


if __name__ == "__main__":
    main()

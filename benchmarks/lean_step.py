"""Before/after measurements of sbnn's lean training paths, in one process, variants alternated.

One training step = ``zero_grad`` + forward + ELBO loss + backward + ``Adam.step`` on random 0/1
input spikes (3 % rate) and random labels, T 100, batch 32. Two networks:

* ``rec``: the SHD network, ``SpikingRecurrentNet(700, (256, 256), 20)``;
* ``mlp``: ``SpikingMLP(700, (256,), 20)``.

Variants (each ``sbnn[...]`` after ``net.calibrate(x)``):

* ``st`` / ``iwst`` / ``agr``: the code as it is;
* ``st-before``: the recurrent layers step by step through autograd and the KL by plain autograd
  (the code before the fused recurrent node and the closed-form KL backward);
* ``iwst-before`` / ``agr-before``: the estimator factor in log space (``log_ndtr``), everything
  else as it is;
* ``st-marginal``: ``membrane_noise="marginal"`` (plain autograd; left as it is here);
* ``snntorch``: snnTorch with the same shapes, time-batched (``Linear`` over all steps, then the
  neuron loop): ``RLeaky`` (``rec``) or ``Leaky`` (``mlp``), leaky readout, cross-entropy.

Reported per variant: median step time, the median over rounds of the per-round ratio to a
baseline (paired), the bytes autograd saves for backward in one step (de-duplicated by storage,
parameters excluded) and minor page faults per timed step (``resource.getrusage``). The load
average is printed at the start and the end: on a shared machine only the paired ratios mean
anything.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/lean_step.py --threads 1 --nets rec mlp
    OMP_NUM_THREADS=1 python benchmarks/lean_step.py --threads 1 --malloc keep   # freed memory stays in the heap
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import snntorch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import sbnn
from sbnn import layers as sbnn_layers
from sbnn.diagnostics import saved_for_backward_bytes
from sbnn.functional import estimators as E
from sbnn.models import NeuronSettings, SpikingMLP, SpikingRecurrentNet, stages
from sbnn.posterior import _kl_bernoulli_sign_value

N_TRAIN_SHD = 8156


@dataclass(frozen=True)
class IWSTLogspace(E.IWST):
    """``iwst`` with its factor computed in log space (``log_ndtr``), as before."""

    def factor(self, theta, spikes, eps, noise):
        return E._iwst_factor_logspace(theta, spikes, noise, self.p, self.w_max)


@dataclass(frozen=True)
class AGRLogspace(E.AGR):
    """``agr`` with its Gaussian factor computed in log space (``log_ndtr``), as before."""

    def factor(self, theta, spikes, eps, noise):
        return E._agr_gaussian_factor_logspace(theta, spikes, noise, self.tau)


def _before_recurrent() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(stages, "recurrent_sequence", stages.recurrent_sequence_stepwise))
    stack.enter_context(mock.patch.object(sbnn_layers, "kl_bernoulli_sign", _kl_bernoulli_sign_value))
    return stack


class _SnnTorch(nn.Module):
    """Time-batched snnTorch network: Linear → (R)Leaky per hidden layer → Linear → leaky readout."""

    def __init__(self, sizes: tuple[int, ...], recurrent: bool, beta: float = 0.95) -> None:
        super().__init__()
        self.ff = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        if recurrent:
            self.lif = nn.ModuleList(snntorch.RLeaky(beta=beta, linear_features=h) for h in sizes[1:-1])
        else:
            self.lif = nn.ModuleList(snntorch.Leaky(beta=beta) for _ in sizes[1:-1])
        self.out = nn.Linear(sizes[-2], sizes[-1])
        self.beta, self.recurrent = beta, recurrent

    def forward(self, x: Tensor) -> Tensor:
        for ff, lif in zip(self.ff, self.lif):
            cur = ff(x)
            out = []
            if self.recurrent:
                spk, mem = lif.init_rleaky()
                for c in cur.unbind(0):
                    spk, mem = lif(c, spk, mem)
                    out.append(spk)
            else:
                mem = lif.init_leaky()
                for c in cur.unbind(0):
                    spk, mem = lif(c, mem)
                    out.append(spk)
            x = torch.stack(out)
        h = self.out(x)
        mem, acc = torch.zeros_like(h[0]), torch.zeros_like(h[0])
        for h_t in h.unbind(0):
            mem = self.beta * mem + h_t
            acc = acc + mem
        return acc / len(h)


class Variant:
    def __init__(self, name: str, model: nn.Module, step: Callable[[], Tensor]) -> None:
        self.name, self.model, self.step = name, model, step
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.faults = 0


def make_sbnn(net_kind: str, variant: str, x: Tensor, y: Tensor, lr: float) -> Variant:
    estimator = {"iwst": "iwst", "agr": "agr", "iwst-before": IWSTLogspace(), "agr-before": AGRLogspace()}.get(variant, "st")
    neuron = NeuronSettings(beta=0.95, estimator=estimator,
                            membrane_noise="marginal" if variant == "st-marginal" else "pathwise")
    torch.manual_seed(1)
    if net_kind == "rec":
        net = SpikingRecurrentNet(x.shape[-1], (256, 256), 20, neuron=neuron)
    else:
        net = SpikingMLP(x.shape[-1], (256,), 20, binary_input=True, neuron=neuron)
    net.calibrate(x)
    criterion = sbnn.ELBOLoss(n_train=N_TRAIN_SHD, kl_weight=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    before = variant == "st-before"

    def step() -> Tensor:
        with _before_recurrent() if before else contextlib.nullcontext():
            opt.zero_grad(set_to_none=True)
            loss = criterion(net(x), y, net).loss
            loss.backward()
            opt.step()
        return loss

    return Variant(f"sbnn[{variant}]", net, step)


def make_snntorch(net_kind: str, x: Tensor, y: Tensor, lr: float) -> Variant:
    torch.manual_seed(1)
    sizes = (x.shape[-1], 256, 256, 20) if net_kind == "rec" else (x.shape[-1], 256, 20)
    net = _SnnTorch(sizes, recurrent=net_kind == "rec")
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return Variant("snntorch-rleaky" if net_kind == "rec" else "snntorch-leaky", net, step)


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run(net_kind: str, args) -> None:
    torch.manual_seed(args.seed)
    x = (torch.rand(args.T, args.batch, 700) < args.rate).float()
    y = torch.randint(0, 20, (args.batch,))
    variants = [make_sbnn(net_kind, v, x, y, args.lr) for v in args.variants]
    variants.append(make_snntorch(net_kind, x, y, args.lr))
    memory = {v.name: saved_for_backward_bytes(v.model, v.step) for v in variants}
    for v in variants:
        for _ in range(args.warmup):
            v.step()
    load_start = load()
    for _ in range(args.repeats):
        for v in variants:
            times, f0 = [], faults()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                v.step()
                times.append(time.perf_counter() - t0)
            v.faults += faults() - f0
            v.times += times
            v.round_medians.append(statistics.median(times))
    by = {v.name: v for v in variants}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(by[a].round_medians, by[b].round_medians))

    print(f"\n== {net_kind}: T {args.T}, batch {args.batch}, rate {args.rate}, threads {torch.get_num_threads()}, "
          f"{args.malloc_text}; load average {load_start} -> {load()}")
    print(f"{'variant':<20} {'median ms':>9} {'/ sbnn[st]':>10} {'/ snnTorch':>10} {'saved MB':>8} {'faults/step':>11}")
    snn = variants[-1].name
    base = "sbnn[st]" if "sbnn[st]" in by else variants[0].name
    for v in variants:
        print(f"{v.name:<20} {statistics.median(v.times) * 1e3:9.1f} {paired(v.name, base):9.2f}x "
              f"{paired(v.name, snn):9.2f}x {memory[v.name] / 2**20:8.1f} {v.faults / len(v.times):11.0f}")
    for new, old in (("sbnn[st]", "sbnn[st-before]"), ("sbnn[iwst]", "sbnn[iwst-before]"), ("sbnn[agr]", "sbnn[agr-before]")):
        if new in by and old in by:
            print(f"  paired {new} / {old}: {paired(new, old):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", nargs="+", choices=("rec", "mlp"), default=["rec", "mlp"])
    ap.add_argument("--variants", nargs="+", default=["st", "st-before", "iwst", "iwst-before", "agr", "agr-before", "st-marginal"])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=7, help="rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--malloc", choices=("default", "keep"), default="default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.malloc_text = "glibc defaults"
    if args.malloc == "keep":
        from sbnn.runtime import keep_freed_memory

        args.malloc_text = "freed memory kept (mallopt)" if keep_freed_memory() else "mallopt unavailable"
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, snntorch {snntorch.__version__}, float32, CPU")
    for net_kind in args.nets:
        run(net_kind, args)


if __name__ == "__main__":
    main()

"""Time one training step of an SHD-sized spiking network: sbnn against snnTorch.

One training step = ``zero_grad`` + forward + loss + backward + ``Adam.step``, for a
``inputs → hidden → classes`` network (SHD: 700 → 256 → 20), ``T`` time steps, batch ``B``, on
random binary input spikes at a sparse rate and random labels. Variants:

* ``sbnn[<est>]``: ``sbnn.models.SpikingMLP`` after ``net.calibrate(x)``, loss
  ``sbnn.ELBOLoss(n_train=8156, kl_weight=0.1)``, spike-gradient estimator ``<est>``
  (time-batched LRT moments; only the neuron loops over time).
* ``snntorch-loop``: snnTorch's tutorial formulation, ``nn.Linear → snntorch.Leaky`` called once
  per time step (``cur = fc1(x_t)`` for ``x_t in x.unbind(0)``), ``nn.Linear`` → non-spiking
  leaky readout, mean membrane over time → cross-entropy, default (ATan) surrogate.
* ``snntorch-batched``: the same network with ``fc1`` applied to all ``[T·B, in]`` inputs in one
  matmul, the ``Leaky`` loop over the precomputed currents, then ``fc2`` over the whole spike
  tensor in one matmul.

All variants run in one process, alternating in rounds (ABCABC…) after a warm-up, with
``torch.set_num_threads(threads)`` and ``torch.set_flush_denormal(True)`` (docs/design.md §7). The
result is the *ratio* of median step times; absolute times are noisy and never asserted.

Memory: the bytes of the tensors autograd saves for backward in one step (counted with
``torch.autograd.graph.saved_tensors_hooks``, de-duplicated by storage) — the activation memory
that dominates a step's peak; parameters and optimizer state are listed apart. ``faults/step``
counts minor page faults per timed step (``resource.getrusage``): thousands of them mean that
glibc's allocator hands freed memory back to the OS every step and the next step faults it in
again; ``--malloc keep`` stops that (``mallopt``), to separate that cost from the computation.

Usage::

    python benchmarks/step_time.py                       # st only, ~1 min on 2 cores
    python benchmarks/step_time.py --estimators st agr iwst
    python benchmarks/step_time.py --profile             # + per-op breakdown of the sbnn step
    python benchmarks/step_time.py --malloc keep         # freed memory stays in the heap
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import snntorch

import sbnn
from sbnn.models import NeuronSettings, SpikingMLP

N_TRAIN_SHD = 8156


# --------------------------------------------------------------------------------------------
# snnTorch networks
# --------------------------------------------------------------------------------------------
class _SnnTorchNet(nn.Module):
    """``Linear → Leaky → Linear → leaky readout``; ``batched`` picks the formulation."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, beta: float, batched: bool, readout: str):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.lif1 = snntorch.Leaky(beta=beta)  # default surrogate (ATan), subtract reset
        self.fc2 = nn.Linear(n_hidden, n_out)
        self.beta, self.batched, self.readout = beta, batched, readout
        # "snntorch": a Leaky with no reset as the readout (its spikes are discarded);
        # "leaky": the plain non-spiking integrator U = βU + I (what sbnn's readout does).
        self.lif2 = snntorch.Leaky(beta=beta, reset_mechanism="none") if readout == "snntorch" else None

    def _readout_step(self, cur: Tensor, mem: Tensor) -> Tensor:
        if self.lif2 is not None:
            return self.lif2(cur, mem)[1]
        return self.beta * mem + cur

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mem1 = self.lif1.init_leaky()
        if not self.batched:
            mem2 = self.lif2.init_leaky() if self.lif2 is not None else torch.zeros((), dtype=x.dtype)
            spikes, mems = [], []
            for x_t in x.unbind(0):
                spk1, mem1 = self.lif1(self.fc1(x_t), mem1)
                mem2 = self._readout_step(self.fc2(spk1), mem2)
                spikes.append(spk1)
                mems.append(mem2)
            return torch.stack(mems).mean(0), torch.stack(spikes)
        cur1 = self.fc1(x)  # [T, B, H] in one matmul
        spikes = []
        for cur_t in cur1.unbind(0):
            spk1, mem1 = self.lif1(cur_t, mem1)
            spikes.append(spk1)
        spk = torch.stack(spikes)
        cur2 = self.fc2(spk)  # [T, B, K] in one matmul
        mem2 = self.lif2.init_leaky() if self.lif2 is not None else torch.zeros((), dtype=x.dtype)
        mems = []
        for cur_t in cur2.unbind(0):
            mem2 = self._readout_step(cur_t, mem2)
            mems.append(mem2)
        return torch.stack(mems).mean(0), spk

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0) -> None:
        """Scale ``fc1`` so the free membrane has std ``hidden_gain·ϑ`` (as ``SpikingMLP.calibrate``).

        Only so that both libraries run at a comparable firing rate; dense CPU kernels do not
        exploit sparsity, so the rate barely matters for the timing.
        """
        cur = F.linear(x, self.fc1.weight)
        mem, free = torch.zeros_like(cur[0]), []
        for c in cur.unbind(0):
            mem = self.beta * mem + c
            free.append(mem)
        std = float(torch.stack(free).std())
        if std > 0 and math.isfinite(std):
            self.fc1.weight.mul_(hidden_gain * float(self.lif1.threshold) / std)
            self.fc1.bias.zero_()


# --------------------------------------------------------------------------------------------
# variants: a closure doing one training step, plus bookkeeping
# --------------------------------------------------------------------------------------------
class Variant:
    def __init__(self, name: str, model: nn.Module, step: Callable[[], Tensor], rate: Callable[[], float]):
        self.name, self.model, self.step, self.rate = name, model, step, rate
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.page_faults = 0  # minor page faults during the timed steps


def make_sbnn(args, x: Tensor, y: Tensor, estimator: str) -> Variant:
    # the inputs are 0/1 spikes: declaring it lets the first layer use x² = x (one matmul)
    net = SpikingMLP(args.inputs, (args.hidden,), args.classes, binary_input=True, neuron=NeuronSettings(estimator=estimator))
    net.calibrate(x)
    criterion = sbnn.ELBOLoss(n_train=N_TRAIN_SHD, kl_weight=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = criterion(net(x), y, net).loss
        loss.backward()
        opt.step()
        return loss

    def rate() -> float:
        with torch.no_grad():
            return float(net.forward_with_spikes(x)[1][0].mean())

    return Variant(f"sbnn[{estimator}]", net, step, rate)


def make_snntorch(args, x: Tensor, y: Tensor, batched: bool) -> Variant:
    net = _SnnTorchNet(args.inputs, args.hidden, args.classes, beta=0.9, batched=batched, readout=args.snn_readout)
    if args.snn_calibrate:
        net.calibrate(x)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    def rate() -> float:
        with torch.no_grad():
            return float(net.forward_with_spikes(x)[1].mean())

    return Variant("snntorch-batched" if batched else "snntorch-loop", net, step, rate)


def saved_for_backward_bytes(model: nn.Module, fn: Callable[[], Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()`` (minus parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def quartiles(values: list[float]) -> tuple[float, float]:
    """Lower and upper quartile (both the value itself for a single sample)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def keep_freed_memory() -> str:
    """The allocator setting of ``--malloc keep`` (see :func:`sbnn.runtime.keep_freed_memory`)."""
    from sbnn.runtime import keep_freed_memory as keep

    return "glibc mmap/trim thresholds set to 1 GiB (mallopt)" if keep() else "mallopt unavailable: allocator defaults"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def fmt_mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def profile_variant(variant: Variant, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        variant.step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(5):
            variant.step()
    print(f"\n== torch.profiler, {variant.name}, 5 steps (self CPU time, top {rows}) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=10, help="rounds (each runs every variant --steps times)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--rate", type=float, default=0.03, help="input spike probability per channel and step")
    ap.add_argument("--estimators", nargs="+", default=["st"], help="sbnn estimators to time (st agr iwst ...)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--snn-readout", choices=("leaky", "snntorch"), default="leaky",
                    help="snnTorch readout: plain leaky integrator (as sbnn's) or a Leaky with reset_mechanism='none'")
    ap.add_argument("--no-snn-calibrate", dest="snn_calibrate", action="store_false",
                    help="keep nn.Linear's default init in snnTorch (lower firing rate)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the saved-tensor count")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler per-op tables of the sbnn step(s) and the faster snnTorch step")
    ap.add_argument("--profile-rows", type=int, default=25)
    ap.add_argument("--malloc", choices=("default", "keep"), default="default",
                    help="'keep': mallopt so freed memory stays in the heap (removes per-step page faults)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.estimators = list(dict.fromkeys(args.estimators))

    malloc = keep_freed_memory() if args.malloc == "keep" else "allocator defaults"
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)

    x = (torch.rand(args.T, args.batch, args.inputs) < args.rate).float()
    y = torch.randint(0, args.classes, (args.batch,))

    variants = [make_sbnn(args, x, y, est) for est in args.estimators]
    variants += [make_snntorch(args, x, y, batched=False), make_snntorch(args, x, y, batched=True)]

    print(f"torch {torch.__version__}, snntorch {snntorch.__version__}, sbnn {getattr(sbnn, '__version__', '?')}, "
          f"python {platform.python_version()}, {platform.machine()}")
    print(f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), flush_denormal on, "
          f"float32, CPU, {malloc}")
    print(f"network {args.inputs} -> {args.hidden} -> {args.classes}, T {args.T}, batch {args.batch}, "
          f"input rate {float(x.mean()):.3f}, Adam lr {args.lr}, snnTorch readout '{args.snn_readout}'")
    print(f"timing: {args.warmup} warm-up steps each, then {args.repeats} rounds x {args.steps} steps per variant, "
          f"alternating {'/'.join(v.name for v in variants)}")

    rates_before = {v.name: v.rate() for v in variants}
    memory = {}
    if args.memory:
        for v in variants:
            memory[v.name] = saved_for_backward_bytes(v.model, v.step)

    for v in variants:
        for _ in range(args.warmup):
            v.step()

    t_start = time.perf_counter()
    for _ in range(args.repeats):
        for v in variants:
            times = []
            f0 = minor_faults()
            for _ in range(args.steps):
                t0 = time.perf_counter()
                v.step()
                times.append(time.perf_counter() - t0)
            v.page_faults += minor_faults() - f0
            v.times += times
            v.round_medians.append(statistics.median(times))
    elapsed = time.perf_counter() - t_start

    med = {v.name: statistics.median(v.times) * 1e3 for v in variants}
    loop = med["snntorch-loop"]
    best_snn = min(med["snntorch-loop"], med["snntorch-batched"])
    best_snn_name = min(("snntorch-loop", "snntorch-batched"), key=med.__getitem__)

    print()
    head = (f"{'variant':<18} {'median ms':>9} {'IQR ms':>13} {'min ms':>7} {'vs loop':>8} {'vs best snnTorch':>16} "
            f"{'hidden rate':>11} {'saved MB':>8} {'faults/step':>11} {'params':>8}")
    print(head)
    print("-" * len(head))
    for v in variants:
        q = quartiles([t * 1e3 for t in v.times])
        n_par = sum(p.numel() for p in v.model.parameters())
        print(f"{v.name:<18} {med[v.name]:9.1f} {q[0]:6.1f}-{q[1]:6.1f} {min(v.times) * 1e3:7.1f} {med[v.name] / loop:7.2f}x "
              f"{med[v.name] / best_snn:15.2f}x {rates_before[v.name]:11.3f} "
              f"{fmt_mb(memory[v.name]) if v.name in memory else '-':>8} {v.page_faults / len(v.times):11.0f} {n_par:8d}")

    by_name = {v.name: v for v in variants}

    def paired(a: str, b: str) -> float:
        """Median over rounds of the ratio of the two variants' round medians (robust to slow drift)."""
        return statistics.median(ta / tb for ta, tb in zip(by_name[a].round_medians, by_name[b].round_medians))

    print()
    print("ratios: of the medians above | paired, median over rounds of the per-round ratio")
    for est in args.estimators:
        name = f"sbnn[{est}]"
        print(f"  {name} / faster snnTorch ({best_snn_name}): {med[name] / best_snn:.2f}x | {paired(name, best_snn_name):.2f}x")
        print(f"  {name} / snntorch-loop: {med[name] / loop:.2f}x | {paired(name, 'snntorch-loop'):.2f}x")
    print(f"  snntorch-batched / snntorch-loop: {med['snntorch-batched'] / loop:.2f}x | "
          f"{paired('snntorch-batched', 'snntorch-loop'):.2f}x")
    print(f"(timed section {elapsed:.1f} s; 'saved MB' = tensors saved for backward in one step, "
          f"via saved_tensors_hooks, de-duplicated by storage, parameters excluded; 'faults/step' = minor page "
          f"faults per timed step, getrusage: thousands mean the allocator returns memory to the OS every step, "
          f"try --malloc keep)")
    disturbed = [v.name for v in variants if quartiles(v.times)[1] > 1.5 * min(v.times)]
    if disturbed:
        print(f"WARNING: step times of {', '.join(disturbed)} spread by more than 1.5x (upper quartile vs minimum): "
              "other load on the machine; prefer the paired ratios, or rerun on a quiet machine")

    if args.profile:
        for v in variants:
            if v.name.startswith("sbnn") or v.name == best_snn_name:
                profile_variant(v, args.profile_rows)


if __name__ == "__main__":
    main()

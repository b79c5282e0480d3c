"""Time one training step of an SHD-sized spiking network: sbnn against snnTorch, SpikingJelly, Norse.

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

Peers (``--peers``, each when installed): ``snntorch-loop``, ``snntorch-batched``, ``spikingjelly``
(``LIFNode`` multi-step over ``[T, B, H]``, ``decay_input=False``, soft reset: the same
``U = βU + I`` neuron), ``norse`` (``LIFBoxCell`` looped over the precomputed currents,
``τ_mem_inv = (1 − β)/dt``). Every peer has ``Linear → LIF → Linear → leaky readout``, the
readout's mean membrane going into cross-entropy. ``sbnn[<est>,dense]`` (``--dense-path``) is the
same sbnn network with the event-driven gather path switched off, to show what it saves;
``sbnn[<est>,indices]`` (``--indices``) the same network fed the input's spike indices
(``SpikeIndices``, built once outside the timed step, as every variant's dense input is), what a
data module with ``input_format="indices"`` hands it: the step then skips finding the active
inputs in the dense tensor. ``sbnn[<est>,compiled]`` (``--compile``) runs the loss (network and
ELBO; the backward by AOTAutograd) under ``torch.compile`` with ``fallback_random`` (the first
call, in the warm-up, compiles and prints its time); ``sbnn[<est>,marginal]`` (``--marginal``)
uses the accumulated-variance membrane (compiled too with ``--compile``).

``--suite`` is the one command for the whole comparison: 700 → 256 → 20 at input spike rates
3 % and 10 % and on dense real-valued inputs (uniform in [0, 1), ``binary_input=False``), at 1 and
2 threads, every setting in the same process, then a summary of the paired ratios and of the
bytes saved for backward. With ``--authors-repo PATH`` (a copy of the SBNN authors' repository)
it adds the recurrent SHD network 700 → 256 → 256 → 20: sbnn's ``SpikingRecurrentNet``,
snnTorch ``RLeaky`` time-batched, and the authors' own ``CustomNet`` imported from
``PATH/train_shd.py`` at run time (their ``bayesian`` method, learnable scales, loss: plain
cross-entropy on their output, without their regulariser). ``--recurrent-variants paper
authors-snr`` times sbnn's paper configuration (``benchmarks/paper_equivalence.py``: Gaussian
weights, accumulated-variance neurons, the SNR term) against the authors' network with their
regulariser, from the same initial parameters. The load average is printed with the figures:
the machine may be shared.

Usage::

    python benchmarks/step_time.py --suite --authors-repo /path/to/bayesian_snn   # everything, ~15 min
    python benchmarks/step_time.py --authors-repo PATH --recurrent-only --recurrent-variants paper authors-snr --threads 1
    python benchmarks/step_time.py                       # st only, ~1 min on 2 cores
    python benchmarks/step_time.py --estimators st agr iwst
    python benchmarks/step_time.py --profile             # + per-op breakdown of the sbnn step
    python benchmarks/step_time.py --malloc keep         # freed memory stays in the heap
    python benchmarks/step_time.py --compile --marginal --rate 0.03 0.1 --threads 1 --peers spikingjelly
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import snntorch

import sbnn
from sbnn.diagnostics import saved_for_backward_bytes
from sbnn.functional.sparse import spike_indices
from sbnn.layers import BernoulliLinear
from sbnn.models import NeuronSettings, SpikingMLP, SpikingRecurrentNet
from sbnn.runtime import compile_training

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


def _leaky_readout_mean(cur: Tensor, beta: float) -> Tensor:
    """Mean over time of the non-spiking readout ``U[t] = βU[t−1] + I[t]`` (as the snnTorch net)."""
    mem, mems = torch.zeros_like(cur[0]), []
    for cur_t in cur.unbind(0):
        mem = beta * mem + cur_t
        mems.append(mem)
    return torch.stack(mems).mean(0)


@torch.no_grad()
def _calibrate_linear(fc: nn.Linear, x: Tensor, beta: float, target: float, gain: float = 1.0) -> None:
    """Scale ``fc`` so that the free membrane ``U = βU + gain·fc(x)`` has standard deviation ``target``."""
    cur = gain * F.linear(x, fc.weight)
    mem, free = torch.zeros_like(cur[0]), []
    for c in cur.unbind(0):
        mem = beta * mem + c
        free.append(mem)
    std = float(torch.stack(free).std())
    if std > 0 and math.isfinite(std):
        fc.weight.mul_(target / std)
        fc.bias.zero_()


class _PeerNet(nn.Module):
    """``Linear → LIF → Linear → leaky readout`` with SpikingJelly's or Norse's LIF neuron."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, beta: float, library: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_in, n_hidden), nn.Linear(n_hidden, n_out)
        self.beta, self.library = beta, library
        if library == "spikingjelly":
            from spikingjelly.activation_based import neuron

            # decay_input=False and v_reset=None: U = (1 − 1/τ)U + I with subtractive reset
            self.lif = neuron.LIFNode(tau=1.0 / (1.0 - beta), decay_input=False, v_reset=None, step_mode="m")
            self.gain = 1.0
        else:
            import norse.torch as norse

            dt = 1e-3  # LIFBox: v ← v + dt·τ⁻¹(−v + i), so β = 1 − dt·τ⁻¹ and the input enters times dt·τ⁻¹
            self.lif = norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor((1.0 - beta) / dt)), dt=dt)
            self.gain = 1.0 - beta

    def _hidden(self, cur: Tensor) -> Tensor:
        if self.library == "spikingjelly":
            self.lif.reset()
            return self.lif(cur)  # the whole [T, B, H] in one multi-step call
        state, spikes = None, []
        for cur_t in cur.unbind(0):
            z, state = self.lif(cur_t, state)
            spikes.append(z)
        return torch.stack(spikes)

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spk = self._hidden(self.fc1(x))
        return _leaky_readout_mean(self.fc2(spk), self.beta), spk

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_spikes(x)[0]

    def calibrate(self, x: Tensor, hidden_gain: float = 2.0) -> None:
        _calibrate_linear(self.fc1, x, self.beta, hidden_gain, self.gain)


class _SnnTorchRecurrent(nn.Module):
    """The SHD network in snnTorch, time-batched: ``Linear → RLeaky → Linear → RLeaky → Linear → leaky readout``."""

    def __init__(self, n_in: int, hidden: tuple[int, int], n_out: int, *, beta: float):
        super().__init__()
        self.fcs = nn.ModuleList([nn.Linear(n_in, hidden[0]), nn.Linear(hidden[0], hidden[1]), nn.Linear(hidden[1], n_out)])
        self.lifs = nn.ModuleList([snntorch.RLeaky(beta=beta, linear_features=h) for h in hidden])
        self.beta = beta

    @staticmethod
    def _loop(lif: nn.Module, cur: Tensor) -> Tensor:
        spk, mem = lif.init_rleaky()
        spikes = []
        for cur_t in cur.unbind(0):
            spk, mem = lif(cur_t, spk, mem)
            spikes.append(spk)
        return torch.stack(spikes)

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spk = x
        for fc, lif in zip(self.fcs, self.lifs):
            spk = self._loop(lif, fc(spk))
        return _leaky_readout_mean(self.fcs[-1](spk), self.beta), spk

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0) -> None:
        spk = x
        for fc, lif in zip(self.fcs, self.lifs):
            _calibrate_linear(fc, spk, self.beta, hidden_gain)
            spk = self._loop(lif, fc(spk))


def load_authors_module(repo: Path, n_steps: int) -> types.ModuleType:
    """Import ``repo/train_shd.py`` (the SBNN authors' SHD script) and set its module-level settings.

    Their ``CustomNet`` reads ``time_steps``, ``scale_style``, ``model_style`` and ``device`` from
    module globals that their ``__main__`` block sets; they are set here as their defaults for the
    ``bayesian`` method. Their script imports torchvision for CIFAR-10, which the SHD network does
    not use: when torchvision is not installed, empty stand-ins satisfy the import.
    """
    path = repo / "train_shd.py"
    if not path.is_file():
        raise SystemExit(f"--authors-repo: no train_shd.py in {repo}; pass the folder of a copy of the authors' repository")
    if importlib.util.find_spec("torchvision") is None:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.datasets = types.ModuleType("torchvision.datasets")
        stub.datasets.CIFAR10 = None
        sys.modules.update({"torchvision": stub, "torchvision.transforms": stub.transforms, "torchvision.datasets": stub.datasets})
    sys.path.insert(0, str(repo))  # their script imports its sibling shd_data
    spec = importlib.util.spec_from_file_location("authors_train_shd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.time_steps, module.scale_style, module.model_style = n_steps, "learnable", "bayesian"
    module.device = torch.device("cpu")
    return module


# --------------------------------------------------------------------------------------------
# variants: a closure doing one training step, plus bookkeeping
# --------------------------------------------------------------------------------------------
class Variant:
    def __init__(self, name: str, model: nn.Module, step: Callable[[], Tensor], rate: Callable[[], float]):
        self.name, self.model, self.step, self.rate = name, model, step, rate
        self.times: list[float] = []
        self.round_medians: list[float] = []
        self.page_faults = 0  # minor page faults during the timed steps


def _adam_variant(name: str, net: nn.Module, loss_fn: Callable[[], Tensor], lr: float, rate: Callable[[], float]) -> Variant:
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    return Variant(name, net, step, rate)


def compiled(fn: Callable) -> Callable:
    """:func:`sbnn.runtime.compile_training` of ``fn`` (what ``compile=True`` trains with), timing its first call."""
    fn_c = compile_training(fn)
    first = [True]

    def call(*a):
        if not first[0]:
            return fn_c(*a)
        first[0] = False
        start = time.perf_counter()
        out = fn_c(*a)
        print(f"  (compiled {getattr(fn, '__name__', 'step')}: first call {time.perf_counter() - start:.1f} s)", flush=True)
        return out

    return call


def make_sbnn(
    args, x: Tensor, y: Tensor, estimator: str, *, binary: bool = True, dense_path: bool = False, indices: bool = False,
    compile_: bool = False, membrane: str = "pathwise",
) -> Variant:
    # spike inputs: binary_input lets the first layer use x² = x (one matmul, or one gather)
    neuron = NeuronSettings(estimator=estimator, membrane_noise=membrane)
    net = SpikingMLP(args.inputs, (args.hidden,), args.classes, binary_input=binary, neuron=neuron)
    net.calibrate(x)
    if dense_path:
        for layer in net.modules():
            if isinstance(layer, BernoulliLinear):
                layer.gather = "never"
    criterion = sbnn.ELBOLoss(n_train=N_TRAIN_SHD, kl_weight=0.1)
    # indices: the input's SpikeIndices, built once here as the peers' dense tensor is (a data
    # module with input_format="indices" builds them in its loader)
    inp = spike_indices(x) if indices else x

    def rate() -> float:
        with torch.no_grad():
            return float(net.forward_with_spikes(x)[1][0].mean())

    tags = [estimator, "dense" * dense_path, "indices" * indices, "marginal" * (membrane == "marginal"), "compiled" * compile_]
    name = f"sbnn[{','.join(t for t in tags if t)}]"

    def loss(inp: Tensor, y: Tensor) -> Tensor:
        return criterion(net(inp), y, net).loss

    loss_fn = compiled(loss) if compile_ else loss
    return _adam_variant(name, net, lambda: loss_fn(inp, y), args.lr, rate)


def make_peer(args, x: Tensor, y: Tensor, kind: str) -> Variant:
    if kind.startswith("snntorch"):
        net = _SnnTorchNet(args.inputs, args.hidden, args.classes, beta=0.9, batched=kind == "snntorch-batched", readout=args.snn_readout)
    else:
        net = _PeerNet(args.inputs, args.hidden, args.classes, beta=0.9, library=kind)
    if args.snn_calibrate:
        net.calibrate(x)

    def rate() -> float:
        with torch.no_grad():
            return float(net.forward_with_spikes(x)[1].mean())

    return _adam_variant(kind, net, lambda: F.cross_entropy(net(x), y), args.lr, rate)


def make_snntorch(args, x: Tensor, y: Tensor, batched: bool) -> Variant:
    return make_peer(args, x, y, "snntorch-batched" if batched else "snntorch-loop")


def make_paper_variants(args, x: Tensor, y: Tensor, authors: types.ModuleType | None) -> list[Variant]:
    """sbnn's paper configuration of the SHD network (``sbnn-paper``) and the authors' with their regulariser.

    Both train on the loss the paper trains on, cross-entropy + λ·L_snr (λ = 1e-6), and start from
    the same parameters (the authors' initialisation copied into sbnn, ``paper_equivalence.py``).
    """
    from paper_equivalence import LAMBDA, authors_reg, copy_params, paper_shd_net, paper_snr, shd_pairs

    hidden = [256, 256]
    variants = []
    want = set(args.recurrent_variants)
    theirs = authors.CustomNet(input_size=args.inputs, hidden_sizes=hidden, output_size=args.classes) if authors else None
    if "paper" in want:
        net = paper_shd_net(args.inputs, hidden, args.classes, args.T)
        if theirs is not None:
            copy_params(net, shd_pairs(theirs, hidden, args.T))
        aux = paper_snr("shd")
        aux.attach(net)

        def paper_loss() -> Tensor:
            return F.cross_entropy(net(x), y) + LAMBDA["shd"] * aux(net)

        def paper_rate() -> float:
            with torch.no_grad():
                rate = float(net.forward_with_spikes(x)[1][0].mean())
            aux(net)  # release the drives of the rate pass
            return rate

        variants.append(_adam_variant("sbnn-paper", net, paper_loss, args.lr, paper_rate))
    if "authors-snr" in want and theirs is not None:
        x_bm = x.transpose(0, 1).contiguous()

        def authors_loss() -> Tensor:
            out, reg_mems, reg_sig = theirs(x_bm)
            return F.cross_entropy(out, y) + LAMBDA["shd"] * authors_reg(reg_mems, reg_sig)

        variants.append(_adam_variant("authors-snr", theirs, authors_loss, args.lr, lambda: math.nan))
    return variants


def make_recurrent_variants(args, x: Tensor, y: Tensor, authors: types.ModuleType | None) -> list[Variant]:
    """The SHD network 700 → 256 → 256 → 20 with recurrent hidden layers: sbnn, snnTorch, the authors'."""
    want = set(args.recurrent_variants)
    if not want & {"sbnn", "snntorch", "authors"}:
        return make_paper_variants(args, x, y, authors)
    hidden = (256, 256)
    net = SpikingRecurrentNet(args.inputs, hidden, args.classes, recurrent=True)
    net.calibrate(x)
    criterion = sbnn.ELBOLoss(n_train=N_TRAIN_SHD, kl_weight=0.1)

    def sbnn_rate() -> float:
        with torch.no_grad():
            return float(net.forward_with_spikes(x)[1][0].mean())

    variants = [_adam_variant("sbnn-recurrent[st]", net, lambda: criterion(net(x), y, net).loss, args.lr, sbnn_rate)]
    if args.compile:
        twin = copy.deepcopy(net)

        def twin_loss(x: Tensor, y: Tensor) -> Tensor:
            return criterion(twin(x), y, twin).loss

        loss_c = compiled(twin_loss)
        variants.append(_adam_variant("sbnn-recurrent[st,compiled]", twin, lambda: loss_c(x, y), args.lr, sbnn_rate))
    snn = _SnnTorchRecurrent(args.inputs, hidden, args.classes, beta=0.95)
    snn.calibrate(x)

    def snn_rate() -> float:
        with torch.no_grad():
            return float(snn.forward_with_spikes(x)[1].mean())

    variants.append(_adam_variant("snntorch-rleaky", snn, lambda: F.cross_entropy(snn(x), y), args.lr, snn_rate))
    if authors is not None:
        theirs = authors.CustomNet(input_size=args.inputs, hidden_sizes=list(hidden), output_size=args.classes)
        x_bm = x.transpose(0, 1).contiguous()  # their layout: [B, T, in]
        variants.append(_adam_variant("authors", theirs, lambda: F.cross_entropy(theirs(x_bm)[0], y), args.lr, lambda: math.nan))
    variants = [v for v in variants if v.name.split("[")[0].replace("sbnn-recurrent", "sbnn").replace("snntorch-rleaky", "snntorch") in want]
    return variants + make_paper_variants(args, x, y, authors)


def peers_available(wanted: list[str]) -> list[str]:
    """The peers of ``wanted`` whose library imports (a missing one is reported, not fatal)."""
    modules = {"spikingjelly": "spikingjelly", "norse": "norse"}
    found = []
    for name in wanted:
        module = modules.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"(peer {name} skipped: {module} is not installed)")
            continue
        found.append(name)
    return found


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
def run_rounds(variants: list[Variant], args) -> float:
    """Warm-up, then ``args.repeats`` rounds of ``args.steps`` steps per variant, alternated; returns seconds."""
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
    return time.perf_counter() - t_start


def paired(a: Variant, b: Variant) -> float:
    """Median over rounds of the ratio of the two variants' round medians (robust to slow drift)."""
    return statistics.median(ta / tb for ta, tb in zip(a.round_medians, b.round_medians))


def measure(variants: list[Variant], args, title: str) -> dict:
    """Time ``variants`` (alternated), print their table, return the setting's summary row."""
    load = os.getloadavg()
    rates_before = {v.name: v.rate() for v in variants}
    memory = {v.name: saved_for_backward_bytes(v.model, v.step) for v in variants} if args.memory else {}
    elapsed = run_rounds(variants, args)
    med = {v.name: statistics.median(v.times) * 1e3 for v in variants}
    ours = [v for v in variants if v.name.startswith("sbnn")]
    peers = [v for v in variants if not v.name.startswith("sbnn")]
    best = min(peers, key=lambda v: med[v.name])

    print(f"\n== {title}: threads {torch.get_num_threads()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(at the end {os.getloadavg()[0]:.2f}) ==")
    head = (f"{'variant':<20} {'median ms':>9} {'IQR ms':>13} {'min ms':>7} {'vs best peer':>12} "
            f"{'hidden rate':>11} {'saved MB':>8} {'faults/step':>11} {'params':>8}")
    print(head)
    print("-" * len(head))
    for v in variants:
        q = quartiles([t * 1e3 for t in v.times])
        n_par = sum(p.numel() for p in v.model.parameters())
        rate = rates_before[v.name]
        print(f"{v.name:<20} {med[v.name]:9.1f} {q[0]:6.1f}-{q[1]:6.1f} {min(v.times) * 1e3:7.1f} "
              f"{med[v.name] / med[best.name]:11.2f}x {'-' if math.isnan(rate) else f'{rate:.3f}':>11} "
              f"{fmt_mb(memory[v.name]) if v.name in memory else '-':>8} {v.page_faults / len(v.times):11.0f} {n_par:8d}")
    print("paired ratios (median over rounds of the per-round ratio):")
    for o in ours:
        print("  " + ", ".join(f"{o.name} / {p.name} {paired(o, p):.2f}x" for p in peers))
    for o in ours:
        if o.name.endswith(",indices]"):
            dense_input = next((v for v in ours if v.name == o.name.replace(",indices]", "]")), None)
            if dense_input is not None:
                print(f"  {o.name} / {dense_input.name} {paired(o, dense_input):.2f}x (the same network, indices against the dense input)")
    print(f"(timed section {elapsed:.1f} s)")
    disturbed = [v.name for v in variants if quartiles(v.times)[1] > 1.5 * min(v.times)]
    if disturbed:
        print(f"WARNING: step times of {', '.join(disturbed)} spread by more than 1.5x (upper quartile vs minimum): "
              "other load on the machine; prefer the paired ratios")
    return {
        "title": title, "threads": torch.get_num_threads(), "load": load[0], "ms": med,
        "paired": {(o.name, p.name): paired(o, p) for o in ours for p in peers},
        "saved": memory,
    }


def make_input(args, rate: float | str) -> Tensor:
    """``[T, B, inputs]``: spikes with probability ``rate``, or ``"dense"``: real values in [0, 1)."""
    if rate == "dense":
        return torch.rand(args.T, args.batch, args.inputs)
    return (torch.rand(args.T, args.batch, args.inputs) < float(rate)).float()


def feedforward_variants(args, x: Tensor, y: Tensor, binary: bool, peers: list[str]) -> list[Variant]:
    variants = [make_sbnn(args, x, y, est, binary=binary) for est in args.estimators]
    if args.indices and binary:
        variants += [make_sbnn(args, x, y, est, binary=binary, indices=True) for est in args.estimators]
    if args.dense_path and binary:
        variants += [make_sbnn(args, x, y, est, binary=binary, dense_path=True) for est in args.estimators]
    if args.compile:
        variants += [make_sbnn(args, x, y, est, binary=binary, compile_=True) for est in args.estimators]
    if args.marginal:
        variants += [make_sbnn(args, x, y, est, binary=binary, membrane="marginal") for est in args.estimators]
        if args.compile:
            variants += [make_sbnn(args, x, y, est, binary=binary, membrane="marginal", compile_=True) for est in args.estimators]
    return variants + [make_peer(args, x, y, kind) for kind in peers]


def print_summary(rows: list[dict]) -> None:
    print("\n== summary: paired ratios sbnn / peer (below 1: sbnn faster), bytes saved for backward ==")
    for row in rows:
        ratios = ", ".join(f"{a} / {b} {r:.2f}x" for (a, b), r in row["paired"].items())
        saved = ", ".join(f"{k} {fmt_mb(v)} MB" for k, v in row["saved"].items())
        print(f"{row['title']}, {row['threads']} thread(s), load {row['load']:.1f}: {ratios}")
        print(f"    saved for backward: {saved}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=10, help="rounds (each runs every variant --steps times)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before the rounds")
    ap.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts (each a setting)")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--rate", nargs="+", default=["0.03"],
                    help="input spike probabilities per channel and step, or 'dense' (real values in [0, 1))")
    ap.add_argument("--estimators", nargs="+", default=["st"], help="sbnn estimators to time (st agr iwst ...)")
    ap.add_argument("--peers", nargs="+", default=["snntorch-loop", "snntorch-batched"],
                    choices=["snntorch-loop", "snntorch-batched", "spikingjelly", "norse"])
    ap.add_argument("--dense-path", action="store_true", help="also time sbnn with the event-driven gather path off")
    ap.add_argument("--indices", action="store_true",
                    help="also time sbnn fed the input's spike indices, built once outside the step (sbnn[<est>,indices])")
    ap.add_argument("--compile", action="store_true",
                    help="also time sbnn's loss (forward + loss; backward by AOTAutograd) under torch.compile "
                         "(sbnn[<est>,compiled]; the first call compiles, in the warm-up)")
    ap.add_argument("--marginal", action="store_true",
                    help="also time sbnn with the accumulated-variance membrane (sbnn[<est>,marginal]; compiled too with --compile)")
    ap.add_argument("--suite", action="store_true",
                    help="the whole comparison: rates 0.03 0.1 dense, threads 1 2, peers snntorch-batched spikingjelly "
                         "norse, --dense-path, and the recurrent SHD network")
    ap.add_argument("--authors-repo", type=Path, default=None,
                    help="folder of a copy of the SBNN authors' repository: adds their SHD network (train_shd.py)")
    ap.add_argument("--recurrent-variants", nargs="+", default=["sbnn", "snntorch", "authors"],
                    choices=("sbnn", "snntorch", "authors", "paper", "authors-snr"),
                    help="variants of the recurrent SHD setting: sbnn's default recurrent net, snnTorch RLeaky, the authors' "
                         "(cross-entropy only); 'paper': sbnn's paper configuration and 'authors-snr': the authors' net, "
                         "both with the SNR term at λ = 1e-6 and the same initial parameters")
    ap.add_argument("--recurrent-only", action="store_true", help="time the recurrent SHD setting only (needs --authors-repo)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--snn-readout", choices=("leaky", "snntorch"), default="leaky",
                    help="snnTorch readout: plain leaky integrator (as sbnn's) or a Leaky with reset_mechanism='none'")
    ap.add_argument("--no-snn-calibrate", dest="snn_calibrate", action="store_false",
                    help="keep nn.Linear's default init in the peers (lower firing rate)")
    ap.add_argument("--no-memory", dest="memory", action="store_false", help="skip the saved-tensor count")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler per-op tables of the sbnn step(s) and the fastest peer")
    ap.add_argument("--profile-rows", type=int, default=25)
    ap.add_argument("--malloc", choices=("default", "keep"), default="default",
                    help="'keep': mallopt so freed memory stays in the heap (removes per-step page faults)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.estimators = list(dict.fromkeys(args.estimators))
    recurrent = args.authors_repo is not None
    if args.suite:
        args.rate, args.threads, args.dense_path = ["0.03", "0.1", "dense"], [1, 2], True
        args.peers = ["snntorch-batched", "spikingjelly", "norse"]
        recurrent = True
    for r in args.rate:
        if r != "dense":
            try:
                ok = 0.0 < float(r) <= 1.0
            except ValueError:
                ok = False
            if not ok:
                ap.error(f"--rate: {r!r} is neither a probability in (0, 1] nor 'dense'")
    if args.recurrent_only and args.authors_repo is None:
        ap.error("--recurrent-only times the recurrent SHD setting, which needs --authors-repo PATH")
    authors = load_authors_module(args.authors_repo, args.T) if args.authors_repo is not None else None
    peers = peers_available(args.peers)
    if not peers:
        ap.error("no peer library is installed (snntorch, spikingjelly, norse)")

    malloc = keep_freed_memory() if args.malloc == "keep" else "allocator defaults"
    torch.set_flush_denormal(True)
    versions = [f"torch {torch.__version__}", f"snntorch {snntorch.__version__}"]
    for name in ("spikingjelly", "norse"):
        if name in peers:
            try:
                from importlib.metadata import version

                versions.append(f"{name} {version(name)}")
            except Exception:  # noqa: BLE001 - a version string is only informative
                versions.append(f"{name} ?")
    print(f"{', '.join(versions)}, python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"flush_denormal on, float32, CPU, {malloc}; network {args.inputs} -> {args.hidden} -> {args.classes}, "
          f"T {args.T}, batch {args.batch}, Adam lr {args.lr}; {args.warmup} warm-up steps each, then "
          f"{args.repeats} rounds x {args.steps} steps per variant, alternated")

    if args.compile:
        # every compiled variant compiles the same `loss` code object, once per setting: past
        # Dynamo's default of 8 compiled entries per code object the later ones would run eager
        import torch._dynamo.config as dynamo_config

        dynamo_config.cache_size_limit = 256
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for rate in [] if args.recurrent_only else args.rate:
            torch.manual_seed(args.seed)
            x = make_input(args, rate)
            y = torch.randint(0, args.classes, (args.batch,))
            variants = feedforward_variants(args, x, y, rate != "dense", peers)
            label = "dense inputs" if rate == "dense" else f"input rate {float(x.mean()):.3f}"
            rows.append(measure(variants, args, f"{args.inputs}->{args.hidden}->{args.classes}, {label}"))
            if args.profile:
                for v in variants:
                    if v.name.startswith("sbnn") or v.name == min(variants[1:], key=lambda u: statistics.median(u.times)).name:
                        profile_variant(v, args.profile_rows)
        if recurrent:
            torch.manual_seed(args.seed)
            x = make_input(args, args.rate[0] if args.rate[0] != "dense" else "0.03")
            y = torch.randint(0, args.classes, (args.batch,))
            variants = make_recurrent_variants(args, x, y, authors)
            rows.append(measure(variants, args, f"recurrent SHD {args.inputs}->256->256->{args.classes}, input rate {float(x.mean()):.3f}"))
    if len(rows) > 1:
        print_summary(rows)


if __name__ == "__main__":
    main()

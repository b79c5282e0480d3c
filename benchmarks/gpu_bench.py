"""The Open Neuromorphic library benchmark setting, and the SHD network, on a GPU (or the CPU).

Setting of the Open Neuromorphic "SNN library benchmarks" (Lenz, Heckel, Shrestha, Barker &
Pedersen, 2023, updated 2024): one fully connected layer followed by a LIF layer, ``n`` neurons
(``n → n``), input ``[T = 500, B = 16, n]``, the time of one forward plus backward pass. Variants:

* ``sbnn``: ``BernoulliLinear(n, n)`` in ``sample`` mode (both LRT moments) → ``StochasticLIF``
  (``st`` estimator), ``.sequence`` over the whole input;
* ``spikingjelly``: ``layer.Linear`` → ``neuron.LIFNode`` in multi-step mode (SpikingJelly 0.0.0.0.x:
  backend ``cupy`` on CUDA when CuPy is installed, ``torch`` otherwise; 2.x chooses its kernels);
* ``norse``: ``nn.Linear`` → ``norse.torch.LIF`` (optionally ``torch.compile``-d, as published);
* ``sbnn-shd``: one training step (forward, ELBO loss, backward, Adam) of the SHD network
  ``SpikingRecurrentNet(700, (256, 256), 20)``, T 100, batch 32, 3 % input spikes.

The loss is the sum of the output spikes (the published setting's); every variant is warmed up,
then timed over ``--repeats`` calls with a device synchronisation around each (outside the
step). On CUDA ``--sync-check`` also runs one sbnn training step of each network under
``torch.cuda.set_sync_debug_mode("error")``: a host synchronisation inside the step raises.

Published there (16k neurons, GPU): SpikingJelly CuPy 0.118 s, Norse + ``torch.compile``
0.109 s, snnTorch 3.08 s.

Usage::

    python benchmarks/gpu_bench.py                    # the published setting, on CUDA when present
    python benchmarks/gpu_bench.py --small            # 512 neurons, T 50, batch 4: runs on a CPU
    python benchmarks/gpu_bench.py --neurons 4096 --norse-compile --sync-check
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import Tensor, nn

import sbnn
from sbnn import BernoulliLinear, StochasticLIF
from sbnn.models import SpikingRecurrentNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> tuple[float, float]:
    """Median and minimum seconds of ``fn()`` (synchronised before and after each call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


# -- the one-layer setting ---------------------------------------------------------------------
def sbnn_layer(n: int, device: torch.device) -> Callable[[Tensor], Tensor]:
    linear = BernoulliLinear(n, n, return_moments=True).to(device)
    lif = StochasticLIF(beta=0.9, estimator="st").to(device)

    def run(x: Tensor) -> Tensor:
        return lif.sequence(linear(x), validate=False)[0]

    return run


def spikingjelly_layer(n: int, device: torch.device) -> tuple[Callable[[Tensor], Tensor], str]:
    from spikingjelly.activation_based import functional, layer, neuron

    backend = "torch"
    if device.type == "cuda":
        try:
            import cupy  # noqa: F401

            backend = "cupy"
        except ImportError:
            pass
    try:
        node = neuron.LIFNode(step_mode="m", backend=backend)
    except TypeError:  # SpikingJelly 2 picks its kernels itself (no backend argument)
        node = neuron.LIFNode(step_mode="m")
        backend = str(getattr(node, "backend", "its default kernels"))
    net = nn.Sequential(layer.Linear(n, n, step_mode="m"), node).to(device)

    def run(x: Tensor) -> Tensor:
        functional.reset_net(net)
        return net(x)

    return run, backend


def norse_layer(n: int, device: torch.device, compile_: bool) -> Callable[[Tensor], Tensor]:
    import norse.torch as norse

    linear, lif = nn.Linear(n, n).to(device), norse.LIF().to(device)

    def run(x: Tensor) -> Tensor:
        return lif(linear(x))[0]

    return torch.compile(run) if compile_ else run


def forward_backward(run: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def call() -> None:
        run(x).sum().backward()

    return call


# -- the SHD network ---------------------------------------------------------------------------
def shd_step(device: torch.device, steps: int, batch: int) -> Callable[[], None]:
    torch.manual_seed(0)
    x = (torch.rand(steps, batch, 700, device=device) < 0.03).float()
    y = torch.randint(0, 20, (batch,), device=device)
    net = SpikingRecurrentNet(700, (256, 256), 20).to(device)
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=8156, kl_weight=0.1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def call() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y, net).loss.backward()
        opt.step()

    return call


def sync_check(device: torch.device, n: int, steps: int, batch: int) -> None:
    """Run one sbnn step of each network with host synchronisations turned into errors."""
    x = torch.rand(steps, batch, n, device=device)
    layer_call = forward_backward(sbnn_layer(n, device), x)
    shd_call = shd_step(device, 100, 32)
    layer_call(), shd_call()  # warm-up: lazy initialisations may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer_call()
        shd_call()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print("sync check: no host synchronisation inside the sbnn steps (set_sync_debug_mode('error'))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--neurons", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--small", action="store_true", help="512 neurons, T 50, batch 4 (a CPU check of the script)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--libraries", nargs="+", default=["sbnn", "spikingjelly", "norse", "sbnn-shd"])
    ap.add_argument("--norse-compile", action="store_true", help="torch.compile the Norse layer (as published)")
    ap.add_argument("--sync-check", action="store_true", help="CUDA only: fail on a host synchronisation in the sbnn steps")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    args = ap.parse_args()
    if args.small:
        args.neurons, args.steps, args.batch = 512, 50, 4
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}; {args.neurons} neurons, T {args.steps}, batch {args.batch}, "
          f"forward + backward, median (min) of {args.repeats} after {args.warmup} warm-up calls")
    torch.manual_seed(0)
    x = torch.rand(args.steps, args.batch, args.neurons, device=device)
    for lib in args.libraries:
        try:
            if lib == "sbnn":
                call, label = forward_backward(sbnn_layer(args.neurons, device), x), "sbnn (LRT sample, st)"
            elif lib == "spikingjelly":
                run, backend = spikingjelly_layer(args.neurons, device)
                call, label = forward_backward(run, x), f"spikingjelly ({backend})"
            elif lib == "norse":
                run = norse_layer(args.neurons, device, args.norse_compile)
                call, label = forward_backward(run, x), "norse" + (" + torch.compile" if args.norse_compile else "")
            elif lib == "sbnn-shd":
                call, label = shd_step(device, 100, 32), "sbnn SHD net, one training step (T 100, B 32)"
            else:
                raise ValueError(f"unknown library {lib!r}; choose from sbnn, spikingjelly, norse, sbnn-shd")
        except ImportError as err:
            print(f"{lib:<14} skipped: {err}")
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        med, low = time_call(call, device, args.warmup, args.repeats)
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
        print(f"{label:<48} {med:8.4f} s ({low:.4f}){peak}")
    if args.sync_check:
        if device.type != "cuda":
            print("sync check skipped: it needs CUDA")
        else:
            sync_check(device, args.neurons, args.steps, args.batch)


if __name__ == "__main__":
    main()

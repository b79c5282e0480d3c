"""Loading a batch plus one training step: dense batches against spike-index batches.

The data path's view of ``input_format="indices"`` (:mod:`sbnn.data.spike_index`): random binary
samples ``[T, N]`` in a ``TensorDataset``, batched by ``time_major_collate`` (dense) or
``spike_indices_collate`` (indices) with ``num_workers = 0``, so that the collate runs in the
training process and its cost is timed with the step (forward, ELBO loss, backward, Adam). The
same network (same initial parameters) for both formats, epochs alternated; the result is the
median over rounds of the per-round ratio of the median per-batch times.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/index_batches.py --net mlp --rounds 10
    OMP_NUM_THREADS=1 python benchmarks/index_batches.py --net recurrent --rounds 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import sbnn
from sbnn.data import spike_indices_collate, time_major_collate
from sbnn.models import SpikingMLP, SpikingRecurrentNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=("mlp", "recurrent"), default="mlp")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6, help="batches per epoch")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.batches
    x = (torch.rand(n, args.T, args.inputs, generator=g) < args.rate).float()
    y = torch.randint(0, 20, (n,), generator=g)
    data = TensorDataset(x, y)
    loaders = {
        "dense": DataLoader(data, batch_size=args.batch, collate_fn=time_major_collate),
        "indices": DataLoader(data, batch_size=args.batch, collate_fn=spike_indices_collate),
    }
    criterion = sbnn.ELBOLoss(n_train=8156, kl_weight=0.1)
    nets, opts = {}, {}
    for fmt in loaders:
        torch.manual_seed(0)
        if args.net == "recurrent":
            net = SpikingRecurrentNet(args.inputs, (args.hidden,), 20)
        else:
            net = SpikingMLP(args.inputs, (args.hidden,), 20, binary_input=True)
        net.calibrate(x[: args.batch].transpose(0, 1))
        nets[fmt], opts[fmt] = net, torch.optim.Adam(net.parameters(), lr=1e-3)

    def epoch(fmt: str) -> float:
        times, batches = [], iter(loaders[fmt])
        while True:
            t0 = time.perf_counter()
            try:
                xb, yb = next(batches)
            except StopIteration:
                return statistics.median(times)
            opts[fmt].zero_grad(set_to_none=True)
            criterion(nets[fmt](xb), yb, nets[fmt]).loss.backward()
            opts[fmt].step()
            times.append(time.perf_counter() - t0)

    for fmt in loaders:  # warm-up
        epoch(fmt)
    load = os.getloadavg()
    medians: dict[str, list[float]] = {fmt: [] for fmt in loaders}
    for _ in range(args.rounds):
        for fmt in loaders:
            medians[fmt].append(epoch(fmt))
    ratio = statistics.median(a / b for a, b in zip(medians["indices"], medians["dense"]))
    print(
        f"{args.net} {args.inputs} -> {args.hidden} -> 20, T {args.T}, batch {args.batch}, input rate {args.rate}, "
        f"{torch.get_num_threads()} thread(s), load average {load[0]:.2f} (at the end {os.getloadavg()[0]:.2f}): "
        f"per batch (load + step) dense {statistics.median(medians['dense']) * 1e3:.1f} ms, "
        f"indices {statistics.median(medians['indices']) * 1e3:.1f} ms; paired indices / dense {ratio:.3f}"
    )


if __name__ == "__main__":
    main()

"""Crossover density of the event-driven (gather) path of ``BernoulliLinear``: sparse against dense.

For each layer size and input density, one forward + backward of ``layer.moments(x, binary=True)``
in ``sample`` mode (both LRT moments; loss ``Σ μ + Σ v``) over ``rows = T·B`` input rows, with
the layer's path forced to ``never`` (dense matmuls) and ``always`` (gather), alternated in
rounds in one process; prints the median of the paired per-round ratios ``gather / dense``
(below 1: the gather is faster). ``--input-grad`` makes the input require grad (a hidden layer:
the input gradient stays a dense matmul), otherwise it is a first layer on data.

Usage::

    python benchmarks/gather_crossover.py --threads 1
    python benchmarks/gather_crossover.py --threads 1 --input-grad
    python benchmarks/gather_crossover.py --threads 1 --indices     # input given as SpikeIndices
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sbnn.functional.sparse import SpikeIndices, spike_indices
from sbnn.layers import BernoulliLinear, gather_path


def time_once(layer: BernoulliLinear, x: torch.Tensor | SpikeIndices, grad_input: bool) -> float:
    start = time.perf_counter()
    if isinstance(x, SpikeIndices):
        # index input: the gather reads them as given; the dense path first rebuilds the tensor
        m = layer.moments(x) if layer.gather == "always" else layer.moments(x.to_dense(), binary=True, validate=False)
    else:
        m = layer.moments(x.detach().requires_grad_(grad_input), binary=True, validate=False)
    (m.mean.sum() + m.var.sum()).backward()
    elapsed = time.perf_counter() - start
    layer.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", type=int, default=3200, help="T·B input rows")
    ap.add_argument("--sizes", nargs="+", default=["700x256", "256x256", "2048x2048"], help="IN x OUT")
    ap.add_argument("--densities", nargs="+", type=float, default=[0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--input-grad", action="store_true", help="the input requires grad (a hidden layer)")
    ap.add_argument(
        "--indices", action="store_true",
        help="the input arrives as SpikeIndices (input_format='indices'): the gather skips finding them, the dense path rebuilds the tensor",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.indices and args.input_grad:
        ap.error("--indices describes a first layer on data: it has no input gradient")
    print(
        f"threads {args.threads}, rows {args.rows}, input grad {args.input_grad}, indices {args.indices}, "
        f"load average {os.getloadavg()}"
    )
    print(f"{'layer':>11} {'density':>8} {'dense ms':>9} {'gather ms':>10} {'ratio':>6}")
    for size in args.sizes:
        n_in, n_out = (int(v) for v in size.split("x"))
        layer = BernoulliLinear(n_in, n_out)
        for density in args.densities:
            x = (torch.rand(args.rows, n_in) < density).float()
            if args.indices:
                x = spike_indices(x)
            times: dict[str, list[float]] = {"never": [], "always": []}
            for choice in times:  # warm-up
                with gather_path(layer, choice):
                    time_once(layer, x, args.input_grad)
            for _ in range(args.rounds):
                for choice in times:
                    with gather_path(layer, choice):
                        times[choice].append(time_once(layer, x, args.input_grad))
            ratio = statistics.median(g / d for g, d in zip(times["always"], times["never"]))
            print(
                f"{size:>11} {density:>8.2f} {1e3 * statistics.median(times['never']):>9.2f} "
                f"{1e3 * statistics.median(times['always']):>10.2f} {ratio:>6.2f}"
            )


if __name__ == "__main__":
    main()

"""Cost of keyed LRT evaluation noise against ``torch.randn``, on the same network and batch.

LRT evaluation (``mc_samples`` noisy passes averaged) of a calibrated ``SpikingMLP`` on random
binary spikes, timed two ways in one process, alternating in rounds (ABAB…) after a warm-up:

* ``randn``: :func:`sbnn.modes.lrt_predict` inside :func:`sbnn.training.evaluation.seeded_rng`,
  the noise drawn from torch's RNG per batch stream (how LRT evaluation was seeded before the
  noise was keyed by example);
* ``keyed``: :func:`sbnn.training.predict_probabilities` with ``kinds=("lrt",)``, the noise keyed
  by example (:mod:`sbnn.functional.keyed`).

The result is the ratio of median times; absolute times are noisy and never asserted.

Usage::

    python benchmarks/eval_noise.py                       # quickstart and SHD-sized, 1 thread
    python benchmarks/eval_noise.py --rounds 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sbnn.models import SpikingMLP
from sbnn.modes import lrt_predict
from sbnn.training.evaluation import predict_probabilities, seeded_rng, stream_seed

#: (name, inputs, hidden, classes, T, B, input spike rate)
CONFIGS = [
    ("quickstart", 50, (128,), 10, 50, 32, 0.02),
    ("shd-sized", 700, (256,), 20, 100, 64, 0.02),
]


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n_in: int, hidden: tuple[int, ...], n_out: int, t: int, b: int, rate: float, mc: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    net = SpikingMLP(n_in, hidden, n_out, binary_input=True)
    x = (torch.rand(t, b, n_in) < rate).float()
    net.calibrate(x)

    def randn() -> None:
        with torch.no_grad(), seeded_rng(stream_seed(0, 0)):
            lrt_predict(net, x, mc)

    def keyed() -> None:
        predict_probabilities(net, x, kinds=("lrt",), mc_samples=mc)

    for fn in (randn, keyed):
        fn()
    times: dict[str, list[float]] = {"randn": [], "keyed": []}
    for _ in range(rounds):
        times["randn"].append(_time(randn))
        times["keyed"].append(_time(keyed))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**med, "ratio": med["keyed"] / med["randn"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mc-samples", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"threads {args.threads}, mc_samples {args.mc_samples}, {args.rounds} rounds, torch {torch.__version__}")
    for name, *config in CONFIGS:
        r = measure(*config, mc=args.mc_samples, rounds=args.rounds)
        print(f"{name:11s} {config}: randn {r['randn'] * 1e3:8.1f} ms  keyed {r['keyed'] * 1e3:8.1f} ms  ratio {r['ratio']:.2f}")


if __name__ == "__main__":
    main()

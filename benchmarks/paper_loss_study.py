"""The signal-to-noise loss and per-time-step gain studies (docs/diagnostics.md §4, §5).

Rerun with ``python benchmarks/paper_loss_study.py [--part snr|randman|affine] [--quick]``;
each part prints its table and writes ``benchmarks/results/paper_<part>.json``.

- ``snr``: the exact ``st`` bias along training with and without the SNR auxiliary loss, on the
  network of the bias-proxy study (``benchmarks/bias_study.py --part aux``: a binary
  ``64 → 12 → 10`` SBNN, ``β = 0``, ``T = 1``, one Bernoulli rate-coded step of the digits, ``st``,
  30 epochs, 2 seeds), ``aux_weight`` on the per-unit-step mean scale of :class:`sbnn.training.SNRLoss`.
- ``randman``: accuracy of the Randman quickstart network (``SpikingMLP(50, (128,), 10)``,
  ``T = 50``), shortened to 15 epochs, with and without the SNR loss.
- ``affine``: with and without the per-time-step gain and bias (``LayerSettings.time_affine_steps``)
  on a residual MLP (``ResidualSpikingMLP``, depth 6, width 64) on Randman; ``affine_time``: its
  training-step time with and without, alternated in one process.

Everything runs on one CPU thread; ``--quick`` shrinks epochs for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_study import ExactBiasTracker, _fit  # noqa: E402  (the bias-proxy study's tracker and trainer)

from sbnn.data import DigitsDataModule, RandmanDataModule  # noqa: E402
from sbnn.models import LayerSettings, NeuronSettings, ResidualSpikingMLP, SpikingMLP  # noqa: E402
from sbnn.tasks import SpikingClassificationTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("mode", "mc", "lrt", "sample")


def _save(name: str, data) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".paper_{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(RESULTS / f"paper_{name}.json")


def _acc(test: dict) -> dict:
    return {f"test_acc_{k}": test[f"test_acc_{k}"] for k in KINDS}


SNR_WEIGHTS = [0.0, 0.01, 0.1, 1.0, 10.0]


def part_snr(quick: bool, seeds: list[int] | None = None, tag: str = "") -> None:
    epochs = 4 if quick else 30
    runs = []
    for weight in (SNR_WEIGHTS[:2] if quick else SNR_WEIGHTS):
        for seed in (seeds or ([0] if quick else [0, 1])):
            L.seed_everything(seed, verbose=False)
            dm = DigitsDataModule(encoding="rate", n_steps=1, batch_size=64, seed=42)
            dm.setup("fit")
            x, y = next(iter(dm.train_dataloader()))
            net = SpikingMLP(64, (12,), 10, binary_input=True,
                             neuron=NeuronSettings(beta=0.0, reset_mechanism="none", estimator="st", sigma0=0.3))
            tracker = ExactBiasTracker(x[:, :32], y[:32], every=2 if quick else 5, samples=100 if quick else 600)
            task = SpikingClassificationTask(net, aux_weight=weight, aux_loss="snr")
            t0 = time.perf_counter()
            _, test = _fit(task, dm, epochs, [tracker])
            runs.append({"aux_weight": weight, "seed": seed, "seconds": time.perf_counter() - t0, "bias": tracker.rows, **_acc(test)})
            _report_snr(runs)
    _save("snr" + tag, runs)


def _report_snr(runs) -> None:
    print(f"\n{'λ (mean)':>8} {'seed':>4} {'bias@0':>7} {'bias@end':>8} {'mean bias':>9} {'L1 bias@end':>11} "
          f"{'mode':>6} {'MC':>6} {'LRT':>6} {'one':>6} {'s':>5}")
    for r in runs:
        b = [row["bias_all"] for row in r["bias"]]
        print(f"{r['aux_weight']:8g} {r['seed']:4d} {b[0]:7.3f} {b[-1]:8.3f} {sum(b[1:]) / max(len(b) - 1, 1):9.3f} "
              f"{r['bias'][-1]['bias_layers.0']:11.3f} "
              + " ".join(f"{100 * r[f'test_acc_{k}']:6.1f}" for k in KINDS) + f" {r['seconds']:5.0f}", flush=True)


def _randman():
    return RandmanDataModule(n_classes=10, n_channels=50, n_steps=50, n_train=1000, n_val=200, n_test=500, seed=42)


def _report(runs, key) -> None:
    print(f"\n{key:>16} {'seed':>4} " + " ".join(f"{k:>6}" for k in KINDS) + f" {'s':>5}")
    for r in runs:
        print(f"{str(r[key]):>16} {r['seed']:4d} " + " ".join(f"{100 * r[f'test_acc_{k}']:6.1f}" for k in KINDS)
              + f" {r['seconds']:5.0f}", flush=True)


def part_randman(quick: bool, seeds: list[int] | None = None, tag: str = "") -> None:
    epochs = 2 if quick else 15
    runs = []
    for weight in ([0.0, 0.1] if quick else [0.0, 0.01, 0.1, 1.0]):
        L.seed_everything(0, verbose=False)
        net = SpikingMLP(50, (128,), 10, binary_input=True)
        t0 = time.perf_counter()
        _, test = _fit(SpikingClassificationTask(net, aux_weight=weight, aux_loss="snr"), _randman(), epochs)
        runs.append({"aux_weight": weight, "seed": 0, "epochs": epochs, "seconds": time.perf_counter() - t0, **_acc(test)})
        _report(runs, "aux_weight")
    _save("randman" + tag, runs)


def part_affine(quick: bool, seeds: list[int] | None = None, tag: str = "") -> None:
    epochs = 2 if quick else 15
    runs = []
    for steps in (None, 50):
        for seed in (seeds or ([0] if quick else [0, 1])):
            L.seed_everything(seed, verbose=False)
            net = ResidualSpikingMLP(50, 10, depth=6, width=64, binary_input=True,
                                     layer=LayerSettings(time_affine_steps=steps))
            t0 = time.perf_counter()
            _, test = _fit(SpikingClassificationTask(net), _randman(), epochs)
            runs.append({"model": "ResidualSpikingMLP", "time_affine_steps": steps, "seed": seed, "epochs": epochs,
                         "seconds": time.perf_counter() - t0, **_acc(test)})
            _report(runs, "time_affine_steps")
    _save("affine" + tag, runs)


def part_affine_time(quick: bool, seeds: list[int] | None = None, tag: str = "") -> None:
    """Training-step time with/without the gain and bias, alternated in one process (median ratio)."""
    import statistics

    torch.manual_seed(0)
    x, y = (torch.rand(50, 32, 50) < 0.05).float(), torch.randint(0, 10, (32,))
    nets = {s: ResidualSpikingMLP(50, 10, depth=6, width=64, binary_input=True, layer=LayerSettings(time_affine_steps=s))
            for s in (None, 50)}

    def step(net) -> float:
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        return time.perf_counter() - t0

    for net in nets.values():
        step(net)
    ratios = [step(nets[50]) / step(nets[None]) for _ in range(3 if quick else 21)]
    out = {"median_ratio": statistics.median(ratios), "ratios": ratios}
    print(f"step time with / without the gain and bias: median {out['median_ratio']:.3f} over {len(ratios)} pairs", flush=True)
    _save("affine_time" + tag, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["snr", "randman", "affine", "affine_time", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny epochs (smoke run)")
    parser.add_argument("--seeds", type=int, nargs="*", help="seeds of the snr and affine parts (default 0 1)")
    parser.add_argument("--tag", default="", help="suffix of the results file, e.g. _s23 for extra seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    for part in (["snr", "randman", "affine", "affine_time"] if args.part == "all" else [args.part]):
        t0 = time.perf_counter()
        globals()[f"part_{part}"](args.quick, args.seeds, args.tag)
        print(f"[{part}: {time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()

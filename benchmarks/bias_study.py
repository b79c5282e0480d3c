"""The estimator bias study (docs/diagnostics.md): rerun with ``python benchmarks/bias_study.py [--part ...]``.

Parts (each prints its table and writes ``benchmarks/results/bias_<part>.json``; plots go to
``docs/figures/``):

- ``depth``: estimators × depth (1, 2, 4 stochastic layers) × noise family, on binary networks
  (``β = 0``, ``T = 1``) small enough for exact gradients; random spike inputs and labels, scales
  calibrated (``sbnn-diagnose`` on each configuration).
- ``membrane``: the per-step (pathwise) membrane-noise model against the marginal one that
  carries the accumulated variance into θ: (i) estimator bias on a small spiking network
  (exact reference for the marginal model, a 20 000-sample REINFORCE reference for the pathwise
  one); (ii) on Randman training runs (the quickstart setting, shorter), the share of unit-steps
  whose estimator factor is below 1e−3 and the test accuracy.
- ``aux``: the auxiliary loss along training. A binary ``64 → 12 → 10`` network on digits
  (one Bernoulli rate-coded step) trained by ``SpikingClassificationTask`` with ``st`` at several
  ``aux_weight``; at every few epochs the exact ``st`` bias on a fixed training batch; final
  ``mode``/MC accuracy.

Everything runs on one CPU thread; ``--quick`` shrinks sample counts and epochs for a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from sbnn.data import DigitsDataModule, RandmanDataModule
from sbnn.diagnostics import GradientFlowMonitor, estimator_gradients, exact_gradient, gradient_metrics
from sbnn.diagnostics.report import DiagnoseConfig, _mean_rows, run_report
from sbnn.functional.estimators import get_estimator
from sbnn.models import NeuronSettings, SpikingMLP
from sbnn.tasks import SpikingClassificationTask
from sbnn.training import BiasProxyLoss

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "figures"
ESTIMATORS = ["st", "iwst", "agr", "relaxed", "gumbel_rao", "reinforce"]


def _save(name: str, data) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / f".bias_{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(RESULTS / f"bias_{name}.json")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- part 1: estimators x depth x noise ----------------------------------------------------------
DEPTHS = {1: [8], 2: [6, 6], 4: [5, 5, 5, 5]}


def part_depth(quick: bool) -> None:
    rows = []
    for depth, hidden in DEPTHS.items():
        cfg = DiagnoseConfig(
            in_features=10, hidden=hidden, classes=4, steps=1, beta=0.0, reset_mechanism="none",
            noise=["gaussian", "logistic"], estimators=ESTIMATORS, samples=200 if quick else 1500,
            seeds=[0] if quick else [0, 1, 2], batch=16, hidden_gain=1.0,
        )
        result = run_report(cfg, flow=False, log=lambda m: print(m, file=sys.stderr))
        for r in _mean_rows(result["rows"]):
            rows.append({"depth": depth, **r})
    _save("depth", rows)
    print(f"\n{'noise':9} {'depth':>5} {'estimator':11} {'bias':>6} {'±':>5} {'var':>7} {'cos(E)':>6} {'bias L1':>7}")
    for r in rows:
        if r["layer"] != "all":
            continue
        first = next(x for x in rows if x["depth"] == r["depth"] and x["noise"] == r["noise"] and x["estimator"] == r["estimator"] and x["layer"] == "layers.0")
        print(f"{r['noise']:9} {r['depth']:5d} {r['estimator']:11} {r['bias']:6.3f} {r['bias_floor']:5.3f} {r['variance']:7.3g} {r['mean_cosine']:6.3f} {first['bias']:7.3f}")
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax_b, ax_v, noise in ((axes[0], axes[1], "gaussian"), (axes[2], axes[3], "logistic")):
        for est in ESTIMATORS:
            sel = [r for r in rows if r["noise"] == noise and r["estimator"] == est and r["layer"] == "layers.0"]
            depths = [r["depth"] for r in sel]
            ax_b.plot(depths, [max(r["bias"], 1e-3) for r in sel], "-o", label=est)
            ax_v.plot(depths, [r["variance"] for r in sel], "-o", label=est)
        ax_b.set(title=f"{noise}: first-layer bias", xlabel="stochastic layers", ylabel="relative bias", xticks=[1, 2, 4], yscale="log")
        ax_v.set(title=f"{noise}: first-layer variance", xlabel="stochastic layers", ylabel="relative variance", xticks=[1, 2, 4], yscale="log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMAGES / "bias_depth.png", dpi=100)


# -- part 2: pathwise vs marginal membrane noise -------------------------------------------------
def _fit(module, dm, epochs, callbacks=()):
    trainer = L.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, dm)
        return trainer, trainer.test(module, dm, verbose=False)[0]


def part_membrane(quick: bool) -> None:
    out = {"bias": [], "training": []}
    for model in ("marginal", "pathwise"):
        cfg = DiagnoseConfig(
            in_features=10, hidden=[3, 3], classes=4, steps=3, beta=0.8, reset_mechanism="subtract",
            membrane_noise=model, noise=["gaussian"], estimators=["st", "iwst", "agr"],
            samples=200 if quick else 1500, reference_samples=2000 if quick else 20000, seeds=[0] if quick else [0, 1],
            batch=16, hidden_gain=1.0,
        )
        result = run_report(cfg, flow=True, log=lambda m: print(m, file=sys.stderr))
        for r in _mean_rows(result["rows"]):
            if r["layer"] == "all":
                out["bias"].append({"membrane_noise": model, **r})
    epochs = 4 if quick else 40
    for model in ("pathwise", "marginal"):
        for seed in ([0] if quick else [0, 1]):
            L.seed_everything(seed, verbose=False)
            dm = RandmanDataModule(n_classes=10, n_channels=50, n_steps=50, n_train=1000, n_val=200, n_test=500, seed=42)
            net = SpikingMLP(50, (128,), 10, binary_input=True, neuron=NeuronSettings(membrane_noise=model))
            monitor = GradientFlowMonitor()
            t0 = time.perf_counter()
            _, test = _fit(SpikingClassificationTask(net), dm, epochs, [monitor])
            first, last = monitor.history[0], monitor.history[-1]
            out["training"].append({
                "membrane_noise": model, "seed": seed, "epochs": epochs, "seconds": time.perf_counter() - t0,
                "vanishing_first_epoch": first["flow/network.neurons.0/vanishing"],
                "vanishing_last_epoch": last["flow/network.neurons.0/vanishing"],
                "rate_last_epoch": last["flow/network.neurons.0/rate"],
                "test_acc_mode": test["test_acc_mode"], "test_acc_mc": test["test_acc_mc"], "test_acc_lrt": test["test_acc_lrt"],
                "history": monitor.history,
            })
    _save("membrane", out)
    print(f"\n{'membrane':9} {'estimator':9} {'bias':>6} {'±':>5} {'var':>7} {'cos(E)':>6}  reference")
    for r in out["bias"]:
        print(f"{r['membrane_noise']:9} {r['estimator']:9} {r['bias']:6.3f} {r['bias_floor']:5.3f} {r['variance']:7.3g} {r['mean_cosine']:6.3f}  {r['reference']}")
    print(f"\n{'membrane':9} {'seed':>4} {'vanish@1':>8} {'vanish@end':>10} {'rate':>6} {'mode':>6} {'MC':>6} {'LRT':>6} {'s':>6}")
    for r in out["training"]:
        print(f"{r['membrane_noise']:9} {r['seed']:4d} {r['vanishing_first_epoch']:8.3f} {r['vanishing_last_epoch']:10.3f} {r['rate_last_epoch']:6.3f} "
              f"{100 * r['test_acc_mode']:6.1f} {100 * r['test_acc_mc']:6.1f} {100 * r['test_acc_lrt']:6.1f} {r['seconds']:6.0f}")


# -- part 3: the auxiliary loss along training ---------------------------------------------------
class ExactBiasTracker(L.Callback):
    """Every ``every`` epochs, the exact relative ``st`` bias (all parameters, first layer) on a fixed batch."""

    def __init__(self, x, y, every: int, samples: int) -> None:
        self.x, self.y, self.every, self.samples, self.rows = x.double(), y, every, samples, []

    def _measure(self, epoch: int, network) -> None:
        net = copy.deepcopy(network).double()  # a copy has no drive hooks
        _, exact = exact_gradient(net, self.x, self.y)
        samples = estimator_gradients(net, self.x, self.y, get_estimator("st"), self.samples, seed=epoch)
        row = {"epoch": epoch}
        for group, prefix in (("all", ""), ("layers.0", "layers.0.")):
            ref = torch.cat([v.flatten() for k, v in exact.items() if k.startswith(prefix)])
            est = torch.cat([v.flatten(1) for k, v in samples.items() if k.startswith(prefix)], 1)
            m = gradient_metrics(est, ref)
            row[f"bias_{group}"], row[f"floor_{group}"], row[f"cos_{group}"] = m.bias, m.bias_floor, m.mean_cosine
        self.rows.append(row)

    def on_fit_start(self, trainer, module) -> None:
        self._measure(0, module.network)

    def on_train_epoch_end(self, trainer, module) -> None:
        if (trainer.current_epoch + 1) % self.every == 0:
            self._measure(trainer.current_epoch + 1, module.network)


AUX_VARIANTS = [  # (label, aux_weight, detach_drive)
    ("none", 0.0, True),
    ("proxy w=1", 1.0, True),
    ("proxy w=3", 3.0, True),
    ("proxy w=10", 10.0, True),
    ("proxy w=3, drives trained", 3.0, False),
]


def part_aux(quick: bool) -> None:
    epochs = 4 if quick else 30
    variants = AUX_VARIANTS[:2] if quick else AUX_VARIANTS
    runs = []
    for label, aux_weight, detach in variants:
        for seed in ([0] if quick else [0, 1]):
            L.seed_everything(seed, verbose=False)
            dm = DigitsDataModule(encoding="rate", n_steps=1, batch_size=64, seed=42)
            dm.setup("fit")
            x, y = next(iter(dm.train_dataloader()))
            net = SpikingMLP(64, (12,), 10, binary_input=True, neuron=NeuronSettings(beta=0.0, reset_mechanism='none', estimator='st', sigma0=0.3))
            tracker = ExactBiasTracker(x[:, :32], y[:32], every=2 if quick else 5, samples=100 if quick else 600)
            task = SpikingClassificationTask(net, aux_weight=aux_weight, aux_fn=BiasProxyLoss(detach_drive=detach) if aux_weight else None)
            t0 = time.perf_counter()
            _, test = _fit(task, dm, epochs, [tracker])
            runs.append({"variant": label, "aux_weight": aux_weight, "detach_drive": detach, "seed": seed,
                         "seconds": time.perf_counter() - t0, "bias": tracker.rows,
                         **{k: test[k] for k in ("test_acc_mode", "test_acc_mc", "test_acc_lrt", "test_ece_mc")}})
    _save("aux", runs)
    print(f"\n{'variant':26} {'seed':>4} {'bias@0':>7} {'bias@end':>8} {'mean bias':>9} {'L1 bias@end':>11} {'mode':>6} {'MC':>6} {'LRT':>6}")
    for r in runs:
        b = [row["bias_all"] for row in r["bias"]]
        print(f"{r['variant']:26} {r['seed']:4d} {b[0]:7.3f} {b[-1]:8.3f} {sum(b[1:]) / max(len(b) - 1, 1):9.3f} "
              f"{r['bias'][-1]['bias_layers.0']:11.3f} {100 * r['test_acc_mode']:6.1f} {100 * r['test_acc_mc']:6.1f} {100 * r['test_acc_lrt']:6.1f}")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [v[0] for v in variants]
    for r in runs:
        epochs_ = [row["epoch"] for row in r["bias"]]
        style = "-" if r["seed"] == 0 else "--"
        color = plt.cm.viridis(labels.index(r["variant"]) / max(len(labels) - 1, 1))
        axes[0].plot(epochs_, [row["bias_all"] for row in r["bias"]], style, color=color, label=f"{r['variant']} s{r['seed']}")
        axes[1].plot(epochs_, [row["bias_layers.0"] for row in r["bias"]], style, color=color)
    axes[0].set(title="exact st bias, all parameters", xlabel="epoch", ylabel="relative bias")
    axes[1].set(title="exact st bias, first hidden layer", xlabel="epoch", ylabel="relative bias")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(IMAGES / "bias_aux.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["depth", "membrane", "aux", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="tiny sample counts and epochs (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    for part in (["depth", "membrane", "aux"] if args.part == "all" else [args.part]):
        t0 = time.perf_counter()
        globals()[f"part_{part}"](args.quick)
        print(f"[{part}: {time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()

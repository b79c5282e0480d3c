"""Predictive uncertainty of BayesBiNN, SBNN and STE on two moons and Snelson regression.

::

    python benchmarks/uncertainty.py --snelson-dir /path/to/snelson     # both studies, ~3 min
    python benchmarks/uncertainty.py                                     # moons only
    python benchmarks/uncertainty.py --quick                             # smoke run

Two moons (BayesBiNN, Meng et al. 2020, appendix B.1, table 3): ``MoonsDataModule()`` (100 points per class, noise 0.1;
1000 independent test points), ``BinaryMLP(2, (64, 64), 2)`` with tanh, batch 50. BayesBiNN:
lr 1e-3, momentum 0.99, S = 5, τ = 1, prior λ0 = 0, ±15 initialisation; STE-Adam: lr 0.1 with
gradient and weight clipping; SBNN: Adam on λ (lr 0.1) + 0.1·KL/N in LRT mode. All with cosine
decay (the BayesBiNN paper decays by 10× at epochs 1500 and 2500 of 3000) for ``--epochs-moons`` epochs
(default 1000). Writes ``docs/figures/uncertainty_moons.png``: MC predictive probability of class
1 and predictive entropy over the input plane (STE: its single deterministic network).

Snelson (BayesBiNN appendix B.1, table 4): the 200 training points of Snelson & Ghahramani (2005), read from
``--snelson-dir`` (files ``train_inputs``, ``train_outputs``, ``test_inputs``, one number per
line; not shipped with sbnn), targets standardised, ``BinaryMLP(1, (64, 64), 1)`` with tanh, mean
squared error, batch 50. BayesBiNN: lr 1e-4 (cosine; the paper anneals 1e-4 → 1e-5), momentum
0.99, S = 1, τ = 1, ±10 initialisation; STE: lr 0.1. Writes
``docs/figures/uncertainty_snelson.png``: predictive mean ± 2 std of 20 drawn binary networks
over ``test_inputs`` (STE has one network, so no spread).

The printed table gives test accuracy, NLL and ECE (15 bins) of the ``mode`` network and of the MC
mean (20 networks), the mean predictive entropy on the test points and far from the data, and
for Snelson the training RMSE and the mean predictive std inside and outside the data range.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sbnn.data import MoonsDataModule, time_major_collate
from sbnn.training import fit, make_method, predict_samples
from sbnn.training import accuracy, expected_calibration_error, negative_log_likelihood, predictive_entropy
from sbnn.models import BinaryMLP

FIG_DIR = Path(__file__).resolve().parents[1] / "docs" / "figures"
MC = 20
MOONS = {
    "bayesbinn": dict(lr=1e-3, momentum=0.99, temperature=1.0, num_samples=5, lam_init=15.0),
    "sbnn": dict(lam_lr=0.1, kl_weight=0.1),
    "ste": dict(lr=0.1),
}
SNELSON = {
    "bayesbinn": dict(lr=1e-4, momentum=0.99, temperature=1.0, num_samples=1, lam_init=10.0),
    "sbnn": dict(lam_lr=0.1, kl_weight=0.1),
    "ste": dict(lr=0.1),
}
LABELS = {"bayesbinn": "BayesBiNN", "sbnn": "SBNN (Adam on λ + KL, LRT)", "ste": "STE-Adam"}


def _save(fig, name: str) -> str:
    FIG_DIR.mkdir(parents=True, exist_ok=True)
    path = FIG_DIR / name
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return str(path)


def moons(epochs: int, seed: int) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dm = MoonsDataModule()
    dm.setup()
    xt, yt = time_major_collate([dm.test_set[i] for i in range(len(dm.test_set))])
    xtr, ytr = dm.train_set.tensors
    g1, g2 = torch.meshgrid(torch.linspace(-2.5, 3.5, 121), torch.linspace(-2.0, 2.5, 91), indexing="xy")
    grid = torch.stack([g1.flatten(), g2.flatten()], -1)[None]
    far = torch.tensor([[-2.5, -2.0], [3.5, 2.5], [-2.5, 2.5], [3.5, -2.0], [0.5, 2.5], [0.5, -2.0]])[None]
    rows, maps = [], {}
    for name, kw in MOONS.items():
        torch.manual_seed(seed)
        net, method = BinaryMLP(2, (64, 64), 2), make_method(name, **kw)
        start = time.perf_counter()
        fit(net, method, dm.train_dataloader(), epochs, n_train=dm.n_train)
        seconds = time.perf_counter() - start
        row = {"study": "moons", "method": name, "epochs": epochs, "seconds": seconds}
        for kind in ("mode", "mc"):
            p = predict_samples(net, method, xt, kind, MC).softmax(-1).mean(0)
            row |= {f"acc_{kind}": float(accuracy(p, yt)), f"nll_{kind}": float(negative_log_likelihood(p, yt)),
                    f"ece_{kind}": float(expected_calibration_error(p, yt)), f"entropy_{kind}": float(predictive_entropy(p))}
        pg = predict_samples(net, method, grid, "mc", MC).softmax(-1).mean(0)
        row["entropy_far"] = float(predictive_entropy(predict_samples(net, method, far, "mc", MC).softmax(-1).mean(0)))
        maps[name] = pg
        rows.append(row)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True, sharey=True)
    for j, name in enumerate(MOONS):
        p1 = maps[name][:, 1].reshape(g1.shape)
        ent = -(maps[name] * maps[name].clamp_min(1e-12).log()).sum(-1).reshape(g1.shape)
        for i, (field, cmap, vmax, title) in enumerate([(p1, "RdBu_r", 1.0, "P(class 1)"), (ent, "viridis", float(np.log(2)), "predictive entropy (nats)")]):
            ax = axes[i, j]
            # fixed levels: every panel of a row shares one colour scale
            im = ax.contourf(g1, g2, field.clamp(0.0, vmax), levels=np.linspace(0.0, vmax, 21), cmap=cmap)
            ax.scatter(xtr[:, 0, 0], xtr[:, 0, 1], c=ytr, cmap="bwr", s=8, edgecolors="k", linewidths=0.3)
            ax.set_title(f"{LABELS[name]}: {title}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Two moons, BinaryMLP 2-64-64-2 tanh, {epochs} epochs; BayesBiNN and SBNN: mean of {MC} drawn binary networks, STE: its one network", fontsize=9)
    print("wrote", _save(fig, "uncertainty_moons.png"))
    return rows


def _read_column(path: Path) -> torch.Tensor:
    return torch.tensor(np.loadtxt(path, dtype=np.float64), dtype=torch.float32)


def snelson(directory: str, epochs: int, seed: int) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = Path(directory)
    missing = [f for f in ("train_inputs", "train_outputs", "test_inputs") if not (d / f).is_file()]
    if missing:
        raise ValueError(f"--snelson-dir {directory!r} lacks {missing}; point it at the Snelson data folder")
    x, y, xs = _read_column(d / "train_inputs"), _read_column(d / "train_outputs"), _read_column(d / "test_inputs")
    if len(x) != len(y):
        raise ValueError(f"Snelson: {len(x)} train inputs but {len(y)} outputs")
    x_mu, x_sd, y_mu, y_sd = x.mean(), x.std(), y.mean(), y.std()
    xn, yn = ((x - x_mu) / x_sd)[:, None], ((y - y_mu) / y_sd)[:, None]
    xs_sorted = torch.sort(torch.cat([xs, torch.linspace(float(x.min()) - 3, float(x.max()) + 3, 200)]))[0]
    xsn = ((xs_sorted - x_mu) / x_sd)[:, None]
    loader = DataLoader(TensorDataset(xn, yn), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(seed))
    inside = (xs_sorted >= x.min()) & (xs_sorted <= x.max())
    rows = []
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
    for ax, (name, kw) in zip(axes, SNELSON.items()):
        torch.manual_seed(seed)
        net, method = BinaryMLP(1, (64, 64), 1), make_method(name, **kw)
        start = time.perf_counter()
        fit(net, method, loader, epochs, loss_fn=F.mse_loss, n_train=len(x))
        seconds = time.perf_counter() - start
        out = predict_samples(net, method, xsn, "mc", MC)[..., 0] * y_sd + y_mu  # [C, S]
        mean, std = out.mean(0), out.std(0) if out.shape[0] > 1 else torch.zeros(out.shape[1])
        train_pred = predict_samples(net, method, xn, "mc", MC)[..., 0].mean(0) * y_sd + y_mu
        rows.append({"study": "snelson", "method": name, "epochs": epochs, "seconds": seconds,
                     "train_rmse": float((train_pred - y).pow(2).mean().sqrt()),
                     "std_inside": float(std[inside].mean()), "std_outside": float(std[~inside].mean())})
        ax.scatter(x, y, s=6, c="k", alpha=0.6, label="train")
        ax.plot(xs_sorted, mean, "C0", label="predictive mean")
        ax.fill_between(xs_sorted, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.25, label="± 2 std")
        ax.set_title(LABELS[name], fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Snelson, BinaryMLP 1-64-64-1 tanh, {epochs} epochs; spread of {MC} drawn binary networks (STE: one network)", fontsize=9)
    print("wrote", _save(fig, "uncertainty_snelson.png"))
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-moons", type=int, default=1000)
    parser.add_argument("--epochs-snelson", type=int, default=1000)
    parser.add_argument("--snelson-dir", default=None, help="folder with train_inputs, train_outputs, test_inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/uncertainty.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs_moons = args.epochs_snelson = 10
    torch.set_num_threads(1)
    rows = moons(args.epochs_moons, args.seed)
    print(f"\n{'moons':10s} {'acc mode':>8s} {'acc MC':>7s} {'NLL mode':>8s} {'NLL MC':>7s} {'ECE mode':>8s} {'ECE MC':>7s} {'H test':>7s} {'H far':>6s} {'s':>6s}")
    for r in rows:
        print(f"{r['method']:10s} {100 * r['acc_mode']:8.1f} {100 * r['acc_mc']:7.1f} {r['nll_mode']:8.3f} {r['nll_mc']:7.3f} "
              f"{r['ece_mode']:8.3f} {r['ece_mc']:7.3f} {r['entropy_mc']:7.3f} {r['entropy_far']:6.3f} {r['seconds']:6.1f}")
    if args.snelson_dir:
        srows = snelson(args.snelson_dir, args.epochs_snelson, args.seed)
        print(f"\n{'snelson':10s} {'train RMSE':>10s} {'std inside':>10s} {'std outside':>11s} {'s':>6s}")
        for r in srows:
            print(f"{r['method']:10s} {r['train_rmse']:10.3f} {r['std_inside']:10.3f} {r['std_outside']:11.3f} {r['seconds']:6.1f}")
        rows += srows
    else:
        print("\n(Snelson skipped: give --snelson-dir)")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    return rows


if __name__ == "__main__":
    main()

"""``sbnn-hybrid``: the HyBNN table and the FedHyBNN curves on scikit-learn digits (or MNIST).

Prints, per two-class task, the test accuracy of the plain binary CNN (paper's ``sign(x)`` input and
a 0.5-threshold input), HyBNN with the STE head, HyBNN with the SBNN head and the full-precision
network; then FedHyBNN per aggregation and split: accuracy per round against the centralised head,
and bytes per round. Writes ``hybnn_table.json``, ``fedhybnn.json`` and two PNG plots to ``--out``.

Example::

    OMP_NUM_THREADS=1 sbnn-hybrid --out runs/hybrid
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch

from .data import PAIR_TASKS, digits_split, mnist_split, pair_task
from .heads import FullPrecisionNet, HyBNN, PlainBinaryCNN, SBNNHead, STEHead
from .training import accuracy, fit_classifier, fit_vae
from .vae import BinaryVAE, FrozenEncoder

__all__ = ["main", "hybnn_table"]

#: KL temperature of the SBNN heads (ELBO per example: CE + kl_weight · KL / N)
SBNN_KL_WEIGHT = 0.01

COLUMNS = ("binary CNN sign(x)", "binary CNN x>0.5", "HyBNN-STE", "HyBNN-SBNN", "full precision")


def hybnn_table(split, encoder: FrozenEncoder, *, epochs: int, seed: int = 0, tasks=PAIR_TASKS) -> dict[str, dict[str, float]]:
    """Per task, the test accuracy of each model in :data:`COLUMNS` (one seed)."""
    shape = tuple(split.x_train.shape[1:])
    table = {}
    for pair in tasks:
        x, y = pair_task(split.x_train, split.y_train, pair)
        xt, yt = pair_task(split.x_test, split.y_test, pair)
        row = {}
        builders = {
            COLUMNS[0]: (lambda: PlainBinaryCNN(shape, threshold=0.0), 1e-2),
            COLUMNS[1]: (lambda: PlainBinaryCNN(shape, threshold=0.5), 1e-2),
            COLUMNS[2]: (lambda: HyBNN(encoder, STEHead(encoder.n_latent)), 1e-2),
            COLUMNS[3]: (lambda: HyBNN(encoder, SBNNHead(encoder.n_latent)), 0.1),
            COLUMNS[4]: (lambda: FullPrecisionNet(shape), 1e-3),
        }
        for name, (build, lr) in builders.items():
            torch.manual_seed(seed)
            model = build()
            # the SBNN head has ~10^4 weights for a few hundred images: a full-weight KL would
            # pin λ to the prior, so it is tempered (kl_weight applies to models with a posterior only)
            fit_classifier(model, x, y, epochs=epochs, lr=lr, kl_weight=SBNN_KL_WEIGHT, seed=seed)
            row[name] = accuracy(model, xt, yt)
        table[f"{pair[0]}/{pair[1]}"] = row
    return table


def _print_table(table: dict[str, dict[str, float]]) -> None:
    print("task | " + " | ".join(COLUMNS))
    for task, row in table.items():
        print(f"{task}  | " + " | ".join(f"{100 * row[c]:.1f}" for c in COLUMNS))


def _plot(table, fed, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.16
    for j, col in enumerate(COLUMNS):
        ax.bar([i + j * width for i in range(len(table))], [100 * r[col] for r in table.values()], width, label=col)
    ax.set_xticks([i + 2 * width for i in range(len(table))], list(table))
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "hybnn_table.png", dpi=120)
    plt.close(fig)
    if not fed:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, split in zip(axes, ("iid", "label")):
        for key, run in fed["runs"].items():
            if run["split"] == split:
                ax.plot(range(len(run["accuracy"])), [100 * a for a in run["accuracy"]], label=run["aggregation"])
        ax.axhline(100 * fed["centralised"], color="k", ls="--", label="centralised")
        ax.set_title(f"{split} shards")
        ax.set_xlabel("round")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fedhybnn.png", dpi=120)
    plt.close(fig)


def main(args: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="sbnn-hybrid", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/hybrid"))
    p.add_argument("--data-root", type=Path, default=None, help="MNIST IDX directory (default: scikit-learn digits)")
    p.add_argument("--vae-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=30, help="epochs of every task model")
    p.add_argument("--vae-kl-weight", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--fed-task", default="2/3")
    p.add_argument("--no-federated", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(args)
    for name in ("vae_epochs", "epochs", "rounds", "clients"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not ns.no_federated:
        from .federated import require_flower

        try:
            require_flower()
        except ImportError as err:
            p.error(f"{err} (or pass --no-federated)")
    try:
        pair = tuple(int(d) for d in ns.fed_task.split("/"))
        assert len(pair) == 2
    except (ValueError, AssertionError):
        p.error(f"--fed-task must look like 2/3, got {ns.fed_task!r}")
    split = mnist_split(ns.data_root) if ns.data_root is not None else digits_split(seed=ns.seed)
    ns.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(ns.seed)
    t0 = time.time()
    vae = BinaryVAE(tuple(split.x_train.shape[1:]), kl_weight=ns.vae_kl_weight)
    hist = fit_vae(vae, split.x_train, epochs=ns.vae_epochs, seed=ns.seed)
    print(f"VAE ({ns.vae_epochs} epochs, {time.time() - t0:.0f} s): recon {hist[-1]['recon']:.2f}, KL {hist[-1]['kl']:.2f} nats/image")
    encoder = FrozenEncoder(vae)
    table = hybnn_table(split, encoder, epochs=ns.epochs, seed=ns.seed)
    _print_table(table)
    (ns.out / "hybnn_table.json").write_text(json.dumps(table, indent=1))
    fed = None
    if not ns.no_federated:
        fed = federated_curves(split, encoder, pair, ns)
        (ns.out / "fedhybnn.json").write_text(json.dumps(fed, indent=1))
    if importlib.util.find_spec("matplotlib") is None:
        print("sbnn-hybrid: no plots without matplotlib (pip install 'sbnn[plot]'); the tables are in the JSON files")
        return 0
    _plot(table, fed, ns.out)
    print(f"wrote {ns.out}/hybnn_table.png" + ("" if fed is None else f" and {ns.out}/fedhybnn.png"))
    return 0


def federated_curves(split, encoder: FrozenEncoder, pair: tuple[int, int], ns) -> dict:
    """FedHyBNN runs (each aggregation × iid/label split) and the centralised head, on one task."""
    from .federated import FedConfig, run_simulation, write_federation_data

    x, y = pair_task(split.x_train, split.y_train, pair)
    xt, yt = pair_task(split.x_test, split.y_test, pair)
    ztr, zte = encoder(x), encoder(xt)
    path = write_federation_data(ns.out / "federation_codes.npz", ztr, y, zte, yt)
    base = FedConfig(n_clients=ns.clients, rounds=ns.rounds, seed=ns.seed)
    torch.manual_seed(ns.seed)
    central = SBNNHead(encoder.n_latent, hidden=base.hidden)
    fit_classifier(central, ztr, y, epochs=ns.rounds * base.local_epochs, lr=base.lr, batch_size=base.batch_size,
                   kl_weight=base.kl_weight, seed=ns.seed)
    fed = {"task": f"{pair[0]}/{pair[1]}", "centralised": accuracy(central, zte, yt), "runs": {}}
    print(f"FedHyBNN on {pair[0]}/{pair[1]}: centralised head {100 * fed['centralised']:.1f} %")
    for split_kind in ("iid", "label"):
        for agg in ("mean", "product", "mode"):
            cfg = FedConfig(**{**base.to_flower(), "aggregation": agg, "split": split_kind})
            t0 = time.time()
            log = run_simulation(path, cfg)
            run = {"aggregation": agg, "split": split_kind, "accuracy": log["accuracy"],
                   "uplink_bytes": log["uplink_bytes"][0], "uplink_payload_bytes": log["uplink_payload_bytes"][0],
                   "downlink_bytes": log["downlink_bytes"][0], "seconds": time.time() - t0}
            fed["runs"][f"{agg}/{split_kind}"] = run
            acc = " ".join(f"{100 * a:.0f}" for a in log["accuracy"])
            print(f"{agg:8s} {split_kind:5s} up {run['uplink_bytes']} B/round (payload {run['uplink_payload_bytes']}), "
                  f"down {run['downlink_bytes']} B/round; accuracy per round: {acc}")
    return fed


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

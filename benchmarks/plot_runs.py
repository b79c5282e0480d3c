"""Plot one metric per epoch of several training runs, from their Lightning CSV logs.

    python benchmarks/plot_runs.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--metric val_acc_mode] [--out FILE.png]

``RUN_DIR`` is a ``sbnn fit`` log folder (``.../logs/version_N``, holding ``metrics.csv``) or any
folder above one (the newest ``version_N`` below it is used). Each run's metric is read at its
epoch ends (the rows where the metric is set), so runs of different lengths share the epoch axis.
Needs the ``plot`` extra (``pip install 'sbnn[plot]'``); without it the values are printed only.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def metrics_file(run: Path) -> Path:
    """``run/metrics.csv``, or that of the newest ``version_N`` folder below ``run``."""
    if (run / "metrics.csv").is_file():
        return run / "metrics.csv"
    found = sorted(run.rglob("version_*/metrics.csv"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise SystemExit(f"plot_runs: no metrics.csv in {run} or below it; pass a sbnn fit log folder (logs/version_N)")
    return found[-1]


def read_metric(path: Path, metric: str) -> list[tuple[int, float]]:
    """``[(epoch, value)]`` of ``metric`` in a Lightning ``metrics.csv``, in file order."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        raise SystemExit(f"plot_runs: {path} has no column {metric!r}; columns: {', '.join(rows[0])}")
    return [(int(r["epoch"]), float(r[metric])) for r in rows if r.get(metric)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--metric", default="val_acc_mode")
    p.add_argument("--title", default=None)
    p.add_argument("--out", default=None, help="PNG to write (needs matplotlib)")
    args = p.parse_args()
    series = {}
    for spec in args.runs:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"plot_runs: {spec!r} is not LABEL=RUN_DIR")
        series[label] = read_metric(metrics_file(Path(folder)), args.metric)
    for label, points in series.items():
        print(f"{label}: " + ", ".join(f"{e}:{v:.4f}" for e, v in points))
    if args.out is None:
        return
    try:
        import matplotlib
    except ImportError:
        print("plot_runs: no plot written; pip install 'sbnn[plot]' for matplotlib")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    percent = 100.0 if "acc" in args.metric else 1.0  # Lightning logs accuracies as fractions
    for label, points in series.items():
        ax.plot([e + 1 for e, _ in points], [percent * v for _, v in points], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(args.metric + (" (%)" if "acc" in args.metric else ""))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if args.title:
        ax.set_title(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""NeuroBench's metrics beside the engine's statistics for an exported sbnn checkpoint.

    python benchmarks/neurobench_metrics.py CHECKPOINT [--config config.yaml] [--data randman]

The network must run through snnTorch's NIR import (zero reset, spike-count readout, no pooling;
see docs/interop.md). The data set's test split (the data module's defaults, as in the run's
config for Randman and Digits) runs through both; the script prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sbnn.export import export_checkpoint, load_graph  # noqa: E402
from sbnn.interop.neurobench import engine_statistics, neurobench_metrics  # noqa: E402
from sbnn.kernels.engine import Engine  # noqa: E402


def _test_split(name: str, config: str | None):
    import yaml

    from sbnn.data import DigitsDataModule, RandmanDataModule

    kwargs = {}
    if config:
        with open(config) as f:
            kwargs = (yaml.safe_load(f).get("data") or {}).get("init_args") or {}
    dm = {"randman": RandmanDataModule, "digits": DigitsDataModule}[name](**kwargs)
    dm.prepare_data()
    dm.setup("test")
    xs, ys = zip(*dm.test_dataloader())
    return torch.cat(xs, dim=1).numpy(), torch.cat(ys).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--config", default=None)
    p.add_argument("--data", default="randman", choices=("randman", "digits"))
    args = p.parse_args()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        graph = load_graph(export_checkpoint(args.checkpoint, Path(tmp) / "m.sbnn", config=args.config))
    x, y = _test_split(args.data, args.config)
    nb = neurobench_metrics(graph, x, y)
    ours = engine_statistics(graph, x)
    acc = float((Engine(graph).run(x).output.argmax(1) == y).mean())
    rows = [
        ("accuracy (test, `mode`)", f"{nb['ClassificationAccuracy']:.4f}", f"{acc:.4f}"),
        ("footprint / file size (B)", f"{nb['Footprint']:,}", f"{ours['file_bytes']:,}"),
        ("connection sparsity", f"{nb['ConnectionSparsity']:.3f}", "0 (±1 weights)"),
        ("activation sparsity", f"{nb['ActivationSparsity']:.4f}", f"{ours['activation_sparsity']:.4f}"),
        ("effective ACs / sample", f"{nb['SynapticOperations']['Effective_ACs']:.4g}", f"{ours['synops_per_sample']:.4g}"),
        ("effective MACs / sample", f"{nb['SynapticOperations']['Effective_MACs']:.4g}", "0 (binary input)"),
        ("dense synops / sample", f"{nb['SynapticOperations']['Dense']:.4g}", f"{ours['dense_synops_per_sample']:.4g}"),
        ("firing rate per LIF layer", "", ", ".join(f"{r:.4f}" for r in ours["firing_rates"])),
    ]
    print(f"{args.data}: {x.shape[1]} test samples, T = {x.shape[0]}, {ours['weights']:,} weights, threads = {os.environ['OMP_NUM_THREADS']}")
    print("| quantity | NeuroBench | sbnn engine |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    np.testing.assert_allclose(nb["ActivationSparsity"], ours["activation_sparsity"], atol=1e-12)
    np.testing.assert_allclose(nb["SynapticOperations"]["Effective_ACs"], ours["synops_per_sample"], atol=1e-9)


if __name__ == "__main__":
    main()

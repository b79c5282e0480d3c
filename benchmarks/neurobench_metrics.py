"""NeuroBench's metrics beside the engine's statistics for an exported sbnn checkpoint.

    python benchmarks/neurobench_metrics.py CHECKPOINT [--config config.yaml] [--data randman|digits|dvs_frames]
        [--root FRAME_FOLDER] [--cache-dir DIR] [--route direct|nir] [--batch-size 32]

The data set's test split runs through both NeuroBench (its own hooks, on the snnTorch network
of sbnn.interop.neurobench's ``route``; ``direct`` runs every sbnn network exactly) and the
event-driven engine; the script prints a Markdown table and checks that the quantities both
define agree. The split is built by the data module with the ``data.init_args`` of the run's
config (Randman, Digits: the module's defaults without a config); ``dvs_frames`` reads the test
split of a SpikingJelly frame folder through ``sbnn.data.DVSGestureFramesDataModule``
(``--root``/``--cache-dir`` override the config's ``root``/``cache_dir``). For example, a run of
recipes/dvs_gesture_frames.yaml:

    python benchmarks/neurobench_metrics.py runs/dvs_gesture_frames/logs/version_0/checkpoints/last.ckpt \\
        --config runs/dvs_gesture_frames/logs/version_0/config.yaml --data dvs_frames
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sbnn.export import export_checkpoint, load_graph  # noqa: E402
from sbnn.interop.neurobench import ROUTES, engine_statistics, neurobench_metrics  # noqa: E402
from sbnn.interop.nir import NIRConversionError  # noqa: E402

DATA = ("randman", "digits", "dvs_frames")


def _data_args(config: str | None) -> dict:
    import yaml

    if not config:
        return {}
    with open(config) as f:
        return dict((yaml.safe_load(f).get("data") or {}).get("init_args") or {})


def _test_split(name: str, config: str | None, root: str | None = None, cache_dir: str | None = None):
    """Time-major ``x`` ``[T, B, ...]`` and labels ``[B]`` of the test split."""
    from sbnn.data import DigitsDataModule, DVSGestureFramesDataModule, RandmanDataModule

    kwargs = _data_args(config)
    if name == "dvs_frames":
        if root is not None:
            kwargs["root"] = root
        if cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        if not kwargs.get("root"):
            raise ValueError("--data dvs_frames needs the frame folder: --root PATH or a --config whose data.init_args has root")
        dm = DVSGestureFramesDataModule(**kwargs)
    else:
        dm = {"randman": RandmanDataModule, "digits": DigitsDataModule}[name](**kwargs)
    dm.prepare_data()
    dm.setup("test")
    xs, ys = zip(*dm.test_dataloader())
    return torch.cat(xs, dim=1).numpy(), torch.cat(ys).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--config", default=None, help="the run's config.yaml (architecture and data.init_args)")
    p.add_argument("--data", default="randman", choices=DATA)
    p.add_argument("--root", default=None, help="dvs_frames: the SpikingJelly frame folder (overrides the config's)")
    p.add_argument("--cache-dir", default=None, help="dvs_frames: the processed-split cache folder (overrides the config's)")
    p.add_argument("--route", default="direct", choices=ROUTES, help="how the network reaches NeuroBench (docs/interop.md)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per NeuroBench batch and engine call")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be positive, got {args.batch_size}")
    import tempfile
    from pathlib import Path

    from sbnn.data import DataMissingError

    try:
        x, y = _test_split(args.data, args.config, args.root, args.cache_dir)  # data first: a bad path fails before any work
        with tempfile.TemporaryDirectory() as tmp:
            graph = load_graph(export_checkpoint(args.checkpoint, Path(tmp) / "m.sbnn", config=args.config))
    except (ValueError, DataMissingError) as err:
        raise SystemExit(f"neurobench_metrics: {err}") from None
    try:
        nb = neurobench_metrics(graph, x, y, route=args.route, batch_size=args.batch_size)
    except NIRConversionError as err:
        raise SystemExit(f"neurobench_metrics: {err}") from None
    ours = engine_statistics(graph, x, y, batch_size=args.batch_size)
    binary = bool(np.isin(x, (0, 1)).all())
    ops = nb["SynapticOperations"]
    rows = [
        ("accuracy (test, `mode`)", f"{nb['ClassificationAccuracy']:.4f}", f"{ours['accuracy']:.4f}"),
        ("footprint / file size (B)", f"{nb['Footprint']:,}", f"{ours['file_bytes']:,}"),
        ("connection sparsity", f"{nb['ConnectionSparsity']:.3f}", "0 (±1 weights)"),
        ("activation sparsity", f"{nb['ActivationSparsity']:.4f}", f"{ours['activation_sparsity']:.4f}"),
        ("effective ACs / sample", f"{ops['Effective_ACs']:.4g}", f"{ours['synops_per_sample']:.4g}"),
        ("effective MACs / sample", f"{ops['Effective_MACs']:.4g}", "0 (binary input)" if binary else "(counts: events)"),
        ("dense synops / sample", f"{ops['Dense']:.4g}", f"{ours['dense_synops_per_sample']:.4g}"),
        ("firing rate per LIF layer", "", ", ".join(f"{r:.4f}" for r in ours["firing_rates"])),
    ]
    print(
        f"{args.data}: {x.shape[1]} test samples, T = {x.shape[0]}, input {tuple(x.shape[2:])}, {ours['weights']:,} weights, "
        f"{graph.readout} readout, route = {args.route}, batch = {args.batch_size}, threads = {os.environ['OMP_NUM_THREADS']}"
    )
    print("| quantity | NeuroBench | sbnn engine |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    np.testing.assert_allclose(nb["ActivationSparsity"], ours["activation_sparsity"], atol=1e-9)
    np.testing.assert_allclose(ops["Dense"], ours["dense_synops_per_sample"], rtol=1e-12)
    if binary:  # count-valued input: NeuroBench counts the first layer as MACs, the engine each count as an event
        np.testing.assert_allclose(ops["Effective_ACs"], ours["synops_per_sample"], rtol=1e-12)


if __name__ == "__main__":
    main()

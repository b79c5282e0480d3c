"""``sbnn-run``: run an exported model on a dataset split with the event-driven engine.

Example::

    sbnn-run model.sbnn --data randman --data-arg n_channels=50 --data-arg n_steps=50 --split test

prints the accuracy, the throughput (samples/s, synaptic operations/s; timed after one untimed
warm-up call, which may compile the kernels) and each layer's activity.
``--data`` takes a short name from :data:`DATA_MODULES` or the import path of any
LightningDataModule whose loaders yield time-major ``(x [T, B, ...], y [B])`` batches of spikes
or counts (``pkg.module.ClassName``): new data modules plug in by path, or by adding a short name
here. Batches are loaded in the main process (``num_workers=0`` unless given), because Numba's
OpenMP threads are not fork-safe.

Exit status: 0 on success, 2 for a usage error (a bad option or data argument; one message, no
usage dump), 1 when the run fails (an unreadable model file, data that does not fit the model);
``--debug`` or ``SBNN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import sys
import time
from typing import Sequence

import numpy as np

from ._console import UsageError, console_main, help_options, readable_error
from .export import load

__all__ = ["DATA_MODULES", "main", "run", "resolve_data_module", "parse_data_args"]

PROG = "sbnn-run"

#: short names accepted by ``--data``
DATA_MODULES = {
    "randman": "sbnn.data.RandmanDataModule",
    "digits": "sbnn.data.DigitsDataModule",
}


def resolve_data_module(name: str) -> type:
    """The DataModule class for a short name or an import path ``pkg.module.ClassName``."""
    path = DATA_MODULES.get(name, name)
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise ValueError(f"--data: {name!r} is neither a known name ({', '.join(DATA_MODULES)}) nor an import path pkg.module.Class")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--data: cannot import {path!r} ({err})") from None
    return cls


def parse_data_args(items: Sequence[str]) -> dict:
    """``["key=value", ...]`` → dict; values are Python literals where they parse, else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--data-arg: expected key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


class _Parser(argparse.ArgumentParser):
    """An argparse parser that raises :class:`UsageError` (with a "did you mean") instead of exiting."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        raise UsageError(readable_error(message, help_options(self.format_help())))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run an exported SBNN (sbnn.export) on a dataset split.")
    p.add_argument("model", help="deployable model file written by sbnn.export.save")
    p.add_argument("--data", required=True, help=f"data module: {', '.join(DATA_MODULES)} or pkg.module.Class")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="data module argument (repeatable)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--weights", default="auto", choices=("auto", "packed", "int8"), help="kernel weight format (auto: int8 for layers up to 1 MiB, else packed)")
    p.add_argument("--threads", type=int, default=1, help="Numba threads (default 1)")
    p.add_argument("--binary", action="store_true", help="clamp input counts to 0/1 spikes")
    p.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sbnn-run`` console script; returns the exit status (0, 1 or 2)."""
    return console_main(PROG, run, argv, usage_hint=f"{PROG}: for the options run: {PROG} --help")


def run(argv: Sequence[str] | None = None) -> dict:
    """Run ``sbnn-run`` with ``argv``; returns the printed numbers as a dict.

    Raises:
        UsageError: a bad option, ``--data`` or ``--data-arg`` (before the model is loaded).
        SystemExit: with a message, when the model file cannot be read or the data does not fit it.
    """
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {args.limit}")
    if args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    try:
        kwargs = parse_data_args(args.data_arg)
        cls = resolve_data_module(args.data)
        kwargs.setdefault("num_workers", 0)
        dm = cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    try:
        engine = load(args.model, weights=args.weights, threads=args.threads)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"sbnn-run: {err}") from None
    dm.prepare_data()
    dm.setup("test" if args.split == "test" else "fit")
    loader = getattr(dm, f"{args.split}_dataloader")()
    shape = engine.graph.input_shape
    n_seen = correct = synops = events = 0
    seconds = 0.0
    layer_spikes: list[int] | None = None
    layer_units: list[int] = []
    n_steps = 0
    for x, y in loader:
        x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        if tuple(x.shape[2:]) not in (shape, (math.prod(shape),)):
            raise SystemExit(
                f"sbnn-run: the data gives samples of shape {tuple(x.shape[2:])} per step, the model takes {shape}; "
                "check --data-arg (e.g. the number of channels)"
            )
        if args.limit is not None:
            x, y = x[:, : args.limit - n_seen], y[: args.limit - n_seen]
        if args.binary:
            x = np.minimum(x, 1)
        if n_seen == 0:
            engine.run(x[:, :1])  # untimed warm-up: the first call may compile (or load) the kernels
        start = time.perf_counter()
        out = engine.run(x)
        seconds += time.perf_counter() - start
        pred = np.asarray(out.output).argmax(axis=1)
        correct += int((pred == np.asarray(y)).sum())
        n_seen += len(pred)
        n_steps = x.shape[0]
        synops += out.synops
        events += out.stats[0].input_events
        if layer_spikes is None:
            layer_spikes, layer_units = [0] * len(out.stats), [s.units for s in out.stats]
        layer_spikes = [a + s.output_spikes for a, s in zip(layer_spikes, out.stats)]
        if args.limit is not None and n_seen >= args.limit:
            break
    if n_seen == 0:
        raise SystemExit(f"sbnn-run: the {args.split} split is empty")
    result = {
        "samples": n_seen,
        "accuracy": correct / n_seen,
        "seconds": seconds,
        "samples_per_s": n_seen / seconds,
        "synops_per_s": synops / seconds,
        "input_events": events,
    }
    result["rates"] = [spk / (units * n_seen * n_steps) for spk, units in zip(layer_spikes, layer_units)]
    print(f"sbnn-run: {args.model} on {args.data} [{args.split}], {args.weights} weights, {args.threads} thread(s)")
    print(f"  accuracy      {100 * result['accuracy']:.2f} %  ({correct}/{n_seen})")
    print(f"  throughput    {result['samples_per_s']:.1f} samples/s  ({1e3 * seconds / n_seen:.3f} ms/sample)")
    print(f"  synaptic ops  {synops:,}  ({result['synops_per_s'] / 1e9:.3f} G/s)")
    for k, (node, rate, units) in enumerate(zip(engine.graph.nodes, result["rates"], layer_units)):
        readout = k == len(engine.graph.nodes) - 1 and engine.graph.readout == "membrane"
        activity = "membrane readout" if readout else f"firing rate {rate:.4f}"
        print(f"  layer {k} {type(node).__name__:<9} units {units:<6} {activity}")
    sys.stdout.flush()
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

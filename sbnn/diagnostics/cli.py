"""``sbnn-diagnose``: estimator bias–variance report against exact gradients, from flags or a config.

Examples::

    sbnn-diagnose --hidden [4,4] --estimators [st,iwst,agr,reinforce] --samples 2000 --out runs/diagnose
    sbnn-diagnose --config benchmarks/configs/diagnose_spiking.yaml

Prints the table, writes ``report.json`` and (with matplotlib, ``pip install 'sbnn[plot]'``)
``report.png`` under ``--out``. Exit status: 0 on success, 2 for a usage error (one message, no
usage dump), 1 when the report fails; ``--debug`` or ``SBNN_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from jsonargparse import ActionConfigFile, ArgumentParser

from .._console import UsageError, console_main, help_options, readable_error
from .report import DiagnoseConfig, format_table, plot_report, run_report, write_json

__all__ = ["main", "run", "build_parser"]

PROG = "sbnn-diagnose"


def build_parser() -> ArgumentParser:
    """The ``sbnn-diagnose`` parser; it raises ``argparse.ArgumentError`` rather than exiting."""
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_class_arguments(DiagnoseConfig, nested_key=None, as_group=False)
    parser.add_argument("--out", type=str, default="runs/diagnose", help="folder for report.json and report.png")
    parser.add_argument("--no_flow", action="store_true", help="skip the gradient-flow statistics")
    return parser


def run(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``sbnn-diagnose`` in-process; returns the report (the dict written to ``report.json``).

    Raises:
        UsageError: a value :meth:`DiagnoseConfig.validate` refuses (before any work).
        argparse.ArgumentError: the command line or the config file does not parse.
    """
    parser = build_parser()
    try:
        ns = parser.parse_args(None if args is None else list(args))
    except argparse.ArgumentError as err:
        raise argparse.ArgumentError(None, readable_error(str(err), help_options(parser.format_help()))) from err
    try:
        cfg = DiagnoseConfig(**{f.name: ns[f.name] for f in fields(DiagnoseConfig)})
        cfg.validate()
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from err
    result = run_report(cfg, flow=not ns.no_flow, log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    out = Path(ns.out)
    print(f"sbnn-diagnose: numbers in {write_json(result, out / 'report.json')}")
    try:
        print(f"sbnn-diagnose: plot in {plot_report(result, out / 'report.png')}")
    except ImportError:
        print("sbnn-diagnose: no plot: matplotlib is not installed (pip install 'sbnn[plot]')")
    return result


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of the ``sbnn-diagnose`` console script; returns the exit status (0, 1 or 2)."""
    return console_main(PROG, run, args, usage_hint=f"{PROG}: for the options run: {PROG} --help")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``sbnn-diagnose``: estimator bias–variance report against exact gradients, from flags or a config.

Examples::

    sbnn-diagnose --hidden [4,4] --estimators [st,iwst,agr,reinforce] --samples 2000 --out runs/diagnose
    sbnn-diagnose --config benchmarks/configs/diagnose_spiking.yaml

Prints the table, writes ``report.json`` and (with matplotlib, ``pip install 'sbnn[plot]'``)
``report.png`` under ``--out``.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from .report import DiagnoseConfig, format_table, plot_report, run_report, write_json

__all__ = ["main", "build_parser"]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sbnn-diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_class_arguments(DiagnoseConfig, nested_key=None, as_group=False)
    parser.add_argument("--out", type=str, default="runs/diagnose", help="folder for report.json and report.png")
    parser.add_argument("--no_flow", action="store_true", help="skip the gradient-flow statistics")
    return parser


def main(args: list[str] | None = None) -> dict:
    parser = build_parser()
    ns = parser.parse_args(args)
    try:
        cfg = DiagnoseConfig(**{f.name: ns[f.name] for f in fields(DiagnoseConfig)})
        cfg.validate()
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    result = run_report(cfg, flow=not ns.no_flow, log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    out = Path(ns.out)
    print(f"sbnn-diagnose: numbers in {write_json(result, out / 'report.json')}")
    try:
        print(f"sbnn-diagnose: plot in {plot_report(result, out / 'report.png')}")
    except ImportError:
        print("sbnn-diagnose: no plot: matplotlib is not installed (pip install 'sbnn[plot]')")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()

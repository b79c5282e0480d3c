"""The estimator × layer bias–variance report behind ``sbnn-diagnose`` (table, JSON, plot).

One report: for each noise family and seed, a small :class:`~sbnn.models.SpikingMLP` (float64,
scales calibrated on its batch) and a batch of random spike inputs with random labels; the
reference gradient is exact when the network can be enumerated, otherwise the mean of many
REINFORCE samples (unbiased; its own Monte Carlo error is included in ``bias_floor``); then every
estimator's single-sample gradients are scored per layer by :func:`.metrics.gradient_metrics`.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..functional.estimators import ESTIMATORS, Estimator, get_estimator
from ..models import CalibrationSettings, LayerSettings, NeuronSettings, SpikingMLP
from .exact import MAX_UNIT_STEPS, NotEnumerableError, check_enumerable, diagnostic_mode, exact_gradient
from .flow import FlowAccumulator
from .metrics import gradient_metrics
from .sampling import estimator_gradients, reinforce_gradients

__all__ = ["DiagnoseConfig", "parse_estimator", "run_report", "format_table", "write_json", "plot_report"]

REINFORCE = "reinforce"


@dataclass
class DiagnoseConfig:
    """What ``sbnn-diagnose`` measures (every field is a command-line flag of the same name)."""

    in_features: int = 8
    hidden: list[int] = field(default_factory=lambda: [4, 4])
    classes: int = 3
    steps: int = 1
    beta: float = 0.0
    reset_mechanism: str = "none"
    membrane_noise: str = "marginal"
    sigma0: float = 0.3
    noise: list[str] = field(default_factory=lambda: ["gaussian"])
    estimators: list[str] = field(default_factory=lambda: ["st", "iwst", "agr", "relaxed", "gumbel_rao", REINFORCE])
    samples: int = 2000
    reference_samples: int = 50000
    seeds: list[int] = field(default_factory=lambda: [0])
    batch: int = 16
    input_rate: float = 0.3
    hidden_gain: float = 1.0
    max_unit_steps: int = MAX_UNIT_STEPS

    def validate(self) -> None:
        positive = dict(in_features=self.in_features, classes=self.classes, steps=self.steps, samples=self.samples,
                        reference_samples=self.reference_samples, batch=self.batch)
        bad = {k: v for k, v in positive.items() if not (isinstance(v, int) and v >= 1)}
        if bad or not self.hidden or any(n < 1 for n in self.hidden):
            raise ValueError(f"sizes and counts must be positive integers (hidden non-empty); got {bad or {'hidden': self.hidden}}")
        if self.samples < 2:
            raise ValueError("samples must be at least 2 (a variance needs two samples)")
        if not 0.0 < self.input_rate <= 1.0:
            raise ValueError(f"input_rate must be in (0, 1], got {self.input_rate}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        for spec in self.estimators:
            parse_estimator(spec)


def parse_estimator(spec: str) -> Estimator | None:
    """``"agr"``, ``"iwst:p=0.3"``, ``"gumbel_rao:tau=0.5,k=4"`` or ``"reinforce"`` (returns ``None``)."""
    name, _, args = spec.partition(":")
    if name == REINFORCE:
        if args:
            raise ValueError("reinforce takes no hyper-parameters")
        return None
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid names are {sorted([*ESTIMATORS, REINFORCE])}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"estimator {spec!r}: hyper-parameters are written key=value, e.g. 'agr:tau=0.5'")
        kwargs[key.strip()] = int(value) if value.strip().isdigit() and key.strip() == "k" else float(value)
    return get_estimator(name, **kwargs)


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Parameter names by layer (``layers.0``, ``layers.1``, …, ``output``)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit(".", 1)[0], []).append(n)
    return groups


def _problem(cfg: DiagnoseConfig, noise: str, seed: int) -> tuple[SpikingMLP, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        neuron = NeuronSettings(
            beta=cfg.beta, reset_mechanism=cfg.reset_mechanism, membrane_noise=cfg.membrane_noise, sigma0=cfg.sigma0,
            noise=noise,
        )
        net = SpikingMLP(
            cfg.in_features, tuple(cfg.hidden), cfg.classes, binary_input=True, neuron=neuron,
            layer=LayerSettings(bias=True), calibration=CalibrationSettings(hidden_gain=cfg.hidden_gain),
        ).double()
        x = (torch.rand(cfg.steps, cfg.batch, cfg.in_features, generator=g, dtype=torch.float64) < cfg.input_rate).double()
        y = torch.randint(0, cfg.classes, (cfg.batch,), generator=g)
        net.calibrate(x)
    return net, x, y


def _reference(net, x, y, cfg: DiagnoseConfig, seed: int) -> tuple[dict[str, torch.Tensor], str, dict[str, float], int | None]:
    try:
        check_enumerable(net, x.shape[0], cfg.max_unit_steps)
    except NotEnumerableError:
        samples = reinforce_gradients(net, x, y, cfg.reference_samples, seed=10_000 + seed)
        ref = {k: v.mean(0) for k, v in samples.items()}
        groups = _groups(list(samples))
        var = {grp: float(sum(samples[n].flatten(1).var(0).sum() for n in names)) for grp, names in groups.items()}
        var["all"] = sum(var.values())
        return ref, f"reinforce({cfg.reference_samples})", var, cfg.reference_samples
    _, grads = exact_gradient(net, x, y, max_unit_steps=cfg.max_unit_steps)
    return grads, "exact", {}, None


def run_report(cfg: DiagnoseConfig, *, flow: bool = True, log=print) -> dict[str, Any]:
    """Measure every estimator of ``cfg`` against the reference; return the JSON-ready result."""
    cfg.validate()
    rows: list[dict[str, Any]] = []
    flows: list[dict[str, Any]] = []
    for noise in cfg.noise:
        for seed in cfg.seeds:
            net, x, y = _problem(cfg, noise, seed)
            ref, kind, ref_var, ref_n = _reference(net, x, y, cfg, seed)
            log(f"sbnn-diagnose: noise={noise} seed={seed} reference={kind}")
            groups = _groups(list(ref))
            groups["all"] = list(ref)
            if flow:
                acc = FlowAccumulator()
                acc.attach(net)
                with diagnostic_mode(net), torch.no_grad():
                    net(x)
                acc.update(net)
                for name, stats in acc.compute().items():
                    flows.append({"noise": noise, "seed": seed, "layer": name, **stats})
            for spec in cfg.estimators:
                est = parse_estimator(spec)
                if est is None:
                    samples = reinforce_gradients(net, x, y, cfg.samples, seed=seed)
                else:
                    samples = estimator_gradients(net, x, y, est, cfg.samples, seed=seed)
                for group, names in groups.items():
                    reference = torch.cat([ref[n].flatten() for n in names])
                    if float(reference.abs().sum()) == 0.0:
                        continue
                    m = gradient_metrics(
                        torch.cat([samples[n].flatten(1) for n in names], 1), reference,
                        reference_variance=ref_var.get(group, 0.0), reference_samples=ref_n,
                    )
                    rows.append({"noise": noise, "seed": seed, "estimator": spec, "layer": group, "reference": kind, **m.to_dict()})
    return {"config": asdict(cfg), "rows": rows, "flow": flows}


def _mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the metrics over seeds, per (noise, estimator, layer)."""
    keys = ("bias", "bias_floor", "variance", "cosine", "mean_cosine")
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        k = (r["noise"], r["estimator"], r["layer"])
        acc = out.setdefault(k, {"noise": k[0], "estimator": k[1], "layer": k[2], "reference": r["reference"], "n": 0,
                                 **{m: 0.0 for m in keys}, "rmse": {}})
        acc["n"] += 1
        for m in keys:
            acc[m] += r[m]
        for c, v in r["rmse"].items():
            acc["rmse"][c] = acc["rmse"].get(c, 0.0) + v
    for acc in out.values():
        for m in keys:
            acc[m] /= acc["n"]
        acc["rmse"] = {c: v / acc["n"] for c, v in acc["rmse"].items()}
    return list(out.values())


def format_table(result: dict[str, Any]) -> str:
    """The report as a fixed-width text table (metrics averaged over seeds)."""
    lines = []
    header = f"{'noise':9} {'estimator':16} {'layer':9} {'bias':>7} {'±floor':>7} {'variance':>9} {'cos':>6} {'cos(E)':>7}  reference"
    for r in _mean_rows(result["rows"]):
        if not lines:
            lines += [header, "-" * len(header)]
        lines.append(
            f"{r['noise']:9} {r['estimator']:16} {r['layer']:9} {r['bias']:7.3f} {r['bias_floor']:7.3f} "
            f"{r['variance']:9.3g} {r['cosine']:6.3f} {r['mean_cosine']:7.3f}  {r['reference']}"
        )
    if result.get("flow"):
        lines += ["", f"{'noise':9} {'neurons':12} {'vanishing':>9} {'rate':>6}  (share of unit-steps with p(θ)·w < 1e-3)"]
        for f in result["flow"]:
            lines.append(f"{f['noise']:9} {f['layer']:12} {f['vanishing']:9.3f} {f['rate']:6.3f}")
    return "\n".join(lines)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The temporary file is created with mode 0666 less the process umask (0644 under the usual
    umask 022), as ``open`` and ``torch.save`` create files; ``tempfile.mkstemp`` would make it 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON to ``path`` (atomically, mode 0666 less the umask); returns ``path``."""
    path = Path(path)
    _atomic_write(path, json.dumps(result, indent=1, allow_nan=True).encode())
    return path


def plot_report(result: dict[str, Any], path: str | Path) -> Path:
    """Bias vs variance per estimator and layer, and RMSE vs averaged samples, as one PNG.

    Raises:
        ImportError: without matplotlib (``pip install 'sbnn[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _mean_rows(result["rows"])
    noises = sorted({r["noise"] for r in rows})
    estimators = list(dict.fromkeys(r["estimator"] for r in rows))
    layers = sorted({r["layer"] for r in rows if r["layer"] != "all"})
    colors = {e: plt.cm.tab10(i % 10) for i, e in enumerate(estimators)}
    markers = {layer: "osD^v<>p*h"[i % 10] for i, layer in enumerate(layers)}
    fig, axes = plt.subplots(len(noises), 2, figsize=(11, 4.2 * len(noises)), squeeze=False)
    for row_axes, noise in zip(axes, noises):
        ax_bv, ax_rmse = row_axes
        for r in rows:
            if r["noise"] != noise:
                continue
            if r["layer"] == "all":
                counts = sorted(int(c) for c in r["rmse"])
                ax_rmse.loglog(counts, [r["rmse"][str(c)] for c in counts], "-o", ms=3, color=colors[r["estimator"]], label=r["estimator"])
            else:
                ax_bv.scatter(max(r["variance"], 1e-6), max(r["bias"], 1e-4), color=colors[r["estimator"]], marker=markers[r["layer"]], s=40)
        for e in estimators:
            ax_bv.scatter([], [], color=colors[e], label=e)
        for layer in layers:
            ax_bv.scatter([], [], color="grey", marker=markers[layer], label=layer)
        ax_bv.set(xscale="log", yscale="log", xlabel="relative variance tr Var(ĝ)/‖g‖²", ylabel="relative bias ‖Eĝ − g‖/‖g‖",
                  title=f"{noise} noise: bias vs variance per layer")
        ax_bv.legend(fontsize=7, ncol=2)
        ax_rmse.set(xlabel="samples averaged", ylabel="relative RMSE", title=f"{noise} noise: RMSE vs samples (all parameters)")
        ax_rmse.legend(fontsize=7)
        ax_rmse.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    path = Path(path)
    _atomic_write(path, buffer.getvalue())
    return path

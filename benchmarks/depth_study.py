"""Depth study: do deep normalisation-free residual SBNNs train? (docs/design.md §1.6)

One command, one printed table, a JSON file and a PNG plot::

    python benchmarks/depth_study.py                 # full study (13 min on one CPU thread, shared box)
    python benchmarks/depth_study.py --quick         # smoke configuration (~1.5 min)

Data (offline, fixed): scikit-learn's 8×8 digits, rate-coded over ``T = 4`` steps
(``DigitsDataModule(encoding="rate")``: 1257 train / 180 val / 360 test, data seed 42), as
``[T, B, 1, 8, 8]`` binary frames (``--upsample k`` enlarges them by nearest upsampling).

Network, the same shape for every arm: ``SpikingResNet`` layout with ``depth = 2 + 6k`` (stem,
three stages of ``k`` residual blocks ``x + γ·F(x)`` with membrane shortcut and strided-conv
downsampling, γ0 = 0.2, a final LIF, the readout over every position of the last 2×2 feature map
(``--readout-pool flatten``; ``avg`` is global average pooling), time-averaged leaky membrane
readout), widths ``--widths`` (8, 16, 32), LIF ``β = 0.9``, threshold 1, subtract reset, no biases,
no normalisation. Initial scales: the LRT-moment calibration of :mod:`sbnn.models.blocks` on the first
training batch, with the initial logit std ``--readout-std`` 0.5 (at the library's default 3 the
deep conv nets first silence their last neuron to cut the logit noise and then stall; see
``docs/depth_study.md``).

Arms:

(a) ``sbnn``: :class:`sbnn.models.SpikingResNet` with ``--sbnn-estimator`` (default ``agr``,
    τ = 0.5), KL at ``--kl-weight`` (0.1) and the auxiliary loss at ``--aux-weight`` through
    ``--aux-fn module:function`` (default weight 0: no auxiliary loss).
(b) ``st``: the same network with the plain ``st`` estimator and ``kl_weight = 0``.
(c) ``float``: the same topology in float weights with ``torch.nn.Conv2d``/``nn.Linear`` and
    ``snntorch.Leaky`` neurons (default ATan surrogate gradient), residual ``x + γ·F(x)`` with a
    learnable ``γ`` (0.2), no normalisation; the SBNN calibration targets applied to the float
    weights (``--float-init calibrated``, the default) or PyTorch's default init (``default``).

All three are trained by the same :class:`sbnn.tasks.SpikingClassificationTask` and Lightning
``Trainer`` (Adam + cosine; SBNN: λ lr 0.1, other parameters 1e-3, the last 2 epochs also train
the ``mode`` network; float: lr ``--float-lr``, no mode fine-tune). SBNN nets are calibrated on the
first training batch before the initial gradient measurement.

Measured per arm and depth: per-layer gradient norms on a fixed batch of ``--grad-batch``
training examples at initialisation and after training (SBNN: ``‖∂NLL/∂λ‖`` averaged over
``--grad-draws`` noise draws; float: ``‖∂NLL/∂W‖``), reported raw and per weight
(``‖g‖/√n``); the spread ``max/min`` over the residual-branch layers; per-epoch training NLL;
test accuracy (SBNN: deployed ``mode`` network and LRT average of 10 passes; float:
deterministic network); wall time. ``torch.set_num_threads(1)``, ``torch.set_flush_denormal(True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ARMS = ("sbnn", "st", "float")
BETA = 0.9
THRESHOLD = 1.0
HIDDEN_GAIN = 2.0  # the models' CalibrationSettings defaults
READOUT_STD = 3.0
GAMMA_INIT = 0.2
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def make_datamodule(n_steps: int, batch_size: int, upsample: int):
    """Rate-coded digits as ``[T, B, 1, 8·upsample, 8·upsample]`` frames (nearest upsampling)."""
    from torch.utils.data import TensorDataset

    from sbnn.data import DigitsDataModule

    class DigitFramesDataModule(DigitsDataModule):
        def setup(self, stage: str | None = None) -> None:
            if self.train_set is not None and self.train_set.tensors[0].dim() == 5:
                return
            super().setup(stage)
            for split in ("train", "val", "test"):
                spikes, labels = getattr(self, f"{split}_set").tensors  # [S, T, 64]
                frames = spikes.reshape(*spikes.shape[:2], 1, 8, 8)
                frames = frames.repeat_interleave(upsample, -1).repeat_interleave(upsample, -2)
                setattr(self, f"{split}_set", TensorDataset(frames, labels))

    dm = DigitFramesDataModule(encoding="rate", n_steps=n_steps, batch_size=batch_size)
    dm.setup()
    return dm


def split_tensors(dm, split: str, limit: int | None = None) -> tuple[Tensor, Tensor]:
    """A split (or its first ``limit`` examples) as one time-major batch."""
    x, y = getattr(dm, f"{split}_set").tensors
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x.transpose(0, 1).contiguous(), y


# --------------------------------------------------------------------------------------------
# arm (c): the same topology in float weights with snnTorch neurons
# --------------------------------------------------------------------------------------------
def run_leaky(lif: nn.Module, cur: Tensor) -> Tensor:
    """Spikes of an ``snntorch.Leaky`` over a time-major current ``[T, B, ...]``."""
    mem = lif.init_leaky()
    out = []
    for c in cur.unbind(0):
        spk, mem = lif(c, mem)
        out.append(spk)
    return torch.stack(out)


def _conv(layer: nn.Conv2d, x: Tensor) -> Tensor:
    t, b = x.shape[:2]
    y = layer(x.reshape(t * b, *x.shape[2:]))
    return y.reshape(t, b, *y.shape[1:])


def _rms_scale_(layer: nn.Module, out: Tensor, target: float, beta: float | None) -> None:
    """Multiply ``layer.weight`` so that ``out`` (its output, or its free membrane) has RMS ``target``."""
    from sbnn.functional.neurons import leaky_integrate

    stat = leaky_integrate(out, beta) if beta is not None else out
    rms = float(stat.square().mean().sqrt())
    if rms > 1e-12:
        layer.weight.mul_(target / rms)


class FloatBlock(nn.Module):
    """``x + γ·conv2(LIF(conv1(LIF(x))))`` with a strided-conv shortcut on the input spikes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        import snntorch

        self.lif_in = snntorch.Leaky(beta=BETA, threshold=THRESHOLD)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.lif_mid = snntorch.Leaky(beta=BETA, threshold=THRESHOLD)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False) if (c_in != c_out or stride != 1) else None
        self.gamma = nn.Parameter(torch.tensor(GAMMA_INIT))

    def forward(self, x: Tensor, calibrate: bool = False) -> tuple[Tensor, list[Tensor]]:
        s_in = run_leaky(self.lif_in, x)
        if calibrate:
            _rms_scale_(self.conv1, _conv(self.conv1, s_in), HIDDEN_GAIN * THRESHOLD, BETA)
        s_mid = run_leaky(self.lif_mid, _conv(self.conv1, s_in))
        stream_rms = float(x.detach().square().mean().sqrt())
        if calibrate:
            _rms_scale_(self.conv2, _conv(self.conv2, s_mid), stream_rms, None)
            if self.proj is not None:
                _rms_scale_(self.proj, _conv(self.proj, s_in), stream_rms, None)
        short = x if self.proj is None else _conv(self.proj, s_in)
        return short + self.gamma * _conv(self.conv2, s_mid), [s_in, s_mid]


class FloatResNet(nn.Module):
    """Arm (c): :class:`sbnn.models.SpikingResNet`'s topology with float convolutions and snnTorch LIFs."""

    def __init__(
        self, in_channels: int, num_classes: int, depth: int, widths: tuple[int, ...], init: str,
        size: int, readout_pool: str, readout_std: float,
    ) -> None:
        super().__init__()
        import snntorch

        per_stage = (depth - 2) // (2 * len(widths))
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, prev = [], widths[0]
        for stage, width in enumerate(widths):
            for k in range(per_stage):
                blocks.append(FloatBlock(prev, width, 2 if (stage > 0 and k == 0) else 1))
                prev = width
        self.blocks = nn.ModuleList(blocks)
        self.neuron = snntorch.Leaky(beta=BETA, threshold=THRESHOLD)
        final = size
        for _ in widths[1:]:
            final = -(-final // 2)
        self.readout_pool, self.readout_std = readout_pool, readout_std
        self.output = nn.Linear(widths[-1] * (final * final if readout_pool == "flatten" else 1), num_classes, bias=False)
        self.init = init

    def _run(self, x: Tensor, calibrate: bool) -> tuple[Tensor, list[Tensor]]:
        from sbnn.functional.neurons import time_average_weights

        if calibrate:
            _rms_scale_(self.stem, _conv(self.stem, x), HIDDEN_GAIN * THRESHOLD, BETA)
        stream, spikes = _conv(self.stem, x), []
        for block in self.blocks:
            stream, s = block(stream, calibrate)
            spikes.extend(s)
        feats = run_leaky(self.neuron, stream)
        spikes.append(feats)
        pooled = feats.flatten(-3) if self.readout_pool == "flatten" else feats.mean(dim=(-2, -1))
        h = self.output(pooled)
        if calibrate:
            w = time_average_weights(h.shape[0], BETA, like=h)
            self.output.weight.mul_(self.readout_std / float(torch.einsum("t,tbk->bk", w, h).std()))
            h = self.output(pooled)
        w = time_average_weights(h.shape[0], BETA, like=h)
        return torch.einsum("t,tbk->bk", w, h), spikes

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self._run(x, False)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, False)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> list[float]:
        """The SBNN calibration targets applied to the float weights (only with ``init='calibrated'``)."""
        if self.init != "calibrated":
            return []
        _, spikes = self._run(x, True)
        return [float(s.mean()) for s in spikes]


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def gradient_profile(model: nn.Module, x: Tensor, y: Tensor, draws: int) -> dict[str, dict[str, float]]:
    """Per-layer ``{"norm", "rms", "branch"}``: ``‖∂NLL/∂w‖``, ``‖∂NLL/∂w‖/√n``, on a residual branch."""
    from sbnn.models import lambda_gradient_norms

    if any(n.endswith(".lam") for n, _ in model.named_parameters()):
        norms = lambda_gradient_norms(model, x, y, n_draws=draws)
        sizes = {n: m.lam.numel() for n, m in model.named_modules() if n in norms}
    else:
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [m.weight for m in layers.values()])
        norms = {n: g.norm() for n, g in zip(layers, grads)}
        sizes = {n: m.weight.numel() for n, m in layers.items()}
    return {
        n: {"norm": float(v), "rms": float(v) / math.sqrt(sizes[n]), "branch": (".layer" in n or ".conv" in n)}
        for n, v in norms.items()
    }


def spread(profile: dict[str, dict[str, float]], key: str = "rms", branch_only: bool = True) -> float:
    """``max/min`` of a gradient profile (``inf`` if some layer has a zero gradient)."""
    values = [p[key] for p in profile.values() if p["branch"] or not branch_only]
    return max(values) / min(values) if min(values) > 0 else math.inf


class EpochLosses(L.Callback):
    """Lightning callback: mean ``train_nll`` and ``train_loss`` of every epoch."""

    def __init__(self) -> None:
        self.nll: list[float] = []
        self.loss: list[float] = []
        self._nll: list[float] = []
        self._loss: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self._nll.append(float(metrics["train_nll"]))
        self._loss.append(float(metrics["train_loss"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.nll.append(sum(self._nll) / len(self._nll))
        self.loss.append(sum(self._loss) / len(self._loss))
        self._nll, self._loss = [], []


def load_aux_fn(spec: str | None) -> Callable | None:
    """``"module:function"`` → the function (the auxiliary-loss hook ``aux_fn(network) -> Tensor``)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--aux-fn must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


def build(arm: str, depth: int, args: argparse.Namespace) -> nn.Module:
    from sbnn.models import CalibrationSettings, NeuronSettings, SpikingResNet

    widths = tuple(args.widths)
    size = 8 * args.upsample
    if arm == "float":
        return FloatResNet(1, 10, depth, widths, args.float_init, size, args.readout_pool, args.readout_std)
    common = dict(depth=depth, widths=widths, input_size=(size, size), gamma_init=GAMMA_INIT,
                  readout_pool=args.readout_pool, calibration=CalibrationSettings(readout_std=args.readout_std))
    if arm == "sbnn":
        neuron = NeuronSettings(estimator=args.sbnn_estimator, estimator_kwargs=json.loads(args.sbnn_estimator_kwargs))
        return SpikingResNet(1, 10, neuron=neuron, **common)
    return SpikingResNet(1, 10, neuron=NeuronSettings(estimator="st"), **common)


def run_one(arm: str, depth: int, args: argparse.Namespace, dm) -> dict[str, Any]:
    from sbnn.tasks import SpikingClassificationTask
    from sbnn.modes import evaluation, lrt_predict

    L.seed_everything(args.seed, verbose=False)
    net = build(arm, depth, args)
    x_cal, _ = next(iter(dm.train_dataloader()))
    rates = net.calibrate(x_cal)  # the float arm's targets are its constructor's, the SBNN arms' their calibration
    x_g, y_g = split_tensors(dm, "train", args.grad_batch)
    grad_init = gradient_profile(net, x_g, y_g, args.grad_draws)
    task_kwargs: dict[str, Any] = dict(calibrate=False, mc_samples=10)
    if arm == "float":
        task_kwargs.update(lr=args.float_lr, kl_weight=0.0, mode_finetune_epochs=0)
    elif arm == "sbnn":
        aux_fn = load_aux_fn(args.aux_fn)
        task_kwargs.update(kl_weight=args.kl_weight, aux_weight=args.aux_weight, aux_fn=aux_fn,
                           mode_finetune_epochs=args.mode_finetune_epochs)
    else:
        task_kwargs.update(kl_weight=0.0, mode_finetune_epochs=args.mode_finetune_epochs)
    task = SpikingClassificationTask(net, **task_kwargs)
    losses = EpochLosses()
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses], num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(task, datamodule=dm)
    train_s = time.perf_counter() - start
    grad_trained = gradient_profile(net, x_g, y_g, args.grad_draws)
    x_te, y_te = split_tensors(dm, "test")
    with torch.no_grad(), evaluation(net, "mode"):
        acc_mode = float((net(x_te).argmax(-1) == y_te).float().mean())
    acc_lrt = float((lrt_predict(net, x_te, 10).argmax(-1) == y_te).float().mean()) if arm != "float" else acc_mode
    return {
        "arm": arm, "depth": depth, "init_rates": rates, "grad_init": grad_init, "grad_trained": grad_trained,
        "spread_init": spread(grad_init), "spread_trained": spread(grad_trained),
        "spread_init_all_raw": spread(grad_init, "norm", branch_only=False),
        "train_nll": losses.nll, "train_loss": losses.loss, "test_acc_mode": acc_mode, "test_acc_lrt": acc_lrt,
        "train_seconds": train_s, "gamma": [float(b.gamma.detach()) for b in net.blocks],
    }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
LABELS = {"sbnn": "(a) SBNN", "st": "(b) st, no KL", "float": "(c) float snnTorch"}
COLORS = {"sbnn": "tab:blue", "st": "tab:orange", "float": "tab:green"}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({r["depth"] for r in results})
    deepest = depths[-1]
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for ax, key, title in ((axes[0, 0], "grad_init", "at initialisation"), (axes[0, 1], "grad_trained", "after training")):
        for r in results:
            if r["depth"] != deepest:
                continue
            branch = [p["rms"] for p in r[key].values() if p["branch"]]
            ax.semilogy(range(1, len(branch) + 1), [v / branch[0] for v in branch], "o-", ms=3,
                        color=COLORS[r["arm"]], label=LABELS[r["arm"]])
        ax.set(title=f"depth {deepest}: residual-layer gradient per weight, {title}",
               xlabel="residual-branch layer (input → output)", ylabel="‖∇‖/√n, relative to layer 1")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[0, 2]
    for arm in ARMS:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["depth"])
        if rs:
            ax.semilogy([r["depth"] for r in rs], [r["spread_init"] for r in rs], "o-", color=COLORS[arm],
                        label=f"{LABELS[arm]}, init")
            ax.semilogy([r["depth"] for r in rs], [r["spread_trained"] for r in rs], "s--", color=COLORS[arm],
                        label=f"{LABELS[arm]}, trained")
    ax.axhline(10, color="k", lw=0.8, ls=":")
    ax.set(title="spread max/min of residual-layer ‖∇‖/√n", xlabel="depth", ylabel="max / min")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[1, 0]
    for r in results:
        ax.plot(range(1, len(r["train_nll"]) + 1), r["train_nll"], styles[depths.index(r["depth"]) % 4],
                color=COLORS[r["arm"]], label=f"{LABELS[r['arm']]}, depth {r['depth']}")
    ax.set(title="training NLL per epoch", xlabel="epoch", ylabel="NLL")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, alpha=0.3)
    ax = axes[1, 1]
    for arm in ARMS:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["depth"])
        if rs:
            ax.plot([r["depth"] for r in rs], [100 * r["test_acc_mode"] for r in rs], "o-", color=COLORS[arm],
                    label=f"{LABELS[arm]}" + (" mode" if arm != "float" else ""))
            if arm != "float":
                ax.plot([r["depth"] for r in rs], [100 * r["test_acc_lrt"] for r in rs], "s--", color=COLORS[arm],
                        label=f"{LABELS[arm]} LRT10")
    ax.set(title="test accuracy", xlabel="depth", ylabel="%")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    ax = axes[1, 2]
    for r in results:
        if r["depth"] != deepest:
            continue
        allp = list(r["grad_init"].values())
        ax.semilogy(range(1, len(allp) + 1), [p["norm"] for p in allp], "o-", ms=3, color=COLORS[r["arm"]],
                    label=LABELS[r["arm"]])
    ax.set(title=f"depth {deepest}: raw ‖∇‖ of every layer at init (stem … readout)", xlabel="layer",
           ylabel="‖∇‖ (λ for SBNN, W for float)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        fig.savefig(tmp.name, dpi=110)
    os.replace(tmp.name, path)
    plt.close(fig)


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'arm':20s} {'depth':>5s} {'spread@init':>11s} {'spread@end':>10s} {'NLL ep1':>8s} {'NLL end':>8s}"
            f" {'test mode':>9s} {'test LRT':>8s} {'s/epoch':>8s}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{LABELS[r['arm']]:20s} {r['depth']:5d} {r['spread_init']:11.1f} {r['spread_trained']:10.1f} "
            f"{r['train_nll'][0]:8.3f} {r['train_nll'][-1]:8.3f} {100 * r['test_acc_mode']:9.1f} "
            f"{100 * r['test_acc_lrt']:8.1f} {r['train_seconds'] / max(len(r['train_nll']), 1):8.2f}"
        )
    return "\n".join(lines)


def write_json(obj: Any, path: Path) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as tmp:
        json.dump(obj, tmp, indent=1)
    os.replace(tmp.name, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[8, 14, 20, 32])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--n-steps", type=int, default=4)
    p.add_argument("--upsample", type=int, default=1, help="nearest upsampling of the 8×8 digits")
    p.add_argument("--readout-pool", choices=("avg", "flatten"), default="flatten")
    p.add_argument("--readout-std", type=float, default=0.5, help="calibration target of the initial logit std")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sbnn-estimator", default="agr")
    p.add_argument("--sbnn-estimator-kwargs", default='{"tau": 0.5}')
    p.add_argument("--kl-weight", type=float, default=0.1)
    p.add_argument("--aux-weight", type=float, default=0.0)
    p.add_argument("--aux-fn", default=None, help="auxiliary-loss hook as module:function (needed when --aux-weight > 0)")
    p.add_argument("--mode-finetune-epochs", type=int, default=2)
    p.add_argument("--float-lr", type=float, default=1e-2)
    p.add_argument("--float-init", choices=("default", "calibrated"), default="calibrated")
    p.add_argument("--grad-batch", type=int, default=128)
    p.add_argument("--grad-draws", type=int, default=4)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "depth_study.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "figures" / "depth_study.png")
    p.add_argument("--quick", action="store_true", help="smoke configuration: depths 8 20, 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.depths, args.epochs, args.grad_draws, args.mode_finetune_epochs = [8, 20], 2, 2, 1
    if args.aux_weight > 0 and not args.aux_fn:
        p.error("--aux-weight > 0 needs --aux-fn module:function")
    for d in args.depths:
        if d < 2 + 2 * len(args.widths) or (d - 2) % (2 * len(args.widths)):
            p.error(f"depth {d} does not fit {len(args.widths)} stages: use 2 + {2 * len(args.widths)}·k")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LightningCLI.*")
    dm = make_datamodule(args.n_steps, args.batch_size, args.upsample)
    results = []
    start = time.perf_counter()
    for depth in args.depths:
        for arm in args.arms:
            r = run_one(arm, depth, args, dm)
            results.append(r)
            print(f"[{time.perf_counter() - start:6.0f} s] {LABELS[arm]:20s} depth {depth:3d}: spread@init "
                  f"{r['spread_init']:.1f}, NLL {r['train_nll'][0]:.3f} → {r['train_nll'][-1]:.3f}, "
                  f"test {100 * r['test_acc_mode']:.1f} %", flush=True)
    print()
    print(table(results))
    meta = {
        "command": "python benchmarks/depth_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__, "python": platform.python_version(), "wall_seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json({"meta": meta, "results": results}, args.out)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.plot)
    print(f"\nwrote {args.out} and {args.plot} ({meta['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()

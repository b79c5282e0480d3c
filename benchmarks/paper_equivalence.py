"""sbnn's paper configuration against the SBNN authors' own code, on the same weights, inputs and noise.

Walker et al. 2025 (arXiv 2505.17962) published their training scripts (``train_shd.py``,
``train_dvs.py``). Given a copy of that repository, this script builds their SHD network
(``CustomNet``, recurrent 700 → 256 → 256 → 20 by default) and their DVS Gesture ResNet (smaller
by default), builds sbnn's paper configuration of each (:func:`paper_shd_net`,
:func:`paper_dvs_net`), copies their parameters into it (:func:`copy_shd`, :func:`copy_dvs`), runs
both on one input, makes sbnn use the very noise draws theirs made (their module's ``torch.normal``
is recorded during their forward pass and replayed through :func:`sbnn.neurons.replay_noise`), and
prints the largest absolute difference of the logits, of the loss (cross-entropy plus the
signal-to-noise term at their ``λ``) and of every parameter gradient, in float32 and float64.

Their module is imported by path (its ``__main__`` block does not run) with its module-level
settings set as their ``__main__`` sets them; the data modules it imports are replaced by empty
stand-ins (no data is read). In float64 their activation's ``.float()`` cast of the spikes is
replaced by a cast to the input's dtype (otherwise their float32 spikes meet float64 weights in a
matmul and torch refuses); nothing else of theirs is changed.

Usage::

    python benchmarks/paper_equivalence.py --authors-repo /path/to/bayesian_snn
    python benchmarks/paper_equivalence.py --authors-repo PATH --model shd --batch 8 --T 100
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import sys
import types
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn.models import LayerSettings, NeuronSettings, SpikingRecurrentNet, SpikingResNet
from sbnn.neurons import replay_noise
from sbnn.training.snr import SNRLoss

LAMBDA = {"shd": 1e-6, "dvs": 1e-10}  # their λ_reg (train_shd.py, train_dvs.py)
SIGMA_B_RHO = {"shd": -2.0, "dvs": -1.0}  # their initial ρ_b (σ_b = softplus(ρ_b))
EPS_MIN = 1e-10  # sbnn's variance floor ε_min² = 1e-20: below float64 resolution next to σ_b² ≈ 0.016


# --------------------------------------------------------------------------------------------
# their code
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stand_ins() -> Iterator[None]:
    """Empty modules for the data loaders and torchvision their scripts import (no data is read)."""
    names = {}
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.datasets = types.ModuleType("torchvision.datasets")
        tv.datasets.CIFAR10 = None
        names.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.datasets": tv.datasets})
    for data in ("shd_data", "dvs_data"):
        stub = types.ModuleType(data)
        stub.get_shd_datasets = stub.DVSGestureChain = None
        names[data] = stub
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def load_authors(repo: Path, script: str, **settings) -> types.ModuleType:
    """Import ``repo/script`` by path (its ``__main__`` block does not run) and set its module globals."""
    path = repo / script
    if not path.is_file():
        raise SystemExit(f"--authors-repo: no {script} in {repo}; pass the folder of a copy of the authors' repository")
    source = path.read_text()
    if 'if __name__ == "__main__":' not in source:
        raise SystemExit(f"{path}: no __main__ guard found; importing it would start a training run")
    with _stand_ins():
        spec = importlib.util.spec_from_file_location(f"authors_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    module.scale_style, module.model_style, module.device, module.delta_t = "learnable", "bayesian", torch.device("cpu"), 1
    for name, value in settings.items():
        setattr(module, name, value)
    return module


class _RecordingTorch:
    """Stands in for ``torch`` in their module's namespace: records every ``torch.normal`` draw."""

    def __init__(self) -> None:
        self.draws: list[Tensor] = []

    def normal(self, *args, **kwargs) -> Tensor:
        out = torch.normal(*args, **kwargs)
        self.draws.append(out.detach().clone())
        return out

    def __getattr__(self, name: str):
        return getattr(torch, name)


def run_authors(module: types.ModuleType, model: nn.Module, x: Tensor) -> tuple[Tensor, list, list, list[Tensor]]:
    """Their forward pass on ``x`` (their layout), returning ``(output, reg_mems, reg_sigscale, noise draws)``."""
    recorder = _RecordingTorch()
    saved_torch, saved_fwd = module.torch, module.activation_fwd
    module.torch = recorder
    if x.dtype != torch.float32:
        # their activation casts spikes with .float(); the same step in the input's dtype
        module.activation_fwd = lambda u, noise: (u + noise > 0).to(u.dtype)
    try:
        out, reg_mems, reg_sig = model(x)
    finally:
        module.torch, module.activation_fwd = saved_torch, saved_fwd
    return out, reg_mems, reg_sig, recorder.draws


def authors_reg(reg_mems: list[Tensor], reg_sig: list[Tensor]) -> Tensor:
    """Their signal-to-noise term (the loop of their train_model): Σ mean_batch Σ_units (m/s)²."""
    total = 0
    for m, s in zip(reg_mems, reg_sig):
        ratio = (s > 0) * (m / torch.clamp(s, min=1e-6))
        total = total + torch.mean(torch.sum(ratio**2, dim=tuple(range(1, ratio.dim()))))
    return total


def _beta(module: types.ModuleType, model: nn.Module) -> float:
    tau = F.softplus(model.tau_mem_transform[0])
    return float(torch.exp(-module.delta_t / tau).flatten()[0])


# --------------------------------------------------------------------------------------------
# sbnn's paper configuration
# --------------------------------------------------------------------------------------------
def paper_neuron(beta: float, sigma_b: float) -> NeuronSettings:
    """The paper's neuron: accumulated-variance membrane, learned σ_b, st, leaked reset with gradient."""
    return NeuronSettings(
        beta=beta, threshold=1.0, sigma0=0.0, eps_min=EPS_MIN, membrane_noise="marginal", sigma_b=sigma_b,
        learn_sigma_b=True, estimator="st", detach_reset=False, reset_leak=True,
    )


def paper_layer(steps: int, **extra) -> LayerSettings:
    """The paper's layers: Gaussian weights, detached variance input, per-step gain on the mean, deterministic readout."""
    return LayerSettings(
        weights="gaussian", variance_input_grad=False, time_affine_steps=steps, time_affine_variance=False,
        readout_noise=False, **extra,
    )


def paper_shd_net(n_in: int, hidden: list[int], n_out: int, steps: int, beta: float = math.exp(-1 / 10.0000454)) -> SpikingRecurrentNet:
    """sbnn's paper configuration of the authors' SHD network (recurrent hidden layers)."""
    return SpikingRecurrentNet(
        n_in, hidden, n_out, recurrent=True, binary_input=True, recurrent_spike_grad=1.0, readout_beta=0.0,
        neuron=paper_neuron(beta, F.softplus(torch.tensor(SIGMA_B_RHO["shd"])).item()),
        layer=paper_layer(steps, time_affine_recurrent="shared", recurrent_self_variance=True),
    )


def paper_dvs_net(widths: tuple[int, ...], blocks: int, n_out: int, steps: int, beta: float) -> SpikingResNet:
    """sbnn's paper configuration of the authors' DVS Gesture ResNet (spike shortcut, pooling downsample)."""
    return SpikingResNet(
        2, n_out, depth=2 + 2 * len(widths) * blocks, widths=widths, input_size=(32, 32), shortcut="spike",
        downsample="pool", gamma_init=1.0, readout_beta=0.0,
        neuron=paper_neuron(beta, F.softplus(torch.tensor(SIGMA_B_RHO["dvs"])).item()),
        layer=paper_layer(steps, readout_bias=True),
    )


def paper_snr(setup: str) -> SNRLoss:
    """Their signal-to-noise term: on SHD the step's current over the step's noise (σ_b² counted twice, as
    their code does), on DVS Gesture the membrane mean over the accumulated noise; summed as theirs."""
    if setup == "shd":
        return SNRLoss("sum", signal="current", sigma_b_weight=2.0)
    return SNRLoss("sum")


# --------------------------------------------------------------------------------------------
# parameter maps: (sbnn name, their name, their tensor -> sbnn layout) and gradient pairs
# --------------------------------------------------------------------------------------------
Pair = tuple[str, str, Callable[[nn.Module], Tensor]]


def _gain(theirs_list: nn.ParameterList, start: int, steps: int, grad: bool = False) -> Tensor:
    items = [theirs_list[start + t] for t in range(steps)]
    return torch.stack([(p.grad if grad else p).reshape(-1) for p in items])


def shd_pairs(theirs: nn.Module, hidden: list[int], steps: int) -> list[tuple[str, str, Callable[[bool], Tensor]]]:
    """``(sbnn parameter, their parameter, value-or-gradient in sbnn's layout)`` for the SHD network."""

    def get(obj, grad):
        return obj.grad if grad else obj.data

    pairs = []
    for i in range(len(hidden)):
        pairs += [
            (f"layers.{i}.weight", f"weights.{i}", lambda g, i=i: get(theirs.weights[i], g).t()),
            (f"layers.{i}.sigma_rho", f"scales.{i}", lambda g, i=i: get(theirs.scales[i], g).reshape(1)),
            (f"recurrent.{i}.weight", f"recurrent_weights.{i}", lambda g, i=i: get(theirs.recurrent_weights[i], g).t()),
            (f"recurrent.{i}.sigma_rho", f"scales_rec.{i}", lambda g, i=i: get(theirs.scales_rec[i], g).reshape(1)),
            (f"neurons.{i}.sigma_b_rho", f"scales_biases.{i}", lambda g, i=i: get(theirs.scales_biases[i], g).reshape(())),
            (f"layers.{i}.time_affine.gain", f"scalers[{i}·T:{i + 1}·T]", lambda g, i=i: _gain(theirs.scalers, i * steps, steps, g)),
            (f"layers.{i}.time_affine.bias", f"biases[{i}·T:{i + 1}·T]", lambda g, i=i: _gain(theirs.biases, i * steps, steps, g)),
        ]
    pairs.append(("output.weight", "output_weights", lambda g: get(theirs.output_weights, g).t()))
    return pairs


def dvs_pairs(theirs: nn.Module, n_layers: int, steps: int) -> list[tuple[str, str, Callable[[bool], Tensor]]]:
    """``(sbnn parameter, their parameter, value-or-gradient)`` for the DVS ResNet: conv ``j`` is the stem
    (``j = 0``) or block ``(j − 1) // 2``'s ``layer1``/``layer2``; its neuron the stem's or ``lif_mid``/``lif_out``."""

    def get(obj, grad):
        return obj.grad if grad else obj.data

    pairs = []
    for j in range(n_layers):
        if j == 0:
            layer, neuron = "stem", "neuron"
        else:
            k, second = (j - 1) // 2, (j - 1) % 2
            layer = f"blocks.{k}.layer{second + 1}"
            neuron = f"blocks.{k}.lif_{'out' if second else 'mid'}"
        pairs += [
            (f"{layer}.weight", f"conv_layers.{j}.weight", lambda g, j=j: get(theirs.conv_layers[j].weight, g)),
            (f"{layer}.sigma_rho", f"scales.{j}", lambda g, j=j: get(theirs.scales[j], g).reshape(1)),
            (f"{neuron}.sigma_b_rho", f"scales_biases.{j}", lambda g, j=j: get(theirs.scales_biases[j], g).reshape(())),
            (f"{layer}.time_affine.gain", f"scalers[{j}·T:{j + 1}·T]", lambda g, j=j: _gain(theirs.scalers, j * steps, steps, g)),
            (f"{layer}.time_affine.bias", f"biases[{j}·T:{j + 1}·T]", lambda g, j=j: _gain(theirs.biases, j * steps, steps, g)),
        ]
    pairs += [
        ("output.weight", "fc2.weight", lambda g: get(theirs.fc2.weight, g)),
        ("output.bias", "fc2.bias", lambda g: get(theirs.fc2.bias, g)),
    ]
    return pairs


@torch.no_grad()
def copy_params(net: nn.Module, pairs) -> None:
    """Copy their parameters into sbnn's (every pair of the map)."""
    params = dict(net.named_parameters())
    for ours, _, theirs in pairs:
        params[ours].copy_(theirs(False))


# --------------------------------------------------------------------------------------------
# one comparison
# --------------------------------------------------------------------------------------------
def compare(name: str, theirs: nn.Module, module, net: nn.Module, pairs, x_theirs: Tensor, x_ours: Tensor,
            y: Tensor, neuron_names: list[str], lam: float, aux: SNRLoss, rows: list) -> None:
    """Run both on the same input and noise; append ``(what, max |Δ|, max |value|)`` rows."""
    out_t, reg_mems, reg_sig, draws = run_authors(module, theirs, x_theirs)
    ce_t = F.cross_entropy(out_t, y)
    reg_t = lam * authors_reg(reg_mems, reg_sig)

    n_layers = len(neuron_names)
    per_layer = {n: torch.stack(draws[j::n_layers]) for j, n in enumerate(neuron_names)}  # their order: t outer, layer inner
    aux.attach(net)
    with replay_noise(net, per_layer) as used:
        out_o, spikes = net.forward_with_spikes(x_ours)
    rates = ", ".join(f"{float(s.detach().mean()):.3f}" for s in spikes)
    rows.append((name, f"(hidden firing rates, sbnn: {rates}; noise draws replayed: {len(draws)})", math.nan, math.nan))
    if not all(r.exhausted for r in used.values()):
        raise RuntimeError("sbnn used fewer noise draws than the authors' forward made: the layer maps disagree")
    ce_o = F.cross_entropy(out_o, y)
    reg_o = lam * aux(net)
    aux.detach()

    def row(what: str, a: Tensor, b: Tensor) -> None:
        rows.append((name, what, float((a.detach() - b.detach()).abs().max()), float(b.detach().abs().max())))

    row("logits", out_o, out_t)
    row("cross-entropy", ce_o, ce_t)
    row("λ·L_snr (signal-to-noise term)", reg_o, reg_t)
    row("loss = cross-entropy + λ·L_snr", ce_o + reg_o, ce_t + reg_t)
    params = dict(net.named_parameters())
    ours = [params[p[0]] for p in pairs]
    mine = [p for n, p in params.items() if n not in {q[0] for q in pairs}]
    for label, loss_o, loss_t in (("cross-entropy", ce_o, ce_t), ("loss", ce_o + reg_o, ce_t + reg_t)):
        theirs.zero_grad(set_to_none=True)
        loss_t.backward(retain_graph=True)
        grads = torch.autograd.grad(loss_o, ours + mine, retain_graph=True, allow_unused=True)
        for (o_name, t_name, get), g in zip(pairs, grads):
            g_t = get(True)
            g = torch.zeros_like(g_t) if g is None else g
            diff = float((g - g_t).abs().max())
            rows.append((name, f"∂{label}/∂{o_name} ({t_name})", diff, float(g_t.abs().max())))
        for p, g in zip(mine, grads[len(ours):]):
            n = next(k for k, v in params.items() if v is p)
            rows.append((name, f"(sbnn only) ∂{label}/∂{n}: max |grad| {'none' if g is None else f'{float(g.abs().max()):.3g}'}", math.nan, math.nan))


def build_shd(args, dtype: torch.dtype, rows: list) -> None:
    hidden = [args.hidden] * 2
    module = load_authors(args.authors_repo, "train_shd.py", time_steps=args.T, hidden_sizes=hidden)
    torch.manual_seed(args.seed)
    theirs = module.CustomNet(input_size=args.inputs, hidden_sizes=hidden, output_size=20).to(dtype)
    theirs.masks = [m.to(dtype) for m in theirs.masks]
    theirs.thresholds = [m.to(dtype) for m in theirs.thresholds]
    theirs.tau_mem_transform = [m.to(dtype) for m in theirs.tau_mem_transform]
    # move the gains and biases off their initial 1 and 0 so that the map is tested, not the defaults
    with torch.no_grad():
        for p in list(theirs.scalers) + list(theirs.biases):
            p.add_(0.1 * torch.randn_like(p))
        for p in list(theirs.weights) + list(theirs.recurrent_weights):
            p.mul_(args.weight_scale)
    net = paper_shd_net(args.inputs, hidden, 20, args.T).to(dtype)
    pairs = shd_pairs(theirs, hidden, args.T)
    copy_params(net, pairs)
    beta = _beta(module, theirs)
    for lif in net.neurons:
        lif.beta.fill_(beta)
    x = (torch.rand(args.batch, args.T, args.inputs, dtype=dtype) < args.rate).to(dtype)
    y = torch.randint(0, 20, (args.batch,))
    names = [f"neurons.{i}" for i in range(len(hidden))]
    compare(f"SHD {args.inputs}-{args.hidden}-{args.hidden}-20 T={args.T} B={args.batch} {str(dtype)[6:]}",
            theirs, module, net, pairs, x, x.transpose(0, 1).contiguous(), y, names, LAMBDA["shd"], paper_snr("shd"), rows)


def build_dvs(args, dtype: torch.dtype, rows: list) -> None:
    widths, blocks = tuple(args.dvs_widths), args.dvs_blocks
    conv_params = [(widths[0], 3, 1, 1)]
    for s, w in enumerate(widths):
        for k in range(blocks):
            conv_params += [(w, 3, 2 if (s > 0 and k == 0) else 1, 1), (w, 3, 1, 1)]
    module = load_authors(
        args.authors_repo, "train_dvs.py", time_steps=args.dvs_T, num_blocks=blocks, conv_params=conv_params,
    )
    torch.manual_seed(args.seed)
    theirs = module.CustomNet(input_channels=2, conv_params=conv_params, output_size=11).to(dtype)
    theirs.thresholds = [m.to(dtype) for m in theirs.thresholds]
    theirs.tau_mem_transform = [m.to(dtype) for m in theirs.tau_mem_transform]
    with torch.no_grad():
        for p in list(theirs.scalers) + list(theirs.biases):
            p.add_(0.1 * torch.randn_like(p))
        for conv in theirs.conv_layers:
            conv.weight.mul_(args.weight_scale)
    beta = _beta(module, theirs)
    net = paper_dvs_net(widths, blocks, 11, args.dvs_T, beta).to(dtype)
    pairs = dvs_pairs(theirs, len(conv_params), args.dvs_T)
    copy_params(net, pairs)
    names = ["neuron"] + [f"blocks.{k}.lif_{w}" for k in range(len(widths) * blocks) for w in ("mid", "out")]
    for n in names:
        net.get_submodule(n).beta.fill_(beta)
    x = torch.rand(args.dvs_batch, args.dvs_T, 2, 32, 32, dtype=dtype).mul(2.0).floor()  # event counts 0/1
    y = torch.randint(0, 11, (args.dvs_batch,))
    compare(f"DVS {len(conv_params)} convs {widths} T={args.dvs_T} B={args.dvs_batch} {str(dtype)[6:]}",
            theirs, module, net, pairs, x, x.transpose(0, 1).contiguous(), y, names, LAMBDA["dvs"], paper_snr("dvs"), rows)


def summary(rows: list) -> None:
    """One line per run: logits, losses and the largest difference over every mapped gradient."""
    print("\n| run | logits | cross-entropy | λ·L_snr | loss | ∂cross-entropy (all params) | ∂loss (all params) |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == name and not math.isnan(r[2])]
        get = {r[1]: r[2] for r in mine}
        g_ce = max(r[2] for r in mine if r[1].startswith("∂cross-entropy/"))
        g_all = max(r[2] for r in mine if r[1].startswith("∂loss/"))
        print(f"| {name} | {get['logits']:.1e} | {get['cross-entropy']:.1e} | {get['λ·L_snr (signal-to-noise term)']:.1e} "
              f"| {get['loss = cross-entropy + λ·L_snr']:.1e} | {g_ce:.1e} | {g_all:.1e} |")


def print_rows(rows: list) -> None:
    summary(rows)
    current = None
    for name, what, diff, scale in rows:
        if name != current:
            print(f"\n### {name}\n\n| quantity | max abs diff | max abs value |\n|---|---|---|")
            current = name
        if math.isnan(diff):
            print(f"| {what} | | |")
        else:
            print(f"| {what} | {diff:.2e} | {scale:.2e} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--authors-repo", type=Path, required=True, help="folder of a copy of the authors' repository")
    ap.add_argument("--model", choices=("shd", "dvs", "both"), default="both")
    ap.add_argument("--dtypes", nargs="+", choices=("float32", "float64"), default=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=8, help="SHD batch")
    ap.add_argument("--T", type=int, default=100, help="SHD time steps")
    ap.add_argument("--inputs", type=int, default=700)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rate", type=float, default=0.03, help="SHD input spike probability")
    ap.add_argument("--dvs-T", type=int, default=6)
    ap.add_argument("--dvs-batch", type=int, default=2)
    ap.add_argument("--dvs-widths", type=int, nargs=3, default=[8, 16, 32])
    ap.add_argument("--dvs-blocks", type=int, default=1, help="blocks per stage (theirs: 3)")
    ap.add_argument("--weight-scale", type=float, default=1.0,
                    help="multiply their initial hidden weights by this before the copy (more spikes, resets and recurrence)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows: list = []
    default = torch.get_default_dtype()
    for name in args.dtypes:
        dtype = getattr(torch, name)
        torch.set_default_dtype(dtype)  # their code creates its constants in the default dtype
        try:
            if args.model in ("shd", "both"):
                build_shd(args, dtype, rows)
            if args.model in ("dvs", "both"):
                build_dvs(args, dtype, rows)
        finally:
            torch.set_default_dtype(default)
    print(f"torch {torch.__version__}, 1 thread; command: python benchmarks/paper_equivalence.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    print_rows(rows)


if __name__ == "__main__":
    main()

"""Does each recipe's network train as well as a plain feed-forward one? Checked on built-in data.

A recipe's network is only as good as its structure: a recurrent layer whose gradient explodes,
a residual stack that falls silent or a convolution stack that starves the readout would hide
behind a real-data number that nobody can reproduce here. This script builds the network of each
recipe from its YAML (its structure and neuron, layer and calibration settings; input and output
sizes adapted to the data), trains it beside a reference network on built-in data of the same
structure, and reports the test accuracy of the deterministic (``mode``) network:

============================ =================================== =====================================
recipe                       built-in data                       reference network
============================ =================================== =====================================
``shd.yaml`` (recurrent)     Randman spike trains ``[T, B, N]``  the same network, ``recurrent=False``
``shd_resnet.yaml``          Randman spike trains                ``SpikingMLP``, one hidden layer of
(residual MLP)                                                   the residual width
``dvs_gesture_frames.yaml``  digits as rate-coded 8×8 frames     ``SpikingMLP`` on the flattened frames,
(conv)                       ``[T, B, 1, 8, 8]``                 one hidden layer of the recipe's
                                                                 ``fc`` width
============================ =================================== =====================================

Both networks get the recipe's neuron, layer and calibration settings, data, epochs and seeds, so
that they differ in structure alone (as the recurrent network and its feed-forward twin do),
trained by full-precision surrogate gradients (``adam``; both networks then keep the library's
``λ`` initialisation, see :func:`networks`) and by the SBNN method with the recipe's own
``lam_lr``, ``kl_weight`` and ``mode`` fine-tune. ``--reference-defaults`` gives the reference the
library's default layer and calibration settings instead: what the recipe's settings cost a
one-layer network. The check passes when the recipe's network is within
``--margin`` (1 point) of the reference, or above it, averaged over the seeds.

Usage (1 thread; about 1–2 minutes per run on a quiet core, 12 runs per recipe at 3 seeds)::

    OMP_NUM_THREADS=1 python benchmarks/recipe_networks.py --epochs 30 --seeds 0 1 2
    python benchmarks/recipe_networks.py --recipes shd --methods adam --seeds 0   # one quick check
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]

RECIPES = ("shd", "shd_resnet", "dvs_gesture_frames")
METHODS = ("adam", "sbnn")


class Frames(nn.Module):
    """Reshape flat inputs ``[T, B, C·H·W]`` into frames ``[T, B, C, H, W]`` for a convolutional network."""

    def __init__(self, network: nn.Module, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.network, self.shape = network, shape

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x.reshape(*x.shape[:2], *self.shape))

    def calibrate(self, x: Tensor) -> Any:
        return self.network.calibrate(x.reshape(*x.shape[:2], *self.shape))


def recipe_config(name: str) -> dict[str, Any]:
    with open(ROOT / "recipes" / f"{name}.yaml") as f:
        return yaml.safe_load(f)


def networks(
    name: str, input_size: int, num_classes: int, method: str = "sbnn", reference_defaults: bool = False
) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module]]:
    """Builders of (the recipe's network, the reference network) for data of ``input_size`` features.

    The reference gets the recipe's ``neuron``, ``layer`` and ``calibration`` settings (with
    ``reference_defaults``: the recipe's ``neuron`` settings and the library's defaults for the
    others). For ``method="adam"`` the recipe's ``layer.lam_std`` is left out of both: it sets the
    spread of the Bernoulli posterior's ``λ``, which full-precision training would take as its
    real weights (``lam_std: 2`` gives them 4× the second moment of the ±1 weights the calibration
    sets ``α`` for).
    """
    from sbnn.export import network_from_spec
    from sbnn.models import SpikingMLP

    spec = copy.deepcopy(recipe_config(name)["model"]["init_args"]["network"])
    args = spec.setdefault("init_args", {})
    if method == "adam" and isinstance(args.get("layer"), dict):
        args["layer"] = {k: v for k, v in args["layer"].items() if k != "lam_std"}
    args["num_classes"] = num_classes
    where = f"recipes/{name}.yaml: network"
    common = {k: args[k] for k in (("neuron",) if reference_defaults else ("neuron", "layer", "calibration")) if k in args}
    if name == "shd":
        args["in_features"] = input_size
        reference = copy.deepcopy(spec)
        reference["init_args"]["recurrent"] = False
        return (lambda: network_from_spec(spec, where)), (lambda: network_from_spec(reference, where + " (feed-forward)"))
    if name == "shd_resnet":
        args["in_features"] = input_size
        width = args.get("width", 128)
        return (lambda: network_from_spec(spec, where)), (
            lambda: SpikingMLP(input_size, (width,), num_classes, binary_input=True, **_settings(common))
        )
    if name == "dvs_gesture_frames":
        side = int(round(input_size**0.5))
        if side * side != input_size:
            raise ValueError(f"{name}: {input_size} input features are not a square frame")
        args.update(in_channels=1, input_size=side)
        hidden = (args.get("fc") or [64])[-1]
        return (lambda: Frames(network_from_spec(spec, where), (1, side, side))), (
            lambda: SpikingMLP(input_size, (hidden,), num_classes, **_settings(common))
        )
    raise ValueError(f"unknown recipe {name!r}; choose from {RECIPES}")


def _settings(common: dict[str, Any]) -> dict[str, Any]:
    """The reference's ``neuron``/``layer``/``calibration`` keyword arguments from the recipe's dicts."""
    from sbnn.models import CalibrationSettings, LayerSettings, NeuronSettings

    kinds = {"neuron": NeuronSettings, "layer": LayerSettings, "calibration": CalibrationSettings}
    return {key: kinds[key](**value) for key, value in common.items()}


def datamodule(name: str):
    from sbnn.data import DigitsDataModule, RandmanDataModule

    dm = DigitsDataModule(encoding="rate", n_steps=20) if name == "dvs_gesture_frames" else RandmanDataModule(seed=42)
    dm.setup()
    return dm


def method_for(name: str, method: str):
    from sbnn.training import make_method

    if method == "adam":
        return make_method("adam")
    task = recipe_config(name)["model"]["init_args"]
    return make_method(
        "sbnn",
        lam_lr=task.get("lam_lr", 0.1),
        lr=task.get("lr", 1e-3),
        kl_weight=task.get("kl_weight", 0.1),
        finetune_epochs=task.get("mode_finetune_epochs", 3),
    )


def train_one(build: Callable[[], nn.Module], recipe: str, method_name: str, dm, seed: int, epochs: int) -> tuple[float, float]:
    """Test accuracy of the ``mode`` network and the training seconds of one run."""
    from sbnn.data import time_major_collate
    from sbnn.training import accuracy, fit, predict_samples

    torch.manual_seed(seed)
    net = build()
    method = method_for(recipe, method_name)
    loader = dm.train_dataloader()
    method.setup(net, dm.n_train, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.calibrate(next(iter(loader))[0])
    start = time.perf_counter()
    fit(net, method, loader, epochs, setup=False)
    seconds = time.perf_counter() - start
    xt, yt = time_major_collate([dm.test_set[i] for i in range(len(dm.test_set))])
    acc = float(accuracy(predict_samples(net, method, xt, "mode")[0].softmax(-1), yt))
    return acc, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--margin", type=float, default=1.0, help="points the recipe's network may trail the reference")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--reference-defaults", action="store_true",
                   help="the reference keeps the library's default layer and calibration settings")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    rows, failed = [], []
    print("| recipe | method | recipe's network % | reference % | difference | s/run (recipe, ref.) | check |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        dm = datamodule(recipe)
        for method in args.methods:
            build, build_ref = networks(recipe, dm.input_size, dm.num_classes, method, args.reference_defaults)
            ours = [train_one(build, recipe, method, dm, s, args.epochs) for s in args.seeds]
            ref = [train_one(build_ref, recipe, method, dm, s, args.epochs) for s in args.seeds]
            a = 100 * sum(r[0] for r in ours) / len(ours)
            b = 100 * sum(r[0] for r in ref) / len(ref)
            ok = a >= b - args.margin
            failed += [] if ok else [f"{recipe}/{method}"]
            t_a = sum(r[1] for r in ours) / len(ours)
            t_b = sum(r[1] for r in ref) / len(ref)
            print(f"| {recipe} | {method} | {a:.1f} | {b:.1f} | {a - b:+.1f} | {t_a:.0f}, {t_b:.0f} | {'pass' if ok else 'FAIL'} |", flush=True)
            rows.append({"recipe": recipe, "method": method, "seeds": args.seeds, "epochs": args.epochs,
                         "recipe_acc": [r[0] for r in ours], "reference_acc": [r[0] for r in ref],
                         "recipe_seconds": [r[1] for r in ours], "reference_seconds": [r[1] for r in ref], "pass": ok,
                         "reference_settings": "library defaults" if args.reference_defaults else "the recipe's"})
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    if failed:
        print(f"trailing the reference by more than {args.margin} points: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

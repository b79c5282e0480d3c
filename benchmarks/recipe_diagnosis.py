"""Watch one recipe network's SBNN training on built-in data, epoch by epoch.

Trains the network of ``recipes/<recipe>.yaml`` (or its reference, ``--network reference``) as
``benchmarks/recipe_networks.py`` does (same data, builder, calibration and SBNN method), with
recipe settings overridden from the command line, and prints one JSON line per epoch (epoch 0:
after calibration, before any step):

- ``test_mode``/``train_mode``, ``test_sample``/``train_sample``: accuracy of the deterministic
  (``sign(λ)``) network and of one noisy LRT pass, on the test set and 300 training examples;
- ``rates_mode``/``rates_sample``: firing rate of every hidden neuron layer, in forward order;
- ``logit_std_mode``/``logit_std_sample``: mean over test examples of the logits' std over classes;
- ``gamma``: residual gains ``γ`` (residual networks); ``absm``: mean ``|m| = |tanh λ|`` and
  ``alpha``: scale ``α`` of every Bernoulli layer; ``gradnorm``: ``‖∂NLL/∂λ‖`` per layer
  (:func:`sbnn.models.lambda_gradient_norms`, 2 noise draws on 64 training examples).

Usage (1 thread)::

    python benchmarks/recipe_diagnosis.py --recipe shd_resnet --epochs 10
    python benchmarks/recipe_diagnosis.py --recipe shd_resnet --set kl_weight=0.01 --set network.layer.lam_std=2.0
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

HERE = Path(__file__).resolve().parent


def _recipe_networks():
    spec = importlib.util.spec_from_file_location("recipe_networks", HERE / "recipe_networks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_override(task: dict[str, Any], item: str) -> None:
    """Apply ``key=value`` to the recipe's ``model.init_args``; ``network.a.b=v`` reaches the network's init_args.

    The value is read as YAML (``2.0`` a float, ``true`` a bool).
    """
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. kl_weight=0.01 or network.layer.lam_std=2.0")
    key, value = item.split("=", 1)
    path = key.split(".")
    where = task
    if path[0] == "network":
        where, path = task["network"].setdefault("init_args", {}), path[1:]
    if not path or not all(path):
        raise ValueError(f"--set {item!r}: empty key")
    for part in path[:-1]:
        where = where.setdefault(part, {})
    where[path[-1]] = yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="shd_resnet", choices=("shd", "shd_resnet", "dvs_gesture_frames"))
    p.add_argument("--network", default="recipe", choices=("recipe", "reference"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe setting")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be >= 1, got {args.epochs}")
    rn = _recipe_networks()
    cfg = rn.recipe_config(args.recipe)
    for item in args.set:
        try:
            apply_override(cfg["model"]["init_args"], item)
        except ValueError as err:
            p.error(str(err))
    rn.recipe_config = lambda name: cfg  # the builders and the method read the overridden recipe

    from sbnn.data import time_major_collate
    from sbnn.layers import BernoulliLayer
    from sbnn.models import lambda_gradient_norms
    from sbnn.modes import evaluation

    torch.set_num_threads(1)
    dm = rn.datamodule(args.recipe)
    build, build_ref = rn.networks(args.recipe, dm.input_size, dm.num_classes)
    torch.manual_seed(args.seed)
    net = build() if args.network == "recipe" else build_ref()
    method = rn.method_for(args.recipe, "sbnn")
    loader = dm.train_dataloader()
    method.setup(net, dm.n_train, args.epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.calibrate(next(iter(loader))[0])
    x_test, y_test = time_major_collate([dm.test_set[i] for i in range(len(dm.test_set))])
    x_train, y_train = time_major_collate([dm.train_set[i] for i in range(min(300, len(dm.train_set)))])
    inner = getattr(net, "network", net)
    layers = {n: m for n, m in inner.named_modules() if isinstance(m, BernoulliLayer)}

    def report(epoch: int, train_loss: float | None) -> None:
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        with torch.no_grad():
            for mode in ("mode", "sample"):
                with evaluation(net, mode):
                    logits, spikes = inner.forward_with_spikes(x_test.reshape(*x_test.shape[:2], *inner.input_shape()))
                    logits_train = net(x_train)
                row[f"test_{mode}"] = round(float((logits.argmax(-1) == y_test).float().mean()), 4)
                row[f"train_{mode}"] = round(float((logits_train.argmax(-1) == y_train).float().mean()), 4)
                row[f"rates_{mode}"] = [round(float(s.mean()), 4) for s in spikes]
                row[f"logit_std_{mode}"] = round(float(logits.std(-1).mean()), 3)
        row["gamma"] = [round(float(b.gamma.detach()), 4) for b in getattr(inner, "blocks", [])]
        row["absm"] = {n: round(float(torch.tanh(m.lam.detach()).abs().mean()), 4) for n, m in layers.items()}
        row["alpha"] = {n: round(float(m.scale.detach().mean()), 4) for n, m in layers.items()}
        norms = lambda_gradient_norms(net, x_train[:, :64], y_train[:64], n_draws=2)
        row["gradnorm"] = {n: round(float(v), 5) for n, v in norms.items()}
        print(json.dumps(row), flush=True)

    report(0, None)
    for epoch in range(args.epochs):
        net.train()
        total, count = 0.0, 0
        for x, y in loader:
            loss = method.train_step(net, F.cross_entropy, x, y)
            total, count = total + float(loss) * len(y), count + len(y)
        method.epoch_end(epoch)
        report(epoch + 1, round(total / count, 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())

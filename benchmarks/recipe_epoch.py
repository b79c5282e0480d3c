"""CPU time per training epoch of the event-data recipes, measured on generated data of the real shapes.

It needs no download of the real SHD and DVS Gesture files: it writes fixtures in the real
on-disk format (``sbnn.data._fixtures``) with realistic event counts, runs the recipe through the
``sbnn`` CLI for ``--batches`` training batches (after one warm-up batch), and reports the mean
time per batch split into data loading and the training step. The epoch estimate multiplies by
the number of training batches of the real data set (``--train-size`` examples after the
validation split) and adds the validation pass measured the same way.

    OMP_NUM_THREADS=1 nice python benchmarks/recipe_epoch.py --recipe shd
    OMP_NUM_THREADS=1 nice python benchmarks/recipe_epoch.py --recipe dvs_gesture

Per-sample framing (tonic ToFrame) happens in the first epoch only; later epochs read
DiskCachedDataset's cache. Both are reported.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from sbnn.cli import run_cli
from sbnn.data._fixtures import write_dvs_gesture, write_shd

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# training recordings after the recipes' 10 % validation split (SHD ≈ 8 150 train recordings,
# DVS Gesture ≈ 1 080, per the data sets' papers / tonic's files)
TRAIN_SIZE = {"shd": 7340, "dvs_gesture": 970}
VAL_SIZE = {"shd": 815, "dvs_gesture": 108}


class Timer(L.Callback):
    def __init__(self) -> None:
        self.load, self.step, self.val = [], [], []
        self._t = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = time.perf_counter()
        self.load.append(now - self._t)
        self._t = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self.step.append(now - self._t)
        self._t = now

    def on_validation_epoch_start(self, trainer, pl_module):
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val.append(time.perf_counter() - self._v)


def run(recipe: str, batches: int, root: Path, out: Path, epochs: int) -> Timer:
    timer = Timer()
    import sbnn.cli as cli_module

    original = cli_module.SBNNCLI.before_fit

    def before_fit(self):
        original(self)
        self.trainer.callbacks.append(timer)

    cli_module.SBNNCLI.before_fit = before_fit
    try:
        run_cli([
            "fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--data.root", str(root),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(epochs),
            "--trainer.limit_train_batches", str(batches + 1), "--trainer.limit_val_batches", "4",
            "--trainer.limit_test_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--model.init_args.mc_samples", "2", "--model.init_args.mode_finetune_epochs", "0",
        ])
    finally:
        cli_module.SBNNCLI.before_fit = original
    return timer


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["shd", "dvs_gesture"], required=True)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--shd-spikes", type=int, nargs=2, default=[4000, 10000], help="spikes per SHD recording")
    parser.add_argument("--dvs-events", type=int, default=100_000, help="events per DVS Gesture recording")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batch = 32 if args.recipe == "shd" else 16
        n = (args.batches + 2) * batch * 10 // 9 + batch * 4 + 8
        if args.recipe == "shd":
            root = write_shd(tmp / "data", n_train=n, n_test=batch, spikes=tuple(args.shd_spikes))
        else:
            users = max(10, math.ceil(n / 11))
            root = write_dvs_gesture(tmp / "data", n_users_train=users, n_users_test=10, n_events=args.dvs_events)
        # epoch 0 frames and caches; epoch 1 reads the cache
        timer = run(args.recipe, args.batches, root, tmp / "runs", epochs=2)
    k = args.batches + 1
    step = torch.tensor(timer.step[1:k]).mean().item()  # skip the warm-up batch
    load_first = torch.tensor(timer.load[1:k]).mean().item()
    load_cached = torch.tensor(timer.load[k + 1:]).mean().item()
    step2 = torch.tensor(timer.step[k + 1:]).mean().item()
    n_batches = math.ceil(TRAIN_SIZE[args.recipe] / batch)
    val_batch = timer.val[-1] / 4
    val = math.ceil(VAL_SIZE[args.recipe] / batch) * val_batch
    print(f"recipe {args.recipe}: torch threads {torch.get_num_threads()}, batch {batch}")
    print(f"  training step      {1000 * (step + step2) / 2:8.1f} ms/batch (epoch 0: {1000 * step:.1f}, epoch 1: {1000 * step2:.1f})")
    print(f"  loading, framing   {1000 * load_first:8.1f} ms/batch (first epoch: tonic read + ToFrame + cache write)")
    print(f"  loading, cached    {1000 * load_cached:8.1f} ms/batch")
    print(f"  validation         {1000 * val_batch:8.1f} ms/batch")
    per = (step + step2) / 2
    first = n_batches * (per + load_first) + val
    later = n_batches * (per + load_cached) + val
    print(f"  epoch estimate ({n_batches} batches + {math.ceil(VAL_SIZE[args.recipe] / batch)} val): "
          f"first {first / 60:.1f} min, later {later / 60:.1f} min")


if __name__ == "__main__":
    main_()

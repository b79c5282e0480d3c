"""Epoch time of the SBNN paper's recipes on CPU, from a few training steps on generated full-size batches.

The recipe is parsed and built by the ``sbnn`` CLI (nothing runs), then the task's own
``training_step`` (noisy forward, cross-entropy + SNR penalty) + backward + optimiser step is timed
on random batches of the recipe's exact shape and batch size, and the validation forward pass
(the ``mode`` network, no gradient) likewise. The epoch estimate is

    ceil(n_train / batch) · t_step + ceil(n_val / batch) · t_val

from the median wall time and, separately, from the median CPU time of the process (with one
thread, what a step costs on a core of its own; the wall time on a busy machine is larger), with
the real data sets' split sizes. Data loading is left out: SHD is read from a memory-mapped dense
cache and CIFAR-10 from memory (both negligible next to a step). Inputs are drawn at realistic
densities (SHD: 2 % of the channel-bins fire; CIFAR-10: normalised Gaussian pixels).

    OMP_NUM_THREADS=1 python benchmarks/paper_cpu_epoch.py --recipe paper_shd_cpu --threads 1
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import torch

from sbnn.cli import SBNNCLI
from sbnn.modes import evaluation

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# (train, validation) examples after each recipe's split: SHD 8 156 training recordings with 10 %
# held out; CIFAR-10 50 000 with 5 000 held out; DVS Gesture the frame folder's 935 / 240
SPLITS = {"SHDDataModule": (7340, 816), "CIFAR10DataModule": (45000, 5000), "DVSGestureFramesDataModule": (935, 240)}


def build(recipe: str):
    """The recipe's task and data module, instantiated by the CLI without running anything."""
    import lightning as L

    cli = SBNNCLI(
        model_class=L.LightningModule, datamodule_class=L.LightningDataModule, subclass_mode_model=True,
        subclass_mode_data=True, run=False,
        args=["--config", str(RECIPES / f"{recipe}.yaml"), "--data.init_args.root", "unused", "--trainer.logger", "false"],
    )
    return cli.model, cli.datamodule


def batch_of(dm, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch ``(x [T, B, ...], y [B])`` of the data module's exact shape."""
    name = type(dm).__name__
    if name == "SHDDataModule":
        t = round(dm.hparams.duration / dm.hparams.time_window)
        c = math.ceil(700 / dm.hparams.downsample)
        x = (torch.rand(t, batch, c, generator=gen) < 0.02).float()
        return x, torch.randint(0, 20, (batch,), generator=gen)
    if name == "CIFAR10DataModule":
        x = torch.randn(1, batch, 3, 32, 32, generator=gen).expand(dm.n_steps, -1, -1, -1, -1).contiguous()
        return x, torch.randint(0, 10, (batch,), generator=gen)
    if name == "DVSGestureFramesDataModule":
        s = 128 // dm.downsample
        x = (torch.rand(dm.n_time_bins, batch, 2, s, s, generator=gen) < 0.05).float()
        return x, torch.randint(0, 11, (batch,), generator=gen)
    raise ValueError(f"no batch shape for {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True, help="recipe name under recipes/, e.g. paper_shd_cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore")
    task, dm = build(args.recipe)
    gen = torch.Generator().manual_seed(0)
    batch = dm.batch_size
    opt = task.configure_optimizers()["optimizer"]
    task.hparams.train_size = SPLITS[type(dm).__name__][0]
    task.loss_fn = task._make_loss()
    # wall time, and the process's CPU time: on a machine shared with other jobs the wall time
    # includes waiting for a core, while the CPU time (1 thread) is what the step costs a free core
    steps, vals = [], []
    for i in range(args.steps + 1):
        x, y = batch_of(dm, batch, gen)
        start, cpu = time.perf_counter(), time.process_time()
        opt.zero_grad()
        task.training_step((x, y), i).backward()
        opt.step()
        if i:
            steps.append((time.perf_counter() - start, time.process_time() - cpu))
    for i in range(3):
        x, y = batch_of(dm, batch, gen)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad(), evaluation(task.network, "mode"):
            task.network(x)
        if i:
            vals.append((time.perf_counter() - start, time.process_time() - cpu))
    n_train, n_val = SPLITS[type(dm).__name__]
    n_steps, n_vals = math.ceil(n_train / batch), math.ceil(n_val / batch)
    print(f"{args.recipe}: torch threads {torch.get_num_threads()}, batch {batch}, input {tuple(x.shape)}")
    for k, what in ((0, "wall"), (1, "CPU")):
        step, val = statistics.median(s[k] for s in steps), statistics.median(v[k] for v in vals)
        epoch = n_steps * step + n_vals * val
        print(f"  {what:4s}: training step {1000 * step:.0f} ms (median of {len(steps)}), validation pass "
              f"{1000 * val:.0f} ms/batch; epoch ({n_steps} steps + {n_vals} validation batches) {epoch / 60:.1f} min")
    print(f"  parameters: {sum(p.numel() for p in task.network.parameters())}")


if __name__ == "__main__":
    main()

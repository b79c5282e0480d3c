"""CIFAR-10 data module on a generated fixture in the exact python-pickle format, and its recipe."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sbnn.cli import run_cli
from sbnn.data.cifar10 import CIFAR10DataModule, find_cifar10_dir, load_cifar10_batch

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` exactly as the real archive has it (protocol-2 dicts,
    bytes keys, ``uint8 [N, 3072]`` data, list labels), with ``per_batch`` images per batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": f"batch {i} of 6".encode(),
            b"labels": labels,
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": NAMES, b"num_vis": 3072}, f, protocol=2)
    return folder


def test_batch_reader_keeps_the_plane_layout(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=4)
    images, labels = load_cifar10_batch(folder / "data_batch_2")
    with open(folder / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
    # row 1, green plane (bytes 1024..2047), pixel (y=2, x=5) is byte 1024 + 2·32 + 5
    assert images[1, 1, 2, 5] == raw[b"data"][1, 1024 + 2 * 32 + 5]
    assert labels.tolist() == raw[b"labels"]
    assert find_cifar10_dir(tmp_path) == folder and find_cifar10_dir(folder) == folder


def test_datamodule_splits_encodes_and_normalises(tmp_path):
    write_cifar10(tmp_path, per_batch=20)
    dm = CIFAR10DataModule(root=str(tmp_path), n_steps=3, n_val=10, batch_size=8)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (90, 10, 20)
    assert dm.n_train == 90 and dm.class_names[0] == "airplane" and dm.class_names[-1] == "truck"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[0], x[2])  # direct encoding: the same frame at every step
    # normalised with the training split's own statistics: mean 0, std 1 per channel
    full = torch.stack([dm.train_set[i][0][0] for i in range(len(dm.train_set))])
    torch.testing.assert_close(full.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(full.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # the split is seeded: a second module sees the same validation images
    other = CIFAR10DataModule(root=str(tmp_path), n_steps=3, n_val=10)
    other.setup()
    assert torch.equal(other.val_set.images, dm.val_set.images)
    rate = CIFAR10DataModule(root=str(tmp_path), n_steps=5, encoding="rate", n_val=10)
    rate.setup()
    xr, _ = rate.train_set[0]
    assert xr.shape == (5, 3, 32, 32) and torch.all((xr == 0) | (xr == 1))


def test_missing_or_malformed_batches_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        CIFAR10DataModule(root=str(tmp_path)).setup()
    folder = write_cifar10(tmp_path / "a", per_batch=4)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, f, protocol=2)
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\]"):
        CIFAR10DataModule(root=str(tmp_path / "a")).setup()
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 12]}, f, protocol=2)
    with pytest.raises(ValueError, match="0..9"):
        load_cifar10_batch(folder / "data_batch_3")
    write_cifar10(tmp_path / "b", per_batch=4)
    with pytest.raises(ValueError, match="n_val=30 must leave"):
        CIFAR10DataModule(root=str(tmp_path / "b"), n_val=30).setup()
    with pytest.raises(ValueError, match="encoding"):
        CIFAR10DataModule(encoding="latency")


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, per_batch=2)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="print, which a CIFAR-10 pickle never needs"):
        load_cifar10_batch(folder / "test_batch")


def test_cifar10_recipe_runs_on_the_fixture(tmp_path, capsys):
    """The recipe as shipped (ResNet-20 on 32×32 RGB), one batch through fit, validate and test."""
    write_cifar10(tmp_path / "data", per_batch=8)
    cli = run_cli([
        "fit", "--config", str(RECIPES / "cifar10.yaml"),
        "--data.init_args.root", str(tmp_path / "data"),
        "--data.init_args.n_val", "8",
        "--data.init_args.batch_size", "4",
        "--model.init_args.mc_samples", "2",
        "--trainer.fast_dev_run", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
    ])
    out = capsys.readouterr().out
    assert "sbnn: final test accuracy" in out
    assert bool(cli.model.calibrated)
    assert type(cli.model.network).__name__ == "SpikingResNet" and cli.model.network.depth == 20
    assert not [m for m in cli.model.network.modules() if "Norm" in type(m).__name__]
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    for name in ("mode", "mc", "lrt"):
        assert 0.0 <= float(metrics[f"test_acc_{name}"]) <= 1.0


def _crops(image: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    """Every crop the augmentation may return, built by hand: shift by (dy, dx), zeros outside."""
    out = []
    h, w = image.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            shifted = torch.zeros_like(image)
            # crop row r reads padded row r + dy, i.e. image row r + dy − pad
            for r in range(h):
                src = r + dy - pad
                if 0 <= src < h:
                    lo, hi = max(0, pad - dx), min(w, w + pad - dx)
                    shifted[:, r, lo:hi] = image[:, src, lo + dx - pad : hi + dx - pad]
            out += [shifted, shifted.flip(-1)]
    return out


def test_random_crop_flip_returns_a_shifted_or_mirrored_crop():
    from sbnn.data.cifar10 import random_crop_flip

    image = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8) + 1  # no zeros: padding shows
    candidates = _crops(image)
    seen, flips = set(), 0
    for _ in range(60):
        out = random_crop_flip(image)
        assert out.shape == image.shape
        (k,) = [i for i, c in enumerate(candidates) if torch.equal(c, out)]
        seen.add(k // 2)
        flips += k % 2
    assert len(seen) > 10 and 0 < flips < 60  # offsets and flips both vary


def test_augment_applies_to_the_training_split_only(tmp_path):
    write_cifar10(tmp_path, per_batch=6)
    dm = CIFAR10DataModule(root=str(tmp_path), n_steps=2, n_val=6, batch_size=4, augment=True)
    dm.setup()
    assert dm.train_set.augment and not dm.val_set.augment and not dm.test_set.augment
    mean, std = dm.channel_mean.reshape(3, 1, 1), dm.channel_std.reshape(3, 1, 1)
    image = dm.train_set.images[0].float() / 255.0
    normalised = [(c - mean) / std for c in _crops(image)]
    draws = [dm.train_set[0][0] for _ in range(20)]
    for x in draws:
        assert torch.equal(x[0], x[1])  # one crop for every step of a sample
        assert any(torch.allclose(x[0], c) for c in normalised)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])
    plain = CIFAR10DataModule(root=str(tmp_path), n_steps=2, n_val=6, batch_size=4)
    plain.setup()
    assert not plain.train_set.augment and torch.equal(plain.train_set[0][0], plain.train_set[0][0])

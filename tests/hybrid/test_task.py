"""The HyBNN recipe through the sbnn CLI, on digits and on a generated MNIST IDX fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sbnn.cli import main
from sbnn.hybrid.data import write_idx
from sbnn.hybrid.task import HyBNNDataModule, HyBNNTask

RECIPE = str(Path(__file__).parents[2] / "recipes" / "hybnn.yaml")


def _fit(tmp_path, *extra):
    cli = main(["fit", "--config", RECIPE, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
                "--trainer.logger", "false", "--model.vae_epochs", "1", *extra])
    return cli.model


@pytest.mark.parametrize("head", ["sbnn", "ste"])
def test_recipe_runs_and_freezes_the_encoder(tmp_path, head):
    model = _fit(tmp_path, "--model.head", head)
    assert bool(model.vae_trained)
    assert not any(p.requires_grad for p in model.net.encoder.parameters())


def test_recipe_reads_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("t10k", 20)):
        write_idx(tmp_path / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{name}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    model = _fit(tmp_path, "--data.root", str(tmp_path), "--model.image_shape", "[1,28,28]")
    assert model.vae.image_shape == (1, 28, 28)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="two different digits"):
        HyBNNDataModule(task=(3, 3))
    with pytest.raises(FileNotFoundError, match="--data.root"):
        HyBNNDataModule(root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        HyBNNTask(latent_estimator="nope")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        HyBNNTask(head_estimator="nope")

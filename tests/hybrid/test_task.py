"""The HyBNN recipe through the sbnn CLI, on digits and on a generated MNIST IDX fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sbnn.cli import run_cli as main
from sbnn.hybrid.data import write_idx
from sbnn.tasks.hybrid import HyBNNDataModule, HyBNNTask

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


def test_encoder_state_is_bit_identical_after_head_training(tmp_path):
    import lightning as L
    import torch

    task = HyBNNTask(head="ste", vae_epochs=0, n_latent=16, hidden=8)
    data = HyBNNDataModule(task=(0, 1))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    data.setup()
    task.vae_trained.fill_(True)  # as after the representation phase
    before = {k: v.clone() for k, v in task.net.encoder.state_dict().items()}
    head_before = [p.clone() for p in task.net.head.parameters()]
    trainer.fit(task, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(head_before, task.net.head.parameters()))
    for k, v in task.net.encoder.state_dict().items():  # running statistics included
        assert torch.equal(before[k], v), k


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="two different digits"):
        HyBNNDataModule(task=(3, 3))
    with pytest.raises(FileNotFoundError, match="--data.root"):
        HyBNNDataModule(root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        HyBNNTask(latent_estimator="nope")
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        HyBNNTask(head_estimator="nope")

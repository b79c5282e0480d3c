"""MoonsDataModule: shapes, time repetition, determinism, argument checks."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import make_moons

from sbnn.data import MoonsDataModule, moons_tensors


def test_points_are_sklearn_moons_repeated_over_time():
    x, y = moons_tensors(7, 0.1, seed=3, n_steps=4)
    points, labels = make_moons(n_samples=(7, 7), noise=0.1, random_state=3)
    assert x.shape == (14, 4, 2) and x.dtype == torch.float32
    for t in range(4):
        torch.testing.assert_close(x[:, t], torch.from_numpy(points).float())
    assert y.tolist() == labels.tolist() and int(y.sum()) == 7


def test_datamodule_batches_are_time_major_and_deterministic():
    a, b = MoonsDataModule(n_steps=3, batch_size=16), MoonsDataModule(n_steps=3, batch_size=16)
    a.setup(), b.setup()
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    assert xa.shape == (3, 16, 2) and ya.shape == (16,)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(a.train_set) == 200 and len(a.test_set) == 1000
    # the test split is an independent draw, not a copy of the training points
    assert not torch.equal(a.train_set.tensors[0][:200], a.test_set.tensors[0][:200])


@pytest.mark.parametrize("kwargs, match", [(dict(noise=-0.1), "noise"), (dict(n_steps=0), "n_steps"), (dict(n_per_class=0), "n_per_class")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoonsDataModule(**kwargs)

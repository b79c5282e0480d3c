"""Tests for the Randman generator and RandmanDataModule (all offline, small sizes)."""

from __future__ import annotations

import pytest
import torch

from sbnn.data import RandmanDataModule, make_randman, time_major_collate

SMALL = dict(n_classes=4, n_channels=12, n_steps=30, n_samples_per_class=25)


def test_shapes_dtypes_and_binary_values():
    x, y = make_randman(**SMALL, seed=3)
    assert x.shape == (100, 30, 12) and x.dtype == torch.float32
    assert y.shape == (100,) and y.dtype == torch.int64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert set(y.unique().tolist()) == {0, 1, 2, 3}


def test_same_seed_identical_different_seed_different():
    x1, y1 = make_randman(**SMALL, seed=5)
    x2, y2 = make_randman(**SMALL, seed=5)
    x3, y3 = make_randman(**SMALL, seed=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("jitter", [0.0, 3.0])
def test_exactly_one_spike_per_channel(jitter):
    x, _ = make_randman(**SMALL, jitter=jitter, seed=1)
    assert torch.equal(x.sum(dim=1), torch.ones(100, 12))


def test_jitter_moves_spikes_but_keeps_maps():
    clean, y0 = make_randman(**SMALL, seed=2)
    noisy, y1 = make_randman(**SMALL, jitter=2.0, seed=2)
    assert torch.equal(y0, y1)
    shift = (noisy.argmax(dim=1) - clean.argmax(dim=1)).float()
    assert (shift != 0).float().mean() > 0.3  # jitter does act
    assert shift.abs().mean() < 3.0  # ... but only locally


def test_labels_balanced():
    _, y = make_randman(**SMALL, seed=0)
    assert torch.equal(torch.bincount(y), torch.full((4,), 25))


def test_spike_times_cover_the_window():
    # Min-max normalisation per class channel: the first and last steps are both used.
    x, _ = make_randman(**SMALL, seed=0)
    times = x.argmax(dim=1)
    assert times.min() == 0 and times.max() == 29
    assert 8 < times.float().mean() < 21


def test_classes_differ_and_samples_vary_within_class():
    x, y = make_randman(**SMALL, seed=0)
    times = x.argmax(dim=1).float()
    means = torch.stack([times[y == c].mean(0) for c in range(4)])
    # Different class maps put the same channel at different mean times ...
    assert torch.cdist(means, means).triu(1)[torch.ones(4, 4).triu(1).bool()].min() > 5.0
    # ... and different latent points give different rasters within a class.
    assert times[y == 0].std(dim=0).mean() > 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_classes", 1),
        ("n_channels", 0),
        ("n_steps", 1),
        ("manifold_dim", 0),
        ("alpha", 0.0),
        ("alpha", float("nan")),
        ("n_harmonics", 2.5),
        ("n_samples_per_class", -3),
        ("jitter", -1.0),
        ("seed", -1),
    ],
)
def test_bad_arguments_raise_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        make_randman(**{**SMALL, name: value})


def _setup(**kw) -> RandmanDataModule:
    args = dict(n_classes=5, n_channels=16, n_steps=25, n_train=60, n_val=20, n_test=30)
    dm = RandmanDataModule(**{**args, **kw})
    dm.setup()
    return dm


def test_datamodule_attributes_and_time_major_batches():
    dm = _setup(batch_size=8)
    assert (dm.num_classes, dm.input_size, dm.n_steps, dm.n_train) == (5, 16, 25, 60)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (25, 8, 16) and x.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == torch.int64
        assert torch.equal(x.sum(dim=0), torch.ones(8, 16))  # one spike per channel per sample
    assert sum(len(y) for _, y in dm.train_dataloader()) == 60


def test_datamodule_generates_in_setup_not_init():
    dm = RandmanDataModule(n_train=10, n_val=5, n_test=5)
    assert dm.train_set is None
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_splits_disjoint_and_balanced():
    dm = _setup()
    rows = {}
    for split in ("train", "val", "test"):
        x, y = getattr(dm, f"{split}_set").tensors
        counts = torch.bincount(y, minlength=5)
        assert counts.max() - counts.min() <= 1
        rows[split] = {tuple(r) for r in x.argmax(dim=1).tolist()}
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def _one_nn_accuracy(train: tuple, test: tuple) -> float:
    """1-nearest-neighbour accuracy on spike-time vectors (the manifolds are locally smooth)."""
    ttr, tte = train[0].argmax(dim=1).float(), test[0].argmax(dim=1).float()
    pred = train[1][torch.cdist(tte, ttr).argmin(dim=1)]
    return (pred == test[1]).float().mean().item()


def test_splits_share_the_class_manifolds():
    # Nearest neighbours in train predict the test labels only if both come from the same maps;
    # with maps from another seed the same classifier sits near chance (20 %).
    dm, other = _setup(n_train=200, n_test=100), _setup(n_train=200, n_test=100, seed=43)
    assert _one_nn_accuracy(dm.train_set.tensors, dm.test_set.tensors) > 0.9
    assert _one_nn_accuracy(other.train_set.tensors, dm.test_set.tensors) < 0.45


def test_datamodule_deterministic_and_seed_sensitive():
    a, b, c = _setup(seed=7), _setup(seed=7), _setup(seed=8)
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert torch.equal(a.test_set.tensors[1], b.test_set.tensors[1])
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])
    # The seeded shuffle gives the same first batch on both, and differs from the stored order.
    xa, ya = next(iter(a.train_dataloader()))
    xb, yb = next(iter(b.train_dataloader()))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(ya, a.train_set.tensors[1][: len(ya)])


def test_datamodule_matches_make_randman_maps():
    # Same seed -> same class maps in the DataModule and in make_randman.
    dm = _setup(seed=11, n_train=200)
    test = make_randman(n_classes=5, n_channels=16, n_steps=25, n_samples_per_class=20, seed=11)
    assert _one_nn_accuracy(dm.train_set.tensors, test) > 0.9


@pytest.mark.parametrize(
    ("name", "value"),
    [("n_train", 0), ("n_val", -1), ("batch_size", 0), ("num_workers", -1), ("alpha", -2.0)],
)
def test_datamodule_bad_arguments(name, value):
    with pytest.raises(ValueError, match=name):
        RandmanDataModule(**{name: value})


def test_time_major_collate():
    items = [(torch.full((4, 3), float(i)), torch.tensor(i)) for i in range(5)]
    x, y = time_major_collate(items)
    assert x.shape == (4, 5, 3)
    assert torch.equal(x[:, 2], torch.full((4, 3), 2.0))
    assert y.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch"):
        time_major_collate([])

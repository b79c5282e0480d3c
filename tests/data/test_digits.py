"""Tests for the spike-encoded scikit-learn digits DataModule and its encoders."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from sbnn.data import DigitsDataModule
from sbnn.data.digits import latency_encode, rate_encode


def _setup(**kw) -> DigitsDataModule:
    dm = DigitsDataModule(**kw)
    dm.setup()
    return dm


def test_rate_code_tracks_intensity():
    intensity = torch.linspace(0.0, 1.0, 17).repeat(40, 1)  # 40 samples x 17 levels
    spikes = rate_encode(intensity, 250, torch.Generator().manual_seed(0))
    assert spikes.shape == (40, 250, 17)
    rate = spikes.mean(dim=(0, 1))  # 10 000 Bernoulli draws per level: std <= 0.005
    assert torch.allclose(rate, intensity[0], atol=0.02)
    assert rate[0] == 0.0 and rate[-1] == 1.0


def test_latency_code_brighter_fires_earlier_and_zero_is_silent():
    intensity = torch.tensor([[0.0, 1 / 16, 0.25, 0.5, 0.75, 1.0]])
    spikes = latency_encode(intensity, 20)[0]  # [T, N]
    counts = spikes.sum(dim=0)
    assert counts.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    times = spikes[:, 1:].argmax(dim=0)
    assert (times.diff() < 0).all()  # strictly earlier as intensity grows
    assert times[-1] == 0 and times[0] == 18


def test_datamodule_rate_code_tracks_pixel_intensity():
    dm = _setup(encoding="rate", n_steps=20)
    x, y = dm.train_set.tensors  # [S, T, 64]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(x.unique().tolist()) == {0.0, 1.0}
    digits = load_digits()
    idx = dm.split_indices["train"]
    assert torch.equal(y, torch.from_numpy(digits.target[idx]).long())
    pixels = torch.from_numpy(digits.data[idx]).long()  # [S, 64], levels 0..16
    rate = x.mean(dim=1)  # empirical rate per sample and pixel
    for level in (0, 4, 8, 12, 16):
        mask = pixels == level  # thousands of pixels per level: rate std < 0.01
        assert mask.sum() > 500
        assert abs(rate[mask].mean().item() - level / 16) < 0.02, level


def test_datamodule_latency_code_matches_pixels():
    dm = _setup(encoding="latency", n_steps=16)
    x, _ = dm.test_set.tensors
    pixels = torch.from_numpy(load_digits().data[dm.split_indices["test"]])
    counts = x.sum(dim=1)
    assert torch.equal(counts, (pixels > 0).float())  # one spike per lit pixel, none for 0
    times = x.argmax(dim=1).float()
    lit = pixels > 0
    # Brighter pixels fire earlier: spike time falls monotonically with intensity.
    corr = torch.corrcoef(torch.stack([times[lit], pixels[lit].float()]))[0, 1]
    assert corr < -0.99


def test_datamodule_latency_zero_pixels_silent():
    dm = _setup(encoding="latency", n_steps=16)
    x, _ = dm.test_set.tensors
    counts = x.sum(dim=1)
    assert counts.max() == 1.0
    assert 0.2 < (counts == 0).float().mean() < 0.7  # the blank border of the digits is silent


def test_split_sizes_stratified_disjoint():
    dm = _setup()
    sizes = [len(getattr(dm, f"{s}_set")) for s in ("train", "val", "test")]
    assert sizes == [1257, 180, 360] and dm.n_train == 1257
    for split in ("val", "test"):
        counts = torch.bincount(getattr(dm, f"{split}_set").tensors[1], minlength=10)
        assert counts.min() >= 15 and counts.max() - counts.min() <= 3
    idx = {k: set(v.tolist()) for k, v in dm.split_indices.items()}
    assert not idx["train"] & idx["val"] and not idx["train"] & idx["test"]
    assert not idx["val"] & idx["test"]
    assert len(idx["train"] | idx["val"] | idx["test"]) == 1797


def test_time_major_batches_and_attributes():
    dm = _setup(n_steps=12, batch_size=16)
    assert (dm.num_classes, dm.input_size, dm.n_steps) == (10, 64, 12)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (12, 16, 64) and y.shape == (16,)


def test_deterministic_given_seed():
    a, b, c = _setup(seed=1), _setup(seed=1), _setup(seed=2)
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.train_set.tensors[0], c.train_set.tensors[0])
    assert torch.equal(next(iter(a.train_dataloader()))[1], next(iter(b.train_dataloader()))[1])


@pytest.mark.parametrize(
    ("name", "value"),
    [("encoding", "poisson"), ("n_steps", 0), ("n_val", 5), ("n_test", 1790), ("batch_size", 0)],
)
def test_bad_arguments_raise_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        DigitsDataModule(**{name: value})

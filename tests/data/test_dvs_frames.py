"""DVS Gesture from SpikingJelly frame folders: exact pooling and re-binning, splits, cache, bad input."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sbnn.data import DataMissingError, DVSGestureFramesDataModule
from sbnn.data._fixtures import write_dvs_frames
from sbnn.data.augment import random_shift


def _files(root: Path) -> set[Path]:
    return set(Path(root).rglob("*"))


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_dvs_frames(tmp_path / "frames", (2, 1, 1), n_frames=6)


def test_real_layout_and_dtype_load_through_all_three_splits(tmp_path):
    root = write_dvs_frames(tmp_path / "DVSGC_frames_number_49_split_by_number", (1, 1, 1), classes=(0, 10))
    with np.load(next((root / "train" / "0").glob("*.npz"))) as data:
        assert data["frames"].dtype == np.float64 and data["frames"].shape == (49, 2, 128, 128)
    dm = DVSGestureFramesDataModule(root=str(root), n_time_bins=7, batch_size=2)
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (7, 2, 2, 32, 32) and x.dtype == torch.float32
    assert sorted(y.tolist()) == [0, 10]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (2, 2, 2)
    xp, yp = next(iter(dm.predict_dataloader()))  # `sbnn predict` reads the test split
    assert torch.equal(xp, x) and torch.equal(yp, y)


def test_sum_pooling_and_rebinning_are_exact(folder):
    path = sorted((folder / "train" / "3").glob("*.npz"))[0]
    frames = np.load(path)["frames"]
    dm = DVSGestureFramesDataModule(root=str(folder), n_time_bins=4, downsample=4, binary=False, cache=False)
    dm.setup()
    index = [i for i, (p, c) in enumerate(dm._list_split("train")) if p == path][0]
    x, y = dm.train_set[index]
    # hand: frame i of 6 goes to bin floor(4 i / 6) = 0,0,1,2,2,3; pixel (r, c) to (r // 4, c // 4)
    expected = np.zeros((4, 2, 32, 32))
    for i in range(6):
        for p in range(2):
            for r, c in zip(*np.nonzero(frames[i, p])):
                expected[(4 * i) // 6, p, r // 4, c // 4] += frames[i, p, r, c]
    np.testing.assert_array_equal(x.float().numpy(), expected)
    assert int(y) == 3 and expected.sum() == frames.sum()
    binary = DVSGestureFramesDataModule(root=str(folder), n_time_bins=4, cache=False)
    binary.setup()
    np.testing.assert_array_equal(binary.train_set[index][0].float().numpy(), np.minimum(expected, 1))


def test_cache_is_written_once_reused_and_keyed_by_settings(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, cache_dir=str(cache)).setup()
    written = sorted(cache.rglob("*.npz"))
    assert len(written) == 3
    calls = []
    monkeypatch.setattr(DVSGestureFramesDataModule, "_process", lambda self, f, n: calls.append(n))
    dm = DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, cache_dir=str(cache))
    dm.setup()  # hit: nothing processed
    assert calls == [] and len(dm.train_set) == 22
    monkeypatch.undo()
    DVSGestureFramesDataModule(root=str(folder), n_time_bins=2, cache_dir=str(cache)).setup()  # miss: new key
    assert len(sorted(cache.rglob("*.npz"))) == 6


def test_truncated_cache_is_rebuilt_not_read(folder, tmp_path):
    cache = tmp_path / "cache"
    ref = DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, cache_dir=str(cache))
    ref.setup()
    for path in cache.rglob("*.npz"):
        path.write_bytes(path.read_bytes()[:100])
    dm = DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, cache_dir=str(cache))
    dm.setup()
    assert torch.equal(dm.train_set.tensors[0], ref.train_set.tensors[0])
    with np.load(next(cache.rglob("train-*.npz"))) as data:  # and the file is whole again
        assert data["x"].shape[0] == 22


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing_split", r"validation is missing"),
        ("empty_split", r"test is an empty folder"),
        ("class_11", r"11: expected only class folders named 0 \.\. 10"),
        ("class_name", r"extra: expected only class folders named 0 \.\. 10"),
        ("empty_class", r"5 is an empty folder \(no \.npz files\)"),
        ("wrong_shape", r"bad\.npz: frames have shape \[6, 2, 64, 64\]; expected \[T, 2, 128, 128\]"),
        ("wrong_dtype", r"bad\.npz: frames have dtype complex128"),
        ("other_t", r"bad\.npz: 5 frames, but the other files have 6"),
        ("no_frames_key", r"bad\.npz: no 'frames' array"),
        ("not_npz", r"bad\.npz cannot be read as \.npz"),
        ("negative", r"bad\.npz: frames\[0, 0, 0, 0\] = -1\.0"),
    ],
)
def test_bad_folders_are_refused_naming_the_file_before_writing(folder, tmp_path, damage, match):
    import shutil

    bad = folder / "train" / "2" / "bad.npz"
    if damage == "missing_split":
        shutil.rmtree(folder / "validation")
    elif damage == "empty_split":
        shutil.rmtree(folder / "test")
        (folder / "test").mkdir()
    elif damage == "class_11":
        (folder / "train" / "11").mkdir()
    elif damage == "class_name":
        (folder / "train" / "extra").mkdir()
    elif damage == "empty_class":
        for p in (folder / "validation" / "5").glob("*"):
            p.unlink()
    elif damage == "wrong_shape":
        np.savez_compressed(bad, frames=np.zeros((6, 2, 64, 64)))
    elif damage == "wrong_dtype":
        np.savez_compressed(bad, frames=np.zeros((6, 2, 128, 128), dtype=np.complex128))
    elif damage == "other_t":
        np.savez_compressed(bad, frames=np.zeros((5, 2, 128, 128)))
    elif damage == "no_frames_key":
        np.savez_compressed(bad, x=np.zeros((6, 2, 128, 128)))
    elif damage == "not_npz":
        bad.write_bytes(b"not a zip file" * 10)
    elif damage == "negative":
        frames = np.zeros((6, 2, 128, 128))
        frames[0, 0, 0, 0] = -1.0
        np.savez_compressed(bad, frames=frames)
    cache = tmp_path / "cache"
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=match):
        DVSGestureFramesDataModule(root=str(folder), cache_dir=str(cache)).setup()
    assert _files(tmp_path) == before  # nothing written


def test_missing_root_and_bad_arguments(tmp_path):
    with pytest.raises(DataMissingError, match="does not exist"):
        DVSGestureFramesDataModule(root=str(tmp_path / "nope")).setup()
    with pytest.raises(ValueError, match="data.root is required"):
        DVSGestureFramesDataModule()
    with pytest.raises(ValueError, match="downsample must divide 128"):
        DVSGestureFramesDataModule(root=str(tmp_path), downsample=3)


def test_too_many_time_bins(folder):
    with pytest.raises(ValueError, match="n_time_bins=7 exceeds the folder's 6 frames"):
        DVSGestureFramesDataModule(root=str(folder), n_time_bins=7, cache=False).setup()


def test_random_shift_translates_each_sample_by_its_own_draw():
    x = torch.zeros(3, 4, 2, 9, 9)
    x[:, :, 0, 4, 4] = torch.arange(1.0, 4.0).reshape(3, 1)  # one pixel per sample, every frame
    x[:, 3, 1, 0, 0] = 7.0  # sample 3: a corner pixel as well
    draws = torch.randint(-2, 3, (4, 2), generator=torch.Generator().manual_seed(5))
    out = random_shift(x, 2, generator=torch.Generator().manual_seed(5))
    for b, (dy, dx) in enumerate(draws.tolist()):
        expected = torch.zeros(3, 2, 9, 9)
        expected[:, 0, 4 + dy, 4 + dx] = torch.arange(1.0, 4.0)  # the same shift in every frame
        if b == 3 and dy >= 0 and dx >= 0:
            expected[:, 1, dy, dx] = 7.0  # moved into view; a negative shift moves it out
        torch.testing.assert_close(out[:, b], expected, rtol=0, atol=0)
    assert random_shift(x, 0) is x


def test_max_shift_augments_training_batches_only(folder):
    plain = DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, batch_size=8, cache=False)
    shifted = DVSGestureFramesDataModule(root=str(folder), n_time_bins=3, batch_size=8, cache=False, max_shift=3)
    plain.setup()
    shifted.setup()
    for split in ("val", "test"):
        a, b = next(iter(getattr(plain, f"{split}_dataloader")())), next(iter(getattr(shifted, f"{split}_dataloader")()))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(0)
    xa, ya = next(iter(plain.train_dataloader()))
    torch.manual_seed(0)
    xb, yb = next(iter(shifted.train_dataloader()))
    assert torch.equal(ya, yb) and xb.shape == xa.shape
    assert not torch.equal(xa, xb)
    assert float(xb.sum()) <= float(xa.sum())  # shifted, never created: only pixels moved out are lost
    with pytest.raises(ValueError, match="max_shift=32"):
        DVSGestureFramesDataModule(root=str(folder), max_shift=32)
    with pytest.raises(ValueError, match="max_shift must be an int >= 0"):
        DVSGestureFramesDataModule(root=str(folder), max_shift=-1)

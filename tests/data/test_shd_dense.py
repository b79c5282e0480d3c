"""SHD's dense [N, T, 700] cache: equal to tonic's path, keyed by the framing, atomic, rebuilt when truncated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sbnn.data import SHDDataModule
from sbnn.data._fixtures import write_shd
from sbnn.data.shd_dense import DenseSHD


def _all(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])


@pytest.mark.parametrize("kwargs", [dict(), dict(duration=1_400_000.0, binary=False), dict(n_time_bins=30)])
def test_dense_cache_equals_the_tonic_path(tmp_path, kwargs):
    root = write_shd(tmp_path, n_train=12, n_test=6)
    dense = SHDDataModule(root=str(root), cache=True, **kwargs)
    plain = SHDDataModule(root=str(root), cache=False, **kwargs)
    dense.setup()
    plain.setup()
    assert isinstance(dense.test_set, DenseSHD)
    for split in ("train", "val", "test"):
        xd, yd = _all(getattr(dense, f"{split}_set"))
        xp, yp = _all(getattr(plain, f"{split}_set"))
        assert torch.equal(xd, xp) and torch.equal(yd, yp)
    x, _ = next(iter(dense.train_dataloader()))
    assert x.dim() == 3 and x.shape[-1] == 700 and x.dtype == torch.float32


def test_hit_on_the_same_settings_miss_on_a_change(tmp_path):
    root = write_shd(tmp_path, n_train=8, n_test=4)
    first = SHDDataModule(root=str(root))
    first.setup()
    assert first.test_set.built
    files = sorted((root / "sbnn_cache" / "SHD-dense").glob("*.npy"))
    assert len(files) == 4  # x and y for train and test
    again = SHDDataModule(root=str(root))
    again.setup()
    assert not again.test_set.built and not again.train_set.dataset.built  # read, not rebuilt
    longer = SHDDataModule(root=str(root), duration=1_400_000.0)  # T = 140: a new key
    longer.setup()
    assert longer.test_set.built and longer.test_set[0][0].shape == (140, 700)
    assert len(list((root / "sbnn_cache" / "SHD-dense").glob("*.npy"))) == 8
    assert not list((root / "sbnn_cache" / "SHD-dense").glob(".*"))  # no temporary files left


def test_truncated_cache_is_rebuilt_not_read(tmp_path):
    root = write_shd(tmp_path, n_train=8, n_test=4)
    ref = SHDDataModule(root=str(root))
    ref.setup()
    expected = _all(ref.test_set)
    path: Path = ref.test_set.x_path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    dm = SHDDataModule(root=str(root))
    dm.setup()
    assert dm.test_set.built
    got = _all(dm.test_set)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert path.stat().st_size > 0 and not dm.train_set.dataset.built


def test_cache_files_follow_the_umask(tmp_path):
    import os

    root = write_shd(tmp_path, n_train=10, n_test=4)
    old = os.umask(0o022)
    try:
        dm = SHDDataModule(root=str(root))
        dm.setup()
    finally:
        os.umask(old)
    assert dm.test_set.x_path.stat().st_mode & 0o777 == 0o644

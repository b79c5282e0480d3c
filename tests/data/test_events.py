"""SHD and DVS Gesture DataModules on generated fixtures, read by the real tonic loaders.

Every test here runs with network access made to fail loudly (``no_network``), so a code path
that tries to download shows up as an error instead of a silent fetch.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sbnn.data import DataMissingError, DVSGestureDataModule, SHDDataModule
from sbnn.data._fixtures import write_dvs_gesture, write_shd, write_shd_file
from sbnn.data._sampler import EpochSeededSampler
from sbnn.data.events import EventFramer


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    connect = socket.socket.connect

    def refuse(*args, **kwargs):
        raise RuntimeError("a test tried to access the network")

    def local_only(sock, address):
        # Unix sockets stay allowed: multiprocessing ('spawn' workers) talks through them
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _files(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*")}


def _write_shd_sample(path: Path, times: list[list[float]], units: list[list[int]], labels: list[int]) -> None:
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(np.float16))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (ti, ui) in enumerate(zip(times, units)):
            t[i], u[i] = np.array(ti, dtype=np.float16), np.array(ui, dtype=np.uint16)
        f.create_dataset("labels", data=np.array(labels, dtype=np.uint16))
        f.create_dataset("extra/keys", data=np.array([b"k"] * 20))
        f.create_dataset("extra/speaker", data=np.zeros(len(labels), dtype=np.uint16))


# -- happy paths ----------------------------------------------------------------------------------
def test_shd_batches_through_tonic(tmp_path):
    write_shd(tmp_path, n_train=20, n_test=10)
    dm = SHDDataModule(root=str(tmp_path), batch_size=4, val_fraction=0.25)
    dm.prepare_data()
    dm.setup()
    assert (dm.n_train, len(dm.val_set), len(dm.test_set)) == (15, 5, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 4, 700) and x.dtype == torch.float32  # 10 ms frames over 1 s
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.sum() > 0
    assert y.dtype == torch.int64 and ((y >= 0) & (y < 20)).all()
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == (4, 700)


def test_shd_frames_are_exact(tmp_path):
    """Hand-placed spikes land in the expected frame and channel, with counts or clamped."""
    root = tmp_path / "SHD"
    root.mkdir()
    # float16 seconds: 0.001 -> frame 0, 0.0125 -> frame 1, 0.5 -> frame 50
    spikes = dict(times=[[0.001, 0.001, 0.0125, 0.5]], units=[[3, 3, 5, 699]], labels=[7])
    for split in ("train", "test"):
        _write_shd_sample(root / f"shd_{split}.h5", spikes["times"] * 2, spikes["units"] * 2, spikes["labels"] * 2)
        (root / f"shd_{split}.h5.zip").touch()
    counts = SHDDataModule(root=str(tmp_path), binary=False, downsample=2, cache=False, val_fraction=0.5, batch_size=1)
    counts.setup()
    x, y = counts.test_set[0]
    assert x.shape == (100, 350) and int(y) == 7
    expected = torch.zeros(100, 350)
    expected[0, 1], expected[1, 2], expected[50, 349] = 2.0, 1.0, 1.0  # channels // 2
    assert torch.equal(x, expected)
    binary = SHDDataModule(root=str(tmp_path), cache=False, val_fraction=0.5)
    binary.setup()
    x, _ = binary.test_set[0]
    assert x[0, 3] == 1.0 and x.sum() == 3.0


def test_padding_collation_is_time_major_and_zero_padded(tmp_path):
    write_shd(tmp_path, n_train=12, n_test=6)
    dm = SHDDataModule(root=str(tmp_path), duration=None, cache=False, batch_size=6, val_fraction=0.5)
    dm.setup()
    items = [dm.test_set[i][0] for i in range(6)]
    x, _ = next(iter(dm.test_dataloader()))
    lengths = [len(i) for i in items]
    assert len(set(lengths)) > 1, "fixture should give recordings of different lengths"
    assert x.shape == (max(lengths), 6, 700)
    for b, item in enumerate(items):
        assert torch.equal(x[: len(item), b], item)
        assert not x[len(item):, b].any()


def test_dvs_gesture_batches_through_tonic(tmp_path):
    write_dvs_gesture(tmp_path)
    dm = DVSGestureDataModule(root=str(tmp_path), batch_size=5)
    dm.prepare_data()
    dm.setup()
    assert dm.n_train + len(dm.val_set) == 110 and len(dm.test_set) == 110
    assert dm.input_size == (2, 32, 32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (20, 5, 2, 32, 32) and x.dtype == torch.float32
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.sum() > 0


def test_dvs_gesture_max_shift_moves_training_frames_only(tmp_path):
    """max_shift translates each training recording as a whole; validation and test batches are the plain ones."""
    write_dvs_gesture(tmp_path)
    plain = DVSGestureDataModule(root=str(tmp_path), n_time_bins=4, binary=False, cache=False, batch_size=6)
    shifted = DVSGestureDataModule(root=str(tmp_path), n_time_bins=4, binary=False, cache=False, batch_size=6, max_shift=2)
    plain.setup()
    shifted.setup()
    for split in ("val", "test"):
        a, b = (next(iter(getattr(dm, f"{split}_dataloader")())) for dm in (plain, shifted))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(3)
    xa, ya = next(iter(plain.train_dataloader()))
    torch.manual_seed(3)
    xb, yb = next(iter(shifted.train_dataloader()))
    # one (dy, dx) per recording from the global generator (the sampler has its own)
    torch.manual_seed(3)
    draws = torch.randint(-2, 3, (6, 2))
    assert torch.equal(ya, yb) and xb.shape == xa.shape
    for b, (dy, dx) in enumerate(draws.tolist()):
        expected = torch.roll(xa[:, b], shifts=(dy, dx), dims=(-2, -1))
        rows = slice(max(dy, 0), 32 + min(dy, 0))
        cols = slice(max(dx, 0), 32 + min(dx, 0))
        assert torch.equal(xb[:, b, :, rows, cols], expected[:, :, rows, cols])
        assert xb[:, b].sum() == expected[:, :, rows, cols].sum()  # pixels moved in from outside are 0
    with pytest.raises(ValueError, match="max_shift=32 would move whole 32-pixel frames"):
        DVSGestureDataModule(root=str(tmp_path), max_shift=32)


def test_dvs_gesture_frames_follow_the_events(tmp_path):
    """A recording whose events all sit at pixel (x=9, y=70), polarity 1, lands there after pooling by 4."""
    write_dvs_gesture(tmp_path)
    path = tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_fluorescent" / "3.npy"
    t = np.arange(0, 100, 5)
    np.save(path, np.stack([np.full_like(t, 9), np.full_like(t, 70), np.ones_like(t), t], axis=1).astype(np.int64))
    dm = DVSGestureDataModule(root=str(tmp_path), n_time_bins=4, binary=False, cache=False)
    dm.setup()
    index = dm.test_set.source.source.data.index(str(path))  # tonic's file list, sorted by path
    x, y = dm.test_set[index]
    assert int(y) == 3 and x.shape == (4, 2, 32, 32)
    # tonic's bins: width (95 - 0) // 4 = 23 ms -> 5 events per bin, the last event is dropped
    assert x[:, 1, 70 // 4, 9 // 4].tolist() == [5.0, 5.0, 5.0, 4.0]
    assert x.sum() == 19


def test_dvs_sample_order_is_sorted_by_path(tmp_path):
    write_dvs_gesture(tmp_path)
    dm = DVSGestureDataModule(root=str(tmp_path), cache=False)
    dm.setup()
    files = dm.test_set.source.source.data
    assert files == sorted(files)
    targets = dm.test_set.source.source.targets
    assert targets == [int(Path(f).stem) for f in files]


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    write_shd(tmp_path, n_train=30, n_test=5)
    splits = []
    for seed in (1, 1, 2):
        dm = SHDDataModule(root=str(tmp_path), seed=seed, val_fraction=0.2, cache=False)
        dm.setup()
        splits.append(dm.split_indices)
    a, b, c = splits
    assert a["val"] == b["val"] and a["train"] == b["train"]
    assert a["val"] != c["val"]
    assert len(a["val"]) == 6 and sorted(a["train"] + a["val"]) == list(range(30))


def test_disk_cache_is_written_per_framing_and_reused(tmp_path):
    write_shd(tmp_path, n_train=8, n_test=4)
    # duration=None: variable-length samples use tonic's per-sample cache (fixed ones the dense cache)
    dm = SHDDataModule(root=str(tmp_path), val_fraction=0.25, duration=None)
    dm.setup()
    first = dm.test_set[1][0]
    cached = list((tmp_path / "sbnn_cache" / "SHD").glob("*/test/*.hdf5"))
    assert [p.name for p in cached] == ["1_0.hdf5"]
    # a second module reads the cache: the source file can go away
    (tmp_path / "SHD" / "shd_test.h5").rename(tmp_path / "moved.h5")
    write_shd_file(tmp_path / "SHD" / "shd_test.h5", np.arange(4) % 20, seed=99)  # different spikes
    again = SHDDataModule(root=str(tmp_path), val_fraction=0.25, duration=None)
    again.setup()
    assert torch.equal(again.test_set[1][0], first)
    other = SHDDataModule(root=str(tmp_path), val_fraction=0.25, time_window=20_000.0, duration=None)
    other.setup()
    assert other.test_set[1][0].shape[1] == 700 and other.test_set[1][0].shape[0] < first.shape[0]
    assert len(list((tmp_path / "sbnn_cache" / "SHD").iterdir())) == 2  # one folder per framing


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSeededSampler(range(50), seed=3), EpochSeededSampler(range(50), seed=3)
    a.set_epoch(4)
    first = list(a)
    assert list(a) == first  # iterating again in the same epoch: same order
    b.set_epoch(4)
    assert list(b) == first
    b.set_epoch(5)
    assert list(b) != first and sorted(b) == list(range(50))


def test_spawn_workers_load_the_same_batches(tmp_path):
    write_shd(tmp_path, n_train=8, n_test=4)
    plain = SHDDataModule(root=str(tmp_path), cache=False, batch_size=2, val_fraction=0.25)
    workers = SHDDataModule(root=str(tmp_path), cache=False, batch_size=2, val_fraction=0.25, num_workers=1)
    plain.setup(), workers.setup()
    loader = workers.test_dataloader()
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    for (x1, y1), (x2, y2) in zip(plain.test_dataloader(), loader):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_framer_rejects_empty_events():
    framer = EventFramer((700, 1, 1), time_window=1000.0)
    empty = np.zeros(0, dtype=[("t", int), ("x", int), ("p", int)])
    with pytest.raises(ValueError, match="empty"):
        framer(empty)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SHDDataModule, DVSGestureDataModule])
@pytest.mark.parametrize("root", [None, "", "  "])
def test_missing_root_is_refused(cls, root):
    with pytest.raises(ValueError, match=r"data\.root is required.*--data\.root"):
        cls(root=root)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(time_window=None, n_time_bins=None, duration=None), "exactly one of time_window"),
        (dict(time_window=-5.0), "time_window"),
        (dict(downsample=0), "downsample"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=0.0), "val_fraction"),
        (dict(n_time_bins=10, time_window=1000.0), "exactly one of time_window"),
    ],
)
def test_bad_framing_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SHDDataModule(root=str(tmp_path), **kwargs)


@pytest.mark.parametrize("cls, expected", [
    (SHDDataModule, ["SHD/shd_train.h5.zip", "SHD/shd_train.h5"]),
    (DVSGestureDataModule, ["DVSGesture/ibmGestureTrain.tar.gz", "DVSGesture/ibmGestureTrain"]),
])
def test_missing_data_without_network_names_the_files(tmp_path, cls, expected):
    dm = cls(root=str(tmp_path / "data"))
    with pytest.raises(DataMissingError) as info:
        dm.prepare_data()
    text = str(info.value)
    for name in expected:
        assert str(tmp_path / "data" / name) in text
    assert "download failed" in text and "network" in text  # tonic tried, our refusal surfaced
    assert "By hand" in text
    assert not [p for p in _files(tmp_path / "data")]  # the temporary download folder is gone


def test_missing_data_with_download_off(tmp_path):
    dm = SHDDataModule(root=str(tmp_path), download=False)
    with pytest.raises(DataMissingError, match="download=False"):
        dm.prepare_data()
    with pytest.raises(DataMissingError, match="shd_train.h5"):
        dm.setup()
    assert not _files(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_hdf5_is_reported_and_nothing_is_written(tmp_path, damage):
    write_shd(tmp_path, n_train=10, n_test=4)
    path = tmp_path / "SHD" / "shd_test.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not an hdf5 file" * 50)
    before = _files(tmp_path)
    dm = SHDDataModule(root=str(tmp_path))
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        dm.setup()
    assert str(path) in str(info.value)
    assert _files(tmp_path) == before  # no cache folder, nothing else


def test_shd_empty_sample(tmp_path):
    write_shd(tmp_path, n_train=4, n_test=4)
    _write_shd_sample(tmp_path / "SHD" / "shd_train.h5", [[0.1], [], [0.2]], [[1], [], [2]], [0, 1, 2])
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="sample 1 has no events"):
        SHDDataModule(root=str(tmp_path)).setup()
    assert _files(tmp_path) == before


def test_shd_label_out_of_range(tmp_path):
    write_shd(tmp_path, n_train=4, n_test=4)
    _write_shd_sample(tmp_path / "SHD" / "shd_test.h5", [[0.1], [0.2]], [[1], [2]], [3, 20])
    with pytest.raises(ValueError, match=r"sample 1 has label 20, outside the class range 0\.\.19"):
        SHDDataModule(root=str(tmp_path)).setup()
    assert not (tmp_path / "sbnn_cache").exists()


def test_shd_file_lacking_datasets(tmp_path):
    write_shd(tmp_path, n_train=4, n_test=4)
    with h5py.File(tmp_path / "SHD" / "shd_train.h5", "a") as f:
        del f["labels"]
    with pytest.raises(ValueError, match=r"lacks \['labels'\]"):
        SHDDataModule(root=str(tmp_path)).setup()


def test_dvs_too_few_files(tmp_path):
    write_dvs_gesture(tmp_path)
    for path in (tmp_path / "DVSGesture" / "ibmGestureTest" / "user24_fluorescent").glob("*.npy"):
        path.unlink()  # 110 - 11 = 99 files left
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=r"holds 99 \.npy files.*at least 100"):
        DVSGestureDataModule(root=str(tmp_path)).setup()
    assert _files(tmp_path) == before


def test_dvs_empty_recording(tmp_path):
    write_dvs_gesture(tmp_path)
    path = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user03_lab" / "5.npy"
    np.save(path, np.zeros((0, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="5.npy has no events"):
        DVSGestureDataModule(root=str(tmp_path)).setup()
    assert not (tmp_path / "sbnn_cache").exists()


def test_dvs_label_out_of_range(tmp_path):
    write_dvs_gesture(tmp_path)
    folder = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user03_lab"
    (folder / "5.npy").rename(folder / "11.npy")
    with pytest.raises(ValueError, match=r"label 11 is outside the class range 0\.\.10"):
        DVSGestureDataModule(root=str(tmp_path)).setup()


def test_dvs_wrong_array_shape(tmp_path):
    write_dvs_gesture(tmp_path)
    np.save(tmp_path / "DVSGesture" / "ibmGestureTrain" / "user03_lab" / "5.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"expected an \[N, 4\] array"):
        DVSGestureDataModule(root=str(tmp_path)).setup()


def test_cache_files_appear_atomically_and_a_broken_one_is_rebuilt(tmp_path, monkeypatch):
    import tonic.cached_dataset as tcd

    write_shd(tmp_path, n_train=8, n_test=4)
    dm = SHDDataModule(root=str(tmp_path), val_fraction=0.25, duration=None)  # tonic's per-sample cache
    dm.setup()
    folder = Path(dm.test_set.source.cached.cache_path)
    written = []
    save = tcd.save_to_disk_cache
    monkeypatch.setattr(tcd, "save_to_disk_cache", lambda *a, file_path, **k: written.append(file_path) or save(*a, file_path=file_path, **k))
    first = dm.test_set[2][0]
    assert written and Path(written[0]).parent == folder and Path(written[0]).name != "2_0.hdf5"
    assert sorted(p.name for p in folder.iterdir()) == ["2_0.hdf5"]  # renamed into place, no temp left
    (folder / "2_0.hdf5").write_bytes(b"half-written")  # e.g. a crash of a non-atomic writer
    assert torch.equal(dm.test_set[2][0], first)
    assert len(written) == 2 and sorted(p.name for p in folder.iterdir()) == ["2_0.hdf5"]

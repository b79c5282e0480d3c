"""Corrupt event data is refused before framing: the file, the sample and the field are named."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from sbnn.data import CorruptEventsError, DVSGestureDataModule, SHDDataModule, check_event_array, check_spike_sample
from sbnn.data._fixtures import write_dvs_gesture, write_shd
from sbnn.kernels.api import events_from_tonic


def _events(t, x, y=None, p=None, t_dtype="<f8"):
    fields = [("t", t_dtype), ("x", "<i8")] + ([("y", "<i8")] if y is not None else []) + ([("p", "<i8")] if p is not None else [])
    ev = np.zeros(len(t), dtype=fields)
    ev["t"], ev["x"] = t, x
    if y is not None:
        ev["y"] = y
    if p is not None:
        ev["p"] = p
    return ev


@pytest.mark.parametrize(
    "events, match",
    [
        (_events([0.0, np.nan, 3.0], [0, 1, 2]), r"field t of event 1 is nan"),
        (_events([0.0, 1.0, np.inf], [0, 1, 2]), r"field t of event 2 is inf"),
        (_events([0.0, 1e19], [0, 1]), r"field t of event 1 .* past the int64 range"),
        (_events([0.0, -5.0], [0, 1]), r"field t of event 1 is negative"),
        (_events([0.0, 5.0, 3.0], [0, 1, 2]), r"field t is not sorted: event 2"),
        (_events([0, 1, 2], [0, -3, 1], [0, 0, 0], [0, 1, 0]), r"field x of event 1 is -3, outside the sensor \(0\.\.3"),
        (_events([0, 1, 2], [0, 1, 1], [0, 0, 4], [0, 1, 0]), r"field y of event 2 is 4, outside"),
        (_events([0, 1], [0, 1], [0, 0], [0, 2]), r"field p of event 1 is 2, outside"),
    ],
)
def test_check_event_array_names_the_event_and_field(events, match):
    with pytest.raises(CorruptEventsError, match=match) as info:
        check_event_array(events, (4, 4, 2), where="rec.npy")
    assert str(info.value).startswith("rec.npy: ")


def test_check_event_array_accepts_good_events():
    check_event_array(_events([0, 1, 1, 7], [0, 3, 2, 1], [3, 0, 0, 1], [1, 0, 1, 0]), (4, 4, 2))
    # a single polarity value of any kind on a single-polarity sensor (tonic's SHD writes p = 1)
    check_event_array(_events([0, 1], [0, 3], None, [1, 1]), (4, 1, 1))


@pytest.mark.parametrize(
    "times, units, match",
    [
        ([0.1, np.nan], [1, 2], r"sample 7 spikes/times: field t of event 1 is nan"),
        ([0.1, np.inf], [1, 2], r"field t of event 1 is inf"),
        ([0.3, 0.1], [1, 2], r"field t is not sorted: event 1"),
        ([0.1, 0.2, 0.3], [1, 2], r"spikes/times has 3 entries but spikes/units has 2"),
        ([0.1, 0.2], [1, 700], r"field units of event 1 is 700, outside the sensor \(0\.\.699"),
        ([0.1, 1e14], [1, 2], r"past the int64 range"),
    ],
)
def test_check_spike_sample(times, units, match):
    with pytest.raises(CorruptEventsError, match=match):
        check_spike_sample(np.array(times), np.array(units), 700, where="shd_train.h5: sample 7")


def _files(root: Path) -> set[Path]:
    return set(Path(root).rglob("*"))


def _rewrite_shd(path: Path, times: list[np.ndarray], units: list[np.ndarray], times_dtype=np.float32) -> None:
    with h5py.File(path, "w") as f:
        t = f.create_dataset("spikes/times", (len(times),), dtype=h5py.vlen_dtype(times_dtype))
        u = f.create_dataset("spikes/units", (len(units),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (ti, ui) in enumerate(zip(times, units)):
            t[i], u[i] = np.asarray(ti, dtype=times_dtype), np.asarray(ui, dtype=np.uint16)
        f.create_dataset("labels", data=np.arange(len(times), dtype=np.uint16) % 20)
        f.create_dataset("extra/keys", data=np.array([b"k"] * 20))
        f.create_dataset("extra/speaker", data=np.zeros(len(times), dtype=np.uint16))


@pytest.mark.parametrize(
    "bad_times, bad_units, match",
    [
        ([0.1, np.nan], [1, 2], "field t of event 1 is nan"),
        ([0.1, np.inf], [1, 2], "field t of event 1 is inf"),
        ([0.5, 0.2], [1, 2], "not sorted"),
        ([0.1, 0.2, 0.3], [1, 2], "3 entries but spikes/units has 2"),
    ],
)
def test_shd_setup_refuses_corrupt_samples_before_writing(tmp_path, bad_times, bad_units, match):
    write_shd(tmp_path, n_train=4, n_test=4)
    path = tmp_path / "SHD" / "shd_train.h5"
    good_t, good_u = [0.1, 0.2], [3, 4]
    _rewrite_shd(path, [good_t, good_t, bad_times, good_t], [good_u, good_u, bad_units, good_u])
    before = _files(tmp_path)
    with pytest.raises(CorruptEventsError, match=match) as info:
        SHDDataModule(root=str(tmp_path)).setup()
    assert f"{path}: sample 2" in str(info.value)
    assert _files(tmp_path) == before  # no cache written


@pytest.mark.parametrize(
    "column, value, match",
    [(0, -3, "field x of event 4 is -3"), (0, 500, "field x of event 4 is 500"), (1, 128, "field y of event 4 is 128"),
     (3, np.nan, "field t of event 4 is nan"), (3, 1e17, "past the int64 range")],
)
def test_dvs_setup_refuses_corrupt_events_before_writing(tmp_path, column, value, match):
    write_dvs_gesture(tmp_path)
    path = tmp_path / "DVSGesture" / "ibmGestureTrain" / "user03_lab" / "5.npy"
    arr = np.load(path).astype(np.float64)
    arr[4, column] = value
    np.save(path, arr)
    before = _files(tmp_path)
    with pytest.raises(CorruptEventsError, match=match) as info:
        DVSGestureDataModule(root=str(tmp_path)).setup()
    assert str(path) in str(info.value)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("t", [np.nan, np.inf, 1e19])
def test_engine_entry_point_refuses_bad_times(t):
    ev = _events([0.0, 5.0, t], [0, 1, 2], None, [0, 0, 0])
    with pytest.raises(CorruptEventsError, match="field t of event 2"):
        events_from_tonic(ev, (4, 1, 1), n_steps=3, time_window=10.0)

"""MNIST IDX reading on generated fixtures, and the sbnn-hybrid console script."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sbnn.hybrid.data import PAIR_TASKS, mnist_split, pair_task, read_idx, write_idx


def _write_mnist(root, n_train=20, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in files.items():
        write_idx(root / name, arr)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress((root / name).read_bytes()))
            (root / name).unlink()
    return files


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_fixture_round_trip(tmp_path, gz):
    files = _write_mnist(tmp_path, gz=gz)
    split = mnist_split(tmp_path)
    assert split.x_train.shape == (20, 1, 28, 28) and split.x_test.shape == (10, 1, 28, 28)
    torch.testing.assert_close(split.x_train[3, 0], torch.tensor(files["train-images-idx3-ubyte"][3] / 255.0, dtype=torch.float32))
    assert split.y_test.tolist() == list(range(10))
    x, y = pair_task(split.x_train, split.y_train, PAIR_TASKS[1])
    assert len(x) == 4 and y.tolist() == [0, 1, 0, 1]


def test_idx_bad_files_are_named(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 3), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="promises dims"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        mnist_split(tmp_path)


def test_console_script_writes_table_and_plot(tmp_path):
    cmd = [sys.executable, "-m", "sbnn.hybrid.bench", "--out", str(tmp_path), "--vae-epochs", "1", "--epochs", "1", "--no-federated"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr
    table = json.loads((tmp_path / "hybnn_table.json").read_text())
    assert list(table) == ["0/1", "2/3", "4/5", "6/7", "8/9"]
    assert all(0.0 <= v <= 1.0 for row in table.values() for v in row.values())
    assert "HyBNN-SBNN" in run.stdout
    if importlib.util.find_spec("matplotlib") is not None:  # the plot extra; CI runs without it
        assert (tmp_path / "hybnn_table.png").stat().st_size > 0
    else:
        assert "pip install 'sbnn[plot]'" in run.stdout and not (tmp_path / "hybnn_table.png").exists()


def test_console_script_rejects_bad_arguments(tmp_path):
    run = subprocess.run([sys.executable, "-m", "sbnn.hybrid.bench", "--out", str(tmp_path), "--epochs", "0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--epochs must be >= 1" in run.stderr
    assert not (tmp_path / "hybnn_table.json").exists()

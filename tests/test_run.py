"""The ``sbnn-run`` console script: accuracy equals the PyTorch ``mode`` network's; clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn import evaluation, export
from sbnn.data import RandmanDataModule
from sbnn.models import NeuronSettings, SpikingMLP
from sbnn.run import parse_data_args, resolve_data_module, run

DATA = ["--data-arg", "n_channels=30", "--data-arg", "n_steps=20", "--data-arg", "n_train=10",
        "--data-arg", "n_val=10", "--data-arg", "n_test=40", "--data-arg", "batch_size=16"]


@pytest.fixture
def model_file(tmp_path):
    net = SpikingMLP(30, (40,), 10, readout='spike_count', neuron=NeuronSettings(beta=0.5))
    with torch.no_grad():  # power-of-two scales: the torch mode path is exact (see docs/kernels.md)
        net.layers[0].log_scale.fill_(math.log(1.0))  # ~15 % hidden and ~19 % output firing
        net.output.log_scale.fill_(math.log(0.5))
    return net, export.save(net, tmp_path / "m.sbnn")


@pytest.mark.parametrize("weights", ["packed", "int8"])
def test_accuracy_matches_torch_mode(model_file, capsys, weights):
    net, path = model_file
    result = run([str(path), "--data", "randman", "--weights", weights, *DATA])
    dm = RandmanDataModule(n_channels=30, n_steps=20, n_train=10, n_val=10, n_test=40, batch_size=16)
    dm.setup("test")
    correct = 0
    with evaluation(net, "mode"), torch.no_grad():
        for x, y in dm.test_dataloader():
            correct += int((net(x).argmax(1) == y).sum())
    assert result["samples"] == 40
    assert min(result["rates"]) > 0.05  # not a silent network (argmax of all-zero counts)
    assert result["accuracy"] == correct / 40
    out = capsys.readouterr().out
    assert "accuracy" in out and "samples/s" in out and "layer 0 Dense" in out


def test_limit(model_file):
    _, path = model_file
    assert run([str(path), "--data", "sbnn.data.RandmanDataModule", "--limit", "5", *DATA])["samples"] == 5


def test_wrong_input_size_is_reported(model_file):
    _, path = model_file
    args = [str(path), "--data", "randman", *DATA]
    args[args.index("n_channels=30")] = "n_channels=31"
    with pytest.raises(SystemExit, match="shape \\(31,\\) per step, the model takes \\(30,\\)"):
        run(args)


def test_bad_data_arguments():
    with pytest.raises(ValueError, match="neither a known name"):
        resolve_data_module("shd")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_data_module("sbnn.data.NoSuchModule")
    with pytest.raises(ValueError, match="key=value"):
        parse_data_args(["n_steps"])
    assert parse_data_args(["a=3", "b=rate", "c=[1, 2]"]) == {"a": 3, "b": "rate", "c": [1, 2]}


def test_bad_model_file(tmp_path):
    bad = tmp_path / "bad.sbnn"
    bad.write_bytes(b"nonsense")
    with pytest.raises(SystemExit, match="bad magic"):
        run([str(bad), "--data", "randman"])

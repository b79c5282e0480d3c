"""NeuroBench's own metric implementations on sbnn's deployed networks agree with the engine.

Both routes into NeuroBench's ``SNNTorchModel`` are checked: the direct snnTorch network
(``route="direct"``, every graph) and snnTorch's NIR import (``route="nir"``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("nir")
pytest.importorskip("neurobench")
pytest.importorskip("snntorch.import_nir")

from sbnn.data._fixtures import write_dvs_frames  # noqa: E402
from sbnn.data.randman import make_randman  # noqa: E402
from sbnn.export import network_from_config, to_graph  # noqa: E402
from sbnn.interop.neurobench import engine_statistics, neurobench_metrics  # noqa: E402
from sbnn.interop.nir import NIRConversionError  # noqa: E402
from sbnn.kernels.engine import Engine  # noqa: E402
from sbnn.models import LayerSettings, NeuronSettings, SpikingConvNet, SpikingMLP, SpikingRecurrentNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def randman():
    x, y = make_randman(n_classes=4, n_channels=20, n_steps=30, n_samples_per_class=6, seed=0)
    return x.transpose(0, 1).numpy(), y.numpy()  # time-major [T, B, C]


@pytest.mark.parametrize("route", ["direct", "nir"])
def test_mlp_metrics_agree_with_the_engine(randman, route):
    x, y = randman
    torch.manual_seed(0)
    net = SpikingMLP(20, [32, 16], 4, neuron=NeuronSettings(reset_mechanism="zero", beta=0.9, threshold=0.3), readout="spike_count")
    nb = neurobench_metrics(net, x, y, route=route)
    ours = engine_statistics(net, x)
    assert 0.0 < ours["activation_sparsity"] < 1.0 and ours["synops_per_sample"] > 0
    assert nb["ActivationSparsity"] == pytest.approx(ours["activation_sparsity"], abs=1e-12)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["synops_per_sample"], abs=1e-9)
    assert nb["SynapticOperations"]["Effective_MACs"] == 0  # binary input: accumulations only
    assert nb["SynapticOperations"]["Dense"] == pytest.approx(ours["dense_synops_per_sample"])
    assert nb["ConnectionSparsity"] == 0.0  # ±α weights are never zero
    # the footprint differs by design: NeuroBench counts float32 weights, the file one bit each
    assert nb["Footprint"] >= 4 * ours["weights"] > ours["file_bytes"] > ours["weights"] / 8
    # accuracy: NeuroBench's on the summed output spikes equals the engine's argmax of spike counts
    counts = Engine(to_graph(net)).run(x).output
    assert nb["ClassificationAccuracy"] == pytest.approx(float((counts.argmax(1) == y).mean()))


@pytest.mark.parametrize("route", ["direct", "nir"])
def test_conv_metrics_agree_with_the_engine(route):
    rng = np.random.default_rng(0)
    x = (rng.random((8, 5, 2, 8, 8)) < 0.2).astype(np.float32)
    torch.manual_seed(1)
    net = SpikingConvNet(2, 8, channels=(4,), fc=(), num_classes=3, pool=1,
                         neuron=NeuronSettings(reset_mechanism="zero", threshold=0.5), readout="spike_count")
    nb = neurobench_metrics(net, x, route=route)
    ours = engine_statistics(net, x)
    assert nb["ActivationSparsity"] == pytest.approx(ours["activation_sparsity"], abs=1e-12)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["synops_per_sample"], abs=1e-9)


def _calibrated(net, x):
    with warnings.catch_warnings():  # the tests check the activity themselves
        warnings.simplefilter("ignore", RuntimeWarning)
        net.calibrate(torch.as_tensor(x))
    return net


def _agree(nb: dict, ours: dict) -> None:
    assert 0.0 < ours["activation_sparsity"] < 1.0 and ours["synops_per_sample"] > 0
    assert nb["ActivationSparsity"] == pytest.approx(ours["activation_sparsity"], abs=1e-12)
    assert nb["SynapticOperations"]["Effective_ACs"] == pytest.approx(ours["synops_per_sample"], abs=1e-9)
    assert nb["SynapticOperations"]["Effective_MACs"] == 0
    assert nb["SynapticOperations"]["Dense"] == pytest.approx(ours["dense_synops_per_sample"], abs=1e-9)
    assert nb["ConnectionSparsity"] == 0.0
    assert nb["Footprint"] >= 4 * ours["weights"]  # float32 ±1 weights; the .sbnn file holds 1 bit each


def test_dvs_style_conv_net_through_the_direct_route():
    """Max pooling, subtract reset, membrane readout: the network of recipes/dvs_gesture_frames.yaml, small."""
    rng = np.random.default_rng(2)
    x = (rng.random((8, 7, 2, 8, 8)) < 0.3).astype(np.float32)
    torch.manual_seed(2)
    net = _calibrated(SpikingConvNet(2, 8, (4, 6), 3, fc=(5,), pool=2, pool_type="max", readout="membrane", readout_beta=0.9,
                                     neuron=NeuronSettings(beta=0.9, threshold=1.0), layer=LayerSettings(bias=True)), x)
    # labels: the engine's predictions on samples 1, 3, 5, another class on the others
    y = engine_statistics(net, x)["output"].argmax(1)
    y[::2] = (y[::2] + 1) % 3
    ours = engine_statistics(net, x, y, batch_size=2)
    assert ours["accuracy"] == pytest.approx(3 / 7)
    nb = neurobench_metrics(net, x, y, batch_size=3)  # batches of 3, 3 and 1: NeuroBench's means weight them
    _agree(nb, ours)
    # accuracy: the time-averaged readout membrane's argmax, sample by sample as the engine's logits
    # (NeuroBench averages each batch in float32)
    assert nb["ClassificationAccuracy"] == pytest.approx(3 / 7, abs=1e-6)
    whole = neurobench_metrics(net, x, y, batch_size=None)
    for key in ("ActivationSparsity", "ClassificationAccuracy"):
        assert whole[key] == pytest.approx(nb[key], abs=1e-6)
    assert whole["SynapticOperations"] == nb["SynapticOperations"]
    # the engine's counts do not depend on its batching either
    assert engine_statistics(net, x)["synops_per_sample"] == ours["synops_per_sample"]
    np.testing.assert_array_equal(engine_statistics(net, x)["output"], ours["output"])


def test_recurrent_net_through_the_direct_route():
    """The recurrent synapses are an nn.Linear on S[t−1]: NeuroBench counts their operations as the engine does."""
    rng = np.random.default_rng(3)
    x = (rng.random((12, 6, 10)) < 0.3).astype(np.float32)
    torch.manual_seed(3)
    net = _calibrated(SpikingRecurrentNet(10, (8, 6), 3), x)
    y = engine_statistics(net, x)["output"].argmax(1)
    y[:2] = (y[:2] + 1) % 3
    ours = engine_statistics(net, x, y)
    nb = neurobench_metrics(net, x, y, batch_size=4)
    _agree(nb, ours)
    assert ours["accuracy"] == pytest.approx(4 / 6) and nb["ClassificationAccuracy"] == pytest.approx(4 / 6, abs=1e-6)


def test_membrane_readout_is_refused_with_the_fix():
    net = SpikingMLP(4, [3], 2, neuron=NeuronSettings(reset_mechanism="zero"))  # membrane readout: an LI node snnTorch lacks
    with pytest.raises(NIRConversionError, match="route='direct'"):
        neurobench_metrics(net, np.zeros((2, 1, 4), np.float32), route="nir")


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (lambda: SpikingConvNet(2, 8, (4,), 3, fc=(), pool=2, readout="spike_count", neuron=NeuronSettings(reset_mechanism="zero")),
         "MaxPool2d"),
        (lambda: SpikingRecurrentNet(4, (3,), 2, readout="spike_count", neuron=NeuronSettings(reset_mechanism="zero")),
         "recurrent synapses"),
        (lambda: SpikingMLP(4, [3], 2, readout="spike_count"), "subtract"),
    ],
)
def test_nir_route_refuses_what_snntorch_import_cannot_run(net, match):
    with pytest.raises(NIRConversionError, match=match):
        neurobench_metrics(net(), np.zeros((2, 1, *to_graph(net()).input_shape), np.float32), route="nir")


def test_bad_arguments_are_named():
    net = SpikingMLP(4, [3], 2)
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="route: expected one of"):
        neurobench_metrics(net, x, route="auto")
    with pytest.raises(ValueError, match=r"x must be time-major \[T, B, 4\]"):
        neurobench_metrics(net, np.zeros((2, 3, 5), np.float32))
    with pytest.raises(ValueError, match=r"labels must be \[B\] = \[3\]"):
        neurobench_metrics(net, x, np.zeros(4))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        neurobench_metrics(net, x, batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        engine_statistics(net, x, batch_size=-1)


# -- benchmarks/neurobench_metrics.py on DVS Gesture frames ---------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("neurobench_metrics_script", ROOT / "benchmarks" / "neurobench_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dvs_run(tmp_path, binary: bool = True) -> list[str]:
    """A checkpoint of the DVS recipe (shrunk) and its config, on a generated frame folder.

    ``binary`` clamps the frames to spikes (the recipe keeps event counts), where NeuroBench's
    effective ACs and the engine's synaptic operations count the same events."""
    root = write_dvs_frames(tmp_path / "DVSGC_frames_number_49_split_by_number", (1, 1, 2), classes=(0, 4, 7), n_frames=8)
    config = yaml.safe_load((ROOT / "recipes" / "dvs_gesture_frames.yaml").read_text())
    config["model"]["init_args"]["network"]["init_args"].update(channels=[4, 4], fc=[8])
    config["data"]["init_args"].update(root=str(root), n_time_bins=4, cache_dir=str(tmp_path / "cache"), binary=binary)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    net = network_from_config(cfg)
    torch.manual_seed(0)
    _calibrated(net, (torch.rand(4, 6, 2, 32, 32) < 0.05).float())
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"network.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    return [str(ckpt), "--config", str(cfg), "--data", "dvs_frames", "--batch-size", "4"]


def _check_table(stdout: str, binary: bool = True) -> None:
    assert "dvs_frames: 6 test samples, T = 4, input (2, 32, 32)" in stdout and "membrane readout, route = direct" in stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]] for line in stdout.splitlines() if line.startswith("| ")}
    for name in ("activation sparsity", "dense synops / sample", "accuracy (test, `mode`)"):
        assert rows[name][0] == rows[name][1], name
    assert 0.0 < float(rows["activation sparsity"][0]) < 1.0
    acs, synops = (float(v) for v in rows["effective ACs / sample"])
    if binary:
        assert acs == synops and rows["effective MACs / sample"][1] == "0 (binary input)"
    else:  # NeuroBench counts the first layer's count input as MACs; the engine each count as an event
        assert float(rows["effective MACs / sample"][0]) > 0 and synops > acs
        assert rows["effective MACs / sample"][1] == "(counts: events)"


@pytest.mark.parametrize("binary", [True, False])
def test_script_on_dvs_frames(tmp_path, capsys, binary):
    """The test split of a frame folder through DVSGestureFramesDataModule, both measures agreeing."""
    args = _dvs_run(tmp_path, binary)
    script = _script()
    script.main(args)
    _check_table(capsys.readouterr().out, binary)
    assert any((tmp_path / "cache").rglob("test-*.npz"))  # read through the data module, with the config's cache_dir
    # a missing frame folder is named before any work; the NIR route refuses the subtract reset, naming the fix
    with pytest.raises(SystemExit, match="nowhere"):
        script.main([*args, "--root", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="graph node 0: LIF subtract.*route='direct'"):
        script.main([*args, "--route", "nir"])


@pytest.mark.slow
def test_script_subprocess_on_dvs_frames(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "neurobench_metrics.py"), *_dvs_run(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    _check_table(out.stdout)
    bad = subprocess.run([*cmd, "--root", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "nowhere" in bad.stderr

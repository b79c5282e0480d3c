"""The event-data nets (SHD's recurrent net, DVS Gesture's conv net) deploy bit-identically.

export → save → load → ``Engine.run`` gives the hidden spikes of the PyTorch ``mode`` forward bit
for bit, identical spike-count outputs and membrane logits to float32 rounding (as for
``SpikingMLP`` in ``test_engine.py``); settings the engine cannot run exactly are refused at export.
"""

from __future__ import annotations

import math
import socket
import warnings

import numpy as np
import pytest
import torch
import yaml

from sbnn import evaluation, export
from sbnn.data import SHDDataModule
from sbnn.data._fixtures import write_shd
from sbnn.data.events import EventFramer
from sbnn.kernels import Conv2d, Dense, MaxPool2d
from sbnn.kernels.api import events_from_tonic
from sbnn.models import LayerSettings, NeuronSettings, SpikingConvNet, SpikingRecurrentNet
from sbnn.tasks import SpikingClassificationTask
from sbnn.run import run


def spikes(shape: tuple[int, ...], rate: float, generator: torch.Generator) -> torch.Tensor:
    """Bernoulli(rate) 0/1 float32 spikes."""
    return (torch.rand(shape, generator=generator) < rate).float()


def _biases_(net: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1, generator=generator)


def _not_powers_of_two(net: torch.nn.Module) -> bool:
    scales = [float(m.scale.detach().flatten()[0]) for m in net.modules() if hasattr(m, "log_scale")]
    return all(abs(math.log2(s) - round(math.log2(s))) > 1e-3 for s in scales)


def _deploy(net: torch.nn.Module, tmp_path, weights: str = "auto"):
    """export → save → load: the engine runs what is in the file, not the in-memory graph."""
    return export.load(export.save(net, tmp_path / "net.sbnn"), weights=weights)


def _check(net, engine, x, hidden_nodes):
    with evaluation(net, "mode"), torch.no_grad():
        logits, hidden = net.forward_with_spikes(x)
    out = engine.run(x, record=True)
    assert len(hidden) == len(hidden_nodes)
    for k, (node, h) in enumerate(zip(hidden_nodes, hidden)):
        np.testing.assert_array_equal(out.spikes[node], h.numpy().astype(np.uint8), err_msg=f"hidden layer {k} (node {node})")
    if engine.graph.readout == "spike_count":
        assert out.output.dtype == np.int64
        np.testing.assert_array_equal(out.output, logits.numpy().astype(np.int64))
    else:
        # the readout sums over time in a different order than torch: equal to float32 rounding
        np.testing.assert_allclose(out.output, logits.numpy(), rtol=1e-5, atol=1e-5)
    return hidden


# -- SpikingRecurrentNet -------------------------------------------------------------------------
def _recurrent_net(gen, **kw) -> SpikingRecurrentNet:
    net = SpikingRecurrentNet(24, (33, 18), 5, layer=LayerSettings(bias=True), **kw)
    _calibrate(net, spikes((20, 16, 24), 0.2, gen))  # data-dependent scales: not powers of two
    _biases_(net, gen)
    return net


def _calibrate(net, x) -> None:
    """Calibrate, ignoring the silent-layer warning: these tests check the activity themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        net.calibrate(x)


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 1.0])
def test_recurrent_net_bit_identical(gen, tmp_path, readout, rate):
    net = _recurrent_net(gen, readout=readout, readout_beta=0.85, neuron=NeuronSettings(beta=0.9))
    assert _not_powers_of_two(net)
    engine = _deploy(net, tmp_path)
    assert [type(n) for n in engine.graph.nodes] == [Dense, Dense, Dense]
    assert all(n.recurrent is not None for n in engine.graph.nodes[:2])
    x = spikes((30, 5, 24), rate, gen)
    hidden = _check(net, engine, x, [0, 1])
    if rate == 0.3:  # the comparison is not vacuous: the layers fire, and the recurrence matters
        assert all(0.01 < float(h.mean()) < 0.9 for h in hidden)
        with torch.no_grad():
            net.recurrent[0].lam.neg_()
        with evaluation(net, "mode"), torch.no_grad():
            changed = net.forward_with_spikes(x)[1][0]
        assert not torch.equal(changed, hidden[0])


@pytest.mark.parametrize("weights", ["packed", "int8"])
@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
def test_recurrent_net_resets_counts_and_formats(gen, tmp_path, weights, reset):
    # integer counts as input (binary_input=False, SHD with binary=False), both kernel formats
    net = _recurrent_net(gen, readout='spike_count', binary_input=False, neuron=NeuronSettings(reset_mechanism=reset, beta=0.75))
    x = torch.poisson(torch.full((25, 4, 24), 0.3), generator=gen)
    assert float(x.max()) > 1
    hidden = _check(net, _deploy(net, tmp_path, weights), x, [0, 1])
    assert all(float(h.sum()) > 0 for h in hidden)


def test_feed_forward_recurrent_net(gen, tmp_path):
    net = _recurrent_net(gen, recurrent=False)
    engine = _deploy(net, tmp_path)
    assert all(n.recurrent is None for n in engine.graph.nodes)
    _check(net, engine, spikes((20, 3, 24), 0.2, gen), [0, 1])


def test_recurrent_bias_is_refused(gen):
    net = SpikingRecurrentNet(10, (8,), 3)
    net.recurrent[0].bias = torch.nn.Parameter(torch.zeros(8))
    with pytest.raises(ValueError, match=r"recurrent\[0\] has a bias"):
        export.to_graph(net)


# -- SpikingConvNet ------------------------------------------------------------------------------
def _conv_net(gen, x, **kw) -> SpikingConvNet:
    kw = {"layer": LayerSettings(bias=True), "fc": (13,), "channels": (6, 5), **kw}
    net = SpikingConvNet(2, (10, 12), num_classes=4, **kw)
    _calibrate(net, x)
    _biases_(net, gen)
    return net


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3, 1.0])
def test_conv_net_bit_identical(gen, tmp_path, readout, rate):
    net = _conv_net(gen, spikes((10, 8, 2, 10, 12), 0.2, gen), readout=readout, readout_beta=0.8)
    assert _not_powers_of_two(net)
    engine = _deploy(net, tmp_path)
    assert [type(n) for n in engine.graph.nodes] == [Conv2d, MaxPool2d, Conv2d, MaxPool2d, Dense, Dense]
    x = spikes((12, 3, 2, 10, 12), rate, gen)
    hidden = _check(net, engine, x, [0, 2, 4])
    if rate == 0.3:
        assert all(0.01 < float(h.mean()) < 0.9 for h in hidden)


@pytest.mark.parametrize("weights", ["packed", "int8"])
def test_conv_net_counts_no_pool_no_fc(gen, tmp_path, weights):
    # frame counts (DVS Gesture with binary=False), pool=1 (no pooling node), readout on the conv maps
    x = torch.poisson(torch.full((10, 3, 2, 10, 12), 0.4), generator=gen)
    net = _conv_net(gen, x, pool=1, fc=(), readout='spike_count', kernel_size=5, neuron=NeuronSettings(reset_mechanism='zero'))
    engine = _deploy(net, tmp_path, weights)
    assert [type(n) for n in engine.graph.nodes] == [Conv2d, Conv2d, Dense]
    hidden = _check(net, engine, x, [0, 1])
    assert all(float(h.sum()) > 0 for h in hidden)


def test_average_pooling_is_refused():
    net = SpikingConvNet(2, 8, (4,), 3, pool_type="avg")
    with pytest.raises(ValueError, match="pool_type='avg' cannot be exported.*pool_type='max'"):
        export.to_graph(net)
    export.to_graph(SpikingConvNet(2, 8, (4,), 3, pool_type="avg", pool=1))  # no pooling: fine


# -- checkpoints ---------------------------------------------------------------------------------
def test_export_checkpoint_of_shd_recipe(gen, tmp_path, capsys):
    """A Lightning checkpoint of the SHD recipe's network, architecture read from the run's config."""
    with open("recipes/shd.yaml") as f:
        config = yaml.safe_load(f)
    net_spec = config["model"]["init_args"]["network"]
    assert net_spec["class_path"] == "sbnn.models.SpikingRecurrentNet"
    net_spec["init_args"].update(in_features=24, hidden=[16])  # small, otherwise the recipe's settings
    run_dir = tmp_path / "logs" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    net = export.network_from_config(run_dir / "config.yaml")
    net.calibrate(spikes((20, 8, 24), 0.2, gen))
    task = SpikingClassificationTask(net, train_size=10)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": task.state_dict()}, ckpt)
    export.main([str(ckpt), str(tmp_path / "shd.sbnn")])
    assert "wrote" in capsys.readouterr().out
    engine = export.load(tmp_path / "shd.sbnn")
    assert engine.graph.meta["model"] == "SpikingRecurrentNet"
    _check(net, engine, spikes((25, 4, 24), 0.2, gen), [0])


# -- framing and sbnn-run ------------------------------------------------------------------------
def _events(rng, n, sensor, t_max, window):
    dtype = [("x", "<i8"), ("y", "<i8"), ("p", "<i8"), ("t", "<i8")]
    ev = np.zeros(n, dtype=dtype)
    t = rng.integers(0, t_max, n)
    t[: n // 4] = rng.integers(0, t_max // window, n // 4) * window  # exactly on window edges
    ev["t"] = np.sort(t)
    ev["x"] = rng.integers(0, sensor[0], n)
    ev["y"] = rng.integers(0, sensor[1], n)
    ev["p"] = rng.integers(0, sensor[2], n)
    return ev


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("sensor", [(50, 1, 1), (9, 7, 2)])
def test_events_from_tonic_matches_data_module_framing(np_rng, sensor, binary):
    """The engine's event binning gives the frames of the data modules' ``ToFrame`` (time-window framing)."""
    window, duration = 10_000.0, 300_000.0
    ev = _events(np_rng, 2_000, sensor, 330_000, 10_000)  # events after `duration` are dropped by both
    if sensor[1] == 1:
        ev = ev[["x", "p", "t"]]  # SHD's fields, with tonic's artificial polarity 1
        ev["p"] = 1
    for start_at_zero in (True, False):
        framer = EventFramer(sensor, time_window=window, duration=duration, start_at_zero=start_at_zero)
        frames = framer(ev).astype(np.int64)
        if binary:
            frames = np.minimum(frames, 1)
        start = 0.0 if start_at_zero else float(ev["t"][0])
        csr = events_from_tonic(ev, sensor, n_steps=frames.shape[0], time_window=window, start=start, binary=binary)
        dense = np.zeros((frames.shape[0], csr.n_in), np.int64)
        for t in range(frames.shape[0]):
            np.add.at(dense[t], csr.idx[csr.ptr[t]: csr.ptr[t + 1]], 1)
        assert frames.shape[0] == 30
        np.testing.assert_array_equal(dense, frames.reshape(frames.shape[0], -1))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_sbnn_run_on_shd_fixture(gen, tmp_path, no_network, capsys):
    root = write_shd(tmp_path / "data", n_train=10, n_test=12, spikes=(200, 400))
    data = dict(root=str(root), downsample=20, batch_size=5, download=False)  # 700 channels → 35
    dm = SHDDataModule(**data)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    net = SpikingRecurrentNet(35, (24,), 20, layer=LayerSettings(bias=True))
    net.calibrate(batches[0][0])
    path = export.save(net, tmp_path / "shd.sbnn")
    correct, agree = 0, 0
    engine = export.load(path)
    with evaluation(net, "mode"), torch.no_grad():
        for x, y in batches:
            logits, hidden = net.forward_with_spikes(x)
            out = engine.run(x, record=True)
            np.testing.assert_array_equal(out.spikes[0], hidden[0].numpy().astype(np.uint8))
            agree += int((out.output.argmax(1) == logits.argmax(1).numpy()).sum())
            correct += int((logits.argmax(1) == y).sum())
    assert agree == 12
    # the raw tonic events through the engine's own binning give the data module's frames
    from tonic.datasets import SHD

    raw = SHD(str(root), train=False)
    for i in (0, 7):
        ev = raw[i][0].copy()
        ev["x"] //= 20  # the data module's down-sampling
        a = engine.run_events(ev, dm.framer.frame_sensor_size, n_steps=100, time_window=10_000.0, record=True)
        b = engine.run(dm.test_set[i][0][:, None], record=True)
        assert a.stats[0].input_events == b.stats[0].input_events > 0
        np.testing.assert_array_equal(a.spikes[0], b.spikes[0])
        np.testing.assert_array_equal(a.output, b.output)
    args = [str(path), "--data", "sbnn.data.SHDDataModule", *(f"--data-arg={k}={v}" for k, v in data.items())]
    result = run(args)
    assert result["samples"] == 12 and result["accuracy"] == correct / 12
    assert result["rates"][0] > 0.01
    assert "layer 0 Dense" in capsys.readouterr().out


@pytest.mark.parametrize("framing", [{}, {"time_window": 100_000.0, "duration": 1_500_000.0, "binary": False}])
def test_sbnn_run_on_dvs_gesture_fixture(tmp_path, no_network, framing):
    """DVS Gesture frames (bins, or time windows of counts) through an exported SpikingConvNet."""
    from sbnn.data import DVSGestureDataModule
    from sbnn.data._fixtures import write_dvs_gesture

    root = write_dvs_gesture(tmp_path / "data", n_events=300)
    data = dict(root=str(root), downsample=8, batch_size=32, download=False, **framing)  # 128×128 → 16×16
    dm = DVSGestureDataModule(**data)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    net = SpikingConvNet(2, 16, (4,), 11, fc=(16,), readout="spike_count")
    net.calibrate(batches[0][0])
    path = export.save(net, tmp_path / "dvs.sbnn")
    engine = export.load(path)
    correct = 0
    with evaluation(net, "mode"), torch.no_grad():
        for x, y in batches:
            counts, _ = net.forward_with_spikes(x)
            np.testing.assert_array_equal(engine.run(x).output, counts.numpy().astype(np.int64))
            correct += int((counts.argmax(1) == y).sum())
    result = run([str(path), "--data", "sbnn.data.DVSGestureDataModule", *(f"--data-arg={k}={v}" for k, v in data.items())])
    assert result["samples"] == 110 and result["accuracy"] == correct / 110
    assert min(result["rates"][:3]) > 0.01

"""sbnn.export: graph conversion, the versioned file format and its errors, checkpoints, size."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch

from sbnn import evaluation, export
from sbnn.kernels import Dense, Graph, LIF, MembraneReadout
from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP
from sbnn.tasks import SpikingClassificationTask


def _net(**kw) -> SpikingMLP:
    net = SpikingMLP(20, (33,), 5, layer=LayerSettings(bias=True), **kw)
    with torch.no_grad():
        net.layers[0].lam[0, :4] = 0.0  # ties export as +1
    return net


def test_to_graph_spiking_mlp_exports_mode_network():
    net = _net()
    graph = export.to_graph(net)
    assert [type(n) for n in graph.nodes] == [Dense, Dense]
    hidden, out = graph.nodes
    np.testing.assert_array_equal(hidden.synapses.sign, torch.where(net.layers[0].lam >= 0, 1, -1).numpy())
    assert (hidden.synapses.sign[0, :4] == 1).all()
    np.testing.assert_array_equal(hidden.synapses.alpha, net.layers[0].scale.detach().numpy())
    assert isinstance(hidden.neuron, LIF) and hidden.neuron.reset == "subtract"
    assert isinstance(out.neuron, MembraneReadout) and out.neuron.beta == net.readout_beta


def _same_graph(a: Graph, b: Graph) -> None:
    assert a.input_shape == b.input_shape and len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes):
        for name in ("sign", "alpha", "bias"):
            u, v = getattr(x.synapses, name), getattr(y.synapses, name)
            assert (u is None and v is None) or np.array_equal(u, v)
        assert type(x.neuron) is type(y.neuron)


@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
def test_save_load_round_trip(tmp_path, readout):
    net = _net(readout=readout, neuron=NeuronSettings(reset_mechanism='zero'))
    path = export.save(net, tmp_path / "m.sbnn", meta={"n_steps": 12})
    graph = export.load_graph(path)
    _same_graph(graph, export.to_graph(net))
    assert graph.meta["n_steps"] == 12 and graph.meta["model"] == "SpikingMLP"
    assert not list(tmp_path.glob("*.tmp"))
    x = (torch.rand(12, 3, 20) < 0.3).float()
    with evaluation(net, "mode"), torch.no_grad():
        ref = net(x)
    out = export.load(path).run(x)
    np.testing.assert_allclose(out.output, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_size_is_at_least_25x_below_float_state_dict(tmp_path):
    net = SpikingMLP(700, (256,), 20)
    path = export.save(net, tmp_path / "shd.sbnn")
    ratio = export.state_dict_nbytes(net) / path.stat().st_size
    assert ratio >= 25, ratio


def _bytes(tmp_path) -> bytes:
    return export.save(_net(), tmp_path / "m.sbnn").read_bytes()


def _write(tmp_path, data: bytes):
    p = tmp_path / "bad.sbnn"
    p.write_bytes(data)
    return p


def test_newer_version_is_refused(tmp_path):
    data = bytearray(_bytes(tmp_path))
    struct.pack_into("<I", data, 8, export.FORMAT_VERSION + 1)
    with pytest.raises(export.ModelFileError, match="format version 2.*upgrade sbnn"):
        export.load_graph(_write(tmp_path, bytes(data)))


@pytest.mark.parametrize("keep", [0, 10, 56, 200, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    data = _bytes(tmp_path)
    with pytest.raises(export.ModelFileError, match="truncated|bad magic"):
        export.load_graph(_write(tmp_path, data[: keep if keep >= 0 else len(data) - 1]))


def test_corrupted_payload_is_refused(tmp_path):
    data = bytearray(_bytes(tmp_path))
    data[-3] ^= 0x10
    with pytest.raises(export.ModelFileError, match="checksum"):
        export.load_graph(_write(tmp_path, bytes(data)))
    with pytest.raises(export.ModelFileError, match="trailing"):
        export.load_graph(_write(tmp_path, _bytes(tmp_path) + b"\0"))


def test_bad_magic_and_bad_header_are_refused(tmp_path):
    with pytest.raises(export.ModelFileError, match="bad magic"):
        export.load_graph(_write(tmp_path, b"PK\x03\x04" + b"\0" * 100))
    # a consistent file (valid checksum) whose header lies about a tensor
    data = _bytes(tmp_path)
    h_len = struct.unpack_from("<I", data, 12)[0]
    header = data[56 : 56 + h_len].replace(b'"nbytes":', b'"nbytes":1', 1)
    payload = data[56 + h_len :]
    prefix = struct.pack("<8sIIQ32s", export.MAGIC, 1, len(header), len(payload), hashlib.sha256(header + payload).digest())
    with pytest.raises(export.ModelFileError, match="outside the payload"):
        export.load_graph(_write(tmp_path, prefix + header + payload))
    with pytest.raises(ValueError, match="no such file"):
        export.load_graph(tmp_path / "missing.sbnn")


def test_unknown_model_needs_an_exporter():
    with pytest.raises(ValueError, match="no exporter for Linear.*export_graph"):
        export.to_graph(torch.nn.Linear(3, 4))


def test_register_exporter_and_export_graph_protocol():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

    @export.register_exporter(Wrapped)
    def _exp(model):
        return export.to_graph(model.net)

    try:
        assert len(export.to_graph(Wrapped()).nodes) == 2
    finally:
        export._EXPORTERS.pop(Wrapped)

    class Bad(torch.nn.Module):
        def export_graph(self):
            return "not a graph"

    with pytest.raises(ValueError, match="must return"):
        export.to_graph(Bad())


def test_export_checkpoint(tmp_path):
    net = _net()
    task = SpikingClassificationTask(net, train_size=10)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    path = export.export_checkpoint(ckpt, tmp_path / "m.sbnn", _net())
    _same_graph(export.load_graph(path), export.to_graph(net))
    torch.save({"weights": 1}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        export.export_checkpoint(tmp_path / "x.ckpt", tmp_path / "n.sbnn", _net())


def test_export_checkpoint_from_cli_config(tmp_path, capsys):
    net = _net()
    task = SpikingClassificationTask(net, train_size=10)
    run_dir = tmp_path / "logs" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": task.state_dict()}, ckpt)
    (run_dir / "config.yaml").write_text(
        "model:\n  class_path: sbnn.tasks.SpikingClassificationTask\n  init_args:\n    network:\n"
        "      class_path: sbnn.models.SpikingMLP\n      init_args:\n        in_features: 20\n"
        "        hidden: [33]\n        num_classes: 5\n        layer:\n          bias: true\n"
    )
    export.main([str(ckpt), str(tmp_path / "m.sbnn")])  # config.yaml found two folders up
    assert "wrote" in capsys.readouterr().out
    _same_graph(export.load_graph(tmp_path / "m.sbnn"), export.to_graph(net))
    (run_dir / "config.yaml").unlink()
    with pytest.raises(SystemExit, match="does not record the architecture"):
        export.main([str(ckpt), str(tmp_path / "n.sbnn")])

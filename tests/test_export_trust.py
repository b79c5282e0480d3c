"""sbnn.export treats files as data: hostile checkpoints, run configs and model files run nothing.

- a checkpoint whose pickle calls ``os.system`` is refused before it runs (``weights_only=True``);
- a run's ``config.yaml`` may only build sbnn networks of plain data;
- every ``.sbnn`` header field is validated, against a memory budget, and a seeded fuzz of the
  header (checksum recomputed) gives only ``ModelFileError`` or a correct run;
- exported files get the umask's permissions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import stat
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from sbnn import export
from sbnn.kernels import Conv2d, Dense, Graph, LIF, MaxPool2d, MembraneReadout, Synapses
from sbnn.tasks import SpikingClassificationTask
from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP


def _net() -> SpikingMLP:
    return SpikingMLP(20, (33,), 5, layer=LayerSettings(bias=True))


# -- checkpoints -----------------------------------------------------------------------------------
class _RunsCommand:
    """A pickle payload: unpickling it calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    task = SpikingClassificationTask(_net(), train_size=10)
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {"x": _RunsCommand(f"touch '{marker}'")}}, ckpt)
    return ckpt, marker


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    ckpt, marker = _evil_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to load.*(system|GLOBAL).*weights_only=True"):
        export.export_checkpoint(ckpt, tmp_path / "m.sbnn", _net())
    assert not marker.exists()
    with pytest.raises(SystemExit, match="sbnn-export: .*refusing to load"):
        export.main([str(ckpt), str(tmp_path / "m.sbnn")])
    assert not marker.exists() and not (tmp_path / "m.sbnn").exists()
    # the payload is live: an unrestricted unpickler does run it (so the test above can fail)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_sbnn_export_script_refuses_malicious_checkpoint(tmp_path):
    ckpt, marker = _evil_checkpoint(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from sbnn.export import main; main(sys.argv[1:])", str(ckpt), str(tmp_path / "m.sbnn")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "refusing to load" in proc.stderr
    assert not marker.exists()


def test_lightning_checkpoint_contents_are_accepted(tmp_path):
    """What Lightning writes besides tensors (plain dicts, numbers, strings, paths in callback states) loads."""
    net = _net()
    task = SpikingClassificationTask(net, train_size=10)
    ckpt = tmp_path / "last.ckpt"
    torch.save({
        "epoch": 3, "global_step": 12, "pytorch-lightning_version": "2.6.6", "state_dict": task.state_dict(),
        "hyper_parameters": {"lr": 1e-3, "hidden": (33,)}, "callbacks": {"ModelCheckpoint": {"dirpath": tmp_path}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
    }, ckpt)
    loaded = export.load_checkpoint(ckpt)
    assert loaded["hyper_parameters"]["hidden"] == (33,) and loaded["callbacks"]["ModelCheckpoint"]["dirpath"] == tmp_path
    path = export.export_checkpoint(ckpt, tmp_path / "m.sbnn", _net())
    np.testing.assert_array_equal(export.load_graph(path).nodes[0].synapses.sign, export.to_graph(net).nodes[0].synapses.sign)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt: (refusing to load|not a readable PyTorch checkpoint)"):
        export.load_checkpoint(tmp_path / "junk.ckpt")


# -- run configs -----------------------------------------------------------------------------------
def _run_dir(tmp_path: Path, network_yaml: str) -> Path:
    run_dir = tmp_path / "logs" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    task = SpikingClassificationTask(_net(), train_size=10)
    torch.save({"state_dict": task.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "config.yaml").write_text(
        "model:\n  class_path: sbnn.tasks.SpikingClassificationTask\n  init_args:\n    network:\n" + network_yaml
    )
    return run_dir / "checkpoints" / "last.ckpt"


def _mlp_yaml(extra: str = "") -> str:
    return (
        "      class_path: sbnn.models.SpikingMLP\n      init_args:\n        in_features: 20\n"
        "        hidden: [33]\n        num_classes: 5\n        layer:\n          bias: true\n" + extra
    )


HOSTILE = {
    "subprocess.run": ("      class_path: subprocess.run\n      init_args:\n        args: [touch, {marker}]\n", "'subprocess.run'"),
    "os.system": ("      class_path: os.system\n      init_args:\n        command: touch {marker}\n", "'os.system'"),
    "builtins.eval": (
        "      class_path: builtins.eval\n      init_args:\n        source: \"open('{marker}', 'w')\"\n", "'builtins.eval'"
    ),
    "nested": (_mlp_yaml("        estimator:\n          class_path: subprocess.run\n          init_args:\n"
                         "            args: [touch, {marker}]\n"), "'subprocess.run'"),
    "sbnn-prefixed non-network": ("      class_path: sbnn.cli.LightningCLI\n", "'sbnn.cli.LightningCLI'"),
    "non-module in a network module": ("      class_path: sbnn.models.base.Tensor\n", "'sbnn.models.base.Tensor'.*not an nn.Module"),
    "yaml python tag": ("      !!python/object/apply:os.system [\"touch {marker}\"]\n", "not a readable YAML"),
    "object argument": (_mlp_yaml("        hidden: !!python/object/apply:os.system [\"touch {marker}\"]\n"), "not a readable YAML"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_malicious_config_is_refused_and_runs_nothing(tmp_path, case):
    marker = tmp_path / "pwned"
    yaml_text, message = HOSTILE[case]
    ckpt = _run_dir(tmp_path, yaml_text.format(marker=marker))
    with pytest.raises(ValueError, match=message):
        export.export_checkpoint(ckpt, tmp_path / "m.sbnn")
    with pytest.raises(SystemExit, match="sbnn-export: "):
        export.main([str(ckpt), str(tmp_path / "m.sbnn")])
    assert not marker.exists() and not (tmp_path / "m.sbnn").exists()


def test_refused_class_path_is_not_even_imported(tmp_path):
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: a visible side effect
    ckpt = _run_dir(tmp_path, "      class_path: this.Zen\n")
    with pytest.raises(ValueError, match="refusing to build 'this.Zen'.*sbnn networks"):
        export.export_checkpoint(ckpt, tmp_path / "m.sbnn")
    assert "this" not in sys.modules


def test_config_arguments_must_be_plain_data_and_sbnn_networks_still_build(tmp_path):
    ckpt = _run_dir(tmp_path, _mlp_yaml())
    path = export.export_checkpoint(ckpt, tmp_path / "m.sbnn")
    assert export.load_graph(path).meta["model"] == "SpikingMLP"
    with pytest.raises(ValueError, match="init_args.*expected a mapping"):
        export._check_spec({"class_path": "sbnn.models.SpikingMLP", "init_args": [1]}, "network")
    with pytest.raises(ValueError, match="only plain data.*set"):
        export._check_spec({"class_path": "sbnn.models.SpikingMLP", "init_args": {"hidden": {1, 2}}}, "network")


# -- model files -----------------------------------------------------------------------------------
def _conv_graph() -> Graph:
    rng = np.random.default_rng(0)
    sign = lambda *s: np.where(rng.random(s) < 0.5, -1, 1).astype(np.int8)  # noqa: E731
    conv = Conv2d(Synapses(sign(4, 2, 3, 3), [0.5], rng.normal(size=4).astype(np.float32)), LIF([0.9], [1.0]), (2, 8, 8),
                  (1, 1), (1, 1), (1, 1))
    pool = MaxPool2d((4, 8, 8), (2, 2), (2, 2))
    rec = Dense(Synapses(sign(6, 64), np.full(6, 0.3, np.float32)), LIF(np.full(6, 0.8, np.float32), [1.0], "zero"),
                Synapses(sign(6, 6), [0.2]))
    readout = Dense(Synapses(sign(3, 6), [0.4], np.zeros(3, np.float32)), MembraneReadout(0.9))
    return Graph((2, 8, 8), (conv, pool, rec, readout), {"model": "test"})


def _split(data: bytes) -> tuple[dict, bytes]:
    h_len = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[56 : 56 + h_len]), data[56 + h_len :]


def _join(header, payload: bytes) -> bytes:
    """A file with a valid checksum around any header (``header`` may also be raw bytes)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    digest = hashlib.sha256(raw + payload).digest()
    return struct.pack("<8sIIQ32s", export.MAGIC, export.FORMAT_VERSION, len(raw), len(payload), digest) + raw + payload


@pytest.fixture
def conv_file(tmp_path) -> bytes:
    return export.save(_conv_graph(), tmp_path / "conv.sbnn").read_bytes()


def _edit(path: str, value):
    def apply(h: dict) -> None:
        *keys, last = path.split("/")
        obj = h
        for k in keys:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        obj[int(last) if isinstance(obj, list) else last] = value
    return apply


def _both(value, keep: int | None = None):
    """Change the input shape and the first node's ``in_shape`` together; keep the first ``keep`` nodes."""
    def apply(h: dict) -> None:
        h["input_shape"] = value
        h["nodes"][0]["in_shape"] = value
        if keep is not None:
            h["nodes"] = h["nodes"][:keep]
    return apply


HEADER_EDITS = {
    "huge input (a conv-only net)": (_both([2, 30000, 30000], keep=1), r"needs about [\d,]+ bytes of memory, above the budget of 1,073,741,824"),
    "conv padding 1e5": (_edit("nodes/0/padding", [100000, 100000]), r"nodes\[0\].padding: must be smaller than the \(dilated\) kernel"),
    "stride 0": (_edit("nodes/0/stride", [0, 1]), r"nodes\[0\].stride\[0\]: expected an integer in \[1, "),
    "one-element stride": (_edit("nodes/0/stride", [1]), r"nodes\[0\].stride: expected a list of 2 integers"),
    "fractional stride": (_edit("nodes/0/stride", [1.5, 1]), r"nodes\[0\].stride\[0\]: expected an integer, got 1.5"),
    "boolean stride": (_edit("nodes/0/stride", [True, 1]), r"nodes\[0\].stride\[0\]: expected an integer"),
    "negative padding": (_edit("nodes/0/padding", [-1, 0]), r"nodes\[0\].padding\[0\]: expected an integer in \[0, "),
    "dilation 0": (_edit("nodes/0/dilation", [1, 0]), r"nodes\[0\].dilation\[1\]: expected an integer in \[1, "),
    "negative dilation": (_edit("nodes/0/dilation", [-2, 1]), r"nodes\[0\].dilation\[0\]"),
    "pool kernel 0": (_edit("nodes/1/kernel_size", [0, 2]), r"nodes\[1\].kernel_size\[0\]: expected an integer in \[1, "),
    "pool stride 0": (_edit("nodes/1/stride", [2, 0]), r"nodes\[1\].stride\[1\]"),
    "pool padding above half the kernel": (_edit("nodes/1/padding", [2, 0]), r"nodes\[1\].padding: must be at most half"),
    "input rank 4": (_both([1, 2, 8, 8]), r"input_shape: expected a list of 1 or 2 or 3 integers"),
    "input size 0": (_both([2, 0, 8]), r"input_shape\[1\]: expected an integer in \[1, "),
    "input size 2**63": (_both([2, 2**63, 8]), r"input_shape\[1\]: expected an integer in \[1, "),
    "string shape": (_edit("input_shape", "2x8x8"), r"input_shape: expected a list"),
    "deep nesting": (None, r"nested too deeply"),
    "unknown op": (_edit("nodes/1/op", "softmax"), r"unknown node op 'softmax'"),
    "no nodes": (_edit("nodes", []), r"nodes: expected a list of 1 to"),
    "nodes not a list": (_edit("nodes", {"0": 1}), r"nodes: expected a list"),
    "object dtype": (_edit("tensors/n0.alpha/dtype", "O"), r"dtype: expected one of \['f4', 'u1'\], got 'O'"),
    "float64 dtype": (_edit("tensors/n0.alpha/dtype", "f8"), r"dtype: expected one of"),
    "tensor shape lies": (_edit("tensors/n0.sign/shape", [2, 3, 3, 9]), r"n0.sign.*shape: expected \[2, 3, 3, 1\]"),
    "misaligned offset": (_edit("tensors/n0.alpha/offset", 3), r"lies outside the payload"),
    "missing tensor": (_edit("nodes/0/synapses/alpha", "nope"), r"nodes\[0\].synapses.alpha: names no tensor"),
    "weights do not chain": (_edit("nodes/2/synapses/shape", [6, 65]), r"nodes\[2\].synapses.shape.*does not take the 64 inputs"),
    "recurrent shape": (_edit("nodes/2/recurrent/shape", [6, 5]), r"nodes\[2\].recurrent.shape: expected \[6, 6\]"),
    "readout leak": (_edit("nodes/3/neuron/beta", 1.5), r"nodes\[3\].neuron.beta: expected a number in \[0, 1\]"),
    "readout leak NaN": (_edit("nodes/3/neuron/beta", float("nan")), r"nodes\[3\].neuron.beta"),
    "reset": (_edit("nodes/2/neuron/reset", "explode"), r"nodes\[2\].neuron.reset"),
    "neuron kind": (_edit("nodes/2/neuron/kind", "izhikevich"), r"nodes\[2\].neuron.kind"),
    "meta not an object": (_edit("meta", [1]), r"meta: expected a JSON object"),
    "header is a list": (lambda h: h.clear(), r"input_shape: missing"),
}


@pytest.mark.parametrize("case", list(HEADER_EDITS))
def test_every_header_field_is_validated(tmp_path, conv_file, case):
    edit, match = HEADER_EDITS[case]
    header, payload = _split(conv_file)
    if edit is None:
        raw = b'{"meta":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    else:
        edit(header)
        raw = json.dumps(header).encode()
    path = tmp_path / "bad.sbnn"
    path.write_bytes(_join(raw, payload))
    with pytest.raises(export.ModelFileError, match=match):
        export.load(path)


def test_memory_budget_is_explicit_and_can_be_raised(tmp_path, conv_file):
    path = tmp_path / "conv.sbnn"
    path.write_bytes(conv_file)
    with pytest.raises(export.ModelFileError, match=r"needs about [\d,]+ bytes.*budget of 4,000 bytes.*max_bytes"):
        export.load(path, max_bytes=4000)
    with pytest.raises(export.ModelFileError, match=r"the file has [\d,]+ bytes, above the memory budget of 100 bytes"):
        export.load_graph(path, max_bytes=100)
    assert export.load(path, max_bytes=1 << 20).graph.input_shape == (2, 8, 8)
    assert export.MAX_MODEL_BYTES == 1 << 30


# Fuzz: random edits of the header's fields (values of every JSON type, sizes around the limits),
# the checksum recomputed, so only the header checks stand between the edit and the engine.
_FUZZ_BUDGET = 32 << 20  # bytes: the model budget of the fuzzed loads; runs are T = 3, B = 2
_VALUES = [
    -(2**63), -1, 0, 1, 2, 3, 5, 8, 64, 10**5, 2**31, 2**64, 10**30, 0.5, 1.5, -0.0, float("nan"), float("inf"),
    0.25, 1.0, True, False, None, "", "f4", "u1", "O", "dense", "conv2d", "maxpool2d", "lif", "membrane_readout",
    "zero", "subtract", "none", "n0.alpha", "n2.sign", "n1.beta", "n1.threshold",
    [], [0], [1], [2, 2], [1, 1], [0, 0], [3, 3], [-1, 1], [1, 2, 3], [2, 8, 8], [[1]], {}, {"op": "dense"},
]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _mutate(header: dict, rng: random.Random) -> dict:
    h = copy.deepcopy(header)
    for _ in range(rng.choice((1, 1, 1, 1, 2, 3))):
        paths = [p for p in _paths(h) if p]
        path = rng.choice(paths)
        parent = h
        for k in path[:-1]:
            parent = parent[k]
        roll = rng.random()
        if roll > 0.85 and isinstance(h.get("meta"), dict):  # free-form metadata: any JSON is valid there
            h["meta"][f"key{rng.randrange(4)}"] = copy.deepcopy(rng.choice(_VALUES))
            continue
        old = parent[path[-1]]
        if roll < 0.15 and isinstance(old, int) and not isinstance(old, bool):
            new = old + rng.choice((-2, -1, 1, 2)) if rng.random() < 0.7 else old * rng.choice((0, 2, 1000, -1))
        elif roll < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
            continue
        else:
            new = copy.deepcopy(rng.choice(_VALUES))
        parent[path[-1]] = new
    return h


@pytest.mark.parametrize("base", ["conv", "dense"])
def test_header_fuzz_gives_model_file_error_or_a_correct_run(tmp_path, base):
    """Seeded: 200 edited headers per base file; deterministic, so it cannot flake."""
    if base == "conv":
        graph = _conv_graph()
    else:
        net = SpikingMLP(12, (9, 7), 4, layer=LayerSettings(bias=True), readout="spike_count")
        graph = export.to_graph(net)
    header, payload = _split(export.save(graph, tmp_path / "base.sbnn").read_bytes())
    rng = random.Random(20250517)
    outcomes = {"error": 0, "run": 0}
    path = tmp_path / "fuzz.sbnn"
    for case in range(200):
        path.write_bytes(_join(_mutate(header, rng), payload))
        tracemalloc.start()
        try:
            engine = export.load(path, max_bytes=_FUZZ_BUDGET)
        except export.ModelFileError:
            outcomes["error"] += 1
            continue
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 2 * _FUZZ_BUDGET, (case, peak)
        g = engine.graph
        x = np.random.default_rng(case).random((3, 2, *g.input_shape)) < 0.3
        result = engine.run(x.astype(np.uint8), max_bytes=4 * _FUZZ_BUDGET)
        units = g.shapes()[-1][0]
        assert result.output.shape == (2, units), case
        assert np.isfinite(result.output).all(), case
        outcomes["run"] += 1
    assert outcomes["error"] > 50 and outcomes["run"] >= 10, outcomes  # both branches exercised


# -- permissions -----------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_exported_file_follows_the_umask(tmp_path, umask, mode):
    saved = os.umask(umask)
    try:
        path = export.save(_net(), tmp_path / "m.sbnn")
    finally:
        os.umask(saved)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["m.sbnn"]  # atomic: no temp file left

r"""Export a trained SBNN's ``mode`` network to a compact deployable file, and load it back.

The deployed network is the ``mode`` network (DESIGN §1.1): weights ``sign(λ)`` (ties to +1),
deterministic neurons (``ε = 0``). :func:`to_graph` turns a model into a
:class:`sbnn.kernels.graph.Graph`; :func:`save` writes it, :func:`load` returns an
:class:`sbnn.kernels.Engine` ready to run.

**Export protocol.** :func:`to_graph` asks, in order: the model's own ``export_graph()`` method
(returning a ``Graph``); an exporter registered for its class with :func:`register_exporter`
(the most specific class in the MRO wins). :func:`dense_node` and :func:`conv_node` build nodes
from sbnn's layers and neurons, so a new model's exporter is a few lines (see the
``SpikingMLP``, ``SpikingRecurrentNet`` and ``SpikingConvNet`` exporters below).

**File format, version 1** (all integers little-endian)::

    offset  size  field
    0       8     magic b"SBNNDEP\0"
    8       4     uint32 format version (1)
    12      4     uint32 header length H
    16      8     uint64 payload length P
    24      32    SHA-256 of header + payload
    56      H     header: UTF-8 JSON {"input_shape", "nodes", "meta", "tensors"}
    56+H    P     payload: the tensors, each 8-byte aligned, raw little-endian

``tensors`` maps a name to ``{"dtype", "shape", "offset", "nbytes"}`` (offset in the payload).
±1 weights are stored one row per presynaptic neuron, bit-packed along the postsynaptic axis
(``bitorder="little"``, bit 1 = +1): dense ``[in, ceil(out/8)]`` uint8, conv
``[C_in, kH, kW, ceil(C_out/8)]``. Scales, biases, leaks and thresholds are float32.
Readers refuse a newer version, a bad magic, a checksum mismatch and truncated files with a
:class:`ModelFileError` (a ``ValueError``) before anything runs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .kernels.api import pack_signs, unpack_signs
from .kernels.engine import Engine
from .kernels.graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses
from .layers import BernoulliConv2d, BernoulliLinear
from .models import SpikingMLP
from .nets import SpikingConvNet, SpikingRecurrentNet
from .neurons import StochasticLIF
from .posterior import sign_mode

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ModelFileError",
    "register_exporter",
    "to_graph",
    "dense_node",
    "conv_node",
    "synapses",
    "lif",
    "save",
    "load_graph",
    "load",
    "export_checkpoint",
    "network_from_config",
    "state_dict_nbytes",
]

MAGIC = b"SBNNDEP\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIQ32s")

_EXPORTERS: dict[type, Callable[[nn.Module], Graph]] = {}


class ModelFileError(ValueError):
    """A deployable model file that cannot be read: wrong magic, newer version, corrupt, truncated."""


def register_exporter(cls: type) -> Callable:
    """Decorator: register ``fn(model) -> Graph`` as the exporter of ``cls`` (and its subclasses)."""
    if not isinstance(cls, type):
        raise ValueError(f"register_exporter: cls must be a class, got {cls!r}")

    def deco(fn: Callable[[nn.Module], Graph]) -> Callable[[nn.Module], Graph]:
        _EXPORTERS[cls] = fn
        return fn

    return deco


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def synapses(layer: BernoulliLinear | BernoulliConv2d) -> Synapses:
    """The ``mode`` synapses of a Bernoulli layer: ``sign(λ)`` (ties to +1), ``α``, bias."""
    if not isinstance(layer, (BernoulliLinear, BernoulliConv2d)):
        raise ValueError(f"synapses: expected a BernoulliLinear or BernoulliConv2d, got {type(layer).__name__}")
    sign = sign_mode(layer.lam.detach()).to(torch.int8).cpu().numpy()
    bias = None if layer.bias is None else _np(layer.bias)
    return Synapses(sign, _np(layer.scale), bias)


def lif(neuron: StochasticLIF) -> LIF:
    """The deterministic LIF constants of a :class:`~sbnn.StochasticLIF` (its noise is off in ``mode``)."""
    if not isinstance(neuron, StochasticLIF):
        raise ValueError(f"lif: expected a StochasticLIF, got {type(neuron).__name__}")
    return LIF(_np(neuron.beta), _np(neuron.threshold), neuron.reset_mechanism)


def dense_node(layer: BernoulliLinear, neuron: StochasticLIF | float, recurrent: BernoulliLinear | None = None) -> Dense:
    """A :class:`Dense` node; ``neuron`` is a LIF module or, for a membrane readout, its leak β."""
    if not isinstance(layer, BernoulliLinear):
        raise ValueError(f"dense_node: layer must be a BernoulliLinear, got {type(layer).__name__}")
    cell = MembraneReadout(float(neuron)) if isinstance(neuron, (int, float)) else lif(neuron)
    return Dense(synapses(layer), cell, None if recurrent is None else synapses(recurrent))


def conv_node(layer: BernoulliConv2d, neuron: StochasticLIF, in_shape: tuple[int, int, int]) -> Conv2d:
    """A :class:`Conv2d` node for an input of shape ``(C, H, W)`` per step."""
    if not isinstance(layer, BernoulliConv2d):
        raise ValueError(f"conv_node: layer must be a BernoulliConv2d, got {type(layer).__name__}")
    if layer.groups != 1 or isinstance(layer.padding, str):
        raise ValueError("conv_node: the engine supports groups=1 and integer padding only")
    return Conv2d(synapses(layer), lif(neuron), tuple(in_shape), layer.stride, layer.padding, layer.dilation)


@register_exporter(SpikingMLP)
def _export_spiking_mlp(model: SpikingMLP) -> Graph:
    nodes = [dense_node(layer, neuron) for layer, neuron in zip(model.layers, model.neurons)]
    readout = model.output_neuron if model.output_neuron is not None else model.readout_beta
    nodes.append(dense_node(model.output, readout))
    return Graph((model.in_features,), tuple(nodes), {"model": "SpikingMLP", "binary_input": bool(model.binary_input)})


def _readout_node(model: SpikingRecurrentNet | SpikingConvNet) -> Dense:
    """The readout of the two event-data nets: membrane (leak ``readout_beta``) or spiking LIF."""
    readout = model.output_neuron if model.output_neuron is not None else model.readout_beta
    return dense_node(model.output, readout)


@register_exporter(SpikingRecurrentNet)
def _export_spiking_recurrent_net(model: SpikingRecurrentNet) -> Graph:
    # the net computes μ[t] = ff(x)[t] + rec(S[t−1]) and skips the recurrent term at t = 0; the
    # engine adds rec(S[−1] = 0) = fl(0·α_r) + b_r there, which is +0 only without a recurrent bias
    nodes = []
    for i, (layer, neuron) in enumerate(zip(model.layers, model.neurons)):
        rec = None if model.recurrent is None else model.recurrent[i]
        if rec is not None and rec.bias is not None:
            raise ValueError(
                f"SpikingRecurrentNet: recurrent[{i}] has a bias, which the net adds from t = 1 on but the engine "
                "at every step; the engine cannot run it exactly (the net never builds one: remove it with "
                f"net.recurrent[{i}].bias = None, or fold it into layers[{i}].bias)"
            )
        nodes.append(dense_node(layer, neuron, recurrent=rec))
    nodes.append(_readout_node(model))
    meta = {"model": "SpikingRecurrentNet", "binary_input": bool(model.binary_input), "readout": model.readout}
    return Graph((model.in_features,), tuple(nodes), meta)


@register_exporter(SpikingConvNet)
def _export_spiking_conv_net(model: SpikingConvNet) -> Graph:
    size = (model.input_size, model.input_size) if isinstance(model.input_size, int) else tuple(model.input_size)
    shape = (model.in_channels, *size)
    nodes: list = []
    for i, (conv, neuron, pool) in enumerate(zip(model.convs, model.conv_neurons, model.pools)):
        node = conv_node(conv, neuron, shape)
        nodes.append(node)
        shape = node.out_shape
        if isinstance(pool, nn.Identity):
            continue
        if not isinstance(pool, nn.MaxPool2d):
            raise ValueError(
                f"SpikingConvNet: pool_type={model.pool_type!r} cannot be exported: average pooling turns spikes into "
                "fractions, which the event-driven engine (binary spikes between layers) cannot represent; train "
                "with pool_type='max' (an OR over the window) or pool=1"
            )
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise ValueError(f"SpikingConvNet: pools[{i}] uses dilation or ceil_mode, which the engine's MaxPool2d lacks")
        node = MaxPool2d(shape, _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding))
        nodes.append(node)
        shape = node.out_shape
    nodes.extend(dense_node(layer, neuron) for layer, neuron in zip(model.fcs, model.fc_neurons))
    nodes.append(_readout_node(model))
    meta = {"model": "SpikingConvNet", "pool_type": model.pool_type, "readout": model.readout}
    return Graph((model.in_channels, *size), tuple(nodes), meta)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def to_graph(model: nn.Module) -> Graph:
    """The deployable graph of ``model``'s ``mode`` network (see the export protocol above)."""
    if isinstance(model, Graph):
        return model
    if callable(getattr(model, "export_graph", None)):
        graph = model.export_graph()
        if not isinstance(graph, Graph):
            raise ValueError(f"{type(model).__name__}.export_graph() must return a sbnn.kernels.graph.Graph, got {type(graph).__name__}")
        return graph
    for cls in type(model).__mro__:
        if cls in _EXPORTERS:
            return _EXPORTERS[cls](model)
    raise ValueError(
        f"to_graph: no exporter for {type(model).__name__}; give it an export_graph() method or register one "
        f"with sbnn.export.register_exporter (registered: {sorted(c.__name__ for c in _EXPORTERS)})"
    )


# -- file format -----------------------------------------------------------------------------------
class _Writer:
    def __init__(self) -> None:
        self.tensors: dict[str, dict] = {}
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        self.tensors[name] = {"dtype": arr.dtype.str.lstrip("<>|="), "shape": list(arr.shape), "offset": self.size, "nbytes": len(data)}
        pad = (-len(data)) % 8
        self.chunks.append(data + b"\0" * pad)
        self.size += len(data) + pad
        return name

    def syn(self, prefix: str, syn: Synapses) -> dict:
        rows = syn.sign.T if syn.sign.ndim == 2 else syn.sign.transpose(1, 2, 3, 0)
        return {
            "shape": list(syn.sign.shape),
            "sign": self.add(prefix + ".sign", pack_signs(np.ascontiguousarray(rows))),
            "alpha": self.add(prefix + ".alpha", syn.alpha),
            "bias": None if syn.bias is None else self.add(prefix + ".bias", syn.bias),
        }


def _encode(graph: Graph) -> bytes:
    w = _Writer()
    nodes = []
    for k, node in enumerate(graph.nodes):
        if isinstance(node, MaxPool2d):
            nodes.append({"op": "maxpool2d", "in_shape": list(node.in_shape), "kernel_size": list(node.kernel_size),
                          "stride": list(node.stride), "padding": list(node.padding)})
            continue
        if isinstance(node.neuron, LIF):
            neuron = {"kind": "lif", "beta": w.add(f"n{k}.beta", node.neuron.beta),
                      "threshold": w.add(f"n{k}.threshold", node.neuron.threshold), "reset": node.neuron.reset}
        else:
            neuron = {"kind": "membrane_readout", "beta": node.neuron.beta}
        entry = {"op": "dense" if isinstance(node, Dense) else "conv2d", "synapses": w.syn(f"n{k}", node.synapses), "neuron": neuron}
        if isinstance(node, Dense):
            entry["recurrent"] = None if node.recurrent is None else w.syn(f"n{k}.rec", node.recurrent)
        else:
            entry.update(in_shape=list(node.in_shape), stride=list(node.stride), padding=list(node.padding), dilation=list(node.dilation))
        nodes.append(entry)
    header = json.dumps(
        {"input_shape": list(graph.input_shape), "nodes": nodes, "meta": graph.meta, "tensors": w.tensors},
        separators=(",", ":"), sort_keys=True,
    ).encode()
    payload = b"".join(w.chunks)
    digest = hashlib.sha256(header + payload).digest()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), len(payload), digest) + header + payload


def save(model: nn.Module | Graph, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model``'s deployable ``mode`` network to ``path`` (atomically: temp file, then rename).

    Args:
        model: a module with an exporter (see :func:`to_graph`) or a ``Graph``.
        path: destination file (conventionally ``*.sbnn``).
        meta: JSON-serialisable metadata stored with the graph (e.g. ``n_steps``, dataset).

    Returns:
        The path written.
    """
    graph = to_graph(model)
    if meta:
        try:
            json.dumps(meta)
        except TypeError as err:
            raise ValueError(f"save: meta must be JSON-serialisable ({err})") from None
        graph = Graph(graph.input_shape, graph.nodes, {**graph.meta, **meta})
    data = _encode(graph)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _decode(data: bytes, where: str) -> Graph:
    if len(data) < _PREFIX.size:
        if not MAGIC.startswith(data[: len(MAGIC)]):
            raise ModelFileError(f"{where}: not an sbnn deployable model file (bad magic)")
        raise ModelFileError(f"{where}: file is truncated ({len(data)} bytes, the fixed header alone has {_PREFIX.size})")
    magic, version, h_len, p_len, digest = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ModelFileError(f"{where}: not an sbnn deployable model file (bad magic {magic!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where}: written with format version {version}, this sbnn reads versions up to {FORMAT_VERSION}; upgrade sbnn"
        )
    if version < 1:
        raise ModelFileError(f"{where}: invalid format version {version}")
    expected = _PREFIX.size + h_len + p_len
    if len(data) < expected:
        raise ModelFileError(f"{where}: file is truncated ({len(data)} bytes, expected {expected}); re-export or re-copy it")
    if len(data) > expected:
        raise ModelFileError(f"{where}: file is corrupted ({len(data) - expected} unexpected trailing bytes)")
    body = data[_PREFIX.size:]
    if hashlib.sha256(body).digest() != digest:
        raise ModelFileError(f"{where}: file is corrupted (SHA-256 checksum mismatch)")
    try:
        header = json.loads(body[:h_len].decode())
        payload = body[h_len:]

        def tensor(name: str) -> np.ndarray:
            spec = header["tensors"][name]
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            if spec["offset"] < 0 or spec["offset"] + spec["nbytes"] > len(payload) or spec["nbytes"] != dtype.itemsize * math.prod(spec["shape"]):
                raise ModelFileError(f"{where}: tensor {name!r} lies outside the payload")
            return np.frombuffer(payload, dtype, math.prod(spec["shape"]), spec["offset"]).reshape(spec["shape"]).astype(dtype.newbyteorder("="))

        def syn(spec: dict) -> Synapses:
            shape = spec["shape"]
            rows = unpack_signs(tensor(spec["sign"]), shape[0])
            sign = rows.T if len(shape) == 2 else rows.transpose(3, 0, 1, 2)
            if list(sign.shape) != shape:
                raise ModelFileError(f"{where}: weights {spec['sign']!r} have shape {sign.shape}, the header says {shape}")
            return Synapses(sign, tensor(spec["alpha"]), None if spec["bias"] is None else tensor(spec["bias"]))

        nodes = []
        for spec in header["nodes"]:
            if spec["op"] == "maxpool2d":
                nodes.append(MaxPool2d(tuple(spec["in_shape"]), tuple(spec["kernel_size"]), tuple(spec["stride"]), tuple(spec["padding"])))
                continue
            n = spec["neuron"]
            neuron = LIF(tensor(n["beta"]), tensor(n["threshold"]), n["reset"]) if n["kind"] == "lif" else MembraneReadout(n["beta"])
            if spec["op"] == "dense":
                nodes.append(Dense(syn(spec["synapses"]), neuron, None if spec["recurrent"] is None else syn(spec["recurrent"])))
            elif spec["op"] == "conv2d":
                nodes.append(Conv2d(syn(spec["synapses"]), neuron, tuple(spec["in_shape"]), tuple(spec["stride"]),
                                    tuple(spec["padding"]), tuple(spec["dilation"])))
            else:
                raise ModelFileError(f"{where}: unknown node op {spec['op']!r}")
        return Graph(tuple(header["input_shape"]), tuple(nodes), header.get("meta", {}))
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{where}: invalid model file ({type(err).__name__}: {err})") from None


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a deployable model file; raises :class:`ModelFileError` if it cannot be trusted."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_graph: no such file: {path}")
    return _decode(path.read_bytes(), str(path))


def load(path: str | os.PathLike, weights: str = "auto", threads: int | None = None) -> Engine:
    """Load a deployable model file into an :class:`~sbnn.kernels.Engine` (see its ``weights``)."""
    return Engine(load_graph(path), weights=weights, threads=threads)


def _instantiate(spec):
    """Build ``{"class_path": ..., "init_args": {...}}`` (recursively), as LightningCLI configs write it."""
    if isinstance(spec, dict) and "class_path" in spec:
        module_name, _, cls_name = spec["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"cannot import {spec['class_path']!r} named in the config ({err})") from None
        return cls(**{k: _instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    if isinstance(spec, dict):
        return {k: _instantiate(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_instantiate(v) for v in spec]
    return spec


def network_from_config(config: str | os.PathLike) -> nn.Module:
    """Build the (untrained) network that a LightningCLI ``config.yaml`` names under ``model.init_args.network``."""
    import yaml

    with open(config) as f:
        cfg = yaml.safe_load(f)
    try:
        spec = cfg["model"]["init_args"]["network"]
    except (KeyError, TypeError):
        raise ValueError(f"{config}: no model.init_args.network entry (not an sbnn fit config?)") from None
    return _instantiate(spec)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    network: nn.Module | None = None,
    *,
    config: str | os.PathLike | None = None,
    meta: dict | None = None,
) -> Path:
    """Export a Lightning checkpoint of :class:`sbnn.lightning.SpikingClassificationTask`.

    The task stores its network's weights under ``network.`` but not its architecture. Give a
    freshly built ``network`` of the same architecture, or the ``config`` YAML of the run
    (``sbnn fit`` writes it next to the logs); with neither, ``config.yaml`` is looked up in the
    checkpoint's folder and the two above it (LightningCLI's ``<log_dir>/checkpoints/*.ckpt``).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"export_checkpoint: no such checkpoint: {checkpoint}")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if state is None:
        raise ValueError(f"export_checkpoint: {checkpoint} is not a Lightning checkpoint (no 'state_dict')")
    sub = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    if not sub:
        raise ValueError(f"export_checkpoint: {checkpoint} holds no 'network.*' weights (not a SpikingClassificationTask?)")
    if network is None:
        if config is None:
            found = [d / "config.yaml" for d in (checkpoint.parent, *list(checkpoint.parents)[1:3]) if (d / "config.yaml").is_file()]
            if not found:
                raise ValueError(
                    f"export_checkpoint: {checkpoint} does not record the architecture; pass network=... or "
                    "config=<the run's config.yaml>"
                )
            config = found[0]
        network = network_from_config(config)
    network.load_state_dict(sub)
    return save(network, path, meta)


def main(argv: list[str] | None = None) -> None:
    """``sbnn-export CHECKPOINT OUT [--config config.yaml] [--format sbnn|nir] [--dt DT]``: export a training checkpoint."""
    import argparse

    p = argparse.ArgumentParser(prog="sbnn-export", description="Export an sbnn Lightning checkpoint to a deployable model file.")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--config", default=None, help="the run's config.yaml (default: looked up next to the checkpoint)")
    p.add_argument("--format", choices=("sbnn", "nir"), default="sbnn", help="sbnn deployable file, or a NIR graph (needs the nir extra; see docs/interop.md)")
    p.add_argument("--dt", type=float, default=1e-4, help="NIR only: the Euler time step, tau = dt/(1 - beta) (default 1e-4, snnTorch's)")
    args = p.parse_args(argv)
    if args.format == "nir":
        from .interop.nir import main_nir

        return main_nir(args.checkpoint, args.out, config=args.config, dt=args.dt)
    try:
        out = export_checkpoint(args.checkpoint, args.out, config=args.config)
    except ValueError as err:
        raise SystemExit(f"sbnn-export: {err}") from None
    graph = load_graph(out)
    print(f"sbnn-export: wrote {out} ({out.stat().st_size:,} bytes, {len(graph.nodes)} layers, input {graph.input_shape})")


def state_dict_nbytes(model: nn.Module) -> int:
    """Bytes of the float32 state dict's tensors (the size comparison of the benchmarks)."""
    return sum(t.numel() * 4 for t in model.state_dict().values())

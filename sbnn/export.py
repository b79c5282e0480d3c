r"""Export a trained SBNN's ``mode`` network to a compact deployable file, and load it back.

The deployed network is the ``mode`` network (docs/design.md §1.1): weights ``sign(λ)`` (ties to +1),
deterministic neurons (``ε = 0``). :func:`to_graph` turns a model into a
:class:`sbnn.kernels.graph.Graph`; :func:`save` writes it, :func:`load` returns an
:class:`sbnn.kernels.Engine` ready to run.

**Export protocol.** :func:`to_graph` asks, in order: the model's own ``export_graph()`` method
(returning a ``Graph``); an exporter registered for its class with :func:`register_exporter`
(the most specific class in the MRO wins). Every :class:`sbnn.models.SpikingClassifier` exports
itself; :func:`dense_node` and :func:`conv_node` (from :mod:`sbnn.models.graph`) build nodes from
sbnn's layers and neurons, so a new model's exporter is a few lines.

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
Readers refuse a newer version, a bad magic, a checksum mismatch, truncated files, any invalid
header field and models above a memory budget (:data:`MAX_MODEL_BYTES`, ``load(path,
max_bytes=...)``) with a :class:`ModelFileError` (a ``ValueError``) before anything runs.

**Trust model** (``docs/security.md``): checkpoints are read with ``weights_only=True`` and a
run's ``config.yaml`` may only build sbnn networks from plain data; files never run code.
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
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .kernels.api import pack_signs, unpack_signs
from .kernels.engine import Engine
from .kernels.graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses
from .models.graph import conv_node, dense_node, lif, synapses

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
    "MAX_MODEL_BYTES",
    "export_checkpoint",
    "network_from_config",
    "network_from_spec",
    "load_checkpoint",
    "NETWORK_MODULES",
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


def _umask() -> int:
    """The process umask (reading it means setting it: restore at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save(model: nn.Module | Graph, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``model``'s deployable ``mode`` network to ``path`` (atomically: temp file, then rename).

    The file gets the permissions of a plain ``open(path, "w")``: ``0666`` less the umask (``0644``
    under the usual ``022``).

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
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask), as torch.save does
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


#: default memory budget of :func:`load_graph` / :func:`load`: the file, its unpacked weights and the
#: engine's per-unit constants, estimated from the header before anything is allocated (1 GiB)
MAX_MODEL_BYTES = 1 << 30
#: largest size of one dimension, stride, padding or dilation a model file may give (int32 kernels)
MAX_DIM = (1 << 31) - 1
#: most nodes, and deepest JSON nesting, a model file's header may have
MAX_NODES = 4096
MAX_DEPTH = 32
_TENSOR_DTYPES = {"u1": 1, "f4": 4}  # packed ±1 weights, float32 constants: nothing else is ever written


class _Reader:
    """Checks one header field at a time; every failure is a :class:`ModelFileError` naming the field."""

    def __init__(self, where: str, header: dict, payload: bytes) -> None:
        self.where, self.header, self.payload = where, header, payload

    def fail(self, field: str, msg: str) -> ModelFileError:
        return ModelFileError(f"{self.where}: header field {field}: {msg}")

    def get(self, obj, key: str, field: str):
        if not isinstance(obj, dict):
            raise self.fail(field, f"expected a JSON object, got {type(obj).__name__}")
        if key not in obj:
            raise self.fail(f"{field}.{key}", "missing")
        return obj[key]

    def int_(self, value, field: str, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected an integer, got {value!r}")
        if not low <= value <= MAX_DIM:
            raise self.fail(field, f"expected an integer in [{low}, {MAX_DIM}], got {value}")
        return value

    def ints(self, value, field: str, n: int | tuple[int, ...], low: int) -> tuple[int, ...]:
        lengths = (n,) if isinstance(n, int) else n
        if not isinstance(value, list) or len(value) not in lengths:
            raise self.fail(field, f"expected a list of {' or '.join(map(str, lengths))} integers, got {value!r}")
        return tuple(self.int_(v, f"{field}[{i}]", low) for i, v in enumerate(value))

    def tensor_spec(self, name, field: str, dtype: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
        """Check that tensor ``name`` exists with ``dtype`` and ``shape`` and lies inside the payload."""
        tensors = self.get(self.header, "tensors", "tensors")
        if not isinstance(tensors, dict):
            raise self.fail("tensors", f"expected a JSON object, got {type(tensors).__name__}")
        if not isinstance(name, str) or name not in tensors:
            raise self.fail(field, f"names no tensor of the file ({name!r})")
        spec, tf = tensors[name], f"tensors[{name!r}]"
        got = self.get(spec, "dtype", tf)
        if not isinstance(got, str) or got not in _TENSOR_DTYPES:
            raise self.fail(f"{tf}.dtype", f"expected one of {sorted(_TENSOR_DTYPES)}, got {got!r}")
        if got != dtype:
            raise self.fail(f"{tf}.dtype", f"expected {dtype!r} for {field}, got {got!r}")
        got_shape = self.ints(self.get(spec, "shape", tf), f"{tf}.shape", len(shape), 1)
        if got_shape != shape:
            raise self.fail(f"{tf}.shape", f"expected {list(shape)} for {field}, got {list(got_shape)}")
        offset = self.get(spec, "offset", tf)
        nbytes = self.get(spec, "nbytes", tf)
        if isinstance(offset, bool) or not isinstance(offset, int) or isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise self.fail(tf, f"offset and nbytes must be integers, got {offset!r} and {nbytes!r}")
        if nbytes != _TENSOR_DTYPES[dtype] * math.prod(shape) or offset < 0 or offset % 8 or offset + nbytes > len(self.payload):
            raise ModelFileError(f"{self.where}: tensor {name!r} lies outside the payload (offset {offset}, {nbytes} bytes)")
        return name, shape

    def n_values(self, name, field: str, units: int) -> int:
        """How many values the per-unit tensor ``name`` holds: 1 (shared) or ``units``."""
        tensors = self.get(self.header, "tensors", "tensors")
        if not isinstance(tensors, dict) or not isinstance(name, str) or name not in tensors:
            raise self.fail(field, f"names no tensor of the file ({name!r})")
        shape = self.get(tensors[name], "shape", f"tensors[{name!r}]")
        return 1 if shape == [1] else units

    def array(self, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        offset = self.header["tensors"][name]["offset"]
        arr = np.frombuffer(self.payload, np.dtype(dtype).newbyteorder("<"), math.prod(shape), offset)
        return arr.reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _json_depth(obj) -> int:
    """Nesting depth of decoded JSON, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _plan(r: _Reader) -> tuple[list[dict], int]:
    """Check every header field and the memory the model will take: ``(checked node specs, bytes)``.

    Nothing is allocated here beyond Python integers: sizes are computed exactly from the header.
    """
    header = r.header
    input_shape = r.ints(r.get(header, "input_shape", "header"), "input_shape", (1, 2, 3), 1)
    if "meta" in header and not isinstance(header["meta"], dict):
        raise r.fail("meta", f"expected a JSON object, got {type(header['meta']).__name__}")
    nodes = r.get(header, "nodes", "header")
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
        raise r.fail("nodes", f"expected a list of 1 to {MAX_NODES} nodes")
    shape, plans, nbytes = input_shape, [], 0
    for k, spec in enumerate(nodes):
        f = f"nodes[{k}]"
        op = r.get(spec, "op", f)
        if op == "maxpool2d":
            if len(shape) != 3:
                raise r.fail(f, f"a maxpool2d needs a [C, H, W] input, the incoming shape is {list(shape)}")
            in_shape = r.ints(r.get(spec, "in_shape", f), f"{f}.in_shape", 3, 1)
            if in_shape != shape:
                raise r.fail(f"{f}.in_shape", f"{list(in_shape)} differs from the incoming shape {list(shape)}")
            ks = r.ints(r.get(spec, "kernel_size", f), f"{f}.kernel_size", 2, 1)
            st = r.ints(r.get(spec, "stride", f), f"{f}.stride", 2, 1)
            pad = r.ints(r.get(spec, "padding", f), f"{f}.padding", 2, 0)
            if any(2 * p > kk for p, kk in zip(pad, ks)):
                raise r.fail(f"{f}.padding", f"must be at most half the kernel size {list(ks)}, got {list(pad)}")
            out = (in_shape[0], *((n + 2 * p - kk) // s + 1 for n, p, kk, s in zip(in_shape[1:], pad, ks, st)))
            plans.append({"op": op, "in_shape": in_shape, "kernel_size": ks, "stride": st, "padding": pad})
        elif op in ("dense", "conv2d"):
            syn = r.get(spec, "synapses", f)
            rank = 2 if op == "dense" else 4
            w_shape = r.ints(r.get(syn, "shape", f"{f}.synapses"), f"{f}.synapses.shape", rank, 1)
            units_out = w_shape[0]
            if op == "dense":
                if w_shape[1] != math.prod(shape):
                    raise r.fail(f"{f}.synapses.shape", f"{list(w_shape)} does not take the {math.prod(shape)} inputs of shape {list(shape)}")
                out = (units_out,)
                extra = {}
                rec = r.get(spec, "recurrent", f)
                if rec is not None:
                    rec_shape = r.ints(r.get(rec, "shape", f"{f}.recurrent"), f"{f}.recurrent.shape", 2, 1)
                    if rec_shape != (units_out, units_out):
                        raise r.fail(f"{f}.recurrent.shape", f"expected [{units_out}, {units_out}], got {list(rec_shape)}")
                    extra["recurrent"] = rec
                    nbytes += 2 * units_out * units_out
            else:
                in_shape = r.ints(r.get(spec, "in_shape", f), f"{f}.in_shape", 3, 1)
                if in_shape != shape or w_shape[1] != shape[0]:
                    raise r.fail(f, f"in_shape {list(in_shape)} and weights {list(w_shape)} do not take the incoming shape {list(shape)}")
                st = r.ints(r.get(spec, "stride", f), f"{f}.stride", 2, 1)
                pad = r.ints(r.get(spec, "padding", f), f"{f}.padding", 2, 0)
                dil = r.ints(r.get(spec, "dilation", f), f"{f}.dilation", 2, 1)
                extent = tuple(d * (kk - 1) + 1 for d, kk in zip(dil, w_shape[2:]))
                if any(p >= e for p, e in zip(pad, extent)):
                    raise r.fail(f"{f}.padding", f"must be smaller than the (dilated) kernel {list(extent)}, got {list(pad)}")
                out = (units_out, *((n + 2 * p - e) // s + 1 for n, p, e, s in zip(in_shape[1:], pad, extent, st)))
                extra = {"in_shape": in_shape, "stride": st, "padding": pad, "dilation": dil}
            neuron = r.get(spec, "neuron", f)
            kind = r.get(neuron, "kind", f"{f}.neuron")
            if kind == "membrane_readout":
                beta = r.get(neuron, "beta", f"{f}.neuron")
                if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
                    raise r.fail(f"{f}.neuron.beta", f"expected a number in [0, 1], got {beta!r}")
            elif kind == "lif":
                reset = r.get(neuron, "reset", f"{f}.neuron")
                if reset not in ("subtract", "zero", "none"):
                    raise r.fail(f"{f}.neuron.reset", f"expected 'subtract', 'zero' or 'none', got {reset!r}")
            else:
                raise r.fail(f"{f}.neuron.kind", f"expected 'lif' or 'membrane_readout', got {kind!r}")
            nbytes += 2 * math.prod(w_shape)  # unpacked int8 signs + the engine's int8 (or packed) rows
            plans.append({"op": op, "synapses": syn, "neuron": neuron, "w_shape": w_shape, "out": out, **extra})
        else:
            raise ModelFileError(f"{r.where}: unknown node op {op!r} (header field {f}.op)")
        if min(out) < 1:
            raise r.fail(f, f"the output shape {list(out)} is empty (the kernel does not fit the input {list(shape)})")
        nbytes += 16 * math.prod(out)  # the engine's per-unit scale, bias, leak and threshold (float32)
        shape = out
    return plans, nbytes


def _decode(data: bytes, where: str, max_bytes: int = MAX_MODEL_BYTES) -> Graph:
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
    except RecursionError:
        raise ModelFileError(f"{where}: header nested too deeply (the limit is {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{where}: the header is not valid UTF-8 JSON ({err})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{where}: the header must be a JSON object, got {type(header).__name__}")
    if _json_depth(header) > MAX_DEPTH:
        raise ModelFileError(f"{where}: header nested too deeply (the limit is {MAX_DEPTH} levels)")
    r = _Reader(where, header, body[h_len:])
    plans, nbytes = _plan(r)
    nbytes += len(data)
    if nbytes > max_bytes:
        raise ModelFileError(
            f"{where}: the model needs about {nbytes:,} bytes of memory, above the budget of {max_bytes:,} bytes; "
            "if you trust the file, raise it with load(path, max_bytes=...)"
        )
    try:
        return _build(r, plans)
    except ModelFileError:
        raise
    except ValueError as err:  # the graph's own checks: values (α > 0, β in [0, 1], finite) and shape chaining
        raise ModelFileError(f"{where}: invalid model file ({err})") from None


def _build(r: _Reader, plans: list[dict]) -> Graph:
    """The graph of a header that :func:`_plan` accepted (tensors read, unpacked and checked)."""

    def syn(spec: dict, field: str, shape: tuple[int, ...]) -> Synapses:
        out = shape[0]
        rows_shape = (shape[1], math.ceil(out / 8)) if len(shape) == 2 else (*shape[1:], math.ceil(out / 8))
        sign_name, _ = r.tensor_spec(r.get(spec, "sign", field), f"{field}.sign", "u1", rows_shape)
        alpha_name = r.get(spec, "alpha", field)
        n_alpha = r.n_values(alpha_name, f"{field}.alpha", out)
        r.tensor_spec(alpha_name, f"{field}.alpha", "f4", (n_alpha,))
        bias_name = r.get(spec, "bias", field)
        if bias_name is not None:
            r.tensor_spec(bias_name, f"{field}.bias", "f4", (out,))
        rows = unpack_signs(r.array(sign_name, rows_shape, "u1"), out)
        sign = rows.T if len(shape) == 2 else rows.transpose(3, 0, 1, 2)
        bias = None if bias_name is None else r.array(bias_name, (out,), "f4")
        return Synapses(sign, r.array(alpha_name, (n_alpha,), "f4"), bias)

    def per_unit(name, field: str, units: int) -> np.ndarray:
        n = r.n_values(name, field, units)
        r.tensor_spec(name, field, "f4", (n,))
        return r.array(name, (n,), "f4")

    nodes = []
    for k, p in enumerate(plans):
        f = f"nodes[{k}]"
        if p["op"] == "maxpool2d":
            nodes.append(MaxPool2d(p["in_shape"], p["kernel_size"], p["stride"], p["padding"]))
            continue
        n = p["neuron"]
        if n["kind"] == "lif":
            units = p["out"][0]  # one constant per unit (dense) or per channel (conv), or one for all
            neuron = LIF(per_unit(n.get("beta"), f"{f}.neuron.beta", units),
                         per_unit(n.get("threshold"), f"{f}.neuron.threshold", units), n["reset"])
        else:
            neuron = MembraneReadout(float(n["beta"]))
        synapses = syn(p["synapses"], f"{f}.synapses", p["w_shape"])
        if p["op"] == "dense":
            rec = p.get("recurrent")
            out = p["w_shape"][0]
            nodes.append(Dense(synapses, neuron, None if rec is None else syn(rec, f"{f}.recurrent", (out, out))))
        else:
            nodes.append(Conv2d(synapses, neuron, p["in_shape"], p["stride"], p["padding"], p["dilation"]))
    return Graph(tuple(r.header["input_shape"]), tuple(nodes), r.header.get("meta", {}))


def load_graph(path: str | os.PathLike, *, max_bytes: int = MAX_MODEL_BYTES) -> Graph:
    """Read a deployable model file; raises :class:`ModelFileError` if it cannot be trusted.

    Every header field is checked (types, ranks, positive sizes, strides and dilations ≥ 1,
    ``0 ≤ padding <`` the kernel, nesting depth) and the memory the model needs is estimated
    from the header before anything is allocated.

    Args:
        path: the ``.sbnn`` file.
        max_bytes: memory budget (the file, its unpacked weights and the engine's per-unit
            constants); :data:`MAX_MODEL_BYTES` (1 GiB) by default. Raise it for a larger
            model you trust.

    Raises:
        ModelFileError: bad magic, newer version, checksum mismatch, truncation, any invalid
            header field, or a model above ``max_bytes``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_graph: no such file: {path}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"load_graph: max_bytes must be a positive int, got {max_bytes!r}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFileError(
            f"{path}: the file has {size:,} bytes, above the memory budget of {max_bytes:,} bytes; "
            "if you trust it, raise the budget with load(path, max_bytes=...)"
        )
    return _decode(path.read_bytes(), str(path), max_bytes)


def load(path: str | os.PathLike, weights: str = "auto", threads: int | None = None, *, max_bytes: int = MAX_MODEL_BYTES) -> Engine:
    """Load a deployable model file into an :class:`~sbnn.kernels.Engine` (see its ``weights``).

    ``max_bytes`` is the memory budget of :func:`load_graph`.
    """
    return Engine(load_graph(path, max_bytes=max_bytes), weights=weights, threads=threads)


#: modules whose ``nn.Module`` classes a run's ``config.yaml`` may build (prefixes on a dotted-name boundary)
NETWORK_MODULES = ("sbnn.models", "sbnn.layers", "sbnn.neurons")

_PLAIN = (str, int, float, bool, type(None))


def _registered(class_path: str) -> type | None:
    """The class registered with :func:`register_exporter` whose dotted name is ``class_path``, if any."""
    for cls in _EXPORTERS:
        if f"{cls.__module__}.{cls.__qualname__}" == class_path:
            return cls
    return None


def _in_network_modules(module_name: str) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in NETWORK_MODULES)


def _check_spec(spec, where: str, depth: int = 0) -> None:
    """Refuse, before anything is imported or built, a config entry that is not an sbnn network of plain data."""
    if depth > 32:
        raise ValueError(f"{where}: nested too deeply (more than 32 levels)")
    if isinstance(spec, dict):
        if any(not isinstance(k, str) for k in spec):
            raise ValueError(f"{where}: mapping keys must be strings")
        if "class_path" in spec:
            class_path = spec["class_path"]
            if not isinstance(class_path, str) or not class_path:
                raise ValueError(f"{where}.class_path: expected a dotted class name, got {class_path!r}")
            extra = set(spec) - {"class_path", "init_args"}
            if extra:
                raise ValueError(f"{where}: unexpected keys {sorted(extra)} next to class_path {class_path!r}")
            module_name = class_path.rpartition(".")[0]
            if _registered(class_path) is None and not _in_network_modules(module_name):
                raise ValueError(
                    f"{where}: refusing to build {class_path!r}: a run's config may only name sbnn networks (classes "
                    f"under {', '.join(NETWORK_MODULES)}) or classes registered with sbnn.export.register_exporter; "
                    "if you trust this run, build the network yourself and pass network=... (see docs/security.md)"
                )
            init_args = spec.get("init_args") or {}
            if not isinstance(init_args, dict):
                raise ValueError(f"{where}.init_args of {class_path!r}: expected a mapping, got {type(init_args).__name__}")
            for k, v in init_args.items():
                _check_spec(v, f"{where}.init_args.{k}", depth + 1)
            return
        for k, v in spec.items():
            _check_spec(v, f"{where}.{k}", depth + 1)
    elif isinstance(spec, list):
        for i, v in enumerate(spec):
            _check_spec(v, f"{where}[{i}]", depth + 1)
    elif not isinstance(spec, _PLAIN):
        raise ValueError(f"{where}: only plain data (numbers, strings, lists, mappings) is accepted, got {type(spec).__name__}")


def _network_class(class_path: str, where: str) -> type:
    """Import an allow-listed ``class_path`` (see :func:`_check_spec`) and check it is an sbnn network class."""
    cls = _registered(class_path)
    if cls is not None:
        return cls
    module_name, _, cls_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{where}: cannot import {class_path!r} named in the config ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__.startswith("sbnn.")):
        raise ValueError(
            f"{where}: refusing to build {class_path!r}: it is not an nn.Module class defined in sbnn "
            f"(got {cls!r}); a run's config may only name sbnn networks"
        )
    return cls


def _instantiate(spec, where: str = "network"):
    """Build ``{"class_path": ..., "init_args": {...}}`` (recursively), as LightningCLI configs write it.

    Only for specs that :func:`_check_spec` accepted: plain data, and class paths of sbnn networks.
    """
    if isinstance(spec, dict) and "class_path" in spec:
        cls = _network_class(spec["class_path"], where)
        kwargs = {k: _instantiate(v, f"{where}.init_args.{k}") for k, v in (spec.get("init_args") or {}).items()}
        return cls(**kwargs)
    if isinstance(spec, dict):
        return {k: _instantiate(v, f"{where}.{k}") for k, v in spec.items()}
    if isinstance(spec, list):
        return [_instantiate(v, f"{where}[{i}]") for i, v in enumerate(spec)]
    return spec


def network_from_config(config: str | os.PathLike) -> nn.Module:
    """Build the (untrained) network that a LightningCLI ``config.yaml`` names under ``model.init_args.network``.

    The config is data: it may only name sbnn network classes (modules :data:`NETWORK_MODULES`, or
    classes registered with :func:`register_exporter`) with plain-data arguments. Anything else
    (``subprocess.run``, ``builtins.eval``, a nested non-sbnn class) is refused with a ``ValueError``
    naming it, before anything outside the allow-list is imported (see ``docs/security.md``).
    """
    import yaml

    with open(config) as f:
        try:
            cfg = yaml.safe_load(f)  # plain YAML only: no python/object tags
        except yaml.YAMLError as err:
            raise ValueError(f"{config}: not a readable YAML file ({err})") from None
    try:
        spec = cfg["model"]["init_args"]["network"]
    except (KeyError, TypeError):
        raise ValueError(f"{config}: no model.init_args.network entry (not an sbnn fit config?)") from None
    return network_from_spec(spec, f"{config}: model.init_args.network")


def network_from_spec(spec: Any, where: str = "network") -> nn.Module:
    """Build a network from its ``{"class_path": ..., "init_args": {...}}`` mapping (plain data).

    The same checks as :func:`network_from_config`: only sbnn network classes, plain-data arguments;
    ``where`` names the spec in error messages.
    """
    if not (isinstance(spec, dict) and "class_path" in spec):
        raise ValueError(f"{where} must be a mapping with a class_path")
    _check_spec(spec, where)
    network = _instantiate(spec, where)
    if not isinstance(network, nn.Module):
        raise ValueError(f"{where} built a {type(network).__name__}, not a network")
    return network


def _checkpoint_safe_globals() -> list:
    """The classes Lightning may write into a checkpoint besides tensors and plain containers.

    Lightning stores ``hyper_parameters`` as a plain ``dict`` and loop/optimizer/callback states as
    containers of numbers, strings and tensors; callback states may hold paths (``dirpath``), which
    are rebuilt from strings and run nothing else.
    """
    import pathlib

    return [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def load_checkpoint(checkpoint: str | os.PathLike) -> dict:
    """Read a Lightning checkpoint as data: tensors, plain containers and the few classes Lightning writes.

    ``torch.load(..., weights_only=True)`` with :func:`_checkpoint_safe_globals` allowed for this
    call only: a pickle that would import or call anything else (``os.system``, ...) is refused
    with a ``ValueError`` before it runs.
    """
    import pickle

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"no such checkpoint: {checkpoint}")
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message wraps the one line that says what was refused in general advice
        skip = ("Weights only load failed", "Please file an issue", "Check the documentation", "WeightsUnpickler error:")
        lines = [line.strip() for line in str(err).splitlines()]
        reason = next((line for line in lines if line and not line.startswith(skip)), lines[0] if lines else "")
        raise ValueError(
            f"{checkpoint}: refusing to load: not a checkpoint of tensors and plain data only "
            f"({reason.strip()}); sbnn reads checkpoints with weights_only=True because a pickle can run code. "
            "If you trust the file, load it yourself (torch.load with weights_only off) and export the network "
            "with sbnn.export.save (see docs/security.md)"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{checkpoint}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    return ckpt


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    network: nn.Module | None = None,
    *,
    config: str | os.PathLike | None = None,
    meta: dict | None = None,
) -> Path:
    """Export a Lightning checkpoint of :class:`sbnn.tasks.SpikingClassificationTask`.

    The task stores its network's weights under ``network.`` but not its architecture. Give a
    freshly built ``network`` of the same architecture, or the ``config`` YAML of the run
    (``sbnn fit`` writes it next to the logs); with neither, ``config.yaml`` is looked up in the
    checkpoint's folder and the two above it (LightningCLI's ``<log_dir>/checkpoints/*.ckpt``).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"export_checkpoint: no such checkpoint: {checkpoint}")
    ckpt = load_checkpoint(checkpoint)
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
    try:
        network.load_state_dict(sub)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"export_checkpoint: the weights in {checkpoint} do not fit the network ({err})") from None
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

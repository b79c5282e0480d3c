"""Validated entry points to the event-driven kernels (the kernels themselves are private).

Everything here checks its input (dtype, shape, range, finiteness) and raises a ``ValueError``
naming the argument before a kernel runs; the kernels in :mod:`sbnn.kernels._kernels` assume
validated input.

Memory: one call may allocate at most ``max_bytes`` (default :data:`MAX_CALL_BYTES`, 4 GiB; pass
``max_bytes=`` to a call, or assign ``sbnn.kernels.api.MAX_CALL_BYTES`` to raise it for the
process). The need is computed from the arguments before any allocation and a call above the
limit raises a ``ValueError`` giving both figures, so a stray ``n_steps=10**12`` or an input count
of 2·10⁹ is refused instead of exhausting the machine.

Bit order: :func:`pack_signs` packs along the last axis with NumPy's ``bitorder="little"``: bit
``k`` (value ``1 << k``) of byte ``q`` is element ``8q + k``; a set bit is ``+1``, a clear bit
``−1``, padding bits are 0.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import numba
import numpy as np

from . import _kernels as K

__all__ = [
    "BITORDER",
    "MAX_CALL_BYTES",
    "check_call_bytes",
    "Events",
    "SynapseRows",
    "threads",
    "pack_signs",
    "unpack_signs",
    "packed_words",
    "events_from_dense",
    "events_from_tonic",
    "dense_rows",
    "conv_rows",
    "linear_counts",
    "lif_sequence",
    "conv2d_counts",
    "maxpool2d",
]

BITORDER = "little"
WEIGHT_FORMATS = ("packed", "int8")

#: default memory limit of one call (events, activations), in bytes: 4 GiB
MAX_CALL_BYTES = 4 << 30


class Events(NamedTuple):
    """CSR spike events: row ``r`` (time step × sample) holds ``idx[ptr[r]:ptr[r + 1]]``.

    A repeated index is an input count. ``n_in`` is the number of presynaptic neurons.
    """

    ptr: np.ndarray
    idx: np.ndarray
    n_in: int

    @property
    def n_rows(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def n_events(self) -> int:
        return int(self.idx.shape[0])


class SynapseRows(NamedTuple):
    """±1 weights laid out one row per presynaptic neuron, as the kernels read them.

    ``fmt="packed"``: uint64 words (:func:`packed_words`); ``fmt="int8"``: int8 ±1 values.
    """

    fmt: str
    rows: np.ndarray
    n_out: int


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the kernels with ``n`` Numba threads inside the block (``None``: leave it), then restore."""
    if n is None:
        yield
        return
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"threads: n must be an int in [1, {numba.config.NUMBA_NUM_THREADS}], got {n!r}")
    saved = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def _array(name: str, value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def check_call_bytes(nbytes: int, max_bytes: int | None, what: str) -> None:
    """Refuse a call that would allocate ``nbytes`` when the limit is ``max_bytes`` (``None``: :data:`MAX_CALL_BYTES`).

    Raises:
        ValueError: naming the call, its need and the limit, and how to raise it.
    """
    limit = MAX_CALL_BYTES if max_bytes is None else max_bytes
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"{what}: max_bytes must be a positive int, got {max_bytes!r}")
    if nbytes > limit:
        raise ValueError(
            f"{what}: this call needs about {int(nbytes):,} bytes ({nbytes / 2**30:.3g} GiB), above the limit of "
            f"{int(limit):,} bytes; pass max_bytes=... (or set sbnn.kernels.api.MAX_CALL_BYTES) if you mean it"
        )


def pack_signs(sign) -> np.ndarray:
    """Pack ±1 values along the last axis into bytes (``bitorder="little"``, +1 → bit 1).

    Example:
        >>> pack_signs(np.array([[1, -1, -1, 1, 1, 1, 1, 1, -1]]))
        array([[249,   0]], dtype=uint8)
    """
    arr = _array("sign", sign)
    if arr.ndim < 1 or arr.shape[-1] == 0:
        raise ValueError(f"pack_signs: sign must have a non-empty last axis, got shape {arr.shape}")
    if not np.isin(arr, (-1, 1)).all():
        raise ValueError("pack_signs: sign must hold only -1 and +1")
    return np.ascontiguousarray(np.packbits(arr > 0, axis=-1, bitorder=BITORDER))


def unpack_signs(bits, n: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: int8 ±1 values, the last axis cut to ``n``."""
    arr = _array("bits", bits)
    if arr.dtype != np.uint8:
        raise ValueError(f"unpack_signs: bits must be uint8, got {arr.dtype}")
    if not isinstance(n, (int, np.integer)) or not 0 < n <= 8 * arr.shape[-1]:
        raise ValueError(f"unpack_signs: n must be in [1, {8 * arr.shape[-1]}] for {arr.shape[-1]} bytes, got {n!r}")
    unpacked = np.unpackbits(arr, axis=-1, count=int(n), bitorder=BITORDER)
    return (2 * unpacked.astype(np.int8) - 1).astype(np.int8)


def packed_words(packed) -> np.ndarray:
    """View bytes from :func:`pack_signs` as the kernels' uint64 words (last axis zero-padded to 8 bytes).

    Bit ``b`` of word ``q`` is element ``64q + b`` on any host (the bytes are read little-endian).
    """
    arr = _array("packed", packed)
    if arr.dtype != np.uint8 or arr.ndim < 1:
        raise ValueError(f"packed_words: expected uint8 bytes from pack_signs, got {arr.dtype} {arr.shape}")
    pad = (-arr.shape[-1]) % 8
    if pad:
        arr = np.concatenate([arr, np.zeros((*arr.shape[:-1], pad), np.uint8)], axis=-1)
    return np.ascontiguousarray(np.ascontiguousarray(arr).view("<u8").astype(np.uint64))


def events_from_dense(x, n_in: int | None = None, *, max_bytes: int | None = None) -> Events:
    """CSR events of spikes or counts ``x`` ``[R, N]`` (or ``[T, B, N]``, flattened to ``R = T·B``).

    A count ``c`` becomes ``c`` events: the events take ``8·(Σ counts + R + 1)`` bytes, which must
    stay within ``max_bytes`` (see the module docstring).

    Raises:
        ValueError: if ``x`` holds negative, non-integer or non-finite values, or its events
            exceed ``max_bytes``.
    """
    arr = _array("x", x)
    if arr.ndim < 2:
        raise ValueError(f"events_from_dense: x must be [R, N] or [T, B, ...], got shape {arr.shape}")
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0] * arr.shape[1], -1)
    if n_in is not None and arr.shape[1] != n_in:
        raise ValueError(f"events_from_dense: x has {arr.shape[1]} inputs per row, the layer takes {n_in}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError("events_from_dense: x must hold integer spike counts (0/1 spikes); got non-integer or non-finite values")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"events_from_dense: x must be numeric, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError("events_from_dense: x must be non-negative (spikes or counts)")
    if arr.size and arr.max() > np.iinfo(np.int32).max:  # noqa: SIM102
        raise ValueError("events_from_dense: a count exceeds int32")
    total = int(arr.sum(dtype=np.float64)) if arr.size else 0  # float64: no overflow on hostile counts
    check_call_bytes(8 * (total + arr.shape[0] + 1), max_bytes, "events_from_dense")
    if arr.dtype.kind == "f" or arr.dtype.itemsize > 4:
        arr = arr.astype(np.int32)  # validated integer values above; the kernel takes any int type
    ptr, idx = K.dense_to_events(np.ascontiguousarray(arr))
    return Events(ptr, idx, int(arr.shape[1]))


def tonic_call_bytes(n_steps: int, n_events: int) -> int:
    """Bytes :func:`events_from_tonic` allocates: step pointers and counts, and per-event columns and keys."""
    return 16 * (n_steps + 1) + 64 * n_events


def events_from_tonic(
    events: np.ndarray,
    sensor_size: tuple[int, int, int],
    *,
    n_steps: int,
    time_window: float,
    start: float = 0.0,
    binary: bool = True,
    max_bytes: int | None = None,
) -> Events:
    """Bin one tonic event array into ``n_steps`` rows of CSR events (batch of one).

    Event ``e`` falls in step ``⌊(t_e − start) / time_window⌋`` (events past the last step are
    dropped) and channel ``(p·H + y)·W + x`` (``sensor_size = (W, H, P)`` as tonic; missing
    ``y``/``p`` fields count as 0; with ``P = 1`` a single polarity value counts as 0, as in tonic's
    ``ToFrame``: tonic's SHD events carry ``p = 1``), i.e. PyTorch's flattening of ``[P, H, W]``
    frames. With ``binary`` the counts are clamped to 1 (spikes), otherwise they are kept as counts.
    Steps are tonic's ``ToFrame(time_window=..., start_time=start)`` windows
    ``[start + k·time_window, start + (k+1)·time_window)``; the two agree exactly when
    ``time_window`` and ``start`` are whole numbers of the timestamps' unit (both sides then
    compute exactly), as with the data modules' defaults.

    The call takes about ``16·(n_steps + 1) + 64·len(events)`` bytes, which must stay within
    ``max_bytes`` (see the module docstring).

    Raises:
        ValueError: missing ``t``/``x`` fields, unsorted or negative timestamps, indices outside
            ``sensor_size`` (two polarities on a ``P = 1`` sensor), bad ``n_steps``/``time_window``,
            or a call above ``max_bytes``.
    """
    if not isinstance(events, np.ndarray) or events.dtype.names is None or not {"t", "x"} <= set(events.dtype.names):
        raise ValueError("events_from_tonic: events must be a structured array with fields 't' and 'x' (tonic format)")
    if len(sensor_size) != 3 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sensor_size):
        raise ValueError(f"events_from_tonic: sensor_size must be three positive ints (W, H, P), got {sensor_size!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"events_from_tonic: n_steps must be a positive int, got {n_steps!r}")
    n_steps = int(n_steps)
    check_call_bytes(tonic_call_bytes(n_steps, events.size), max_bytes, "events_from_tonic")
    if not np.isfinite(time_window) or time_window <= 0:
        raise ValueError(f"events_from_tonic: time_window must be positive and finite, got {time_window!r}")
    w, h, p = (int(s) for s in sensor_size)
    t = events["t"].astype(np.float64)
    if t.size and np.any(np.diff(t) < 0):
        first = int(np.argmax(np.diff(t) < 0)) + 1
        raise ValueError(f"events_from_tonic: timestamps must be sorted; event {first} (t={t[first]}) precedes its predecessor")
    fields = {}
    for name, size in (("x", w), ("y", h), ("p", p)):
        col = events[name].astype(np.int64) if name in events.dtype.names else np.zeros(t.size, np.int64)
        if name == "p" and p == 1 and col.size:
            # tonic's ToFrame rule for a single-polarity sensor: one polarity value, whatever it is,
            # is polarity 0 (tonic's SHD loader writes an artificial p = 1 on a (700, 1, 1) sensor)
            if (col != col[0]).any():
                raise ValueError(
                    f"events_from_tonic: sensor_size={tuple(sensor_size)} has a single polarity but the events hold "
                    f"polarities {np.unique(col).tolist()}; use P = 2 in sensor_size"
                )
            col = np.zeros_like(col)
        if col.size and (col.min() < 0 or col.max() >= size):
            bad = int(np.argmax((col < 0) | (col >= size)))
            raise ValueError(
                f"events_from_tonic: event {bad} has {name}={col[bad]} outside the sensor (0..{size - 1} for "
                f"sensor_size={tuple(sensor_size)}); check sensor_size"
            )
        fields[name] = col
    if t.size and t[0] < start:
        raise ValueError(f"events_from_tonic: event 0 at t={t[0]} precedes start={start}")
    from sbnn.data.checks import check_event_array  # what is left: NaN, inf or int64-overflowing t

    check_event_array(events, sensor_size, where="events_from_tonic: events")
    step = np.floor((t - start) / time_window).astype(np.int64)
    keep = step < n_steps
    n_in = w * h * p
    keys = step[keep] * n_in + (fields["p"][keep] * h + fields["y"][keep]) * w + fields["x"][keep]
    keys = np.unique(keys) if binary else np.sort(keys, kind="stable")
    ptr = np.zeros(n_steps + 1, dtype=np.intp)
    np.cumsum(np.bincount(keys // n_in, minlength=n_steps), out=ptr[1:])
    return Events(ptr, np.ascontiguousarray(keys % n_in, dtype=np.intp), n_in)


def _check_sign(name: str, sign, ndim: int) -> np.ndarray:
    arr = _array(name, sign)
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of ±1, got shape {arr.shape}")
    if not np.isin(arr, (-1, 1)).all():
        raise ValueError(f"{name}: weights must be -1 or +1")
    return arr


def dense_rows(sign, fmt: str = "packed") -> SynapseRows:
    """Kernel layout of dense ±1 weights ``sign`` ``[out, in]``: one row per input neuron."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"dense_rows: fmt must be one of {WEIGHT_FORMATS}, got {fmt!r}")
    arr = _check_sign("dense_rows: sign", sign, 2)
    rows = np.ascontiguousarray(arr.T.astype(np.int8))
    return SynapseRows(fmt, packed_words(pack_signs(rows)) if fmt == "packed" else rows, int(arr.shape[0]))


def conv_rows(sign, fmt: str = "packed") -> SynapseRows:
    """Kernel layout of conv ±1 weights ``[C_out, C_in, kH, kW]``: rows ``[C_in, kH, kW, C_out]``."""
    if fmt not in WEIGHT_FORMATS:
        raise ValueError(f"conv_rows: fmt must be one of {WEIGHT_FORMATS}, got {fmt!r}")
    arr = _check_sign("conv_rows: sign", sign, 4)
    rows = np.ascontiguousarray(arr.transpose(1, 2, 3, 0).astype(np.int8))
    return SynapseRows(fmt, packed_words(pack_signs(rows)) if fmt == "packed" else rows, int(arr.shape[0]))


def _check_events(events: Events, n_in: int, where: str) -> None:
    if not isinstance(events, Events):
        raise ValueError(f"{where}: events must be an Events record (use events_from_dense or events_from_tonic)")
    if events.n_in != n_in:
        raise ValueError(f"{where}: the events address {events.n_in} inputs, the weights have {n_in}")
    if events.ptr.ndim != 1 or events.ptr.size < 1 or events.ptr[0] != 0 or events.ptr[-1] != events.idx.size or np.any(np.diff(events.ptr) < 0):
        raise ValueError(f"{where}: events.ptr must start at 0, be non-decreasing and end at len(idx)")
    if events.idx.size and (events.idx.min() < 0 or events.idx.max() >= n_in):
        raise ValueError(f"{where}: event indices must lie in [0, {n_in}); got [{events.idx.min()}, {events.idx.max()}]")
    if events.ptr.dtype != np.intp or events.idx.dtype != np.intp:
        raise ValueError(f"{where}: events.ptr and events.idx must be intp arrays")


def linear_counts(events: Events, weights: SynapseRows) -> np.ndarray:
    """Integer pre-activations ``n[r, j] = Σ_{i ∈ events(r)} w[j, i]`` (int32 ``[R, out]``).

    Only the rows of active inputs are read: ``events.n_events · out`` synaptic operations. Rows
    run in parallel over the current Numba threads (see :func:`threads`).
    """
    if not isinstance(weights, SynapseRows) or weights.rows.ndim != 2:
        raise ValueError("linear_counts: weights must come from dense_rows()")
    _check_events(events, weights.rows.shape[0], "linear_counts")
    chunks = 4 * numba.get_num_threads()
    if weights.fmt == "packed":
        return K.linear_packed(events.ptr, events.idx, weights.rows, weights.n_out, chunks)
    return K.linear_int8(events.ptr, events.idx, weights.rows, chunks)


def _per_unit(name: str, value, m: int) -> np.ndarray:
    arr = np.asarray(_array(name, value), dtype=np.float32).reshape(-1)
    if arr.size not in (1, m):
        raise ValueError(f"lif_sequence: {name} must have 1 or {m} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"lif_sequence: {name} must be finite")
    # a fresh writable array: a read-only view would be a different Numba type (a recompilation)
    return np.array(np.broadcast_to(arr, (m,)), dtype=np.float32)


def lif_sequence(
    n, alpha, beta, threshold, *, bias=None, reset: str = "subtract", record_mem: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic LIF neurons over integer pre-activations ``n`` ``[T, B, M]``.

    ``μ = fl(float32(n)·α) (+ b)``, then the ``mode`` stochastic-LIF step (``ε = 0``) of
    :mod:`sbnn.functional.neurons`, in the same float32 op order (see ``docs/kernels.md``).

    Returns:
        ``(spk, mem)``: uint8 spikes ``[T, B, M]`` and float32 membranes ``[T, B, M]`` (only the
        last step, ``[1, B, M]``, if not ``record_mem``).
    """
    arr = _array("n", n)
    if arr.ndim != 3 or arr.dtype.kind not in "iu":
        raise ValueError(f"lif_sequence: n must be an integer [T, B, M] array, got {arr.dtype} {arr.shape}")
    if reset not in ("subtract", "zero", "none"):
        raise ValueError(f"lif_sequence: reset must be 'subtract', 'zero' or 'none', got {reset!r}")
    m = arr.shape[2]
    a, th, be = _per_unit("alpha", alpha, m), _per_unit("threshold", threshold, m), _per_unit("beta", beta, m)
    b = _per_unit("bias", 0.0 if bias is None else bias, m)
    code = {"subtract": K.RESET_SUBTRACT, "zero": K.RESET_ZERO, "none": K.RESET_NONE}[reset]
    return K.lif_sequence(np.ascontiguousarray(arr, dtype=np.int32), a, b, bias is not None, be, th, code, record_mem)


def _pair(name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d_counts(
    events: Events, weights: SynapseRows, in_shape: tuple[int, int, int], *, stride=1, padding=0, dilation=1
) -> tuple[np.ndarray, int, tuple[int, int, int]]:
    """Event-driven ±1 convolution: integer pre-activations ``[R, C_out·H'·W']`` (``[C, H, W]`` order).

    Returns:
        ``(n, synops, out_shape)``.
    """
    if not isinstance(weights, SynapseRows) or weights.rows.ndim != 4:
        raise ValueError("conv2d_counts: weights must come from conv_rows()")
    (sh, sw), (ph, pw), (dh, dw) = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError("conv2d_counts: stride and dilation must be >= 1 and padding >= 0")
    c_in, kh, kw = weights.rows.shape[:3]
    if len(in_shape) != 3 or in_shape[0] != c_in:
        raise ValueError(f"conv2d_counts: in_shape must be (C_in={c_in}, H, W), got {in_shape!r}")
    _, h, w = (int(s) for s in in_shape)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d_counts: the kernel does not fit the {h}x{w} input (output {ho}x{wo})")
    _check_events(events, c_in * h * w, "conv2d_counts")
    packed = weights.fmt == "packed"
    words = weights.rows if packed else np.zeros((1, 1, 1, 1), np.uint64)
    w8 = weights.rows if not packed else np.zeros((1, 1, 1, 1), np.int8)
    n, synops = K.conv2d_counts(events.ptr, events.idx, packed, words, w8, c_in, h, w, weights.n_out, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    return n, int(synops), (weights.n_out, ho, wo)


def maxpool2d(x, in_shape: tuple[int, int, int], kernel_size, stride=None, padding=0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Max pooling of binary spike maps ``x`` uint8 ``[R, C·H·W]``; returns ``(y, out_shape)``."""
    arr = _array("x", x)
    (kh, kw) = _pair("kernel_size", kernel_size)
    (sh, sw) = _pair("stride", kernel_size if stride is None else stride)
    (ph, pw) = _pair("padding", padding)
    c, h, w = (int(s) for s in in_shape)
    if arr.ndim != 2 or arr.shape[1] != c * h * w or arr.dtype != np.uint8:
        raise ValueError(f"maxpool2d: x must be uint8 [R, {c * h * w}], got {arr.dtype} {arr.shape}")
    if min(kh, kw, sh, sw) < 1 or ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError("maxpool2d: kernel_size and stride must be >= 1, 0 <= padding <= kernel_size/2")
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"maxpool2d: the window does not fit the {h}x{w} input")
    return K.maxpool2d_spikes(np.ascontiguousarray(arr), c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), (c, ho, wo)

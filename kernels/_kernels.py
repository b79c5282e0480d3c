"""Private Numba kernels of the deployed SBNN engine. Use :mod:`sbnn.kernels.api`, which validates.

Every kernel takes plain arrays and scalars and assumes validated input (indices in range,
C-contiguous arrays of the documented dtypes). Conventions shared by all of them:

* **Events.** The input of a synaptic layer for ``R = T·B`` rows (one row per time step and
  sample) is a CSR list: the active presynaptic indices of row ``r`` are
  ``idx[ptr[r]:ptr[r + 1]]``. A repeated index is an input count (the row is added again).
* **Packed ±1 rows.** Row ``i`` holds the signs of the weights from presynaptic neuron ``i``; the
  kernels read it as uint64 words ``words[i, q]`` whose bit ``b`` is postsynaptic neuron
  ``64q + b`` (the file's bytes, packed with NumPy ``bitorder="little"`` and zero-padded to a
  multiple of 8 bytes, viewed as little-endian uint64). Bit 1 is ``+1``, bit 0 is ``−1``. The
  integer pre-activation is ``n_j = 2·P_j − k`` with ``P_j`` the number of events whose bit ``j``
  is set and ``k`` the number of events.
* **int8 rows.** ``w[i, j] ∈ {−1, +1}`` as int8, the same row-per-presynaptic-neuron layout.
* **Exact integers.** Pre-activations are int32 sums of ±1, exact; the float work (scale, bias,
  leak, threshold) happens afterwards in float32 in the order of the PyTorch ``mode`` path, so
  the spikes are bit-identical (see ``docs/kernels.md``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2

# SWAR counting: ``(word >> k) & LANE_MASK`` has in byte b the weight bit of neuron 64q + 8b + k,
# so adding it to a uint64 adds eight independent byte counters at once; eight shifts cover a
# word. The counters are kept k-major (``acc[k·n_words + q]``) so the loop over words is
# contiguous and vectorises. A byte counter overflows after 255 additions, so the counters are
# flushed into int32 at most every 255 events.
LANE_MASK = np.uint64(0x0101010101010101)
_FLUSH_EVERY = 255
# int8 rows accumulate in int8 (four times the SIMD width of int32): a sum of at most 127 terms
# ±1 cannot overflow, so the accumulators are flushed into int32 every 127 events
_FLUSH_INT8 = 127


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a·b + c`` with one rounding (LLVM ``llvm.fma.f32``): torch's ``addcmul`` fuses on CPU."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(cache=True, nogil=True)
def dense_to_events(x):
    """CSR events of a non-negative integer matrix ``x[R, N]`` (value ``c`` gives ``c`` copies)."""
    rows, n = x.shape
    ptr = np.zeros(rows + 1, dtype=np.intp)
    for r in range(rows):
        row = x[r]
        total = 0
        for i in range(n):  # a widening sum: vectorises
            total += np.intp(row[i])
        ptr[r + 1] = ptr[r] + total
    idx = np.empty(ptr[rows], dtype=np.intp)
    for r in range(rows):
        row = x[r]
        pos = ptr[r]
        if pos == ptr[r + 1]:
            continue
        for i in range(n):
            c = row[i]
            if c != 0:
                for _ in range(c):
                    idx[pos] = i
                    pos += 1
    return ptr, idx


@njit(cache=True, nogil=True)
def _flush_lanes(acc, plus, n_words):
    """Add the byte counters ``acc`` (k-major, see above) to the int32 counters ``plus``; clear them."""
    for k in range(8):
        for q in range(n_words):
            v = acc[k * n_words + q]
            if v != 0:
                for b in range(8):
                    plus[64 * q + 8 * b + k] += np.int32((v >> np.uint64(8 * b)) & np.uint64(0xFF))
                acc[k * n_words + q] = 0


@njit(cache=True, nogil=True)
def _add_word_row(w, acc, n_words):
    for k in range(8):
        shift = np.uint64(k)
        base = k * n_words
        for q in range(n_words):
            acc[base + q] += (w[q] >> shift) & LANE_MASK


@njit(cache=True, nogil=True, inline="always")
def _row_packed(idx, start, stop, words, acc, plus, out_row, n_out):
    """Integer pre-activations of one row from packed weights ``words`` ``[n_in, n_words]``.

    ``acc`` (``8·n_words`` uint64, zero on entry and on return) holds the byte counters; ``plus``
    (``64·n_words`` int32) is only used when the row has more than 255 events.
    """
    n_words = words.shape[1]
    pending = 0
    flushed = False
    for e in range(start, stop):
        w = words[idx[e]]
        # written out here rather than in a helper: LLVM vectorises it only inline
        for k in range(8):
            shift = np.uint64(k)
            base = k * n_words
            for q in range(n_words):
                acc[base + q] += (w[q] >> shift) & LANE_MASK
        pending += 1
        if pending == _FLUSH_EVERY:
            if not flushed:
                for j in range(plus.shape[0]):
                    plus[j] = 0
                flushed = True
            _flush_lanes(acc, plus, n_words)
            pending = 0
    kk = np.int32(stop - start)
    if flushed:
        _flush_lanes(acc, plus, n_words)
        for j in range(n_out):
            out_row[j] = 2 * plus[j] - kk
        return
    # common case (< 256 events): read the byte counters straight into the output
    for k in range(8):
        for q in range(n_words):
            v = acc[k * n_words + q]
            acc[k * n_words + q] = 0
            for b in range(8):
                j = 64 * q + 8 * b + k
                if j < n_out:
                    out_row[j] = 2 * np.int32((v >> np.uint64(8 * b)) & np.uint64(0xFF)) - kk


@njit(cache=True, nogil=True, inline="always")
def _csa(a, b, c):
    """Carry-save adder on 64 bit lanes: ``(carry, sum)`` of ``a + b + c`` per bit position."""
    u = a ^ b
    return (a & b) | (u & c), u ^ c


#: rows with at least this many events use the carry-save (Harley–Seal) path of :func:`_row_packed_csa`
CSA_MIN_EVENTS = 32


@njit(cache=True, nogil=True, inline="always")
def _row_packed_csa(idx, start, stop, words, zero, planes, acc16, plus, out_row, n_out):
    """As :func:`_row_packed` for long rows: a positional popcount with carry-save adders.

    Events are taken 16 at a time (the last block padded with the all-zero row ``zero``); a tree
    of 15 carry-save adders per word keeps bit-sliced counters ``planes`` (ones, twos, fours,
    eights: ``[4, n_words]``) and only its carry-out, worth 16 per set bit, is expanded into the
    SWAR byte counters ``acc16`` (flushed to ``plus``, in units of 16, every 255 blocks). About 7 word operations
    per event instead of 8 shift-and-adds. ``planes`` and ``acc16`` are zero on entry and return.
    """
    n_words = words.shape[1]
    pending = 0
    flushed = False
    for e in range(start, stop, 16):
        r0 = words[idx[e]]
        r1 = words[idx[e + 1]] if e + 1 < stop else zero
        r2 = words[idx[e + 2]] if e + 2 < stop else zero
        r3 = words[idx[e + 3]] if e + 3 < stop else zero
        r4 = words[idx[e + 4]] if e + 4 < stop else zero
        r5 = words[idx[e + 5]] if e + 5 < stop else zero
        r6 = words[idx[e + 6]] if e + 6 < stop else zero
        r7 = words[idx[e + 7]] if e + 7 < stop else zero
        r8 = words[idx[e + 8]] if e + 8 < stop else zero
        r9 = words[idx[e + 9]] if e + 9 < stop else zero
        r10 = words[idx[e + 10]] if e + 10 < stop else zero
        r11 = words[idx[e + 11]] if e + 11 < stop else zero
        r12 = words[idx[e + 12]] if e + 12 < stop else zero
        r13 = words[idx[e + 13]] if e + 13 < stop else zero
        r14 = words[idx[e + 14]] if e + 14 < stop else zero
        r15 = words[idx[e + 15]] if e + 15 < stop else zero
        for q in range(n_words):
            ones, twos, fours, eights = planes[0, q], planes[1, q], planes[2, q], planes[3, q]
            twos_a, ones = _csa(ones, r0[q], r1[q])
            twos_b, ones = _csa(ones, r2[q], r3[q])
            fours_a, twos = _csa(twos, twos_a, twos_b)
            twos_a, ones = _csa(ones, r4[q], r5[q])
            twos_b, ones = _csa(ones, r6[q], r7[q])
            fours_b, twos = _csa(twos, twos_a, twos_b)
            eights_a, fours = _csa(fours, fours_a, fours_b)
            twos_a, ones = _csa(ones, r8[q], r9[q])
            twos_b, ones = _csa(ones, r10[q], r11[q])
            fours_a, twos = _csa(twos, twos_a, twos_b)
            twos_a, ones = _csa(ones, r12[q], r13[q])
            twos_b, ones = _csa(ones, r14[q], r15[q])
            fours_b, twos = _csa(twos, twos_a, twos_b)
            eights_b, fours = _csa(fours, fours_a, fours_b)
            sixteens, eights = _csa(eights, eights_a, eights_b)
            planes[0, q], planes[1, q], planes[2, q], planes[3, q] = ones, twos, fours, eights
            for k in range(8):
                acc16[k * n_words + q] += (sixteens >> np.uint64(k)) & LANE_MASK
        pending += 1
        if pending == _FLUSH_EVERY:
            if not flushed:
                for j in range(plus.shape[0]):
                    plus[j] = 0
                flushed = True
            _flush_lanes(acc16, plus, n_words)
            pending = 0
    kk = np.int32(stop - start)
    for k in range(8):
        shift = np.uint64(k)
        for q in range(n_words):
            # bytes of the bit-sliced count (< 16) and of the sixteens counter
            low = (
                ((planes[0, q] >> shift) & LANE_MASK)
                + np.uint64(2) * ((planes[1, q] >> shift) & LANE_MASK)
                + np.uint64(4) * ((planes[2, q] >> shift) & LANE_MASK)
                + np.uint64(8) * ((planes[3, q] >> shift) & LANE_MASK)
            )
            high = acc16[k * n_words + q]
            acc16[k * n_words + q] = 0
            for b in range(8):
                j = 64 * q + 8 * b + k
                if j < n_out:
                    byte = np.uint64(8 * b)
                    sixteens_j = np.int32((high >> byte) & np.uint64(0xFF))
                    if flushed:
                        sixteens_j += plus[j]  # the flushed counters also count sixteens
                    out_row[j] = 2 * (16 * sixteens_j + np.int32((low >> byte) & np.uint64(0xFF))) - kk
    for p in range(4):
        for q in range(n_words):
            planes[p, q] = 0


@njit(cache=True, nogil=True, inline="always")
def _row_int8(idx, start, stop, w, acc, out_row, n_out):
    """Integer pre-activations of one row from int8 rows ``w`` (int8 accumulators ``acc``, zero on entry/return)."""
    pending = 0
    flushed = False
    for e in range(start, stop):
        row = w[idx[e]]
        for j in range(n_out):
            acc[j] += row[j]
        pending += 1
        if pending == _FLUSH_INT8:
            if not flushed:
                for j in range(n_out):
                    out_row[j] = 0
                flushed = True
            for j in range(n_out):
                out_row[j] += acc[j]
                acc[j] = 0
            pending = 0
    if flushed:
        for j in range(n_out):
            out_row[j] += acc[j]
            acc[j] = 0
    else:
        for j in range(n_out):
            out_row[j] = acc[j]
            acc[j] = 0


@njit(parallel=True, cache=True, nogil=True)
def linear_packed(ptr, idx, words, n_out, n_chunks):
    """``n[r, j] = Σ_{i ∈ events(r)} w[i, j]`` from packed rows; returns int32 ``[R, n_out]``.

    The rows are split into ``n_chunks`` blocks run in parallel (``prange``; one thread gives the
    serial kernel), each with its own scratch counters. ``n_chunks`` comes from the caller
    because reading the thread count inside the kernel would stop Numba from caching it.
    """
    rows = ptr.shape[0] - 1
    n_words = words.shape[1]
    out = np.empty((rows, n_out), dtype=np.int32)
    n_chunks = max(1, min(rows, n_chunks))
    for c in prange(n_chunks):
        acc = np.zeros(8 * n_words, dtype=np.uint64)
        plus = np.zeros(64 * n_words, dtype=np.int32)
        zero = np.zeros(n_words, dtype=np.uint64)
        planes = np.zeros((4, n_words), dtype=np.uint64)
        for r in range(c * rows // n_chunks, (c + 1) * rows // n_chunks):
            if ptr[r + 1] - ptr[r] >= CSA_MIN_EVENTS:
                _row_packed_csa(idx, ptr[r], ptr[r + 1], words, zero, planes, acc, plus, out[r], n_out)
            else:
                _row_packed(idx, ptr[r], ptr[r + 1], words, acc, plus, out[r], n_out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def linear_int8(ptr, idx, w, n_chunks):
    """As :func:`linear_packed` from int8 rows ``w[n_in, n_out]``."""
    rows = ptr.shape[0] - 1
    n_out = w.shape[1]
    out = np.empty((rows, n_out), dtype=np.int32)
    n_chunks = max(1, min(rows, n_chunks))
    for c in prange(n_chunks):
        acc = np.zeros(n_out, dtype=np.int8)
        for r in range(c * rows // n_chunks, (c + 1) * rows // n_chunks):
            _row_int8(idx, ptr[r], ptr[r + 1], w, acc, out[r], n_out)
    return out


@njit(cache=True, nogil=True)
def _current(n, alpha, bias, has_bias):
    """``μ = float32(n)·α (+ b)``: the op order of the torch ``mode`` layer (see docs/kernels.md)."""
    mu = np.float32(n) * alpha
    if has_bias:
        mu = mu + bias
    return mu


@njit(cache=True, nogil=True)
def _lif_update(mu, mem, spk, beta, thr, reset):
    """One deterministic stochastic-LIF step (``ε = 0``) in the float32 op order of torch's loop.

    subtract: ``Ū = fma(U, β, μ)`` then ``Ū − ϑ`` if the neuron spiked; zero:
    ``Ū = μ + fl(U·β)·(1 − S)``; none: ``Ū = fma(U, β, μ)``. The new spike is ``Ū ≥ ϑ``.
    """
    if reset == RESET_ZERO:
        if spk:
            return mu
        return mu + mem * beta
    ubar = _fma32(mem, beta, mu)
    if reset == RESET_SUBTRACT and spk:
        ubar = ubar + (-thr)
    return ubar


@njit(parallel=True, cache=True, nogil=True)
def lif_sequence(n, alpha, bias, has_bias, beta, thr, reset, record_mem):
    """Membranes and spikes of LIF neurons driven by integer pre-activations.

    ``n`` is int32 ``[T, B, M]``; ``alpha``, ``bias``, ``beta``, ``thr`` are float32 ``[M]``.
    Returns ``(spk uint8 [T, B, M], mem float32 [T, B, M] or [1, B, M] (last step only))``.
    """
    steps, batch, m = n.shape
    spk = np.zeros((steps, batch, m), dtype=np.uint8)
    mem_out = np.zeros((steps if record_mem else 1, batch, m), dtype=np.float32)
    for b in prange(batch):
        mem = np.zeros(m, dtype=np.float32)
        s = np.zeros(m, dtype=np.uint8)
        for t in range(steps):
            for j in range(m):
                mu = _current(n[t, b, j], alpha[j], bias[j], has_bias)
                u = _lif_update(mu, mem[j], s[j], beta[j], thr[j], reset)
                mem[j] = u
                s[j] = 1 if u >= thr[j] else 0
                spk[t, b, j] = s[j]
            if record_mem:
                for j in range(m):
                    mem_out[t, b, j] = mem[j]
        if not record_mem:
            for j in range(m):
                mem_out[0, b, j] = mem[j]
    return spk, mem_out


@njit(parallel=True, cache=True, nogil=True)
def recurrent_lif_sequence(
    n_ff, alpha, bias, has_bias, rec_packed, rec_words, rec_w, rec_alpha, rec_bias, rec_has_bias, beta, thr, reset, record_mem
):
    """LIF layer with recurrent ±1 synapses: ``μ[t] = μ_ff[t] + μ_rec[t]``.

    ``μ_ff = float32(n_ff)·α (+ b)`` and ``μ_rec = float32(n_rec)·α_r (+ b_r)`` with ``n_rec`` the
    integer input from the layer's own spikes at ``t − 1`` (event-driven over the neurons that
    spiked), from ``rec_words`` (packed uint64 words, if ``rec_packed``) or ``rec_w`` (int8).
    Returns ``(spk, mem, synops)``; ``synops`` counts the recurrent synaptic operations.
    """
    steps, batch, m = n_ff.shape
    spk = np.zeros((steps, batch, m), dtype=np.uint8)
    mem_out = np.zeros((steps if record_mem else 1, batch, m), dtype=np.float32)
    synops = np.zeros(batch, dtype=np.int64)
    n_words = rec_words.shape[1]
    for b in prange(batch):
        mem = np.zeros(m, dtype=np.float32)
        s = np.zeros(m, dtype=np.uint8)
        active = np.empty(m, dtype=np.intp)
        n_active = 0
        n_rec = np.zeros(m, dtype=np.int32)
        acc = np.zeros(8 * n_words, dtype=np.uint64)
        plus = np.zeros(64 * n_words, dtype=np.int32)
        acc8 = np.zeros(m, dtype=np.int8)
        for t in range(steps):
            if rec_packed:
                _row_packed(active, 0, n_active, rec_words, acc, plus, n_rec, m)
            else:
                _row_int8(active, 0, n_active, rec_w, acc8, n_rec, m)
            synops[b] += n_active * m
            n_active = 0
            for j in range(m):
                mu = _current(n_ff[t, b, j], alpha[j], bias[j], has_bias) + _current(
                    n_rec[j], rec_alpha[j], rec_bias[j], rec_has_bias
                )
                u = _lif_update(mu, mem[j], s[j], beta[j], thr[j], reset)
                mem[j] = u
                s[j] = 1 if u >= thr[j] else 0
                spk[t, b, j] = s[j]
                if s[j]:
                    active[n_active] = j
                    n_active += 1
            if record_mem:
                for j in range(m):
                    mem_out[t, b, j] = mem[j]
        if not record_mem:
            for j in range(m):
                mem_out[0, b, j] = mem[j]
    return spk, mem_out, synops.sum()


@njit(parallel=True, cache=True, nogil=True)
def conv2d_counts(ptr, idx, packed, words, w, c_in, h, wd, c_out, kh, kw, sh, sw, ph, pw, dh, dw, h_out, w_out):
    """Event-driven 2-D convolution of binary spike maps into integer pre-activations.

    An input event at flat index ``i = (c·H + y)·W + x`` (PyTorch ``[C, H, W]`` order) reaches
    every output ``(oy, ox)`` with ``oy·sh − ph + ky·dh = y`` (same for x) and adds the weight row
    ``[c, ky, kx, :]`` over the output channels (``words`` uint64 ``[c_in, kh, kw, ceil(c_out/64)]``
    if ``packed``, else ``w`` int8 ``[c_in, kh, kw, c_out]``). Returns int32 ``[R, c_out·h_out·w_out]``
    in ``[C_out, H_out, W_out]`` order and the number of synaptic operations.
    """
    rows = ptr.shape[0] - 1
    n_pix = h_out * w_out
    out = np.empty((rows, c_out * n_pix), dtype=np.int32)
    n_words = words.shape[3]
    synops = np.zeros(rows, dtype=np.int64)
    for r in prange(rows):
        # only the buffers of the chosen weight format get a size (typed on every path)
        n_packed = n_pix if packed else 0
        lanes = np.zeros((n_packed, 8 * n_words), dtype=np.uint64)
        plus = np.zeros((n_packed, 64 * n_words), dtype=np.int32)
        cnt = np.zeros(n_packed, dtype=np.int32)
        acc = np.zeros((n_pix - n_packed, c_out), dtype=np.int32)
        taps = 0
        for e in range(ptr[r], ptr[r + 1]):
            i = idx[e]
            c = i // (h * wd)
            y = (i // wd) % h
            x = i % wd
            for ky in range(kh):
                num_y = y + ph - ky * dh
                if num_y < 0 or num_y % sh != 0:
                    continue
                oy = num_y // sh
                if oy >= h_out:
                    continue
                for kx in range(kw):
                    num_x = x + pw - kx * dw
                    if num_x < 0 or num_x % sw != 0:
                        continue
                    ox = num_x // sw
                    if ox >= w_out:
                        continue
                    p = oy * w_out + ox
                    taps += 1
                    if packed:
                        _add_word_row(words[c, ky, kx], lanes[p], n_words)
                        cnt[p] += 1
                        if cnt[p] % _FLUSH_EVERY == 0:
                            _flush_lanes(lanes[p], plus[p], n_words)
                    else:
                        row8 = w[c, ky, kx]
                        for o in range(c_out):
                            acc[p, o] += row8[o]
        synops[r] = taps * c_out
        for p in range(n_pix):
            if packed:
                _flush_lanes(lanes[p], plus[p], n_words)
                for o in range(c_out):
                    out[r, o * n_pix + p] = 2 * plus[p, o] - cnt[p]
            else:
                for o in range(c_out):
                    out[r, o * n_pix + p] = acc[p, o]
    return out, synops.sum()


@njit(cache=True, nogil=True)
def maxpool2d_spikes(x, c, h, wd, kh, kw, sh, sw, ph, pw, h_out, w_out):
    """Max pooling of binary spike maps ``x`` uint8 ``[R, c·h·w]`` (an OR over each window)."""
    rows = x.shape[0]
    out = np.zeros((rows, c * h_out * w_out), dtype=np.uint8)
    for r in range(rows):  # serial: cheap next to the layers around it, and parallel compiles slowly
        for ch in range(c):
            base = ch * h * wd
            for oy in range(h_out):
                for ox in range(w_out):
                    v = np.uint8(0)
                    for ky in range(kh):
                        y = oy * sh - ph + ky
                        if y < 0 or y >= h:
                            continue
                        for kx in range(kw):
                            xx = ox * sw - pw + kx
                            if xx >= 0 and xx < wd and x[r, base + y * wd + xx]:
                                v = np.uint8(1)
                    out[r, (ch * h_out + oy) * w_out + ox] = v
    return out


@njit(cache=True, nogil=True)
def stream_sum(a):
    """Sum of a large uint64 array: the streaming-read baseline of the memory-bandwidth bound."""
    t0 = np.uint64(0)
    t1 = np.uint64(0)
    t2 = np.uint64(0)
    t3 = np.uint64(0)
    n = a.shape[0] - a.shape[0] % 4
    for i in range(0, n, 4):
        t0 += a[i]
        t1 += a[i + 1]
        t2 += a[i + 2]
        t3 += a[i + 3]
    for i in range(n, a.shape[0]):
        t0 += a[i]
    return t0 + t1 + t2 + t3

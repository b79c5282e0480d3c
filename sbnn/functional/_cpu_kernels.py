"""Private Numba CPU kernels of the pathwise stochastic-LIF sequence (forward loop and BPTT).

The autograd nodes of :mod:`sbnn.functional.neurons` call these on CPU tensors of
float32/float64 instead of their per-step torch loops, through the torch operators of
:mod:`sbnn.functional._kernel_ops` (opaque to ``torch.compile``); the torch path stays the
reference (and the path on every other device).

Conventions shared by every kernel:

* **Layout.** Sequences are C-contiguous ``[T, N]`` arrays, ``N`` the product of a step's unit
  dimensions (``[B, ...]`` flattened); per-step constants (``β``, ``ϑ``, the initial state) are
  ``[N]`` arrays, already broadcast to a step's shape by the caller. One dtype throughout
  (float32 or float64, each compiled once); ``one`` is the scalar 1 of that dtype, so that no
  literal promotes a float32 expression to float64. The time loop is outside, the unit loop
  inside: the inner loop runs over contiguous memory and vectorises.
* **Same arithmetic as torch.** The formulas and their order are those of the torch loop, element
  by element; torch's CPU ``addcmul`` is one fused multiply-add (``a + b·c`` with one rounding),
  so every ``addcmul`` here is :func:`_fma`. No ``fastmath``: LLVM contracts nothing else. Given
  the scale, the forward therefore reproduces the torch path's membranes bit for bit, and its
  spikes.
* **Parallel twins.** ``lif_forward``, ``lif_backward`` and ``time_weighted_grad`` have
  ``*_parallel`` versions (``parallel=True``, Numba's OpenMP layer) that split the independent
  ranges (units; steps for ``time_weighted_grad``) into one range per thread, each running the
  serial loop on its slice: the same numbers, bit for bit. The operators of
  :mod:`sbnn.functional._kernel_ops` take them when torch runs more than one intra-op thread
  and the call is large enough (``parallel_chunks``); one thread runs the serial kernels, which
  never enter a parallel region (forked data-loader workers stay safe).
* **Reset codes** ``RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2``.
* **Scale from the variance** (``from_var``). The pathwise kernels can take the input variance
  ``v`` in place of the noise scale and form ``s = sqrt(v + f)·κ`` row by row, in the order of
  ``neurons.noise_scale`` (``v + f`` rounded, ``sqrt``, ``·κ`` only if ``κ ≠ 1``); the scale then
  never exists as a ``[T, N]`` array, and the backward returns ``g_v = (g_s·κ)/(2·sqrt(v + f))``,
  torch's derivative of the same expression. This saves the element-wise passes around the node
  (the scale's ``add`` and ``sqrt``, their backward, the saved scale). The one difference from
  the torch path: this ``sqrt`` is correctly rounded, torch's vectorised one (SLEEF) is not
  always (1 ulp off for a few values in a thousand, measured), so the membranes agree with the
  torch path's to rounding, not bit for bit.
* **Factor codes** ``FACTOR_GIVEN, FACTOR_ST_GAUSSIAN, FACTOR_ST_LOGISTIC = 0, 1, 2``: the
  backward reads the estimator's factor ``∂S/∂θ`` from an array (any estimator, computed by
  torch), or computes the ``st`` factor, the noise density ``p(θ)``, in the row it is used
  (``exp`` of the log-density clamped as ``noise.safe_exp`` clamps it). Two more codes take a
  Gaussian density times a weight that torch forms with its vectorised ``erfc`` (Numba's is a
  scalar call): ``FACTOR_IWST_GAUSSIAN = 3`` reads ``E = 2Φ(σθ)`` and forms the ``iwst`` factor
  ``min(2q(S)/E, w_max)·φ(θ)``; ``FACTOR_RATIO_GAUSSIAN = 4`` reads ``R = Φ(στθ/c)/Φ(σθ)`` and
  forms the ``agr`` factor ``R·φ(θ/c)/c``. In float32 two more form ``erfc`` in the kernel too,
  from ``θ`` and the spikes (``FACTOR_IWST_ERFC = 5``, ``FACTOR_AGR_ERFC = 6``; a Chebyshev-fitted
  ``erfc``, relative error below 1.2e-7 before float32 rounding), with the Gaussian factors of
  the tail cancelled in closed form (:func:`_weighted_gaussian_row`): torch's ``erfc`` passes, the argument's pass and
  ``agr``'s log-space fallback are gone. Their per-call constants ``fp`` are
  ``[2(1 − p), 2(2p − 1), w_max, 1/(2c²), log √(2π) + log c]`` (``agr``: ``τ/c`` first); the
  density is clamped as for ``st``. They equal the torch factors (formed in log-space) to rounding.
* **Factor cut.** The backward treats factors below ``f_cut = sqrt(finfo.tiny)`` (1e-19 in
  float32) as 0. Units far from threshold have factors at ``safe_exp``'s floor ``e·tiny``, and
  every product with it is a subnormal number, which the CPU computes many times slower unless
  denormals are flushed (the ``sbnn`` command and the benchmarks flush them; a library user may
  not): without the cut the backward of ``[100, 8192]`` took 4× longer with such factors than
  with factors in (0, 1), one thread (measured). Their gradient terms lie below ``1e-19`` of the
  typical ones, under any float's resolution.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2
FACTOR_GIVEN, FACTOR_ST_GAUSSIAN, FACTOR_ST_LOGISTIC, FACTOR_IWST_GAUSSIAN, FACTOR_RATIO_GAUSSIAN = 0, 1, 2, 3, 4
FACTOR_IWST_ERFC, FACTOR_AGR_ERFC = 5, 6


@intrinsic
def _fma(typingctx, a, b, c):
    """``a·b + c`` with one rounding (LLVM ``llvm.fma``), for three floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def _pow2(typingctx, n):
    """``2**n`` for a float ``n`` holding an integer in the normal exponent range, by writing the
    exponent bits. The integer is read off ``n + 1.5·2^m`` (``m`` the mantissa width), whose low
    bits hold it: no float-to-integer conversion, which AVX2 has no vector instruction for."""
    if not isinstance(n, types.Float):
        return None
    sig = n(n)
    width, mantissa, bias = (32, 23, 127) if n.bitwidth == 32 else (64, 52, 1023)

    def codegen(context, builder, signature, args):
        int_type, float_type = ir.IntType(width), context.get_value_type(signature.return_type)
        magic = ir.Constant(float_type, 1.5 * 2.0**mantissa)
        shifted = builder.bitcast(builder.fadd(args[0], magic), int_type)  # low bits: n (two's complement)
        magic_bits = builder.bitcast(magic, int_type)
        exponent = builder.add(builder.sub(shifted, magic_bits), ir.Constant(int_type, bias))
        return builder.bitcast(builder.shl(exponent, ir.Constant(int_type, mantissa)), float_type)

    return sig, codegen


#: ``exp`` constants per dtype for :func:`_exp_nonpositive`: ``log2 e``, ``ln 2`` split in a high
#: part exact in the dtype and the rest (Cody–Waite). Its Taylor polynomial's degree is the
#: dtype's (:func:`_exp_taylor`): 13 for float64 (remainder ``(ln 2/2)^14/14! < 1e-17``
#: relative), 7 for float32 (``(ln 2/2)^8/8! < 1e-8``, under its half ulp ``6e-8``).
EXP_CONSTANTS = {
    np.float32: (1.4426950408889634, 0.693145751953125, 1.428606765330187e-06),
    np.float64: (1.4426950408889634, 0.6931471803691238, 1.9082149292705877e-10),
}
EXP_DEGREE = 13
EXP_DEGREE_FLOAT32 = 7
#: where :func:`factor_constants` puts 1, ``log √(2π)``, the clamp ``lo`` and ``f_cut``
_C_ONE, _C_LOG_NORM, _C_LO, _C_CUT = 3, 4, 5, 6
#: ``erfc(z) = t·exp(−z² + P(t))``, ``t = 1/(1 + z/2)``, ``z ≥ 0``: the Chebyshev-fitted ``P``
#: (Press et al., *Numerical Recipes*, ``erfcc``; relative error below 1.2e-7 for every ``z ≥ 0``),
#: coefficients from ``t⁰`` up; then ``√½``. Enough for float32 only: float64 takes torch's ``erfc``.
ERFC_COEFFICIENTS = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)
_C_ERFC = _C_CUT + 1
_C_SQRT_HALF = _C_ERFC + len(ERFC_COEFFICIENTS)


def factor_constants(dtype, log_norm: float, lo: float, f_cut: float) -> np.ndarray:
    """The backward kernels' factor constants for a NumPy float ``dtype``, one array.

    :func:`_exp_nonpositive`'s (``log2 e``, ``ln 2`` high and low), 1, the Gaussian
    ``log √(2π)``, ``safe_exp``'s clamp ``lo``, the factor cut ``f_cut`` (module docstring), and
    :func:`_erfc_terms`' coefficients and ``√½``.
    """
    return np.array([*EXP_CONSTANTS[dtype], 1.0, log_norm, lo, f_cut, *ERFC_COEFFICIENTS, math.sqrt(0.5)], dtype=dtype)


@intrinsic
def _exp_taylor(typingctx, r):
    """``Σ_k r^k/k!`` of the dtype's degree (:data:`EXP_DEGREE_FLOAT32` for float32,
    :data:`EXP_DEGREE` for float64), the coefficients constants of the code.

    An intrinsic so that the degree is fixed when the dtype is: a branch on the dtype inside the
    kernels is a run-time test, and with it (or with the polynomial as a loop from an array of
    coefficients beside :func:`_erfc_terms`') LLVM did not vectorise the loops over elements
    (measured up to 25× slower).
    """
    if not isinstance(r, types.Float):
        return None
    sig = r(r)
    degree = EXP_DEGREE_FLOAT32 if r.bitwidth == 32 else EXP_DEGREE

    def codegen(context, builder, signature, args):
        float_type = context.get_value_type(signature.return_type)
        r = args[0]
        # Estrin's scheme: pairs c_2i + c_2i+1·r, then pairs of those with r², r⁴, ...: a
        # dependency chain of depth log2(degree) instead of Horner's degree (the loops over
        # elements are bound by this latency)
        terms = [ir.Constant(float_type, 1.0 / math.factorial(k)) for k in range(degree + 1)]
        power = r
        while len(terms) > 1:
            pairs = [builder.fadd(terms[i], builder.fmul(terms[i + 1], power)) for i in range(0, len(terms) - 1, 2)]
            terms = pairs + ([terms[-1]] if len(terms) % 2 else [])
            power = builder.fmul(power, power)
        return terms[0]

    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _exp_nonpositive(x, c):
    """``exp(x)`` for ``log(tiny) < x ≤ 0`` (``c`` from :func:`factor_constants`), in operations LLVM vectorises.

    ``x = n ln 2 + r`` with ``n = round(x log2 e)``, ``|r| ≤ ln 2 / 2``; ``e^r`` by its Taylor
    polynomial (:func:`_exp_taylor`), times ``2^n`` from the exponent bits. Within a few ulp of
    ``exp`` (the tests compare it with NumPy's); ``libm``'s ``exp`` is a call that no loop
    vectorises, and slow near underflow, where the densities of units far from threshold lie.
    """
    n = np.floor(x * c[0] + c[_C_ONE] / (c[_C_ONE] + c[_C_ONE]))  # round half up
    r = (x - n * c[1]) - n * c[2]
    return _exp_taylor(r) * _pow2(n)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _erfc_terms(z, c):
    """``(t, P)`` with ``erfc(z) = t·exp(−z² + P)`` for ``z ≥ 0`` (:data:`ERFC_COEFFICIENTS`).

    Apart, so that a ratio of two ``erfc`` can cancel their Gaussian factors exactly
    (:func:`_weighted_gaussian_row`) where each would underflow.
    """
    one = c[_C_ONE]
    t = one / (one + z * (one / (one + one)))
    p = c[_C_ERFC + 9]  # written out: as a loop beside _exp_taylor's it kept the loops scalar
    p = p * t + c[_C_ERFC + 8]
    p = p * t + c[_C_ERFC + 7]
    p = p * t + c[_C_ERFC + 6]
    p = p * t + c[_C_ERFC + 5]
    p = p * t + c[_C_ERFC + 4]
    p = p * t + c[_C_ERFC + 3]
    p = p * t + c[_C_ERFC + 2]
    p = p * t + c[_C_ERFC + 1]
    p = p * t + c[_C_ERFC + 0]
    return t, p


@njit(cache=True, nogil=True, error_model="numpy")
def lif_forward(mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa, mems, spks):
    """The membrane and spike recurrence over ``T`` steps, written into ``mems`` and ``spks``.

    Per step and unit (``S`` in {0, 1}):
    ``Ū = μ[t] + U·β − ϑ·S`` (subtract), ``μ[t] + (U·β)(1 − S)`` (zero), ``μ[t] + U·β`` (none);
    ``U[t] = Ū + scale[t]·ε[t]``; ``S[t] = U[t] ≥ ϑ``.

    Args:
        mu, scale, eps: ``[T, N]`` input mean, noise scale (the input variance if ``from_var``),
            standard noise.
        beta, threshold, mem0, spk0: ``[N]``.
        reset: reset code.
        from_var, floor, kappa: form the scale from the variance (module docstring); ``floor`` and
            ``kappa`` in the arrays' dtype.
        mems, spks: ``[T, N]`` outputs.
    """
    _lif_forward_units(0, mu.shape[1], mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa, mems, spks)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def lif_forward_parallel(mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa, mems, spks, n_chunks):
    """:func:`lif_forward` with the units split into ``n_chunks`` ranges run in parallel (the same numbers)."""
    n = mu.shape[1]
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, n, 16)
        _lif_forward_units(lo, hi, mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa, mems, spks)


@njit(cache=True, nogil=True, error_model="numpy")
def _chunk(c, n_chunks, n, align):
    """The range ``[lo, hi)`` of chunk ``c`` of ``n_chunks`` over ``n`` items, bounds on multiples
    of ``align`` (16 for units of a row: whole vectors)."""
    size = ((n + n_chunks - 1) // n_chunks + align - 1) // align * align
    return min(c * size, n), min((c + 1) * size, n)


@njit(cache=True, nogil=True, error_model="numpy")
def _lif_forward_units(lo, hi, mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa, mems, spks):
    """:func:`lif_forward` on the units ``[lo, hi)``: every unit's recurrence is its own."""
    s_row, root = np.empty(hi - lo, dtype=mu.dtype), np.empty(hi - lo, dtype=mu.dtype)
    beta, threshold = beta[lo:hi], threshold[lo:hi]
    prev_mem, prev_spk = mem0[lo:hi], spk0[lo:hi]
    for t in range(mu.shape[0]):
        if from_var:
            _scale_row(scale[t][lo:hi], floor, kappa, root, s_row)
        mem_t, spk_t = mems[t][lo:hi], spks[t][lo:hi]
        _forward_row(
            mu[t][lo:hi], s_row if from_var else scale[t][lo:hi], eps[t][lo:hi], prev_mem, prev_spk, beta, threshold,
            reset, mem_t, spk_t,
        )
        prev_mem, prev_spk = mem_t, spk_t


@njit(cache=True, nogil=True, error_model="numpy")
def _forward_row(mu_t, s_t, e_t, prev_mem, prev_spk, beta, threshold, reset, mem_t, spk_t):
    """One step of :func:`lif_forward` on ``[N]`` rows."""
    n = mu_t.size
    if reset == RESET_ZERO:
        for i in range(n):
            # μ + (Uβ)(1 − S): the product with 0 or 1 is exact, so a select is the same number
            carried = prev_mem[i] * beta[i]
            ubar = mu_t[i] + carried if prev_spk[i] == 0 else mu_t[i]
            m = ubar + s_t[i] * e_t[i]
            mem_t[i] = m
            spk_t[i] = 1 if m >= threshold[i] else 0
    elif reset == RESET_SUBTRACT:
        for i in range(n):
            ubar = _fma(prev_mem[i], beta[i], mu_t[i])
            ubar = _fma(prev_spk[i], -threshold[i], ubar)
            m = ubar + s_t[i] * e_t[i]
            mem_t[i] = m
            spk_t[i] = 1 if m >= threshold[i] else 0
    else:
        for i in range(n):
            m = _fma(prev_mem[i], beta[i], mu_t[i]) + s_t[i] * e_t[i]
            mem_t[i] = m
            spk_t[i] = 1 if m >= threshold[i] else 0


@njit(cache=True, nogil=True, error_model="numpy")
def _scale_row(v_t, floor, kappa, root, s_t):
    """``root = sqrt(v + f)`` and ``s = root·κ`` (``root`` itself if ``κ = 1``) on ``[N]`` rows."""
    for i in range(v_t.size):
        root[i] = np.sqrt(v_t[i] + floor)
    if kappa == 1:
        for i in range(v_t.size):
            s_t[i] = root[i]
    else:
        for i in range(v_t.size):
            s_t[i] = root[i] * kappa


@njit(cache=True, nogil=True, error_model="numpy")
def lif_theta(mems, scale, eps, threshold, from_var, floor, kappa, one, spks, signed_k, theta):
    """``θ = (U − scale·ε − ϑ)·(1/scale)``, the standardised drive, into ``theta`` ``[T, N]``
    (``scale`` the variance if ``from_var``). With ``signed_k ≠ 0``: ``θ·(k·(1 − 2S))``, the
    argument ``−σθ·k`` of ``erfc`` for ``2Φ(σθ)`` (``k = √½``), from the spikes ``spks``."""
    n_steps, n = mems.shape
    s_row, root = np.empty(n, dtype=mems.dtype), np.empty(n, dtype=mems.dtype)
    for t in range(n_steps):
        if from_var:
            _scale_row(scale[t], floor, kappa, root, s_row)
        th_t = theta[t]
        _theta_row(mems[t], s_row if from_var else scale[t], eps[t], threshold, one, th_t)
        if signed_k != 0:
            k_t = spks[t]
            for i in range(n):
                th_t[i] = th_t[i] * (signed_k * (one - (k_t[i] + k_t[i])))  # ±k: exact signs


@njit(cache=True, nogil=True, error_model="numpy")
def _theta_row(m_t, s_t, e_t, threshold, one, th_t):
    for i in range(m_t.size):
        th_t[i] = (m_t[i] - s_t[i] * e_t[i] - threshold[i]) * (one / s_t[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _factor_row(given_t, code, th_t, k_t, c, fp, f_t):
    """The estimator's factor of one step into ``f_t``: ``given_t`` (``FACTOR_GIVEN``), the ``st``
    factor computed from ``θ``, or a Gaussian density times a weight read from ``given_t``
    (module docstring); factors below the cut count as 0 (in the loop that forms them)."""
    if code == FACTOR_GIVEN:
        _cut_row(given_t, c[_C_CUT], f_t)
    elif code >= FACTOR_IWST_GAUSSIAN:
        _weighted_gaussian_row(given_t, code, th_t, k_t, c, fp, f_t)
    else:
        _st_factor_row(th_t, code, c, f_t)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _cut(f, f_cut, zero):
    """``f`` where ``|f| ≥ f_cut``, else 0 (module docstring: factor cut)."""
    return f if abs(f) >= f_cut else zero


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted_gaussian_row(given_t, code, th_t, k_t, c, fp, f_t):
    """``w·exp(max(−a·θ² − b, lo))``, ``w = min((q0 + q1·S)/E, w_max)`` (``iwst``) or ``R`` (``agr``), cut.

    ``E`` and ``R`` are read from ``given_t`` (``FACTOR_IWST_GAUSSIAN``, ``FACTOR_RATIO_GAUSSIAN``)
    or formed here from ``x = −σθ/√2`` (``FACTOR_IWST_ERFC``, ``FACTOR_AGR_ERFC``, float32):
    ``E = erfc(x)``, ``R = erfc(κx)/erfc(x)`` with ``κ = fp[0] = τ/c``, each ``erfc(z)``, ``z ≥ 0``,
    as ``t·exp(−z² + P)`` (:func:`_erfc_terms`) and ``2 − erfc(−x)`` below 0. For ``x ≥ 0`` the
    Gaussian factors cancel in closed form, since ``x² = θ²/2`` (``a = ½``, ``b = log √(2π)`` for
    ``iwst``) and ``1 − κ² = 1/c²`` (``a = 1/(2c²)`` for ``agr``): ``(q/E)·φ(θ) = (q/t)·exp(−P − b)``
    and ``R·φ(θ/c)/c = (t_κ/t)·exp(P_κ − P − b)``, so no term underflows however far ``θ`` lies
    in the tail (``agr`` needs no log-space fallback here).
    """
    lo, a, b, f_cut = c[_C_LO], fp[3], fp[4], c[_C_CUT]
    zero = f_cut - f_cut
    one = c[_C_ONE]
    k = c[_C_SQRT_HALF]
    # every loop without a branch inside (selects only): LLVM vectorises none that has one
    if code == FACTOR_IWST_GAUSSIAN or code == FACTOR_IWST_ERFC:
        q0, q1, w_max = fp[0], fp[1], fp[2]
        if code == FACTOR_IWST_ERFC:
            two = one + one
            for i in range(th_t.size):
                x = th_t[i] * (k * (one - (k_t[i] + k_t[i])))
                z = abs(x)
                q = q0 + q1 * k_t[i]
                t, p = _erfc_terms(z, c)
                tail = x >= 0  # E = t·exp(−z² + P) small: q/E·φ = (q/t)·exp(−P − b), its z² cancelled
                e = _exp_nonpositive(-p - b if tail else max(p - z * z, lo), c)
                density = _exp_nonpositive(max(-(a * th_t[i]) * th_t[i] - b, lo), c)  # φ(θ)
                f = min((q / t) * e, w_max * density) if tail else min(q / (two - t * e), w_max) * density
                f_t[i] = _cut(f, f_cut, zero)
        else:
            for i in range(th_t.size):
                w = min((q0 + q1 * k_t[i]) / given_t[i], w_max)  # E = 0 (a certain flip's underflow): w_max
                f_t[i] = _cut(w * _exp_nonpositive(max(-(a * th_t[i]) * th_t[i] - b, lo), c), f_cut, zero)
    elif code == FACTOR_RATIO_GAUSSIAN:
        for i in range(th_t.size):
            f_t[i] = _cut(given_t[i] * _exp_nonpositive(max(-(a * th_t[i]) * th_t[i] - b, lo), c), f_cut, zero)
    else:
        kappa, two = fp[0], one + one
        for i in range(th_t.size):
            x = th_t[i] * (k * (one - (k_t[i] + k_t[i])))
            z = abs(x)
            zn = kappa * z
            t_n, p_n = _erfc_terms(zn, c)
            t_d, p_d = _erfc_terms(z, c)
            tail = x >= 0  # both erfc small: their Gaussian factors cancel with the density's
            # tail: (t_n/t_d)·exp(P_n − P_d − b), whose exponent lies in [−1.27 − b, 1.27 − b]
            # (P ∈ [−1.27, 0]), where the reduction-based exp needs no clamp; else both erfc in
            # [1, 2]: (2 − y_n)/(2 − y_d) times the density. Three exps serve both.
            e1 = _exp_nonpositive(p_n - p_d - b if tail else max(p_n - zn * zn, lo), c)
            y_d = t_d * _exp_nonpositive(zero if tail else max(p_d - z * z, lo), c)
            density = _exp_nonpositive(zero if tail else max(-(a * th_t[i]) * th_t[i] - b, lo), c)
            body = ((two - t_n * e1) / (two - y_d)) * density
            f_t[i] = _cut((t_n / t_d) * e1 if tail else body, f_cut, zero)


@njit(cache=True, nogil=True, error_model="numpy")
def _st_factor_row(th_t, code, c, f_t):
    """The ``st`` factor ``p(θ)`` on a row, ``exp(max(log p(θ), lo))`` as ``noise.safe_exp`` clamps it, cut.

    Gaussian ``log p = (−½θ)·θ − log √(2π)`` (the order of ``noise.Gaussian.log_pdf``); logistic
    ``p = σ(θ)σ(−θ) = e/(1 + e)²``, ``e = exp(−|θ|)``, floored at ``exp(lo)``. ``c``: from
    :func:`factor_constants`.
    """
    one, log_norm, lo, f_cut = c[_C_ONE], c[_C_LOG_NORM], c[_C_LO], c[_C_CUT]
    zero = one - one
    if code == FACTOR_ST_GAUSSIAN:
        neg_half = -(one / (one + one))  # −½ in the row's dtype
        for i in range(th_t.size):
            f_t[i] = _cut(_exp_nonpositive(max(neg_half * th_t[i] * th_t[i] - log_norm, lo), c), f_cut, zero)
    else:
        floor = _exp_nonpositive(lo, c)
        for i in range(th_t.size):
            e = _exp_nonpositive(max(-abs(th_t[i]), lo), c)
            f_t[i] = _cut(max(e / ((one + e) * (one + e)), floor), f_cut, zero)


@njit(cache=True, nogil=True, error_model="numpy")
def lif_backward(
    g_spk, g_mem, has_g_mem, factor, factor_code, fc, fp, scale, from_var, floor, kappa, eps, mems, spks,
    beta, threshold, mem0, spk0, reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold, want_beta,
    want_threshold,
):
    """The adjoint recurrence of :func:`lif_forward` and every per-element gradient, in one pass.

    With ``gθ/s = gS·factor/s`` (detached reset) the adjoint of ``Ū`` is
    ``gŪ[t] = gθ/s[t] + gU[t] + c[t]·gŪ[t+1]``, ``c[t] = β`` (``β(1 − S[t])`` for the zero
    reset). A reset that carries gradient adds ``r[t]·gŪ[t+1]`` to the spike's adjoint before
    the estimator (``r = −ϑ``, or ``−β U[t]`` for the zero reset):
    ``gθ/s[t] = (gS[t] + r[t]·gŪ[t+1])·factor/s``, ``gŪ[t] = gU[t] + c[t]·gŪ[t+1] + gθ/s[t]``.
    Then ``g_scale = (gŪ − gθ/s)·ε − gθ/s·θ`` and the sums over time
    ``g_beta += gŪ·U[t−1]`` (times ``1 − S[t−1]`` for the zero reset),
    ``g_threshold += −gθ/s`` (subtract reset: ``−(gθ/s + gŪ·S[t−1])``). ``θ`` (and with
    ``from_var`` the scale) is rebuilt row by row, as :func:`lif_theta` computes it.

    Args:
        g_spk, g_mem: ``[T, N]`` output adjoints (``g_mem`` is read only if ``has_g_mem``).
        factor: ``[T, N]`` the estimator's ``∂S/∂θ`` at ``θ``, read only if ``factor_code`` is
            ``FACTOR_GIVEN`` (``E`` or ``R`` for the weighted Gaussian codes); fc:
            :func:`factor_constants` (the ``st`` factor's, the cut's); fp: the weighted codes'
            constants (module docstring; any ``[5]`` array otherwise).
        scale, eps, mems, spks: ``[T, N]`` from the forward pass (``scale`` the variance if
            ``from_var``; ``floor``, ``kappa`` as in :func:`lif_forward`).
        beta, threshold, mem0, spk0: ``[N]``.
        reset, detach: reset code; whether the reset carries no gradient.
        one: 1 in the arrays' dtype.
        g_ubar: ``[T, N]`` output, the adjoint of ``Ū`` (the gradient of ``μ``).
        g_scale: ``[T, N]`` output, the gradient of the scale (of the variance if ``from_var``),
            written only if ``want_scale``.
        g_beta, g_threshold: ``[N]`` outputs, accumulated into (pass zeros) if ``want_beta``,
            ``want_threshold``.
    """
    _lif_backward_units(
        0, mems.shape[1], g_spk, g_mem, has_g_mem, factor, factor_code, fc, fp, scale, from_var, floor, kappa, eps, mems,
        spks, beta, threshold, mem0, spk0, reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold,
        want_beta, want_threshold,
    )


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def lif_backward_parallel(
    g_spk, g_mem, has_g_mem, factor, factor_code, fc, fp, scale, from_var, floor, kappa, eps, mems, spks,
    beta, threshold, mem0, spk0, reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold, want_beta,
    want_threshold, n_chunks,
):
    """:func:`lif_backward` with the units split into ``n_chunks`` ranges run in parallel (the same numbers)."""
    n = mems.shape[1]
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, n, 16)
        _lif_backward_units(
            lo, hi, g_spk, g_mem, has_g_mem, factor, factor_code, fc, fp, scale, from_var, floor, kappa, eps, mems,
            spks, beta, threshold, mem0, spk0, reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold,
            want_beta, want_threshold,
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _lif_backward_units(
    lo, hi, g_spk, g_mem, has_g_mem, factor, factor_code, fc, fp, scale, from_var, floor, kappa, eps, mems, spks,
    beta, threshold, mem0, spk0, reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold, want_beta,
    want_threshold,
):
    """:func:`lif_backward` on the units ``[lo, hi)`` (their adjoints and sums over time are their own)."""
    n_steps, n = mems.shape[0], hi - lo
    dtype = mems.dtype
    carry = np.zeros(n, dtype=dtype)  # gŪ[t + 1]
    coeff, gts = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)  # c[t], gθ/s[t]
    s_row, root, th_row = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)
    f_row, gs_row = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)
    beta, threshold = beta[lo:hi], threshold[lo:hi]
    g_beta, g_threshold = g_beta[lo:hi], g_threshold[lo:hi]
    for k in range(n_steps):
        t = n_steps - 1 - k
        if from_var:
            _scale_row(scale[t][lo:hi], floor, kappa, root, s_row)
        s_t = s_row if from_var else scale[t][lo:hi]
        m_t = mems[t][lo:hi]
        _theta_row(m_t, s_t, eps[t][lo:hi], threshold, one, th_row)
        _factor_row(factor[t][lo:hi], factor_code, th_row, spks[t][lo:hi], fc, fp, f_row)
        _backward_row(
            g_spk[t][lo:hi], g_mem[t][lo:hi] if has_g_mem else g_mem[0][lo:hi], has_g_mem, f_row,
            s_t, eps[t][lo:hi], th_row, m_t, spks[t][lo:hi],
            mem0[lo:hi] if t == 0 else mems[t - 1][lo:hi], spk0[lo:hi] if t == 0 else spks[t - 1][lo:hi],
            beta, threshold, reset, detach, one, g_ubar[t][lo:hi],
            gs_row if from_var or not want_scale else g_scale[t][lo:hi], want_scale,
            g_beta, g_threshold, want_beta, want_threshold, carry, coeff, gts,
        )
        if from_var and want_scale:
            _variance_grad_row(gs_row, root, kappa, g_scale[t][lo:hi])


@njit(cache=True, nogil=True, error_model="numpy")
def _cut_row(f_t, f_cut, out):
    """:func:`_cut` on a row."""
    zero = f_cut - f_cut
    for i in range(f_t.size):
        out[i] = _cut(f_t[i], f_cut, zero)


@njit(cache=True, nogil=True, error_model="numpy")
def _variance_grad_row(g_s, root, kappa, g_v):
    """``g_v = (g_s·κ)/(2·root)``: torch's backward of ``sqrt(v + f)·κ`` (``·κ`` only if ``κ ≠ 1``)."""
    if kappa == 1:
        for i in range(g_s.size):
            g_v[i] = g_s[i] / (root[i] + root[i])
    else:
        for i in range(g_s.size):
            g_v[i] = (g_s[i] * kappa) / (root[i] + root[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _backward_row(
    gs_t, gm_t, has_g_mem, f_t, s_t, e_t, th_t, m_t, k_t, prev_mem, prev_spk, beta, threshold, reset, detach, one,
    gu_t, gsc_t, want_scale, g_beta, g_threshold, want_beta, want_threshold, carry, coeff, gts,
):
    """One step ``t`` of :func:`lif_backward` on ``[N]`` rows; ``carry`` holds ``gŪ[t + 1]`` in and ``gŪ[t]`` out.

    A function of its own, on one-dimensional rows, with every branch outside its short loops:
    LLVM vectorises these loops, which it does not inside a time loop that counts down.
    """
    n = gs_t.size
    zero = one - one
    if reset == RESET_ZERO:  # β(1 − S[t]) as a select: the product with 0 or 1 is exact
        for i in range(n):
            coeff[i] = beta[i] if k_t[i] == 0 else zero
    else:
        for i in range(n):
            coeff[i] = beta[i]
    if detach:
        for i in range(n):
            gts[i] = gs_t[i] * f_t[i] * (one / s_t[i])
        if has_g_mem:
            for i in range(n):
                carry[i] = _fma(coeff[i], carry[i], gts[i] + gm_t[i])
        else:
            for i in range(n):
                carry[i] = _fma(coeff[i], carry[i], gts[i])
    else:
        if reset == RESET_SUBTRACT:
            for i in range(n):
                gts[i] = _fma(-threshold[i], carry[i], gs_t[i]) * (f_t[i] * (one / s_t[i]))
        else:
            for i in range(n):
                gts[i] = _fma(-beta[i] * m_t[i], carry[i], gs_t[i]) * (f_t[i] * (one / s_t[i]))
        if has_g_mem:
            for i in range(n):
                carry[i] = _fma(coeff[i], carry[i], gm_t[i]) + gts[i]
        else:
            for i in range(n):
                carry[i] = _fma(coeff[i], carry[i], zero) + gts[i]
    for i in range(n):
        gu_t[i] = carry[i]
    if want_scale:
        for i in range(n):
            gsc_t[i] = (gu_t[i] - gts[i]) * e_t[i] - gts[i] * th_t[i]
    if want_beta and reset == RESET_ZERO:
        for i in range(n):
            g_beta[i] += gu_t[i] * (prev_mem[i] if prev_spk[i] == 0 else zero)
    elif want_beta:
        for i in range(n):
            g_beta[i] += gu_t[i] * prev_mem[i]
    if want_threshold and reset == RESET_SUBTRACT:
        for i in range(n):
            g_threshold[i] += -(gts[i] + gu_t[i] * prev_spk[i])
    elif want_threshold:
        for i in range(n):
            g_threshold[i] += -gts[i]


@njit(cache=True, nogil=True, error_model="numpy")
def marginal_variance(var, has_var, beta2, var0, floor, variances):
    """The marginal model's variance without the zero reset: ``V[t] = (β²V[t−1] + v[t]) + f``.

    Args:
        var: ``[T, M]`` input variance (read only if ``has_var``).
        beta2, var0: ``[M]`` (``β²`` and ``V[−1]``).
        floor: ``f = σ0² + ε_min²`` in the arrays' dtype.
        variances: ``[T, M]`` output.
    """
    n_steps, n = variances.shape
    for t in range(n_steps):
        prev = var0 if t == 0 else variances[t - 1]
        _variance_row(var[t] if has_var else var[0], has_var, beta2, prev, floor, variances[t])


@njit(cache=True, nogil=True, error_model="numpy")
def _variance_row(v_t, has_var, beta2, prev, floor, out):
    if has_var:
        for i in range(out.size):
            out[i] = (beta2[i] * prev[i] + v_t[i]) + floor
    else:
        for i in range(out.size):
            out[i] = beta2[i] * prev[i] + floor


@njit(cache=True, nogil=True, error_model="numpy")
def marginal_mean(mu, scales, eps, beta, reset_amount, threshold, mem0, spk0, subtract, means, thetas, spks):
    """The marginal model's mean and spikes given the scales (subtract or no reset).

    ``M[t] = βM[t−1] + μ[t] (− a·S[t−1])``, ``θ = (M − ϑ)/s[t]``, ``S[t] = θ + ε[t] ≥ 0``, with
    ``a`` the reset amount (``ϑ`` or ``βϑ``).

    Args:
        mu, scales, eps: ``[T, N]``.
        beta, reset_amount, threshold, mem0, spk0: ``[N]``.
        subtract: apply the subtract reset.
        means, thetas, spks: ``[T, N]`` outputs.
    """
    n_steps, n = mu.shape
    for t in range(n_steps):
        _mean_row(
            mu[t], scales[t], eps[t], beta, reset_amount, threshold, mem0 if t == 0 else means[t - 1],
            spk0 if t == 0 else spks[t - 1], subtract, means[t], thetas[t], spks[t],
        )


@njit(cache=True, nogil=True, error_model="numpy")
def _mean_row(mu_t, s_t, e_t, beta, reset_amount, threshold, prev_mean, prev_spk, subtract, mean_t, theta_t, spk_t):
    n = mu_t.size
    if subtract:
        for i in range(n):
            mean_t[i] = (beta[i] * prev_mean[i] + mu_t[i]) - reset_amount[i] * prev_spk[i]
    else:
        for i in range(n):
            mean_t[i] = beta[i] * prev_mean[i] + mu_t[i]
    for i in range(n):
        th = (mean_t[i] - threshold[i]) / s_t[i]
        theta_t[i] = th
        spk_t[i] = 1 if th + e_t[i] >= 0 else 0



@njit(cache=True, nogil=True, error_model="numpy")
def marginal_backward(
    g_spk, g_mem, has_g_mem, g_scale, has_g_scale, factor, factor_code, fc, fp,
    thetas, scales, eps, means, variances, spks, mem0, var0, spk0, beta, beta2, half_k2, carry_m, carry_v,
    want_beta, want_threshold, subtract, g_m, g_v, g_beta, g_threshold,
):
    """The marginal model's backward with a detached reset, every term in one pass over time.

    With ``a = factor/s``, ``h = κ²/(2s)`` (``∂s/∂V``) and the σ-adjoint
    ``g_s = g_mem·ε − gS·(a·θ) (+ g_scale)``: the two adjoint recurrences
    ``gM[t] = β·gM[t+1] + (g_mem[t] + gS[t]·a[t])`` and ``gV[t] = β²·gV[t+1] + g_s[t]·h[t]``
    (each a fused multiply-add; at ``t = T − 1`` the adjoints ``carry_m``, ``carry_v`` from after
    the sequence are added), and the sums over time
    ``g_beta += gM[t]·M[t−1] + 2β·(gV[t]·V[t−1])`` and ``g_threshold += −gS[t]·a[t]`` (the
    subtract reset: ``− S[t−1]·gM[t]`` too). The factor as in :func:`lif_backward` (given, or
    ``st`` computed here; cut). The terms and their order are those of the torch
    backward of ``neurons._MarginalSequence``.

    Args:
        g_spk: ``[T, N]``; g_mem, g_scale: ``[T, N]``, read only if ``has_g_mem``, ``has_g_scale``.
        factor, factor_code, fc, fp: as in :func:`lif_backward`.
        thetas, scales, eps, means, variances, spks: ``[T, N]`` from the forward pass.
        mem0, var0, spk0, beta, beta2: ``[N]``; half_k2: ``κ²/2``.
        carry_m, carry_v: ``[N]`` adjoints of the last mean and variance (overwritten).
        want_beta, want_threshold, subtract: which sums to form; the subtract reset.
        g_m, g_v: ``[T, N]`` outputs; g_beta, g_threshold: ``[N]``, accumulated into.
    """
    n_steps, n = thetas.shape
    dtype = thetas.dtype
    one = fc[_C_ONE]
    f_row, a_row = np.empty(n, dtype=dtype), np.empty(n, dtype=dtype)
    for k in range(n_steps):
        t = n_steps - 1 - k
        th_t, s_t, e_t, gs_t = thetas[t], scales[t], eps[t], g_spk[t]
        _factor_row(factor[t], factor_code, th_t, spks[t], fc, fp, f_row)
        for i in range(n):
            a_row[i] = f_row[i] * (one / s_t[i])
        gm_t, gv_t = g_m[t], g_v[t]
        first = t == n_steps - 1
        for i in range(n):
            d_m = gs_t[i] * a_row[i]
            if has_g_mem:
                d_m = g_mem[t, i] + d_m
            d_s = -(gs_t[i] * (a_row[i] * th_t[i]))
            if has_g_mem:
                d_s = g_mem[t, i] * e_t[i] + d_s
            if has_g_scale:
                d_s = d_s + g_scale[t, i]
            d_v = d_s * (half_k2 * (one / s_t[i]))
            if first:
                carry_m[i] = d_m + carry_m[i]
                carry_v[i] = d_v + carry_v[i]
            else:
                carry_m[i] = _fma(beta[i], carry_m[i], d_m)
                carry_v[i] = _fma(beta2[i], carry_v[i], d_v)
            gm_t[i] = carry_m[i]
            gv_t[i] = carry_v[i]
        if want_beta:
            prev_m = mem0 if t == 0 else means[t - 1]
            prev_v = var0 if t == 0 else variances[t - 1]
            for i in range(n):
                g_beta[i] += gm_t[i] * prev_m[i] + (beta[i] + beta[i]) * (gv_t[i] * prev_v[i])
        if want_threshold:
            for i in range(n):
                g_threshold[i] += -(gs_t[i] * a_row[i])
            if subtract:
                prev_s = spk0 if t == 0 else spks[t - 1]
                for i in range(n):
                    g_threshold[i] -= prev_s[i] * gm_t[i]


@njit(cache=True, nogil=True, error_model="numpy")
def reverse_recurrence(d, coeff, per_step, carry, out):
    """The adjoint recurrence ``out[t] = d[t] + c[t + 1]·out[t + 1]``, ``out[T − 1] = d[T − 1] + carry``.

    ``c`` is ``coeff[t + 1]`` (``per_step``) or ``coeff[0]`` at every step; the product and sum are
    one fused multiply-add, as torch's ``addcmul``.

    Args:
        d: ``[T, M]``; coeff: ``[T, M]`` or ``[1, M]``; carry: ``[M]`` the adjoint from after the
            sequence; out: ``[T, M]`` output.
    """
    n_steps = d.shape[0]
    if n_steps == 0:
        return
    _add_row(d[n_steps - 1], carry, out[n_steps - 1])
    for k in range(1, n_steps):
        t = n_steps - 1 - k
        _fma_row(coeff[t + 1] if per_step else coeff[0], out[t + 1], d[t], out[t])


@njit(cache=True, nogil=True, error_model="numpy")
def _add_row(a, b, out):
    for i in range(out.size):
        out[i] = a[i] + b[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _fma_row(a, b, c, out):
    for i in range(out.size):
        out[i] = _fma(a[i], b[i], c[i])


@njit(cache=True, nogil=True, error_model="numpy")
def time_weighted_grad(weights, x, g_sum, g_sq, out):
    """``out[t] = x[t]·(2w_t²·g_q) + w_t·g_s``: the input gradient of ``(Σ_t w_t x_t, Σ_t w_t² x_t²)``.

    The torch formula's three passes in one, with its roundings: ``w_t·g_s`` and ``(2w_t²)·g_q``
    rounded, then one fused multiply-add (``addcmul``).

    Args:
        weights: ``[T]``; x: ``[T, M]``; g_sum, g_sq: ``[M]`` the gradients of the two sums;
            out: ``[T, M]`` output.
    """
    _time_weighted_steps(0, x.shape[0], weights, x, g_sum, g_sq, out)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def time_weighted_grad_parallel(weights, x, g_sum, g_sq, out, n_chunks):
    """:func:`time_weighted_grad` with the steps split into ``n_chunks`` ranges run in parallel."""
    for c in prange(n_chunks):
        lo, hi = _chunk(c, n_chunks, x.shape[0], 1)
        _time_weighted_steps(lo, hi, weights, x, g_sum, g_sq, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _time_weighted_steps(lo, hi, weights, x, g_sum, g_sq, out):
    two = weights.dtype.type(2)
    for t in range(lo, hi):
        w = weights[t]
        w2 = two * (w * w)
        x_t, out_t = x[t], out[t]
        for i in range(out_t.size):
            out_t[i] = _fma(x_t[i], w2 * g_sq[i], w * g_sum[i])


@njit(cache=True, nogil=True, parallel=True)
def start_threads(x):
    """A trivial parallel loop: starts Numba's threading layer, so that it can be queried."""
    for i in prange(x.shape[0]):
        x[i] += 1

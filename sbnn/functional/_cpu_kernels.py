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
  so every ``addcmul`` here is :func:`_fma`. No ``fastmath``: LLVM contracts nothing else. The
  forward therefore reproduces the torch path's membranes bit for bit, and its spikes.
* **Reset codes** ``RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

RESET_SUBTRACT, RESET_ZERO, RESET_NONE = 0, 1, 2


@intrinsic
def _fma(typingctx, a, b, c):
    """``a·b + c`` with one rounding (LLVM ``llvm.fma``), for three floats of one type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@njit(cache=True, nogil=True, error_model="numpy")
def lif_forward(mu, scale, eps, beta, threshold, mem0, spk0, reset, mems, spks):
    """The membrane and spike recurrence over ``T`` steps, written into ``mems`` and ``spks``.

    Per step and unit (``S`` in {0, 1}):
    ``Ū = μ[t] + U·β − ϑ·S`` (subtract), ``μ[t] + (U·β)(1 − S)`` (zero), ``μ[t] + U·β`` (none);
    ``U[t] = Ū + scale[t]·ε[t]``; ``S[t] = U[t] ≥ ϑ``.

    Args:
        mu, scale, eps: ``[T, N]`` input mean, noise scale, standard noise.
        beta, threshold, mem0, spk0: ``[N]``.
        reset: reset code.
        mems, spks: ``[T, N]`` outputs.
    """
    n_steps, n = mu.shape
    prev_mem, prev_spk = mem0, spk0
    for t in range(n_steps):
        mu_t, s_t, e_t, mem_t, spk_t = mu[t], scale[t], eps[t], mems[t], spks[t]
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
        prev_mem, prev_spk = mem_t, spk_t


@njit(cache=True, nogil=True, error_model="numpy")
def lif_theta(mems, scale, eps, threshold, one, theta):
    """``θ = (U − scale·ε − ϑ)·(1/scale)``, the standardised drive, into ``theta`` ``[T, N]``."""
    n_steps, n = mems.shape
    for t in range(n_steps):
        m_t, s_t, e_t, th_t = mems[t], scale[t], eps[t], theta[t]
        for i in range(n):
            th_t[i] = (m_t[i] - s_t[i] * e_t[i] - threshold[i]) * (one / s_t[i])


@njit(cache=True, nogil=True, error_model="numpy")
def lif_backward(
    g_spk, g_mem, has_g_mem, factor, scale, eps, theta, mems, spks, beta, threshold, mem0, spk0,
    reset, detach, one, g_ubar, g_scale, want_scale, g_beta, g_threshold, want_beta, want_threshold,
):
    """The adjoint recurrence of :func:`lif_forward` and every per-element gradient, in one pass.

    With ``gθ/s = gS·factor/s`` (detached reset) the adjoint of ``Ū`` is
    ``gŪ[t] = gθ/s[t] + gU[t] + c[t]·gŪ[t+1]``, ``c[t] = β`` (``β(1 − S[t])`` for the zero
    reset). A reset that carries gradient adds ``r[t]·gŪ[t+1]`` to the spike's adjoint before
    the estimator (``r = −ϑ``, or ``−β U[t]`` for the zero reset):
    ``gθ/s[t] = (gS[t] + r[t]·gŪ[t+1])·factor/s``, ``gŪ[t] = gU[t] + c[t]·gŪ[t+1] + gθ/s[t]``.
    Then ``g_scale = (gŪ − gθ/s)·ε − gθ/s·θ`` and the sums over time
    ``g_beta += gŪ·U[t−1]`` (times ``1 − S[t−1]`` for the zero reset),
    ``g_threshold += −gθ/s`` (subtract reset: ``−(gθ/s + gŪ·S[t−1])``).

    Args:
        g_spk, g_mem: ``[T, N]`` output adjoints (``g_mem`` is read only if ``has_g_mem``).
        factor: ``[T, N]`` the estimator's ``∂S/∂θ`` at ``theta``.
        scale, eps, theta, mems, spks: ``[T, N]`` from the forward pass.
        beta, threshold, mem0, spk0: ``[N]``.
        reset, detach: reset code; whether the reset carries no gradient.
        one: 1 in the arrays' dtype.
        g_ubar: ``[T, N]`` output, the adjoint of ``Ū`` (the gradient of ``μ``).
        g_scale: ``[T, N]`` output, written only if ``want_scale``.
        g_beta, g_threshold: ``[N]`` outputs, accumulated into (pass zeros) if ``want_beta``,
            ``want_threshold``.
    """
    n_steps, n = mems.shape
    carry = np.zeros(n, dtype=mems.dtype)  # gŪ[t + 1]
    coeff = np.empty(n, dtype=mems.dtype)  # c[t]
    gts = np.empty(n, dtype=mems.dtype)  # gθ/s[t]
    for k in range(n_steps):
        t = n_steps - 1 - k
        _backward_row(
            g_spk[t], g_mem[t] if has_g_mem else g_mem[0], has_g_mem, factor[t], scale[t], eps[t], theta[t],
            mems[t], spks[t], mem0 if t == 0 else mems[t - 1], spk0 if t == 0 else spks[t - 1],
            beta, threshold, reset, detach, one, g_ubar[t], g_scale[t] if want_scale else g_scale[0], want_scale,
            g_beta, g_threshold, want_beta, want_threshold, carry, coeff, gts,
        )


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

"""The Numba CPU kernels of the neuron nodes as torch operators (``torch.ops.sbnn.*``).

Private: the autograd nodes of :mod:`sbnn.functional.neurons` call these on CPU tensors of
float32/float64 after checking the shapes (``neurons._cpu_kernels_for``). Each operator takes
tensors already broadcast where the kernel needs them (sequences ``[T, ...]``, per-step constants
to one step's shape) and returns new tensors; the kernels, their layout and their arithmetic are
documented in :mod:`sbnn.functional._cpu_kernels`.

Registered as operators (:mod:`sbnn.functional._operators`) so that ``torch.compile`` keeps each
loop as one opaque node, fusing the elementwise work around it (the estimator factors other
than ``st``'s, the loss). On torch < 2.4 the functions are plain Python and
the nodes take the torch loops while compiling.
"""

import math
import os
from typing import Callable, Optional, Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from . import _cpu_kernels as kernels
from ._cpu_kernels import (  # noqa: F401 (the nodes' codes)
    FACTOR_AGR_ERFC,
    FACTOR_GIVEN,
    FACTOR_IWST_ERFC,
    FACTOR_IWST_GAUSSIAN,
    FACTOR_RATIO_GAUSSIAN,
    FACTOR_ST_GAUSSIAN,
    FACTOR_ST_LOGISTIC,
)
from ._operators import operator
from .noise import _LOG_SQRT_2PI, Gaussian, safe_exp_floor

#: A factor code resolved here, not in the kernels (float64; float32 takes the kernels'
#: ``FACTOR_AGR_ERFC``, which needs no tail): ``factor`` holds ``erfc``'s argument
#: ``−σθ/√2`` and the one factor parameter is ``agr``'s ``τ``; :func:`agr_gaussian_terms` turns
#: it into ``FACTOR_RATIO_GAUSSIAN`` and the ratio, or into torch's whole factor where ``Φ(σθ)``
#: underflows. Inside the operators, so that compiled code takes the same data-dependent choice.
FACTOR_AGR_ERFC_ARG = -1


def agr_gaussian_terms(
    arg: Tensor, spks: Tensor, tau: float, theta: Callable[[], Tensor]
) -> tuple[int, Tensor, tuple[float, ...]]:
    """``(code, factor, params)`` of the Gaussian ``agr`` factor from ``erfc``'s argument ``arg``.

    ``R = Φ(στθ/c)/Φ(σθ) = erfc(τ·arg/c)/erfc(arg)`` (``c = √(1 + τ²)``) for the kernel's
    ``FACTOR_RATIO_GAUSSIAN``, by torch's vectorised ``erfc`` (two passes); where ``Φ(σθ)``
    underflows anywhere (``σθ < −13`` in float32, ``< −37`` in float64) the whole factor by
    :func:`~sbnn.functional.estimators._agr_gaussian_factor` (its log-space formula on those
    elements), from ``theta()``.
    """
    den = torch.special.erfc(arg)
    if bool(den.amin() < 2.0 * torch.finfo(den.dtype).tiny):  # amin: 1/20 of a compare and any (measured)
        from .estimators import _agr_gaussian_factor

        return FACTOR_GIVEN, _agr_gaussian_factor(theta(), spks, Gaussian(), tau), ()
    c = math.sqrt(1.0 + tau**2)
    ratio = torch.mul(arg, tau / c).erfc_().div_(den)
    return FACTOR_RATIO_GAUSSIAN, ratio, agr_factor_params(tau)


def agr_factor_params(tau: float) -> tuple[float, ...]:
    """The ``agr`` codes' five kernel constants ``(τ/c, 0, 0, 1/(2c²), log √(2π) + log c)``, ``c = √(1 + τ²)``.

    ``FACTOR_RATIO_GAUSSIAN`` reads the last two, ``FACTOR_AGR_ERFC`` ``τ/c`` too.
    """
    c = math.sqrt(1.0 + tau**2)
    return (tau / c, 0.0, 0.0, 0.5 / c**2, _LOG_SQRT_2PI + math.log(c))


def _empty(x: Tensor) -> Tensor:
    """A new C-contiguous tensor shaped like ``x`` (``empty_like`` keeps a permuted input's strides)."""
    return x.new_empty(x.shape)


def _rows(x: Tensor):
    """A ``[T, ...]`` tensor as a C-contiguous ``[T, N]`` NumPy array (a view when it can)."""
    return x.detach().contiguous().reshape(x.shape[0], -1).numpy()


def _units(x: Tensor):
    """A one-step tensor as a C-contiguous ``[N]`` NumPy array."""
    return x.detach().contiguous().reshape(-1).numpy()


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


#: the backward kernels' factor constants: exp's, log √(2π), safe_exp's clamp, the cut sqrt(tiny)
_FACTOR_CONSTANTS = {
    dtype: kernels.factor_constants(np_dtype, _LOG_SQRT_2PI, safe_exp_floor(dtype), torch.finfo(dtype).tiny ** 0.5)
    for dtype, np_dtype in _NUMPY_FLOATS.items()
}

#: elements (steps × units, rows × columns) from which a kernel call splits its independent
#: ranges (units, steps, rows) across torch's intra-op threads (the ``*_parallel`` kernels: one
#: parallel region per call, the same numbers as the serial kernel). Below it a region's start-up
#: (tens of microseconds) is not worth it.
PARALLEL_MIN_WORK = 2**16


def parallel_chunks(n_ranges: int, work: int) -> int:
    """How many ranges of ``n_ranges`` independent items a kernel call runs in parallel.

    ``torch.get_num_threads()`` (at most Numba's thread count) when ``work ≥ PARALLEL_MIN_WORK``
    and every range has at least 16 items, else 1 (the serial kernel). Sets Numba's thread count
    for the calling thread, so that the parallel kernels follow ``torch.set_num_threads``.
    """
    global _POOL_PID
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if threads < 2 or work < PARALLEL_MIN_WORK or n_ranges < 16 * threads:
        return 1
    if _POOL_PID is None:
        _POOL_PID = os.getpid()
    elif _POOL_PID != os.getpid():
        return 1  # a forked child: the OpenMP thread pool it inherited from its parent is unsafe to use
    if not _pooled_layer():
        return 1
    numba.set_num_threads(threads)
    return threads


_POOL_PID = None  # the process that first ran a parallel kernel


def _pooled_layer() -> bool:
    """Whether Numba's threading layer is OpenMP or TBB (started once, by a tiny parallel kernel).

    Its fallback, ``workqueue``, made the parallel kernels slower than the serial ones (a
    two-thread step at 3 % input took 0.9× SpikingJelly's time against 0.6× with OpenMP, measured).
    """
    global _LAYER_POOLED
    if _LAYER_POOLED is None:
        kernels.start_threads(np.zeros(2))
        _LAYER_POOLED = numba.threading_layer() in ("omp", "tbb")
    return _LAYER_POOLED


_LAYER_POOLED = None


def _factor_params(params: Sequence[float], like: Tensor):
    """The weighted Gaussian codes' five constants in the dtype of ``like`` (zeros when unused)."""
    return np.array(list(params) if len(params) else [0.0] * 5, dtype=_NUMPY_FLOATS[like.dtype])


def _one(x: Tensor):
    """1 in the dtype of ``x`` as a NumPy scalar (the kernels' ``one``)."""
    return _NUMPY_FLOATS[x.dtype](1)


def _scalar(value: float, like: Tensor):
    """``value`` in the dtype of ``like`` as a NumPy scalar (the kernels' constants)."""
    return _NUMPY_FLOATS[like.dtype](value)


@operator("lif_forward", device_types="cpu")
def lif_forward(
    mu: Tensor, scale: Tensor, eps: Tensor, beta: Tensor, threshold: Tensor, mem0: Tensor, spk0: Tensor, reset: int,
    from_var: bool, floor: float, kappa: float,
) -> tuple[Tensor, Tensor]:
    """``(spks, mems)`` ``[T, ...]`` of the pathwise recurrence; every input but the codes shaped as ``mu`` or one step.

    With ``from_var``, ``scale`` is the input variance and the kernel forms ``sqrt(v + floor)·kappa``.
    """
    spks, mems = _empty(mu), _empty(mu)
    args = (
        _rows(mu), _rows(scale), _rows(eps), _units(beta), _units(threshold), _units(mem0), _units(spk0), reset,
        from_var, _scalar(floor, mu), _scalar(kappa, mu), _rows(mems), _rows(spks),
    )
    chunks = parallel_chunks(args[0].shape[1], args[0].size)
    if chunks > 1:
        kernels.lif_forward_parallel(*args, chunks)
    else:
        kernels.lif_forward(*args)
    return spks, mems


@lif_forward.register_fake
def _(mu, scale, eps, beta, threshold, mem0, spk0, reset, from_var, floor, kappa):
    return _empty(mu), _empty(mu)


@operator("lif_theta", device_types="cpu")
def lif_theta(
    mems: Tensor, scale: Tensor, eps: Tensor, threshold: Tensor, from_var: bool, floor: float, kappa: float,
    spks: Optional[Tensor] = None, signed_k: float = 0.0,
) -> Tensor:
    """``θ = (U − scale·ε − ϑ)·(1/scale)`` ``[T, ...]`` (``scale`` as in :func:`lif_forward`); with
    ``signed_k ≠ 0`` and the spikes, ``−σθ·signed_k`` (``σ = 2S − 1``), ``erfc``'s argument."""
    theta = _empty(mems)
    mems_ = _rows(mems)
    kernels.lif_theta(
        mems_, _rows(scale), _rows(eps), _units(threshold), from_var, _scalar(floor, mems), _scalar(kappa, mems),
        _one(mems), mems_ if spks is None else _rows(spks), _scalar(signed_k if spks is not None else 0.0, mems),
        _rows(theta),
    )
    return theta


@lif_theta.register_fake
def _(mems, scale, eps, threshold, from_var, floor, kappa, spks=None, signed_k=0.0):
    return _empty(mems)


@operator("lif_backward", device_types="cpu")
def lif_backward(
    g_spk: Optional[Tensor], g_mem: Optional[Tensor], factor: Optional[Tensor], factor_code: int,
    factor_params: Sequence[float], scale: Tensor, eps: Tensor, mems: Tensor, spks: Tensor, beta: Tensor,
    threshold: Tensor, mem0: Tensor, spk0: Tensor, reset: int, detach: bool, from_var: bool, floor: float,
    kappa: float, want_scale: bool, want_beta: bool, want_threshold: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(gŪ, g_scale, g_beta, g_threshold)``: ``[T, ...]``, ``[T, ...]`` (``[0]`` unless ``want_scale``), one step, one step.

    ``factor`` is read for ``FACTOR_GIVEN`` and the weighted Gaussian codes (with their five
    ``factor_params``, empty otherwise) and ``FACTOR_AGR_ERFC_ARG`` (resolved here by
    :func:`agr_gaussian_terms`); ``g_scale`` is the variance's gradient with ``from_var``.
    ``g_beta`` and ``g_threshold`` are zeros unless ``want_beta``, ``want_threshold``.
    """
    if factor_code == FACTOR_AGR_ERFC_ARG:
        factor_code, factor, factor_params = agr_gaussian_terms(
            factor, spks, factor_params[0], lambda: lif_theta(mems, scale, eps, threshold, from_var, floor, kappa)
        )
    g_ubar = _empty(mems)
    g_scale = _empty(mems) if want_scale else mems.new_empty(0)
    g_beta, g_threshold = mems.new_zeros(mems.shape[1:]), mems.new_zeros(mems.shape[1:])
    mems_, g_ubar_ = _rows(mems), _rows(g_ubar)
    args = (
        _rows(g_spk) if g_spk is not None else np.zeros(mems_.shape, dtype=mems_.dtype),
        mems_ if g_mem is None else _rows(g_mem), g_mem is not None,
        mems_ if factor is None else _rows(factor), factor_code, _FACTOR_CONSTANTS[mems.dtype],
        _factor_params(factor_params, mems), _rows(scale), from_var, _scalar(floor, mems), _scalar(kappa, mems),
        _rows(eps), mems_, _rows(spks),
        _units(beta), _units(threshold), _units(mem0), _units(spk0), reset, detach, _one(mems),
        g_ubar_, _rows(g_scale) if want_scale else g_ubar_, want_scale,
        _units(g_beta), _units(g_threshold), want_beta, want_threshold,
    )
    chunks = parallel_chunks(mems_.shape[1], mems_.size)
    if chunks > 1:
        kernels.lif_backward_parallel(*args, chunks)
    else:
        kernels.lif_backward(*args)
    return g_ubar, g_scale, g_beta, g_threshold


@lif_backward.register_fake
def _(
    g_spk, g_mem, factor, factor_code, factor_params, scale, eps, mems, spks, beta, threshold, mem0, spk0, reset,
    detach, from_var, floor, kappa, want_scale, want_beta, want_threshold,
):
    g_scale = _empty(mems) if want_scale else mems.new_empty(0)
    return _empty(mems), g_scale, mems.new_empty(mems.shape[1:]), mems.new_empty(mems.shape[1:])


@operator("marginal_variance", device_types="cpu")
def marginal_variance(var: Optional[Tensor], beta2: Tensor, var0: Tensor, floor: float, n_steps: int) -> Tensor:
    """``V[t] = (β²V[t−1] + v[t]) + f`` ``[T, ...]`` on the shape of ``var0`` (``var`` ``[T, ...]`` of that shape, or none)."""
    out = var0.new_empty((n_steps, *var0.shape))
    out_ = _rows(out)
    kernels.marginal_variance(
        out_ if var is None else _rows(var), var is not None, _units(beta2), _units(var0), out_.dtype.type(floor), out_
    )
    return out


@marginal_variance.register_fake
def _(var, beta2, var0, floor, n_steps):
    return var0.new_empty((n_steps, *var0.shape))


@operator("marginal_mean", device_types="cpu")
def marginal_mean(
    mu: Tensor, scales: Tensor, eps: Tensor, beta: Tensor, reset_amount: Tensor, threshold: Tensor,
    mem0: Tensor, spk0: Tensor, subtract: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(spks, thetas, means)`` ``[T, ...]`` of the marginal mean recurrence (subtract or no reset)."""
    spks, thetas, means = _empty(mu), _empty(mu), _empty(mu)
    kernels.marginal_mean(
        _rows(mu), _rows(scales), _rows(eps), _units(beta), _units(reset_amount), _units(threshold),
        _units(mem0), _units(spk0), subtract, _rows(means), _rows(thetas), _rows(spks),
    )
    return spks, thetas, means


@marginal_mean.register_fake
def _(mu, scales, eps, beta, reset_amount, threshold, mem0, spk0, subtract):
    return _empty(mu), _empty(mu), _empty(mu)


@operator("marginal_backward", device_types="cpu")
def marginal_backward(
    g_spk: Optional[Tensor], g_mem: Optional[Tensor], g_scale: Optional[Tensor], factor: Optional[Tensor],
    factor_code: int, factor_params: Sequence[float], thetas: Tensor, scales: Tensor, eps: Tensor, means: Tensor,
    variances: Tensor, spks: Tensor, mem0: Tensor, var0: Tensor, spk0: Tensor, beta: Tensor, carry_m: Tensor, carry_v: Tensor, kappa: float,
    want_beta: bool, want_threshold: bool, subtract: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(gM, gV, g_beta, g_threshold)`` of the marginal node with a detached reset: ``[T, ...]``,
    ``[T, ...]``, one step, one step (zeros unless wanted). Sequences shaped as ``thetas``,
    constants and carries as one step. ``factor_code`` as in :func:`lif_backward`."""
    if factor_code == FACTOR_AGR_ERFC_ARG:
        factor_code, factor, factor_params = agr_gaussian_terms(factor, spks, factor_params[0], lambda: thetas)
    g_m, g_v = _empty(thetas), _empty(thetas)
    g_beta, g_threshold = thetas.new_zeros(thetas.shape[1:]), thetas.new_zeros(thetas.shape[1:])
    th_ = _rows(thetas)
    beta_ = _units(beta)
    kernels.marginal_backward(
        _rows(g_spk) if g_spk is not None else np.zeros(th_.shape, dtype=th_.dtype),
        th_ if g_mem is None else _rows(g_mem), g_mem is not None, th_ if g_scale is None else _rows(g_scale), g_scale is not None,
        th_ if factor is None else _rows(factor), factor_code, _FACTOR_CONSTANTS[thetas.dtype],
        _factor_params(factor_params, thetas), th_, _rows(scales), _rows(eps), _rows(means), _rows(variances),
        _rows(spks), _units(mem0), _units(var0), _units(spk0),
        beta_, beta_ * beta_, _scalar(0.5 * kappa**2, thetas), _units(carry_m).copy(), _units(carry_v).copy(),
        want_beta, want_threshold, subtract, _rows(g_m), _rows(g_v), _units(g_beta), _units(g_threshold),
    )
    return g_m, g_v, g_beta, g_threshold


@marginal_backward.register_fake
def _(g_spk, g_mem, g_scale, factor, factor_code, factor_params, thetas, scales, eps, means, variances, spks, mem0,
      var0, spk0, beta, carry_m, carry_v, kappa, want_beta, want_threshold, subtract):
    step = thetas.shape[1:]
    return _empty(thetas), _empty(thetas), thetas.new_empty(step), thetas.new_empty(step)


@operator("reverse_recurrence", device_types="cpu")
def reverse_recurrence(d: Tensor, coeff: Tensor, carry: Tensor) -> Tensor:
    """``out[t] = d[t] + coeff[t + 1]·out[t + 1]`` from ``out[T − 1] = d[T − 1] + carry``.

    ``d`` ``[T, ...]``; ``coeff`` ``[T, ...]`` or one step's shape; ``carry`` one step's shape.
    """
    out = _empty(d)
    per_step = coeff.dim() == d.dim()
    coeff_ = _rows(coeff) if per_step else _units(coeff).reshape(1, -1)
    kernels.reverse_recurrence(_rows(d), coeff_, per_step, _units(carry), _rows(out))
    return out


@reverse_recurrence.register_fake
def _(d, coeff, carry):
    return _empty(d)


@operator("time_weighted_grad", device_types="cpu")
def time_weighted_grad(weights: Tensor, x: Tensor, g_sum: Tensor, g_sq: Tensor) -> Tensor:
    """``∂/∂x_t (Σ_t w_t x_t, Σ_t w_t² x_t²)`` applied to ``(g_sum, g_sq)``: ``[T, ...]`` shaped as ``x``."""
    out = _empty(x)
    args = (_units(weights), _rows(x), _units(g_sum), _units(g_sq), _rows(out))
    chunks = parallel_chunks(args[1].shape[0], args[1].size)
    if chunks > 1:
        kernels.time_weighted_grad_parallel(*args, chunks)
    else:
        kernels.time_weighted_grad(*args)
    return out


@time_weighted_grad.register_fake
def _(weights, x, g_sum, g_sq):
    return _empty(x)

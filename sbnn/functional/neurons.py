r"""Pure step functions of the noisy (stochastic) leaky integrate-and-fire neuron.

Per time step, with membrane ``U``, leak ``β``, threshold ``ϑ``, LRT pre-activation moments
``(μ, v)`` and standard noise ``ε``:

.. math::
    \bar U[t] &= β U[t−1] + μ[t] − ϑ S[t−1]              && \text{(subtract reset)} \\
    s[t] &= \sqrt{v[t] + σ_0^2 + ε_{min}^2}               && \text{(posterior + intrinsic noise, floored)} \\
    θ[t] &= (\bar U[t] − ϑ) / (κ s[t])                     && \text{(standardised drive)} \\
    U[t] &= \bar U[t] + κ s[t] ε[t]                         && \\
    S[t] &= H(θ[t] + ε[t])                                  && P(S = 1) = F(θ)

The spike is computed as ``S[t] = H(U[t] − ϑ)``, the same event as ``H(θ + ε)``.
``κ`` is the noise family's ``std_to_scale`` (1 for Gaussian, ``√3/π`` for logistic), so the
membrane noise has variance ``s²`` in both families. The zero reset uses
``Ū[t] = β U[t−1] (1 − S[t−1]) + μ[t]``; ``none`` drops the reset term. A deterministic unit
(``mode``/``mean`` evaluation) has ``ε = 0``: it fires when ``Ū[t] ≥ ϑ``. ``β = 0`` without reset
is a binary (non-spiking) stochastic neuron: binary and spiking networks share one code path.

Gradients: ``S`` is differentiated through ``θ`` by an estimator of the IW-ST family
(:mod:`sbnn.functional.estimators`); ``U[t]`` is differentiable in ``μ`` and, through ``s``, in
``v`` (the pathwise term). Whether the reset term carries gradient is ``detach_reset``.

**Membrane noise models.** The equations above are the default ``"pathwise"`` model: the noise
drawn at a step stays in the membrane (``U[t]`` carries ``κsε``), while ``θ`` only sees the fresh
per-step scale ``s[t]``. The ``"marginal"`` model carries the accumulated *variance* instead and
keeps the membrane at its conditional mean:

.. math::
    M[t] &= β M[t−1] + μ[t] − ϑ S[t−1], \qquad V[t] = β^2 V[t−1] + v[t] + σ_0^2 + ε_{min}^2 \\
    θ[t] &= (M[t] − ϑ) / (κ \sqrt{V[t]}), \qquad S[t] = H(θ[t] + ε[t])

(zero reset: both ``M`` and ``V`` restart after a spike). Given the past spikes, each spike is a
Bernoulli(``F(θ)``) variable, so spike trains have a closed-form probability
(:func:`spike_train_log_prob`) and small networks can be enumerated exactly
(:mod:`sbnn.diagnostics`). At ``β = 0`` the two models coincide.

.. note::
    Our reading of arXiv 2505.17962 (only the abstract is public): the noise of the spiking
    neuron is the LRT posterior noise of its input layer plus a small intrinsic ``σ0``. The
    marginal model is sbnn's option (docs/design.md §7), not the paper's.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from . import _operators
from .estimators import AGR, IWST, ST, Estimator, gaussian_erfc_arg
from .noise import _LOG_SQRT_2PI, Gaussian, Logistic, NoiseFamily

__all__ = [
    "StochasticLIFState",
    "StochasticLIFParameters",
    "RESET_MECHANISMS",
    "MEMBRANE_NOISE_MODELS",
    "spike_train_log_prob",
    "noise_scale",
    "stochastic_lif_step",
    "stochastic_lif_sequence",
    "Drive",
    "leaky_integrate",
    "time_average_weights",
]

RESET_MECHANISMS = ("subtract", "zero", "none")
MEMBRANE_NOISE_MODELS = ("pathwise", "marginal")

#: Run the neuron's time loops as Numba kernels (``sbnn/functional/_cpu_kernels.py``) when every
#: tensor is on the CPU in one dtype, float32 or float64, and Numba imports: the pathwise model's
#: forward loop and whole backward pass; the marginal model's forward loop and adjoint
#: recurrences (subtract or no reset; the zero reset keeps the torch loop). They are registered
#: as torch operators (``torch.ops.sbnn.*``), so ``torch.compile`` keeps them as opaque nodes
#: instead of unrolling a time loop (torch ≥ 2.4; older torch compiles the torch loops).
#: Otherwise, and with ``False``, the torch loops. Both paths give the same spikes
#: and membranes, bit for bit, and the same gradients up to float rounding (sums over time are
#: added in another order). The first call in a fresh environment compiles what it needs for its
#: dtype (measured on a shared 2-core machine: pathwise about 10 s, marginal about 6 s); Numba
#: caches the kernels on disk, and a later process loads them in about 3 s on its first call.
CPU_KERNELS: bool = True


class StochasticLIFState(NamedTuple):
    """State after a step: membrane ``U[t]`` and emitted spikes ``S[t]``, both shaped like the input.

    The marginal noise model also carries the membrane variance ``var = V[t]`` (``mem`` is then
    the conditional mean ``M[t]``); the pathwise model leaves it ``None``.
    """

    mem: Tensor
    spk: Tensor
    var: Tensor | None = None


class StochasticLIFParameters(NamedTuple):
    """Constants of a stochastic LIF neuron (tensors broadcast over the unit dimensions)."""

    beta: Tensor | float
    threshold: Tensor | float
    sigma0: float
    eps_min: float
    reset_mechanism: str
    detach_reset: bool
    noise: NoiseFamily
    estimator: Estimator
    membrane_noise: str = "pathwise"
    #: learned threshold-noise standard deviation ``σ_b`` (a tensor that may carry a gradient), or
    #: ``None``: pathwise, ``s = sqrt(v + σ0² + ε_min² + σ_b²)``; marginal, ``σ_b²`` is added to the
    #: accumulated variance when it is read, ``s = sqrt(V[t] + σ_b²)``, never accumulated itself
    sigma_b: Tensor | float | None = None
    #: subtract reset leaked with the membrane (marginal model only): ``M[t] = β(M[t−1] − ϑS[t−1]) + μ[t]``,
    #: i.e. a reset of ``βϑ`` instead of ``ϑ`` (the SBNN authors' code); ``False``: ``βM[t−1] + μ[t] − ϑS[t−1]``
    reset_leak: bool = False


def _reset_amount(beta: Tensor, threshold: Tensor, leak: bool) -> Tensor:
    """What a subtract reset removes from the membrane per spike: ``ϑ``, or ``βϑ`` with ``reset_leak``."""
    return beta * threshold if leak else threshold


def _sigma_b_sq(p: StochasticLIFParameters) -> Tensor | float | None:
    return None if p.sigma_b is None else p.sigma_b * p.sigma_b


def noise_scale(var: Tensor | None, p: StochasticLIFParameters, like: Tensor) -> Tensor:
    """``κ·sqrt(v + σ0² + ε_min² [+ σ_b²])``, the family's scale of the membrane noise (``v = 0`` if None)."""
    floor = p.sigma0**2 + p.eps_min**2
    extra = _sigma_b_sq(p)
    if var is None:
        if extra is None:
            return torch.full((), floor**0.5 * p.noise.std_to_scale, dtype=like.dtype, device=like.device)
        return torch.sqrt(_as_tensor(extra, like) + floor) * p.noise.std_to_scale
    total = var + floor
    scale = torch.sqrt(total if extra is None else total + extra)
    return scale if p.noise.std_to_scale == 1.0 else scale * p.noise.std_to_scale  # no pass over [T, B, H] for ×1


class _StochasticLIFSequence(torch.autograd.Function):
    """The whole stochastic-LIF sequence as one autograd node (forward loop + hand-written BPTT).

    Autograd through a Python time loop records ~10 small ops per step and replays them one by
    one; here the forward loop runs without a graph (4 ops per step), and the backward is the
    linear recurrence of the adjoint, ``gŪ[t] = d[t] + c[t]·gŪ[t+1]``, with every other term —
    the estimator factors included — computed for all steps at once. The reference
    implementation by plain autograd lives in the tests, which check both against each other.
    On CPU the loops run as Numba kernels (:data:`CPU_KERNELS`): the forward recurrence, then in
    the backward the estimator's factor (``st``: in the kernel; others: torch, all steps at once)
    and one pass for the adjoint recurrence and every input gradient. Given ``floor`` (kernels
    only), the second input is the input variance ``v`` instead of the scale, and the kernels form
    ``s = sqrt(v + floor)·κ`` themselves and return ``v``'s gradient.
    """

    @staticmethod
    def forward(ctx, mu, scale, eps, beta, threshold, mem0, spk0, reset, detach_reset, estimator, noise, floor=None):
        # floor given: `scale` is the input variance, the kernels form the scale (the caller checked they apply)
        ctx.on_kernels = floor is not None or _cpu_kernels_for(mu, scale, eps, beta, threshold, mem0, spk0) is not None
        if ctx.on_kernels:
            return _lif_forward_kernel(
                ctx, mu, scale, eps, beta, threshold, mem0, spk0, reset, detach_reset, estimator, noise, floor
            )
        noise_term = scale * eps
        mems, spks = torch.empty_like(mu), torch.empty_like(mu)
        mem, spk = mem0, spk0
        neg_threshold = -threshold
        for t in range(mu.shape[0]):
            if reset == "zero":
                ubar = torch.addcmul(mu[t], mem * beta, 1.0 - spk)
            else:
                ubar = torch.addcmul(mu[t], mem, beta)
                if reset == "subtract":
                    ubar = ubar.addcmul_(spk, neg_threshold)
            mem = torch.add(ubar, noise_term[t], out=mems[t])
            spk = spks[t].copy_(mem >= threshold)
        ctx.save_for_backward(scale, eps, beta, threshold, mem0, spk0, mems, spks)
        ctx.reset, ctx.detach_reset, ctx.estimator, ctx.noise = reset, detach_reset, estimator, noise
        ctx.set_materialize_grads(False)  # an unused output (often mem) gets no zero tensor
        return spks, mems

    @staticmethod
    def backward(ctx, g_spk, g_mem):
        if ctx.on_kernels:
            return _lif_backward_kernel(ctx, g_spk, g_mem)
        scale, eps, beta, threshold, mem0, spk0, mems, spks = ctx.saved_tensors
        reset, detach = ctx.reset, ctx.detach_reset or ctx.reset == "none"
        needs = ctx.needs_input_grad
        if g_spk is None:
            g_spk = torch.zeros_like(mems)
        inv_s = scale.reciprocal()
        theta = (mems - scale * eps - threshold) * inv_s
        factor = ctx.estimator.factor(theta, spks, eps, ctx.noise)
        # c[t] = ∂Ū[t+1]/∂U[t]: β, or β(1 − S[t]) for the zero reset
        coeff = beta * (1.0 - spks) if reset == "zero" else beta.expand_as(mems)
        g_ubar = torch.empty_like(mems)
        carry = torch.zeros_like(mems[0])
        if detach:
            g_theta_s = g_spk * factor * inv_s  # gθ/s, the spike's contribution to gŪ
            d = g_theta_s if g_mem is None else g_theta_s + g_mem
            for t in range(mems.shape[0] - 1, -1, -1):
                carry = torch.addcmul(d[t], coeff[t], carry, out=g_ubar[t])
        else:
            # the reset spike S[t] feeds Ū[t+1]: its adjoint enters the estimator inside the loop
            reset_grad = -threshold.expand_as(mems) if reset == "subtract" else -beta * mems
            g_mem = torch.zeros_like(mems) if g_mem is None else g_mem
            factor_s = factor * inv_s
            g_theta_s = torch.empty_like(mems)
            for t in range(mems.shape[0] - 1, -1, -1):
                torch.mul(torch.addcmul(g_spk[t], reset_grad[t], carry), factor_s[t], out=g_theta_s[t])
                carry = torch.add(torch.addcmul(g_mem[t], coeff[t], carry), g_theta_s[t], out=g_ubar[t])
        g_scale = g_beta = g_threshold = g_mem0 = g_spk0 = None
        if needs[1]:
            # U[t] = Ū[t] + scale·ε and θ = (Ū − ϑ)/scale: adjoint of U is gŪ − gθ/s
            g_scale = (g_ubar - g_theta_s) * eps - g_theta_s * theta
        if needs[3] or needs[4]:
            prev_mem = torch.cat([mem0.expand_as(mems[:1]), mems[:-1]])
            prev_spk = torch.cat([spk0.expand_as(spks[:1]), spks[:-1]])
        if needs[3]:
            carried = prev_mem * (1.0 - prev_spk) if reset == "zero" else prev_mem
            g_beta = (g_ubar * carried).sum_to_size(beta.shape)
        if needs[4]:
            g_thr = -g_theta_s if reset != "subtract" else -(g_theta_s + g_ubar * prev_spk)
            g_threshold = g_thr.sum_to_size(threshold.shape)
        if needs[5]:
            g_mem0 = ((beta * (1.0 - spk0) if reset == "zero" else beta) * g_ubar[0]).sum_to_size(mem0.shape)
        if needs[6] and not detach:
            g_spk0 = (-threshold * g_ubar[0] if reset == "subtract" else -beta * mem0 * g_ubar[0]).sum_to_size(spk0.shape)
        return g_ubar if needs[0] else None, g_scale, None, g_beta, g_threshold, g_mem0, g_spk0, None, None, None, None, None


_RESET_CODES = {"subtract": 0, "zero": 1, "none": 2}  # the kernels' reset codes
_kernel_module = None  # sbnn.functional._kernel_ops once imported; False if Numba is missing


def _cpu_kernels_for(mu: Tensor, *others: Tensor):
    """The kernel operators (:mod:`sbnn.functional._kernel_ops`) when the pathwise node can run there, else ``None``.

    ``others`` are ``(scale, eps, beta, threshold, mem0, spk0)``: the sequences must broadcast to
    ``mu``, the constants and the state to one step of it (a per-step ``β`` takes the torch loop).
    Under ``torch.compile`` the operators are opaque nodes of the graph (torch ≥ 2.4); on older
    torch the node compiles its torch loop.
    """
    global _kernel_module
    if not CPU_KERNELS or mu.dim() == 0:
        return None
    if mu.device.type != "cpu" or mu.dtype not in (torch.float32, torch.float64):
        return None
    if any(x.device.type != "cpu" or x.dtype != mu.dtype for x in others):
        return None
    try:
        if any(torch.broadcast_shapes(x.shape, mu.shape) != mu.shape for x in others[:2]):
            return None
        if any(torch.broadcast_shapes(x.shape, mu.shape[1:]) != mu.shape[1:] for x in others[2:]):
            return None
    except RuntimeError:  # not broadcastable: the torch path raises its own error
        return None
    if _kernel_module is None:
        try:
            from . import _kernel_ops
        except ImportError:  # Numba missing or broken: the torch loop
            _kernel_module = False
        else:
            _kernel_module = _kernel_ops
    if _kernel_module and torch.compiler.is_compiling() and not _operators.HAS_CUSTOM_OP:
        return None
    return _kernel_module or None


def _lif_forward_kernel(ctx, mu, scale, eps, beta, threshold, mem0, spk0, reset, detach_reset, estimator, noise, floor):
    """:meth:`_StochasticLIFSequence.forward` by the ``lif_forward`` kernel (``scale`` the variance if ``floor`` is given)."""
    shape, step = mu.shape, mu.shape[1:]
    if floor is not None:
        scale = scale.contiguous()  # the variance (a gather's strided half): copied once for both passes
    spks, mems = _kernel_module.lif_forward(
        mu, scale.expand(shape), eps.expand(shape), beta.expand(step), threshold.expand(step),
        mem0.expand(step), spk0.expand(step), _RESET_CODES[reset], floor is not None, floor or 0.0, noise.std_to_scale,
    )
    ctx.save_for_backward(scale, eps, beta, threshold, mem0, spk0, mems, spks)
    ctx.reset, ctx.detach_reset, ctx.estimator, ctx.noise, ctx.floor = reset, detach_reset, estimator, noise, floor
    ctx.set_materialize_grads(False)
    return spks, mems


def _kernel_factor(
    estimator: Estimator, noise: NoiseFamily, theta: Callable[[], Tensor], spks: Tensor, eps: Tensor,
    erfc_arg: Callable[[], Tensor] | None = None,
) -> tuple[int, Tensor | None, tuple[float, ...]]:
    """``(code, factor, params)`` of the backward kernels' estimator factor.

    ``st`` with Gaussian or logistic noise: the kernel computes ``p(θ)`` itself (no array).
    ``iwst`` and ``agr`` with Gaussian noise in float32: the kernel forms ``erfc`` itself from
    ``θ`` and the spikes (``FACTOR_IWST_ERFC``, ``FACTOR_AGR_ERFC``; within 6e-6 of float64,
    and ``agr``'s ratio cancels its Gaussian factors exactly, so it needs no log-space tail). In
    float64, torch forms the CDF terms with its vectorised ``erfc`` (``E = 2Φ(σθ)``, or the ratio
    ``R = Φ(στθ/c)/Φ(σθ)``) and the kernel multiplies by the density (``_cpu_kernels``' weighted
    Gaussian codes); ``agr`` hands the operator ``erfc``'s argument (``FACTOR_AGR_ERFC_ARG``), which
    forms the ratio, or, where ``Φ(σθ)`` underflows, torch's whole factor (its log-space tail): a
    data-dependent choice, made inside the operator so that compiled code makes it too. Every
    other estimator: torch's whole factor. ``theta`` builds ``θ`` when needed, ``erfc_arg`` (if
    given) ``erfc``'s argument ``−σθ/√2`` directly.
    """
    ops = _kernel_module
    if type(estimator) is ST and type(noise) in (Gaussian, Logistic):
        return (ops.FACTOR_ST_GAUSSIAN if type(noise) is Gaussian else ops.FACTOR_ST_LOGISTIC), None, ()
    if type(noise) is Gaussian and type(estimator) in (IWST, AGR):
        in_kernel = spks.dtype == torch.float32
        if type(estimator) is IWST:
            p = estimator.p
            params = (2.0 * (1.0 - p), 2.0 * (2.0 * p - 1.0), estimator.w_max, 0.5, _LOG_SQRT_2PI)
            if in_kernel:
                return ops.FACTOR_IWST_ERFC, None, params
            arg = gaussian_erfc_arg(theta(), spks) if erfc_arg is None else erfc_arg()
            return ops.FACTOR_IWST_GAUSSIAN, arg.erfc_(), params
        if in_kernel:
            return ops.FACTOR_AGR_ERFC, None, ops.agr_factor_params(estimator.tau)
        arg = gaussian_erfc_arg(theta(), spks) if erfc_arg is None else erfc_arg()
        return ops.FACTOR_AGR_ERFC_ARG, arg, (estimator.tau,)
    th = theta()
    return ops.FACTOR_GIVEN, estimator.factor(th, spks, eps, noise).to(th.dtype).expand(th.shape), ()


def _lif_backward_kernel(ctx, g_spk, g_mem):
    """:meth:`_StochasticLIFSequence.backward` by the ``lif_backward`` kernel.

    For ``st`` with Gaussian or logistic noise the kernel computes the factor ``p(θ)`` in the row it
    is used; for every other estimator ``θ`` is built by the ``lif_theta`` kernel and the factor, or
    its CDF terms (:func:`_kernel_factor`), by torch for all steps at once (so every estimator works
    unchanged). Then one kernel runs the adjoint recurrence and every per-element gradient.
    """
    ops = _kernel_module
    scale, eps, beta, threshold, mem0, spk0, mems, spks = ctx.saved_tensors
    reset, detach = ctx.reset, ctx.detach_reset or ctx.reset == "none"
    needs = ctx.needs_input_grad
    shape, step = mems.shape, mems.shape[1:]
    scale_, eps_, beta_, thr_ = scale.expand(shape), eps.expand(shape), beta.expand(step), threshold.expand(step)
    from_var, floor, kappa = ctx.floor is not None, ctx.floor or 0.0, ctx.noise.std_to_scale
    code, factor, params = _kernel_factor(
        ctx.estimator, ctx.noise, lambda: ops.lif_theta(mems, scale_, eps_, thr_, from_var, floor, kappa), spks, eps,
        lambda: ops.lif_theta(mems, scale_, eps_, thr_, from_var, floor, kappa, spks, math.sqrt(0.5)),
    )
    g_ubar, g_scale, g_beta, g_thr = ops.lif_backward(
        g_spk, g_mem, factor, code, params, scale_, eps_, mems, spks, beta_, thr_, mem0.expand(step), spk0.expand(step),
        _RESET_CODES[reset], detach, from_var, floor, kappa, needs[1], needs[3], needs[4],
    )
    g_scale = g_scale.sum_to_size(scale.shape) if needs[1] else None
    g_beta = g_beta.sum_to_size(beta.shape) if needs[3] else None
    g_thr = g_thr.sum_to_size(threshold.shape) if needs[4] else None
    g_mem0 = g_spk0 = None
    if needs[5]:
        g_mem0 = ((beta * (1.0 - spk0) if reset == "zero" else beta) * g_ubar[0]).sum_to_size(mem0.shape)
    if needs[6] and not detach:
        g_spk0 = (-threshold * g_ubar[0] if reset == "subtract" else -beta * mem0 * g_ubar[0]).sum_to_size(spk0.shape)
    return g_ubar if needs[0] else None, g_scale, None, g_beta, g_thr, g_mem0, g_spk0, None, None, None, None, None


def _marginal_kernels_apply(mu: Tensor, var, b, eps, beta, threshold, mem0, var0, spk0, reset: str) -> bool:
    """Whether :class:`_MarginalSequence`'s loops can run as the kernel operators.

    Not for the zero reset: there the scale ``√V`` sits inside the recurrence, and torch's
    vectorised ``sqrt`` is not always the correctly rounded one a kernel computes (1 ulp apart,
    measured in float64), which could flip a spike.
    """
    if reset == "zero":
        return False
    if _cpu_kernels_for(mu, mu, eps, beta, threshold, mem0, spk0) is None:
        return False
    for x, seq in ((var, True), (b, False), (var0, False)):
        if x is None:
            continue
        if x.device.type != "cpu" or x.dtype != mu.dtype:
            return False
        try:
            if seq and torch.broadcast_shapes(x.shape, mu.shape) != mu.shape:
                return False
            if not seq and x is var0 and torch.broadcast_shapes(x.shape, mu.shape[1:]) != mu.shape[1:]:
                return False
        except RuntimeError:
            return False
    return True


def _marginal_forward_kernel(mu, var, b, eps, beta, beta2, threshold, reset_amount, mem0, var0, spk0, floor, reset, kappa):
    """:class:`_MarginalSequence`'s forward loops by the kernels (subtract or no reset).

    The variance recurrence runs on its compact shape, the scale ``κ√(V + b)`` is torch's (as in
    the torch loop), then the mean and spike recurrence runs on every unit: the same operations,
    element by element, as the torch loops. Returns ``(spks, thetas, means, variances, scales)``.
    """
    step, n_steps = mu.shape[1:], mu.shape[0]
    vshape = torch.broadcast_shapes(var0.shape, beta.shape, () if var is None else var.shape[1:])
    vshape = torch.Size((1,) * (mu.dim() - 1 - len(vshape)) + tuple(vshape))  # aligned with a step's [B, ...]
    variances = _kernel_module.marginal_variance(
        None if var is None else var.expand((n_steps, *vshape)), beta2.expand(vshape), var0.expand(vshape),
        float(floor), n_steps,
    )
    scales = torch.sqrt(variances if b is None else variances + b)
    if kappa != 1.0:
        scales = scales * kappa
    spks, thetas, means = _kernel_module.marginal_mean(
        mu, scales.expand(mu.shape), eps.expand(mu.shape), beta.expand(step), reset_amount.expand(step),
        threshold.expand(step), mem0.expand(step), spk0.expand(step), reset == "subtract",
    )
    return spks, thetas, means, variances, scales


def _marginal_sequence(
    mu: Tensor,
    var: Tensor | None,
    p: StochasticLIFParameters,
    state: StochasticLIFState,
    eps: Tensor,
    forced: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, StochasticLIFState]:
    """The marginal model by plain autograd: ``(spk, mem, theta, scale, state)``, each ``[T, ...]``.

    ``forced`` replaces the sampled spikes by given ones (teacher forcing, for log-probabilities).
    The reference of :class:`_MarginalSequence` (the tests check one against the other).
    """
    beta, threshold = _as_tensor(p.beta, mu), _as_tensor(p.threshold, mu)
    floor = p.sigma0**2 + p.eps_min**2
    sb2 = _sigma_b_sq(p)
    mean, variance, prev = state.mem, state.var, state.spk
    if variance is None:
        variance = torch.zeros_like(mu[0])
    spks, mems, thetas, scales = [], [], [], []
    zeros = torch.zeros_like(mu[0])
    for t, (mu_t, eps_t) in enumerate(zip(mu.unbind(0), eps.unbind(0))):
        reset_spk = prev.detach() if p.detach_reset else prev
        v_t = zeros if var is None else var[t]
        if p.reset_mechanism == "zero":
            keep = 1.0 - reset_spk
            mean = beta * mean * keep + mu_t
            variance = beta * beta * variance * keep + v_t + floor
        else:
            mean = beta * mean + mu_t
            if p.reset_mechanism == "subtract":
                mean = mean - _reset_amount(beta, threshold, p.reset_leak) * reset_spk
            variance = beta * beta * variance + v_t + floor
        scale = torch.sqrt(variance if sb2 is None else variance + sb2) * p.noise.std_to_scale
        theta = (mean - threshold) / scale
        prev = forced[t] if forced is not None else p.estimator(theta, eps_t, p.noise)
        spks.append(prev)
        mems.append(mean + scale * eps_t)
        thetas.append(theta)
        scales.append(scale)
    out = [torch.stack(v) for v in (spks, mems, thetas, scales)]
    return (*out, StochasticLIFState(mean, prev, variance))


class _MarginalSequence(torch.autograd.Function):
    r"""The marginal (accumulated-variance) model as one autograd node: forward loop + hand-written BPTT.

    Forward, per step (``k[t] = 1 − S[t−1]`` for the zero reset, else 1; ``b = σ_b²`` or 0):

    .. math::
        M[t] = β k[t] M[t−1] + μ[t] − ϑ S[t−1]·[\text{subtract}], \quad
        V[t] = β^2 k[t] V[t−1] + v[t] + f, \quad
        s[t] = κ\sqrt{V[t] + b}, \quad θ[t] = (M[t] − ϑ)/s[t]

    with the same floating-point operations, element by element, as :func:`_marginal_sequence`
    (so the spikes are identical). Without the zero reset ``V`` does not depend on the spikes: it
    and ``s`` are computed first, for all steps, on the smallest shape ``v`` broadcasts from
    (a real-weight layer's variance is one value per position, shared by its channels), and only
    the mean loops with the spikes.

    Backward: the adjoints obey two linear recurrences,
    ``gM[t] = β k[t+1] gM[t+1] + g_m[t] + gS[t]·a[t]`` with ``a = factor/s``, and
    ``gV[t] = β² k[t+1] gV[t+1] + gs[t]·κ²/(2s[t])`` with the σ-gradient through the spike
    ``gs[t] = g_m[t] ε[t] − gS[t]·factor[t]·θ[t]/s[t]`` (plus the scale output's adjoint). A
    reset that carries gradient adds to ``gS[t−1]`` from step ``t`` (``−ϑ gM[t]``, or for the
    zero reset ``−β M[t−1] gM[t] − β² V[t−1] gV[t]``), so that case loops over the spike adjoint.

    Outputs ``(spk, mem, scale, M_last, V_last)``: ``mem = M + sε`` (the noisy sample, as the
    reference returns), ``scale`` (so a caller can rebuild ``θ`` with its graph; broadcastable to
    ``spk``) and the final mean and variance (so a per-step caller chains the state with its
    gradient).

    On CPU, without the zero reset, the variance and mean loops and the adjoint recurrences run
    as Numba kernels (:data:`CPU_KERNELS`); with a detached reset, no ``σ_b`` and a per-unit
    variance the whole backward is one kernel (:func:`_marginal_backward_kernel`), otherwise every
    other backward term stays torch.
    """

    @staticmethod
    def forward(ctx, mu, var, b, eps, beta, threshold, mem0, var0, spk0, floor, reset, detach_reset, estimator, noise, leak=False):
        kappa = noise.std_to_scale
        reset_amount = _reset_amount(beta, threshold, leak)
        beta2 = beta * beta
        n_steps = mu.shape[0]
        mean, prev = mem0, spk0
        ctx.on_kernels = _marginal_kernels_apply(mu, var, b, eps, beta, threshold, mem0, var0, spk0, reset)
        if not ctx.on_kernels:  # the torch loops write into these; the kernels return their own
            spks, thetas, means = torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu)
        if ctx.on_kernels:
            spks, thetas, means, variances, scales = _marginal_forward_kernel(
                mu, var, b, eps, beta, beta2, threshold, reset_amount, mem0, var0, spk0, floor, reset, kappa
            )
        elif reset != "zero":
            # the variance does not depend on the spikes: all steps first, on its own (small) shape
            vshape = torch.broadcast_shapes(var0.shape, beta.shape, () if var is None else var.shape[1:])
            vshape = (1,) * (mu.dim() - 1 - len(vshape)) + tuple(vshape)  # aligned with a step's [B, ...]
            variances = mu.new_empty((n_steps, *vshape))
            variance = var0
            for t in range(n_steps):
                variance = beta2 * variance
                if var is not None:
                    variance = variance + var[t]
                variance = variances[t].copy_(variance + floor)  # copy_ broadcasts a 0-d variance into its [1, ...] slot
            scales = torch.sqrt(variances if b is None else variances + b)
            if kappa != 1.0:
                scales = scales * kappa
            for t in range(n_steps):
                mean = torch.add(beta * mean, mu[t], out=means[t])
                if reset == "subtract":
                    mean = mean.sub_(reset_amount * prev)
                theta = torch.div(mean - threshold, scales[t], out=thetas[t])
                prev = spks[t].copy_(theta + eps[t] >= 0)
        else:
            variances = torch.empty_like(mu)
            scales = torch.empty_like(mu)
            variance = var0
            for t in range(n_steps):
                keep = 1.0 - prev
                mean = torch.add(beta * mean * keep, mu[t], out=means[t])
                variance = beta2 * variance * keep
                if var is not None:
                    variance = variance + var[t]
                variance = variances[t].copy_(variance + floor)  # copy_ broadcasts a 0-d variance into its [1, ...] slot
                scale = torch.sqrt(variance if b is None else variance + b, out=scales[t])
                if kappa != 1.0:
                    scale = scale.mul_(kappa)
                theta = torch.div(mean - threshold, scale, out=thetas[t])
                prev = spks[t].copy_(theta + eps[t] >= 0)
        mems = torch.addcmul(means, scales, eps)
        ctx.save_for_backward(b, eps, beta, threshold, mem0, var0, spk0, spks, scales, thetas, means, variances)
        ctx.reset, ctx.detach_reset, ctx.estimator, ctx.noise = reset, detach_reset, estimator, noise
        ctx.leak = bool(leak) and reset == "subtract"
        ctx.var_shape = None if var is None else var.shape
        ctx.set_materialize_grads(False)
        return spks, mems, scales, means[-1].clone(), variances[-1].clone()

    @staticmethod
    def backward(ctx, g_spk, g_mem, g_scale, g_mean_last, g_var_last):
        b, eps, beta, threshold, mem0, var0, spk0, spks, scales, thetas, means, variances = ctx.saved_tensors
        reset, detach, leak = ctx.reset, ctx.detach_reset or ctx.reset == "none", ctx.leak
        if ctx.on_kernels and detach and not leak and b is None and scales.shape == variances.shape == spks.shape:
            return _marginal_backward_kernel(ctx, g_spk, g_mem, g_scale, g_mean_last, g_var_last)
        reset_amount = _reset_amount(beta, threshold, leak)
        needs = ctx.needs_input_grad
        n_steps = spks.shape[0]
        g_spk = torch.zeros_like(spks) if g_spk is None else g_spk
        factor = ctx.estimator.factor(thetas, spks, eps, ctx.noise)
        inv_s = scales.reciprocal()
        h = (0.5 * ctx.noise.std_to_scale**2) * inv_s  # ∂s/∂V
        a = factor * inv_s  # ∂S/∂M
        c1 = a * thetas  # −∂S/∂s
        c0 = None if g_mem is None else g_mem * eps  # the σ-adjoint through mem = M + sε
        # the previous step's values (three copies of [T, ...]): only where a gradient needs them
        want_prev = reset == "zero" or needs[4]
        prev_spks = (
            _shifted(spk0, spks) if (reset == "zero" or ((needs[5] or (needs[4] and leak)) and reset == "subtract")) else None
        )
        prev_means = _shifted(mem0, means) if want_prev else None
        prev_vars = _shifted(var0, variances) if want_prev else None
        keep = 1.0 - prev_spks if reset == "zero" else None
        beta2 = beta * beta
        coeff_m = beta * keep if keep is not None else beta
        coeff_v = beta2 * keep if keep is not None else beta2

        def at(coeff: Tensor, t: int) -> Tensor:
            return coeff[t] if keep is not None else coeff

        def reverse(d: Tensor, coeff: Tensor, carry: Tensor) -> Tensor:
            """``out[t] = d[t] + coeff[t+1]·out[t+1]`` from ``out[T−1] = d[T−1] + carry``."""
            if ctx.on_kernels:  # never the zero reset: coeff is one step's
                step = d.shape[1:]
                return _kernel_module.reverse_recurrence(d, coeff.expand(step), carry.expand(step))
            out = torch.empty_like(d)
            carry = torch.add(d[-1], carry, out=out[-1])
            for t in range(n_steps - 2, -1, -1):
                carry = torch.addcmul(d[t], at(coeff, t + 1), carry, out=out[t])
            return out

        carry_m = torch.zeros_like(spks[0]) if g_mean_last is None else g_mean_last
        carry_v = torch.zeros_like(variances[0]) if g_var_last is None else g_var_last
        v_done = False
        if detach:
            g_s_total = g_spk
            d_m = g_spk * a if g_mem is None else torch.addcmul(g_mem, g_spk, a)
            g_m = reverse(d_m, coeff_m, carry_m)
        elif reset == "subtract":
            g_m = torch.empty_like(spks)
            g_s_total = torch.empty_like(spks)
            g_reset = torch.zeros_like(spks[0])  # S[t]'s adjoint through step t+1's reset
            neg_thr = -reset_amount
            g_mem_t = g_mem if g_mem is not None else torch.zeros_like(spks)
            for t in range(n_steps - 1, -1, -1):
                gs_t = torch.add(g_spk[t], g_reset, out=g_s_total[t])
                if t < n_steps - 1:
                    carry_m = torch.addcmul(g_mem_t[t], coeff_m, carry_m)
                else:
                    carry_m = g_mem_t[t] + carry_m
                carry_m = torch.addcmul(carry_m, gs_t, a[t], out=g_m[t])
                g_reset = neg_thr * carry_m
        else:  # zero reset with gradient: S[t−1] restarts both M[t] and V[t]
            g_m, g_v = torch.empty_like(spks), torch.empty_like(variances)
            g_s_total = torch.empty_like(spks)
            g_reset = torch.zeros_like(spks[0])
            g_mem_t = g_mem if g_mem is not None else torch.zeros_like(spks)
            # here s has the units' shape, so the scale output's adjoint adds element by element
            c0h = c0 if g_scale is None else (g_scale if c0 is None else c0 + g_scale)
            c0h = None if c0h is None else c0h * h
            c1h = c1 * h
            for t in range(n_steps - 1, -1, -1):
                gs_t = torch.add(g_spk[t], g_reset, out=g_s_total[t])
                if t < n_steps - 1:
                    carry_m = torch.addcmul(g_mem_t[t], coeff_m[t + 1], carry_m)
                    carry_v = coeff_v[t + 1] * carry_v
                else:
                    carry_m = g_mem_t[t] + carry_m
                carry_m = torch.addcmul(carry_m, gs_t, a[t], out=g_m[t])
                if c0h is not None:
                    carry_v = carry_v + c0h[t]
                carry_v = torch.addcmul(carry_v, gs_t, -c1h[t], out=g_v[t])
                g_reset = -(beta * prev_means[t] * carry_m + beta2 * prev_vars[t] * carry_v)
            v_done = True
        # ∂L/∂s at every step, on s's own (possibly shared) shape
        g_s = (-g_s_total * c1 if c0 is None else c0 - g_s_total * c1).sum_to_size(scales.shape)
        if g_scale is not None:
            g_s = g_s + g_scale
        if not v_done:
            g_v = reverse((g_s * h).sum_to_size(variances.shape), coeff_v, carry_v)
        g_mu = g_m if needs[0] else None
        g_var = g_v.sum_to_size(ctx.var_shape) if needs[1] else None
        g_b = (g_s * h).sum_to_size(b.shape) if needs[2] else None
        g_beta = g_thr = g_mem0 = g_var0 = g_spk0 = None
        if needs[4]:
            dm = prev_means if keep is None else prev_means * keep
            dv = prev_vars if keep is None else prev_vars * keep
            g_beta = ((g_m * dm).sum_to_size(beta.shape) + (2.0 * beta) * (g_v * dv).sum_to_size(beta.shape))
            if leak:  # the leaked reset −βϑS[t−1]
                g_beta = g_beta - (threshold * prev_spks * g_m).sum_to_size(beta.shape)
        if needs[5]:
            g_thr = -g_s_total * a
            if reset == "subtract":
                g_thr = g_thr - (beta * prev_spks * g_m if leak else prev_spks * g_m)
            g_thr = g_thr.sum_to_size(threshold.shape)
        if needs[6]:
            g_mem0 = (at(coeff_m, 0) * g_m[0]).sum_to_size(mem0.shape)
        if needs[7]:
            g_var0 = (at(coeff_v, 0) * g_v[0]).sum_to_size(var0.shape)
        if needs[8] and not detach:
            if reset == "subtract":
                g_spk0 = (-reset_amount * g_m[0]).sum_to_size(spk0.shape)
            else:
                g_spk0 = (-(beta * mem0 * g_m[0] + beta2 * var0 * g_v[0])).sum_to_size(spk0.shape)
        return (g_mu, g_var, g_b, None, g_beta, g_thr, g_mem0, g_var0, g_spk0, None, None, None, None, None, None)


def _marginal_backward_kernel(ctx, g_spk, g_mem, g_scale, g_mean_last, g_var_last):
    """:meth:`_MarginalSequence.backward` by the ``marginal_backward`` kernel: a detached reset,
    no ``σ_b``, a per-unit variance (the MLP's and the recurrent stages' case). The ``st`` factor is
    computed in the kernel, any other estimator's by torch, as in :func:`_lif_backward_kernel`."""
    ops = _kernel_module
    _, eps, beta, threshold, mem0, var0, spk0, spks, scales, thetas, means, variances = ctx.saved_tensors
    needs = ctx.needs_input_grad
    shape, step = spks.shape, spks.shape[1:]
    code, factor, params = _kernel_factor(ctx.estimator, ctx.noise, lambda: thetas, spks, eps)
    zeros = spks.new_zeros(step)
    g_m, g_v, g_beta, g_thr = ops.marginal_backward(
        g_spk, g_mem, None if g_scale is None else g_scale.expand(shape), factor, code, params, thetas, scales,
        eps.expand(shape), means, variances, spks, mem0.expand(step), var0.expand(step), spk0.expand(step),
        beta.expand(step), zeros if g_mean_last is None else g_mean_last.expand(step),
        zeros if g_var_last is None else g_var_last.expand(step), ctx.noise.std_to_scale,
        needs[4], needs[5], ctx.reset == "subtract",
    )
    g_var = g_v.sum_to_size(ctx.var_shape) if needs[1] else None
    g_beta = g_beta.sum_to_size(beta.shape) if needs[4] else None
    g_thr = g_thr.sum_to_size(threshold.shape) if needs[5] else None
    g_mem0 = (beta * g_m[0]).sum_to_size(mem0.shape) if needs[6] else None
    g_var0 = ((beta * beta) * g_v[0]).sum_to_size(var0.shape) if needs[7] else None
    return (g_m if needs[0] else None, g_var, None, None, g_beta, g_thr, g_mem0, g_var0, None, None, None, None, None, None, None)


def _shifted(first: Tensor, seq: Tensor) -> Tensor:
    """``[first, seq[0], ..., seq[T−2]]``: each step's predecessor."""
    return torch.cat([first.expand_as(seq[:1]), seq[:-1]])


def _compact(x: Tensor) -> Tensor:
    """``x`` sliced to size 1 along every dimension (after the first) it is broadcast in (stride 0).

    A differentiable view: the gradient it receives is exact for whatever ``x`` was expanded from.
    """
    index = tuple(
        slice(0, 1) if (d > 0 and x.stride(d) == 0 and x.shape[d] > 1) else slice(None) for d in range(x.dim())
    )
    return x[index]


def _fused_marginal_sequence(
    mu: Tensor, var: Tensor | None, p: StochasticLIFParameters, state: StochasticLIFState, eps: Tensor,
    with_theta: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, StochasticLIFState]:
    """:class:`_MarginalSequence` with the reference's signature: ``(spk, mem, theta, scale, state)``.

    ``theta`` is rebuilt from the node's differentiable outputs, so it carries the graph a
    drive hook (an auxiliary loss) needs; ``None`` unless ``with_theta`` (four passes over
    ``[T, ...]`` a training step without such a hook does not pay).
    """
    beta, threshold = _as_tensor(p.beta, mu), _as_tensor(p.threshold, mu)
    floor = p.sigma0**2 + p.eps_min**2
    sb2 = _sigma_b_sq(p)
    b = None if sb2 is None else _as_tensor(sb2, mu)
    var0 = state.var if state.var is not None else mu.new_zeros(())
    if var is not None and p.reset_mechanism != "zero":
        var = _compact(var)
    spk, mem, scale, mean, variance = _MarginalSequence.apply(
        mu, var, b, eps, beta, threshold, state.mem, var0, state.spk, floor,
        p.reset_mechanism, p.detach_reset, p.estimator, p.noise, p.reset_leak,
    )
    theta = (mem - scale * eps - threshold) / scale if with_theta else None
    # the state's variance keeps the reference's shape (an expanded view of the small one)
    return spk, mem, theta, scale.expand_as(spk), StochasticLIFState(mean, spk[-1], variance.expand_as(mean))


def spike_train_log_prob(
    mu: Tensor,
    var: Tensor | None,
    spikes: Tensor,
    p: StochasticLIFParameters,
    *,
    state: StochasticLIFState | None = None,
) -> Tensor:
    r"""``log P(S[t] | S[<t], input)`` of given spike trains under the marginal model.

    .. math::
        \log P = S \log F(θ) + (1 − S) \log F(−θ)

    with ``θ[t]`` from the marginal recursion driven by the given spikes (the noise families are
    symmetric, so ``1 − F(θ) = F(−θ)``). Summed over time and units this is the log-probability of
    the whole spike train. Exact for the pathwise model too when ``β = 0`` (both coincide).
    Differentiable in ``μ``, ``v``, ``β`` and ``ϑ``; ``mu``, ``var`` and ``spikes`` broadcast.

    Args:
        mu, var: ``[T, ...]`` input moments.
        spikes: ``[T, ...]`` the spike trains in {0, 1}.
        p: neuron constants (``membrane_noise`` is ignored: this is the marginal model's law).
        state: initial state (default: rest).

    Returns:
        ``[T, ...]`` per-step log-probabilities.
    """
    shape = torch.broadcast_shapes(mu.shape, spikes.shape, *(() if var is None else (var.shape,)))
    mu = mu.expand(shape)
    var = None if var is None else var.expand(shape)
    spikes = spikes.expand(shape)
    if state is None:
        zeros = torch.zeros_like(mu[0])
        state = StochasticLIFState(zeros, zeros)
    _, _, theta, _, _ = _marginal_sequence(mu, var, p, state, torch.zeros_like(mu), forced=spikes)
    signed = torch.where(spikes > 0, theta, -theta)
    return p.noise.log_cdf(signed)


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.tensor(value, dtype=like.dtype, device=like.device)


def stochastic_lif_step(
    mu: Tensor,
    var: Tensor | None,
    state: StochasticLIFState,
    p: StochasticLIFParameters,
    eps: Tensor,
) -> tuple[Tensor, StochasticLIFState]:
    """One step of the stochastic LIF neuron (see the module docstring).

    Args:
        mu: input mean ``μ[t]``, ``[B, ...]``.
        var: input variance ``v[t]`` (``None`` means 0: only ``σ0`` noise).
        state: ``(U[t−1], S[t−1])``.
        p: neuron constants.
        eps: the standard noise draw ``ε[t]``, shaped like ``mu`` (zeros: deterministic unit).

    Returns:
        ``(S[t], (U[t], S[t]))``.
    """
    spk, mem, state = stochastic_lif_sequence(
        mu.unsqueeze(0), None if var is None else var.unsqueeze(0), p, state=state, eps=eps.unsqueeze(0)
    )
    return spk[0], state


def stochastic_lif_sequence(
    mu: Tensor,
    var: Tensor | None,
    p: StochasticLIFParameters,
    *,
    state: StochasticLIFState | None = None,
    stochastic: bool = True,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_drive: bool = False,
):
    """Run the neuron over a whole time-major sequence.

    Both models run as one autograd node for the whole sequence: the noise draws and, in the
    backward pass, all estimator factors are computed for every step at once; only the membrane
    (and, for the marginal model, variance) recurrence and its adjoint loop over time. Every
    noise scale gets its gradient through the spike (``∂S/∂s = −(θ/s)·∂S/∂θ``, see
    ``docs/theory.md``).

    Args:
        mu: ``[T, B, ...]`` input means.
        var: ``[T, B, ...]`` input variances, or ``None``.
        p: neuron constants.
        state: initial state (default: rest, ``U = 0``, ``S = 0``).
        stochastic: draw ``ε`` (``False``: deterministic unit, ``ε = 0``).
        eps: explicit noise ``[T, B, ...]`` (overrides ``stochastic``), e.g. to replay a draw.
        generator: RNG for the noise draws.
        return_drive: also return a :class:`Drive` (``θ`` with its graph, scale, ``ε``).

    Returns:
        ``(spk, mem, state)``: spikes and membranes ``[T, B, ...]`` and the final state; with
        ``return_drive`` a fourth element, the :class:`Drive`.
    """
    if state is None:
        # two tensors, not one twice: torch.compile cannot trace a Function given one tensor twice
        state = StochasticLIFState(torch.zeros_like(mu[0]), torch.zeros_like(mu[0]))
    if eps is None:
        eps = p.noise.sample(mu.shape, like=mu, generator=generator, batch_dim=1) if stochastic else torch.zeros_like(mu)
    if p.membrane_noise == "marginal":
        spk, mem, theta, scale, final = _fused_marginal_sequence(mu, var, p, state, eps, with_theta=return_drive)
    else:
        if p.reset_leak:
            raise ValueError(
                "reset_leak=True (the leaked subtract reset) is implemented for membrane_noise='marginal' only; "
                "set membrane_noise='marginal' or reset_leak=False"
            )
        threshold, beta = _as_tensor(p.threshold, mu), _as_tensor(p.beta, mu)
        if _scale_in_kernels(mu, var, eps, beta, threshold, state, p, return_drive):
            # the kernels form the scale from the variance: no [T, B, ...] scale, no passes around it
            spk, mem = _StochasticLIFSequence.apply(
                mu, var, eps, beta, threshold, state.mem, state.spk,
                p.reset_mechanism, p.detach_reset, p.estimator, p.noise, p.sigma0**2 + p.eps_min**2,
            )
        else:
            scale = noise_scale(var, p, mu).expand_as(mu)
            spk, mem = _StochasticLIFSequence.apply(
                mu, scale, eps, beta, threshold, state.mem, state.spk,
                p.reset_mechanism, p.detach_reset, p.estimator, p.noise,
            )
        final = StochasticLIFState(mem[-1], spk[-1])
        theta = (mem - scale * eps - threshold) / scale if return_drive else None
    if return_drive:
        return spk, mem, final, Drive(theta, scale, spk, eps, mu, var)
    return spk, mem, final


def _scale_in_kernels(
    mu: Tensor, var: Tensor | None, eps: Tensor, beta: Tensor, threshold: Tensor, state: StochasticLIFState,
    p: StochasticLIFParameters, return_drive: bool,
) -> bool:
    """Whether the pathwise node runs on the kernels with the scale formed there from ``var``.

    It does when the kernels apply and the scale is ``sqrt(v + f)·κ`` of a full ``[T, ...]``
    variance: no learned ``σ_b`` (whose gradient the kernels do not form) and no drive to return
    (the drive holds the scale with its graph).
    """
    if var is None or p.sigma_b is not None or return_drive or var.shape != mu.shape:
        return False
    return _cpu_kernels_for(mu, var, eps, beta, threshold, state.mem, state.spk) is not None


class Drive(NamedTuple):
    """What the estimator saw in a forward pass, each ``[T, B, ...]``.

    ``theta`` (standardised drive, with its graph), ``scale`` (``κ·s``, the noise scale in ``θ``),
    ``spikes`` and the noise ``eps`` that decided them. ``estimator.factor(theta, spikes, eps,
    noise)`` is then the backward factor ``p(θ)·w`` of every unit-step.
    """

    theta: Tensor
    scale: Tensor
    spikes: Tensor
    eps: Tensor
    #: the sequence's input moments ``μ[t]``, ``v[t]`` (with their graph; ``v`` may be ``None``)
    input_mean: Tensor | None = None
    input_var: Tensor | None = None


def time_average_weights(n_steps: int, beta: float | Tensor, like: Tensor | None = None) -> Tensor:
    """Weights ``w`` with ``mean_t U[t] = Σ_k w_k x[k]`` for the leaky integrator below (``U[−1] = 0``).

    ``U[t] = Σ_{k≤t} β^{t−k} x[k]``, so ``w_k = (1 − β^{T−k}) / ((1 − β) T)`` (``(T − k)/T`` at
    ``β = 1``): the time-averaged readout membrane is a fixed weighted sum over time.
    """
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    device = like.device if like is not None else None
    k = torch.arange(n_steps, dtype=torch.float64, device=device)
    beta = float(beta)
    if beta == 1.0:
        w = (n_steps - k) / n_steps
    else:
        w = (1.0 - beta ** (n_steps - k)) / ((1.0 - beta) * n_steps)
    return w.to(dtype)


def leaky_integrate(x: Tensor, beta: Tensor | float, mem: Tensor | None = None) -> Tensor:
    """Non-spiking leaky integrator ``U[t] = β U[t−1] + x[t]`` over a time-major sequence.

    Args:
        x: ``[T, B, ...]`` input currents.
        beta: leak in ``[0, 1]``.
        mem: initial membrane (default zeros).

    Returns:
        ``[T, B, ...]`` membranes.
    """
    mem = torch.zeros_like(x[0]) if mem is None else mem
    out = []
    for x_t in x.unbind(0):
        mem = beta * mem + x_t
        out.append(mem)
    return torch.stack(out)

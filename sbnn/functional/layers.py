r"""Local reparameterisation (LRT) moments of Bernoulli-posterior ±1 layers.

For input ``x`` and weights ``w_ij ∈ {−1, +1}`` with mean ``m = tanh λ`` the pre-activation
``h = α Σ_i w_ij x_i + b`` is, by the central limit theorem, approximately Gaussian under ``q``
(Kingma, Salimans & Welling 2015, arXiv:1506.02557):

.. math::
    μ = α\, x m^\top + b, \qquad v = α^2\, (x \odot x)(1 − m \odot m)^\top

Two matmuls per layer; for spikes ``x² = x``. Convolutions are the same with ``conv`` in place of
the product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .signs import sign_mean, sign_variance

__all__ = ["lrt_linear", "lrt_conv2d", "scale_shape", "joint_lrt_weight", "time_weighted_moments"]


def scale_shape(alpha: Tensor, ndim: int, channel_dim: int) -> Tensor:
    """Reshape a per-layer ``[1]`` or per-channel ``[C]`` scale to broadcast on ``channel_dim``."""
    shape = [1] * ndim
    shape[channel_dim] = alpha.numel()
    return alpha.reshape(shape)


def lrt_linear(
    x: Tensor, lam: Tensor, alpha: Tensor, bias: Tensor | None = None, x_sq: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """LRT moments ``(μ, v)`` of a Bernoulli linear layer.

    Args:
        x: input, ``[..., in]`` (time-major sequences ``[T, B, in]`` are handled in one matmul).
        lam: natural parameters, ``[out, in]``.
        alpha: positive scale, ``[1]`` or ``[out]``.
        bias: optional ``[out]``.
        x_sq: the squared input in the variance (default ``x * x``). Passing ``x`` itself
            declares a binary (spike) input, ``x² = x``: both moments then come from one matmul
            against the stacked weights ``[m; 1 − m²]``.

    Returns:
        ``(μ, v)``, each ``[..., out]``.
    """
    # the scale goes into the [out, in] weights, not onto the [..., out] outputs: fewer flops
    alpha_col = alpha.reshape(-1, 1)
    w_mean, w_var = sign_mean(lam) * alpha_col, sign_variance(lam) * alpha_col.square()
    if x_sq is x:
        mu, var = F.linear(x, torch.cat([w_mean, w_var])).chunk(2, dim=-1)
        return (mu if bias is None else mu + bias), var
    return F.linear(x, w_mean, bias), F.linear(x * x if x_sq is None else x_sq, w_var)


def lrt_conv2d(
    x: Tensor,
    lam: Tensor,
    alpha: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    """LRT moments ``(μ, v)`` of a Bernoulli 2-D convolution.

    Args:
        x: ``[N, C_in, H, W]``.
        lam: ``[C_out, C_in/groups, kH, kW]``.
        alpha: ``[1]`` or ``[C_out]``.
        bias: optional ``[C_out]``.

    Returns:
        ``(μ, v)``, each ``[N, C_out, H', W']``.
    """
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    scale = scale_shape(alpha, 4, 0)
    mu = F.conv2d(x, sign_mean(lam) * scale, bias, **conv)
    var = F.conv2d(x * x, sign_variance(lam) * scale.square(), None, **conv)
    return mu, var


class _JointLRTWeight(torch.autograd.Function):
    """``[α m; α²(1 − m²)]`` with a closed-form backward that keeps only ``λ`` and ``α``."""

    @staticmethod
    def forward(ctx, lam: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(lam, alpha)
        alpha_col = alpha.reshape(-1, 1)
        return torch.cat([sign_mean(lam) * alpha_col, sign_variance(lam) * alpha_col.square()])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        lam, alpha = ctx.saved_tensors
        g_mean, g_var = grad.chunk(2)
        alpha_col = alpha.reshape(-1, 1)
        m, v = sign_mean(lam), sign_variance(lam)
        g_lam = g_alpha = None
        if ctx.needs_input_grad[0]:
            # ∂m/∂λ = v and ∂v/∂λ = −2mv
            g_lam = (g_mean * alpha_col - 2.0 * g_var * alpha_col.square() * m) * v
        if ctx.needs_input_grad[1]:
            g_alpha = (g_mean * m + 2.0 * g_var * v * alpha_col).sum_to_size(alpha_col.shape).reshape(alpha.shape)
        return g_lam, g_alpha


def joint_lrt_weight(lam: Tensor, alpha: Tensor) -> Tensor:
    """Both LRT weight matrices of a linear layer stacked, ``[α m; α²(1 − m²)]``: ``[2·out, in]``.

    ``x @ W.T`` then gives ``[μ − b | v]`` for a spike input (``x² = x``) in one matmul. The backward
    pass is written out (``∂m/∂λ = 1 − m²``, ``∂(1 − m²)/∂λ = −2m(1 − m²)``), so autograd keeps
    only ``λ`` and ``α`` instead of the ``λ``-sized temporaries of the elementwise chain.

    Args:
        lam: ``[out, in]`` natural parameters.
        alpha: ``[1]`` or ``[out]`` scales.
    """
    return _JointLRTWeight.apply(lam, alpha)


class _TimeWeightedMoments(torch.autograd.Function):
    """``(Σ_t w_t x_t, Σ_t w_t² x_t²)`` as one node (see :func:`time_weighted_moments`)."""

    @staticmethod
    def forward(ctx, weights: Tensor, x: Tensor, binary: bool) -> tuple[Tensor, Tensor]:
        flat = x.reshape(x.shape[0], -1)
        ctx.save_for_backward(weights, x)
        ctx.binary = binary
        summed = weights @ flat
        squares = flat if binary else flat.square()  # 0/1 spikes: x² = x, bit for bit
        return summed.reshape(x.shape[1:]), (weights.square() @ squares).reshape(x.shape[1:])

    @staticmethod
    def backward(ctx, g_sum: Tensor, g_sq: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weights, x = ctx.saved_tensors
        flat = x.reshape(x.shape[0], -1)
        g_sum, g_sq = g_sum.reshape(-1), g_sq.reshape(-1)
        g_w = g_x = None
        if ctx.needs_input_grad[0]:
            g_w = flat @ g_sum + 2.0 * weights * ((flat if ctx.binary else flat.square()) @ g_sq)
        if ctx.needs_input_grad[1]:
            kernels = _time_weighted_kernel(weights, x, g_sum, g_sq)
            if kernels is not None:  # one pass instead of three, the same roundings
                g_x = kernels.time_weighted_grad(weights, x, g_sum, g_sq)
            else:
                # w_t·g_Σ + 2·w_t²·x_t·g_Σ²: broadcast products (an outer-product matmul took 3×
                # as long), the second fused into one addcmul
                g_x = torch.addcmul(weights[:, None] * g_sum, flat, (2.0 * weights.square())[:, None] * g_sq)
                g_x = g_x.reshape(x.shape)
        return g_w, g_x, None


def _time_weighted_kernel(weights: Tensor, x: Tensor, *grads: Tensor):
    """The kernel operators for the time-weighted input gradient, or ``None`` (torch's formula).

    ``None`` off the CPU, for other dtypes, and for a double backward (``create_graph``: the
    torch formula keeps the graph).
    """
    if torch.is_grad_enabled() or x.dim() < 2:
        return None
    from .neurons import _cpu_kernels_for  # the neuron nodes' check: CPU, float32/64, Numba present

    if any(t.dtype != x.dtype or t.device != x.device for t in (weights, *grads)):
        return None
    return _cpu_kernels_for(x)


def time_weighted_moments(weights: Tensor, x: Tensor, *, binary: bool = False) -> tuple[Tensor, Tensor]:
    r"""Time-weighted sums of a time-major input and of its square, for a linear layer's LRT moments.

    .. math::
        s = \sum_t w_t x_t, \qquad q = \sum_t w_t^2 x_t^2

    The mean and variance of ``Σ_t w_t h_t`` for independent per-step LRT pre-activations ``h_t``
    are those of a layer given ``s`` (mean) and ``q`` (in place of ``x²``). One node: the backward
    ``∂/∂x_t = w_t g_s + 2 w_t² x_t g_q`` is two broadcast products and one fused pass over
    ``[T, ...]``.

    Args:
        weights: ``[T]``.
        x: ``[T, ...]``.
        binary: ``x`` holds 0/1 spikes: ``q`` is formed from ``x`` itself (``x² = x``, the same
            numbers without a squared copy of ``x``); the gradient to ``x`` is still that of ``x²``.

    Returns:
        ``(s, q)``, each ``x.shape[1:]``.
    """
    if weights.dim() != 1 or x.dim() < 1 or weights.shape[0] != x.shape[0]:
        raise ValueError(f"time_weighted_moments: weights [T] and x [T, ...] needed, got {tuple(weights.shape)} and {tuple(x.shape)}")
    return _TimeWeightedMoments.apply(weights, x, binary)

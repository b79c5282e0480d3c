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

from ..posterior import sign_mean, sign_variance

__all__ = ["lrt_linear", "lrt_conv2d", "scale_shape"]


def scale_shape(alpha: Tensor, ndim: int, channel_dim: int) -> Tensor:
    """Reshape a per-layer ``[1]`` or per-channel ``[C]`` scale to broadcast on ``channel_dim``."""
    shape = [1] * ndim
    shape[channel_dim] = alpha.numel()
    return alpha.reshape(shape)


def lrt_linear(x: Tensor, lam: Tensor, alpha: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LRT moments ``(μ, v)`` of a Bernoulli linear layer.

    Args:
        x: input, ``[..., in]`` (time-major sequences ``[T, B, in]`` are handled in one matmul).
        lam: natural parameters, ``[out, in]``.
        alpha: positive scale, ``[1]`` or ``[out]``.
        bias: optional ``[out]``.

    Returns:
        ``(μ, v)``, each ``[..., out]``.
    """
    alpha_row = alpha.reshape(-1)
    mu = F.linear(x, sign_mean(lam)) * alpha_row
    if bias is not None:
        mu = mu + bias
    var = F.linear(x * x, sign_variance(lam)) * alpha_row.square()
    return mu, var


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
    scale = scale_shape(alpha, 4, 1)
    mu = F.conv2d(x, sign_mean(lam), None, **conv) * scale
    if bias is not None:
        mu = mu + bias.reshape(1, -1, 1, 1)
    var = F.conv2d(x * x, sign_variance(lam), None, **conv) * scale.square()
    return mu, var

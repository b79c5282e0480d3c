r"""A learned per-channel gain and bias for every time step on a layer's pre-activation.

The "normalisation-free" networks of Walker et al. 2025 (arXiv 2505.17962) replace BatchNorm by a
learned gain ``g[t]`` and bias ``b[t]`` per output channel and per time step on every hidden
layer's pre-activation, before the neuron integrates it. sbnn applies it to the layer's LRT
moments ``(μ, v)``:

.. math::
    μ'[t] = g[t] \odot μ[t] + b[t], \qquad v'[t] = g[t]^2 \odot v[t]

i.e. to the pre-activation as a random variable (``g[t]·h[t] + b[t]``), so the ``sample``
(LRT), explicitly sampled (``fixed``) and ``mode`` networks stay one network. Gains start at 1 and
biases at 0: at initialisation (and so at calibration) the layer is unchanged.

Every model of :mod:`sbnn.models` takes it through ``LayerSettings(time_affine_steps=T_max)``
(YAML: ``layer: {time_affine_steps: 100}``): every Bernoulli layer that feeds a hidden neuron
(not the readout) gets a :class:`TimeAffine` as its ``time_affine`` child, with ``T_max`` steps.
Inputs longer than ``T_max`` steps are refused before any work.

``LayerSettings(time_batch_norm=True)`` makes it a BatchNorm per layer and time step, the
full-precision baseline of the same paper (its surrogate-gradient networks carry one
``BatchNorm`` per layer and step): each step's pre-activation mean is first normalised by its own
batch statistics over the batch and spatial positions, per channel,

.. math::
    \hat μ[t] = \frac{μ[t] - m[t]}{\sqrt{s^2[t] + ϵ}}, \qquad \hat v[t] = \frac{v[t]}{s^2[t] + ϵ}

(``m[t]``, ``s²[t]`` the batch mean and biased variance of ``μ[t]``; running averages, momentum
0.1 and the unbiased variance as :class:`torch.nn.BatchNorm2d`, replace them in ``eval()``), then
gets the gain and bias above. It is meant for deterministic forwards (the LRT variance ``v``, when
present, is scaled by the same factor, treating the batch statistics as constants of the step).

.. note::
    Where the authors' code puts it: on the layer's output current ``W·x`` (for SHD, on the sum
    of the feed-forward and recurrent currents, with one gain for both), before the membrane
    integrates it; there the gain scales the mean only, the weight noise having its own learned
    scale. sbnn's Bernoulli weights have no separate noise scale, so the gain scales the whole
    pre-activation (mean and variance), and a recurrent layer's current gets its own gain and bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..layers import BernoulliLayer, Moments

__all__ = ["TimeAffine", "apply_time_affine", "apply_time_affine_step", "attach_time_affines", "check_time_steps"]


class TimeAffine(nn.Module):
    r"""Per-step, per-channel gain and bias ``μ' = g[t]μ + b[t]``, ``v' = g[t]²v`` on LRT moments.

    Args:
        steps: the number of time steps ``T_max`` it has a gain and bias for.
        channels: output channels (features) of the layer it follows.
        spatial_dims: trailing spatial dimensions of the pre-activation (2 after a convolution).
        scale_variance: ``True`` (default): ``v' = g[t]²v``; ``False``: the gain scales the mean
            only, ``v' = v`` (the SBNN authors' code, whose weight noise has its own learned scale).

    Shape:
        - Input: :class:`~sbnn.layers.Moments` ``[T, B, C]`` or ``[T, B, C, H, W]`` with
          ``start + T ≤ steps``.
        - Output: the same shape.

    Example:
        >>> affine = TimeAffine(10, 4)
        >>> out = affine(Moments(torch.ones(3, 2, 4), torch.ones(3, 2, 4)))
        >>> tuple(out.mean.shape), float(out.var.detach().sum())
        ((3, 2, 4), 24.0)
    """

    momentum = 0.1  # of the running statistics, as torch.nn.BatchNorm*
    eps = 1e-5

    def __init__(
        self, steps: int, channels: int, spatial_dims: int = 0, batch_norm: bool = False, scale_variance: bool = True
    ) -> None:
        super().__init__()
        self.scale_variance = bool(scale_variance)
        check_positive_int("TimeAffine", steps=steps, channels=channels)
        if spatial_dims not in (0, 1, 2, 3):
            raise ValueError(f"TimeAffine: spatial_dims must be 0, 1, 2 or 3, got {spatial_dims!r}")
        self.steps, self.channels, self.spatial_dims = steps, channels, spatial_dims
        self.batch_norm = bool(batch_norm)
        self.gain = nn.Parameter(torch.ones(steps, channels))
        self.bias = nn.Parameter(torch.zeros(steps, channels))
        if self.batch_norm:
            self.register_buffer("running_mean", torch.zeros(steps, channels))
            self.register_buffer("running_var", torch.ones(steps, channels))

    def check_steps(self, n_steps: int, owner: str = "TimeAffine") -> None:
        """Raise ``ValueError`` when ``n_steps`` exceeds the configured ``steps``."""
        if n_steps > self.steps:
            raise ValueError(
                f"{owner}: the input has {n_steps} time steps but the per-time-step gain and bias were built for "
                f"layer.time_affine_steps = {self.steps}; set layer.time_affine_steps to at least {n_steps} "
                "(or shorten the sequence)"
            )

    def forward(self, x: Moments, start: int = 0) -> Moments:
        """``(g[t]μ + b[t], g[t]²v)`` for the steps ``start … start + T − 1`` (normalised first with ``batch_norm``)."""
        mean, var = x
        n = mean.shape[0]
        self.check_steps(start + n)
        shape = (n, 1, self.channels) + (1,) * self.spatial_dims
        if self.batch_norm:
            mean, var = self._normalise(mean, var, start, shape)
        gain = self.gain[start : start + n].reshape(shape)
        bias = self.bias[start : start + n].reshape(shape)
        return Moments(torch.addcmul(bias, mean, gain), self._scaled_var(var, gain))

    def _scaled_var(self, var: Tensor | None, gain: Tensor) -> Tensor | None:
        if var is None or not self.scale_variance:
            return var
        return var * gain.square()

    def gain_step(self, moments: Moments, t: int) -> Moments:
        """One step's moments ``[B, C, ...]`` times step ``t``'s gain, without the bias: ``(g[t]μ, g[t]²v)``.

        A current that shares this layer's gain and bias (the recurrent current of
        ``LayerSettings(time_affine_recurrent="shared")``): ``g(a + r) + b = (ga + b) + gr``.
        """
        self.check_steps(t + 1)
        if self.batch_norm:
            raise ValueError("TimeAffine.gain_step: a per-time-step BatchNorm normalises its own layer's current only")
        gain = self.gain[t].reshape((1, self.channels) + (1,) * self.spatial_dims)
        return Moments(moments.mean * gain, self._scaled_var(moments.var, gain))

    def _normalise(self, mean: Tensor, var: Tensor | None, start: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
        """Each step's ``μ`` by its batch statistics (training) or the running ones (``eval()``)."""
        n = mean.shape[0]
        if self.training:
            dims = (1,) + tuple(range(3, mean.dim()))  # batch and space; per step and channel
            batch_var, batch_mean = torch.var_mean(mean, dim=dims, correction=0)
            with torch.no_grad():
                count = mean.numel() // (n * self.channels)
                unbiased = batch_var * (count / max(count - 1, 1))
                steps = slice(start, start + n)
                self.running_mean[steps].lerp_(batch_mean, self.momentum)
                self.running_var[steps].lerp_(unbiased, self.momentum)
        else:
            batch_mean = self.running_mean[start : start + n]
            batch_var = self.running_var[start : start + n]
        inv_std = torch.rsqrt(batch_var + self.eps).reshape(shape)
        mean = (mean - batch_mean.reshape(shape)) * inv_std
        return mean, self._scaled_var(var, inv_std)  # the normalising factor acts as a gain

    def extra_repr(self) -> str:
        extra = ", batch_norm=True" if self.batch_norm else ""
        extra += "" if self.scale_variance else ", scale_variance=False"
        return f"steps={self.steps}, channels={self.channels}{extra}"


def apply_time_affine(layer: nn.Module, moments: Moments, start: int = 0) -> Moments:
    """``moments`` through ``layer``'s :class:`TimeAffine` (its ``time_affine`` child), if it has one."""
    affine = getattr(layer, "time_affine", None)
    return moments if affine is None else affine(moments, start)


def apply_time_affine_step(layer: nn.Module, moments: Moments, t: int) -> Moments:
    """One step's ``moments`` ``[B, C, ...]`` (no time dimension) through ``layer``'s gain and bias of step ``t``."""
    if getattr(layer, "time_affine", None) is None:
        return moments
    mean, var = apply_time_affine(layer, Moments(moments.mean[None], None if moments.var is None else moments.var[None]), t)
    return Moments(mean[0], None if var is None else var[0])


def attach_time_affines(
    model: nn.Module, steps: int, exclude: tuple[nn.Module, ...] = (), batch_norm: bool = False,
    scale_variance: bool = True,
) -> list[str]:
    """Give every weight layer of ``model`` (a layer with LRT ``moments``) but those in ``exclude`` a :class:`TimeAffine` child.

    Args:
        model: a network (or a residual block) built from Bernoulli layers.
        steps: ``T_max``, the longest sequence it will run.
        exclude: layers left without one (the models pass their readout).
        batch_norm: make each a per-time-step BatchNorm (see the module docstring).
        scale_variance: see :class:`TimeAffine`.

    Returns:
        The qualified names of the layers that got one, in module order.
    """
    check_positive_int("attach_time_affines", steps=steps)
    skip = {id(m) for m in exclude}
    named = [(n, m) for n, m in model.named_modules() if _is_weight_layer(m) and id(m) not in skip]
    for _, layer in named:
        if hasattr(layer, "out_channels"):  # a convolution: [T, B, C, H, W]
            layer.time_affine = TimeAffine(
                steps, layer.out_channels, spatial_dims=2, batch_norm=batch_norm, scale_variance=scale_variance
            )
        else:
            layer.time_affine = TimeAffine(steps, layer.out_features, batch_norm=batch_norm, scale_variance=scale_variance)
    return [n for n, _ in named]


def _is_weight_layer(module: nn.Module) -> bool:
    # any weight family's layer: LRT moments and an output width (Bernoulli or Gaussian weights)
    return isinstance(module, BernoulliLayer) or (
        callable(getattr(module, "moments", None)) and (hasattr(module, "out_features") or hasattr(module, "out_channels"))
    )


def check_time_steps(model: nn.Module, x: Tensor, owner: str) -> None:
    """Raise ``ValueError`` before any work when ``x`` (time-major) is longer than a :class:`TimeAffine` of ``model`` allows."""
    for module in model.modules():
        if isinstance(module, TimeAffine):
            module.check_steps(x.shape[0], owner)

r"""Normalisation-free residual blocks for spiking Bayesian networks (docs/design.md §1.6).

A block adds a learnable, small multiple of a residual branch to a *stream*:

.. math::
    x_{l+1} = \mathrm{shortcut}(x_l) + γ_l \, F_l(x_l)

with ``γ_l`` a learnable scalar initialised small (SkipInit-style, De & Smith 2020,
arXiv:2002.10444) and no BatchNorm or LayerNorm anywhere. Two shortcut styles:

============== ================================================= ===================================
``shortcut``   stream ``x``                                      branch ``F``
============== ================================================= ===================================
``membrane``   pre-activation currents, carried as LRT           LIF → Bernoulli layer → LIF →
(default)      :class:`~sbnn.layers.Moments` ``(μ, v)``          Bernoulli layer; returns moments
               (MS-ResNet style, arXiv:2112.08954)
``spike``      spike sums (SEW "ADD", arXiv:2102.04159)          Bernoulli layer → LIF → Bernoulli
                                                                 layer → LIF; returns spikes
============== ================================================= ===================================

With the membrane shortcut the stream stays Gaussian under the LRT: the branch output is an LRT
sample independent of the stream's own noise, so ``μ`` and ``v`` add
(``μ' = μ + γ μ_F``, ``v' = v + γ² v_F``), and the LIF that opens the next block turns the whole
stream variance into posterior noise. A stage change (stride 2 or a new width) uses a
downsampling shortcut: a strided Bernoulli convolution (``downsample="conv"``, applied to the
block's input spikes; for linear blocks a Bernoulli projection) or parameter-free average pooling
with zero-padded channels (``downsample="pool"``).

**Scale.** :meth:`calibrate` sets every Bernoulli layer's ``α`` from its LRT moments on a batch
(:func:`calibrate_rms_`): the branch's first layer gives its neuron a free-membrane RMS of
``hidden_gain·ϑ``; the branch's last layer (and a convolutional shortcut) matches the per-step RMS
of the stream it is added to. Because ``E[μ² + v] = α² Σ_i x_i²`` for sign-symmetric posterior
means, the stream's second moment then grows by exactly ``1 + γ²`` per block at initialisation,
so ``L`` blocks multiply it by at most ``exp(γ0² L)`` — see ``docs/theory.md``, "Signal scale in
normalisation-free residual networks".

.. note::
    Our reading of arXiv 2505.17962 (only the abstract is public): the block layout, the
    membrane shortcut carrying LRT moments and the moment-based choice of ``α`` are sbnn's own.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_in_range, check_input, check_positive_int
from ..functional.neurons import leaky_integrate
from ..gaussian_layers import GaussianLayer
from ..layers import BernoulliLayer, Moments
from ..neurons import StochasticLIF
from ..weight_families import conv_layer, linear_layer
from .time_affine import apply_time_affine

__all__ = [
    "SHORTCUTS",
    "DOWNSAMPLES",
    "add_moments",
    "pool_moments",
    "lrt_second_moment",
    "calibrate_rms_",
    "LinearResidualBlock",
    "ConvResidualBlock",
]

SHORTCUTS = ("membrane", "spike")
DOWNSAMPLES = ("conv", "pool")


def add_moments(a: Moments, b: Moments, gamma: Tensor | float) -> Moments:
    """Moments of ``a + γ·b`` for independent Gaussians: ``(μ_a + γ μ_b, v_a + γ² v_b)``.

    A ``None`` variance (a deterministic term) counts as 0; the sum is deterministic only when
    both are.

    Shape:
        ``a`` and ``b`` have the same shape, e.g. ``[T, B, C, H, W]``.
    """
    mean = a.mean + gamma * b.mean
    if a.var is None and b.var is None:
        return Moments(mean, None)
    var = gamma * gamma * b.var if a.var is None else (a.var if b.var is None else a.var + gamma * gamma * b.var)
    return Moments(mean, var)


def _fold(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``[T, B, C, H, W]`` → ``[T·B, C, H, W]`` and the leading shape to restore."""
    lead = x.shape[:-3]
    return x.reshape(-1, *x.shape[-3:]), lead


def pool_moments(x: Moments, stride: int, out_channels: int) -> Moments:
    """Average-pool the stream by ``stride`` and zero-pad its channels to ``out_channels``.

    The mean of ``n`` independent Gaussians in a window has mean ``Σμ/n`` and variance
    ``Σv/n²`` (``n`` smaller at a ``ceil_mode`` edge), computed exactly per window. The added
    channels carry zero current (ResNet's parameter-free "option A" shortcut).

    Shape:
        - Input: ``[..., C, H, W]`` (e.g. ``[T, B, C, H, W]``).
        - Output: ``[..., out_channels, ⌈H/stride⌉, ⌈W/stride⌉]``.
    """
    mean, lead = _fold(x.mean)
    pool = dict(kernel_size=stride, stride=stride, ceil_mode=True, divisor_override=1)
    count = F.avg_pool2d(torch.ones_like(mean[:1, :1]), **pool)
    pooled_mean = F.avg_pool2d(mean, **pool) / count
    pooled_var = None if x.var is None else F.avg_pool2d(_fold(x.var)[0], **pool) / count.square()
    extra = out_channels - mean.shape[1]

    def finish(t: Tensor) -> Tensor:
        if extra > 0:
            t = torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], dim=1)
        return t.reshape(*lead, *t.shape[1:])

    return Moments(finish(pooled_mean), None if pooled_var is None else finish(pooled_var))


def lrt_second_moment(moments: Moments, beta: Tensor | float | None = None) -> Tensor:
    r"""Second moment ``E[U²] = mean(μ_U² + v_U)`` of a pre-activation or of its free membrane.

    With ``beta`` the pre-activation ``h[t] ~ N(μ[t], v[t])`` (independent over ``t``) is first
    leak-integrated, ``U[t] = β U[t−1] + h[t]``: ``μ_U`` is the integrated mean and
    ``v_U[t] = β² v_U[t−1] + v[t]``. Without ``beta`` it is the per-step second moment of ``h``.
    The mean runs over every element (time, batch, units).

    Args:
        moments: ``(μ, v)`` of shape ``[T, B, ...]`` (``v`` may be ``None``).
        beta: leak of the integrating neuron, or ``None``.

    Returns:
        A scalar tensor.
    """
    mean, var = moments
    if beta is not None:
        mean = leaky_integrate(mean, beta)
        var = None if var is None else leaky_integrate(var, beta * beta)
    second = mean.square().mean()
    return second if var is None else second + var.mean()


@torch.no_grad()
def calibrate_rms_(
    layer: BernoulliLayer, x: Tensor, target_rms: float, beta: Tensor | float | None = None
) -> float:
    r"""Set ``α`` from the LRT moments so that the layer's output has RMS ``target_rms``.

    At ``α = 1`` (no bias) the LRT moments ``(μ₁, v₁)`` of ``layer`` on ``x`` are computed; both
    scale with ``α`` (``μ = α μ₁``, ``v = α² v₁``), so

    .. math:: α = \text{target} / \sqrt{E[μ_1^2 + v_1]}

    sets the second moment exactly (with ``beta``: of the free membrane, see
    :func:`lrt_second_moment`). No noise is drawn: the result is a deterministic function of the
    batch and ``λ``.

    Args:
        layer: a Bernoulli layer (its current mode is ignored: the moments are the LRT ones).
        x: the layer's input batch, e.g. ``[T, B, C, H, W]`` spikes.
        target_rms: the wanted RMS (``> 0``).
        beta: leak of the neuron that integrates the output, or ``None`` for the per-step RMS.

    A :class:`~sbnn.GaussianLayer` has no ``α``: its whole posterior is multiplied by the factor
    instead (:meth:`~sbnn.GaussianLayer.rescale_`), which scales ``(μ, v)`` the same way.

    Returns:
        The new ``α`` (all channels get the same value; for a Gaussian layer, the factor
        applied); unchanged, with a warning, when the input is silent.
    """
    check_in_range("target_rms", target_rms, 0.0, low_open=True)
    second = float(lrt_second_moment(layer.unit_moments(x), beta))
    if not math.isfinite(second) or second < 1e-12:
        warnings.warn(
            f"calibrate_rms_: {type(layer).__name__} gets a silent calibration batch (second moment "
            f"{second:.1e}); its scale is left unchanged",
            RuntimeWarning,
            stacklevel=2,
        )
        return 1.0 if isinstance(layer, GaussianLayer) else float(layer.scale.mean())
    alpha = target_rms / math.sqrt(second)
    if isinstance(layer, GaussianLayer):
        # unit moments of a real-weight layer are those of its current posterior: rescale it by α
        layer.rescale_(alpha)
        return alpha
    layer.log_scale.fill_(math.log(alpha))
    return alpha


class _ResidualBlock(nn.Module):
    """Shared forward, calibration and checks of the linear and convolutional blocks."""

    layer1: BernoulliLayer
    layer2: BernoulliLayer
    proj: BernoulliLayer | None

    def _init_common(
        self,
        shortcut: str,
        gamma_init: float,
        neuron: dict[str, Any] | None,
        learn_gamma: bool = True,
    ) -> dict[str, Any]:
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_in_range("gamma_init", gamma_init, 0.0)
        self.shortcut = shortcut
        gamma = torch.tensor(float(gamma_init))
        if learn_gamma:
            self.gamma = nn.Parameter(gamma)
        else:  # a fixed gain (the SBNN paper's blocks add the branch with 1): moved by .to(), saved
            self.register_buffer("gamma", gamma)
        neuron = dict(neuron or {})
        if shortcut == "membrane":
            # the block opens with the neuron that turns the membrane stream into spikes
            self.lif_in = StochasticLIF(**neuron)
            self.lif_out = None
        else:
            self.lif_in = None
            self.lif_out = StochasticLIF(**neuron)
        self.lif_mid = StochasticLIF(**neuron)
        return neuron

    # -- pieces the subclasses define ---------------------------------------------------------------
    def _check(self, x: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _pool(self, x: Moments) -> Moments:  # pragma: no cover - interface
        raise NotImplementedError

    def _layer_moments(self, layer: BernoulliLayer, x: Tensor, binary: bool) -> Moments:
        return apply_time_affine(layer, layer.moments(x, validate=False))

    # -- computation ---------------------------------------------------------------------------------
    def _shortcut(self, x: Moments, spikes_in: Tensor | None) -> Moments:
        if self.proj is not None:
            if self.shortcut == "membrane":
                return self._layer_moments(self.proj, spikes_in, True)
            spk, _ = self.lif_proj.sequence(self._layer_moments(self.proj, x.mean, False), validate=False)
            return Moments(spk, None)
        if self.needs_downsample:
            return self._pool(x)
        return x

    def forward(self, x: Moments | Tensor, *, validate: bool = True) -> tuple[Moments, list[Tensor]]:
        """Run the block over a whole time-major sequence.

        Args:
            x: the stream: :class:`~sbnn.layers.Moments` (membrane shortcut; a plain tensor is a
                deterministic current) or a tensor of spike sums (spike shortcut).
            validate: check the input (models that validated their own input pass ``False``).

        Returns:
            ``(stream, spikes)``: the output stream (``Moments``; ``var`` is ``None`` for the
            spike shortcut and in deterministic modes) and the block's spike trains.
        """
        if not isinstance(x, tuple):
            x = Moments(x, None)
        if validate:
            self._check(x.mean)
            if x.var is not None and x.var.shape != x.mean.shape:
                raise ValueError(
                    f"{type(self).__name__}: stream variance shape {tuple(x.var.shape)} differs from its mean "
                    f"shape {tuple(x.mean.shape)}"
                )
        if self.shortcut == "membrane":
            spk_in, _ = self.lif_in.sequence(x, validate=False)
            spk_mid, _ = self.lif_mid.sequence(self._layer_moments(self.layer1, spk_in, True), validate=False)
            branch = self._layer_moments(self.layer2, spk_mid, True)
            return add_moments(self._shortcut(x, spk_in), branch, self.gamma), [spk_in, spk_mid]
        if x.var is not None:
            raise ValueError(
                f"{type(self).__name__} with shortcut='spike' takes a spike-sum stream, not LRT moments"
            )
        spk_mid, _ = self.lif_mid.sequence(self._layer_moments(self.layer1, x.mean, False), validate=False)
        spk_out, _ = self.lif_out.sequence(self._layer_moments(self.layer2, spk_mid, True), validate=False)
        short = self._shortcut(x, None)
        return Moments(short.mean + self.gamma * spk_out, None), [spk_mid, spk_out]

    @torch.no_grad()
    def calibrate(self, x: Moments | Tensor, hidden_gain: float = 2.0) -> tuple[Moments, list[float]]:
        """Set the block's scales ``α`` from the LRT moments on a batch, then run it.

        Membrane shortcut: ``layer1`` gives the middle neuron a free-membrane RMS of
        ``hidden_gain·ϑ``; ``layer2`` and a projection shortcut match the per-step RMS of the
        incoming stream, so that ``F`` preserves the stream's scale. Spike shortcut: both layers
        (and the projection) drive their neurons at a free-membrane RMS of ``hidden_gain·ϑ``.
        Call it in ``sample`` mode (the models do, inside :func:`sbnn.evaluation`).

        Returns:
            ``(stream, rates)``: the block's output stream and its neurons' firing rates.
        """
        check_in_range("hidden_gain", hidden_gain, 0.0, low_open=True)
        if not isinstance(x, tuple):
            x = Moments(x, None)
        self._check(x.mean)

        def target(lif: StochasticLIF) -> float:
            return hidden_gain * float(lif.threshold.mean())

        if self.shortcut == "membrane":
            stream_rms = math.sqrt(float(lrt_second_moment(x)))
            spk_in, _ = self.lif_in.sequence(x, validate=False)
            calibrate_rms_(self.layer1, spk_in, target(self.lif_mid), self.lif_mid.beta)
            spk_mid, _ = self.lif_mid.sequence(self._layer_moments(self.layer1, spk_in, True), validate=False)
            calibrate_rms_(self.layer2, spk_mid, stream_rms)
            if self.proj is not None:
                calibrate_rms_(self.proj, spk_in, stream_rms)
        else:
            calibrate_rms_(self.layer1, x.mean, target(self.lif_mid), self.lif_mid.beta)
            spk_mid, _ = self.lif_mid.sequence(self._layer_moments(self.layer1, x.mean, False), validate=False)
            calibrate_rms_(self.layer2, spk_mid, target(self.lif_out), self.lif_out.beta)
            if self.proj is not None:
                calibrate_rms_(self.proj, x.mean, target(self.lif_proj), self.lif_proj.beta)
        out, spikes = self.forward(x, validate=False)
        return out, [float(s.mean()) for s in spikes]


def _proj_neuron(block: _ResidualBlock, neuron: dict[str, Any]) -> None:
    # a spike-shortcut projection ends in its own neuron, so the stream stays a sum of spikes
    block.lif_proj = StochasticLIF(**neuron) if (block.proj is not None and block.shortcut == "spike") else None


class LinearResidualBlock(_ResidualBlock):
    r"""Fully connected normalisation-free residual block ``x + γ·F(x)``.

    Args:
        in_features: width of the incoming stream.
        out_features: width of the outgoing stream (default ``in_features``); a different
            width adds a Bernoulli projection shortcut.
        shortcut: ``"membrane"`` (default) or ``"spike"`` (SEW), see the module docstring.
        gamma_init: initial ``γ`` (``≥ 0``; default 0.2). ``0`` is SkipInit proper, but then the
            branch's parameters get no gradient until ``γ`` has moved.
        neuron: keyword arguments of every :class:`~sbnn.StochasticLIF` in the block.
        layer: keyword arguments of every :class:`~sbnn.BernoulliLinear` (``bias``, ``lam_std``,
            ``prior_lam``, ...); with ``weights="gaussian"``, of every :class:`~sbnn.GaussianLinear`.
        learn_gamma: train ``γ`` (default); ``False`` keeps it fixed at ``gamma_init`` (a buffer).

    Shape:
        - Input: stream ``[T, B, in_features]`` (``Moments`` or a tensor).
        - Output: stream ``[T, B, out_features]`` and two spike trains.

    Example:
        >>> block = LinearResidualBlock(16)
        >>> stream, spikes = block(torch.randn(5, 2, 16))
        >>> tuple(stream.mean.shape), len(spikes)
        ((5, 2, 16), 2)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        *,
        shortcut: Literal["membrane", "spike"] = "membrane",
        gamma_init: float = 0.2,
        neuron: dict[str, Any] | None = None,
        layer: dict[str, Any] | None = None,
        learn_gamma: bool = True,
    ) -> None:
        super().__init__()
        out_features = in_features if out_features is None else out_features
        check_positive_int("LinearResidualBlock", in_features=in_features, out_features=out_features)
        neuron = self._init_common(shortcut, gamma_init, neuron, learn_gamma)
        layer = dict(layer or {})
        self.in_features, self.out_features = in_features, out_features
        self.needs_downsample = in_features != out_features
        self.layer1 = linear_layer(in_features, out_features, **layer)
        self.layer2 = linear_layer(out_features, out_features, **layer)
        self.proj = linear_layer(in_features, out_features, **layer) if self.needs_downsample else None
        _proj_neuron(self, neuron)

    def _check(self, x: Tensor) -> None:
        check_input(x, type(self).__name__, ndims=(3,), size=self.in_features, what="([T, B, in_features])")

    def _layer_moments(self, layer: BernoulliLayer, x: Tensor, binary: bool) -> Moments:
        # spikes: x² = x saves a matmul when no gradient flows into x (calibration, evaluation)
        return apply_time_affine(layer, layer.moments(x, binary=binary, validate=False))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, shortcut={self.shortcut}"


class ConvResidualBlock(_ResidualBlock):
    r"""Convolutional normalisation-free residual block ``shortcut(x) + γ·F(x)``.

    ``F`` is two ``kernel_size`` Bernoulli convolutions (the first with ``stride``) with
    stochastic LIF neurons, see the module docstring. A block that changes the width or the
    resolution needs a downsampling shortcut, chosen by ``downsample``.

    Args:
        in_channels: channels of the incoming stream.
        out_channels: channels of the outgoing stream (default ``in_channels``).
        stride: 1, or 2 at a stage change (halves ``H`` and ``W``, rounding up).
        shortcut: ``"membrane"`` (default) or ``"spike"`` (SEW).
        downsample: ``"conv"`` (a strided 3×3 Bernoulli convolution of the block's input spikes,
            the default) or ``"pool"`` (average pooling, zero-padded channels; no parameters).
        kernel_size: odd kernel size of the branch convolutions (padding keeps the size).
        gamma_init, neuron, learn_gamma: as :class:`LinearResidualBlock`.
        layer: keyword arguments of every :class:`~sbnn.BernoulliConv2d` (with ``weights="gaussian"``,
            :class:`~sbnn.GaussianConv2d`).

    Shape:
        - Input: stream ``[T, B, in_channels, H, W]``.
        - Output: stream ``[T, B, out_channels, ⌈H/stride⌉, ⌈W/stride⌉]`` and two spike trains.

    Raises:
        ValueError: for a non-positive size, an even kernel, a stride other than 1 or 2, or a
            pooling shortcut that would have to drop channels.

    Example:
        >>> block = ConvResidualBlock(4, 8, stride=2)
        >>> stream, _ = block(torch.randn(3, 2, 4, 6, 6))
        >>> tuple(stream.mean.shape)
        (3, 2, 8, 3, 3)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        stride: int = 1,
        *,
        shortcut: Literal["membrane", "spike"] = "membrane",
        downsample: Literal["conv", "pool"] = "conv",
        kernel_size: int = 3,
        gamma_init: float = 0.2,
        neuron: dict[str, Any] | None = None,
        layer: dict[str, Any] | None = None,
        learn_gamma: bool = True,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        check_positive_int(
            "ConvResidualBlock", in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size
        )
        if stride not in (1, 2) or isinstance(stride, bool):
            raise ValueError(f"ConvResidualBlock: stride must be 1 or 2, got {stride!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvResidualBlock: kernel_size must be odd so padding keeps the size, got {kernel_size}")
        check_choice("downsample", downsample, DOWNSAMPLES)
        if downsample == "pool" and out_channels < in_channels:
            raise ValueError(
                f"ConvResidualBlock: a pooling shortcut zero-pads channels and cannot reduce them "
                f"({in_channels} → {out_channels}); use downsample='conv'"
            )
        neuron = self._init_common(shortcut, gamma_init, neuron, learn_gamma)
        layer = dict(layer or {})
        self.in_channels, self.out_channels, self.stride, self.downsample = in_channels, out_channels, stride, downsample
        self.needs_downsample = in_channels != out_channels or stride != 1
        pad = kernel_size // 2
        self.layer1 = conv_layer(in_channels, out_channels, kernel_size, stride, pad, **layer)
        self.layer2 = conv_layer(out_channels, out_channels, kernel_size, 1, pad, **layer)
        use_conv = self.needs_downsample and downsample == "conv"
        self.proj = conv_layer(in_channels, out_channels, 3, stride, 1, **layer) if use_conv else None
        _proj_neuron(self, neuron)

    def _check(self, x: Tensor) -> None:
        check_input(
            x, type(self).__name__, ndims=(5,), size=self.in_channels, dim=2,
            what="([T, B, in_channels, H, W])",
        )

    def _pool(self, x: Moments) -> Moments:
        return pool_moments(x, self.stride, self.out_channels)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, shortcut={self.shortcut}, "
            f"downsample={self.downsample}"
        )

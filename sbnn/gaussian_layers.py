r"""Real-weight layers with a per-layer Gaussian posterior: ``GaussianLinear`` and ``GaussianConv2d``.

The weight family of the SBNN paper's own code (Walker et al. 2025, arXiv 2505.17962): real
weights with posterior ``q(W) = N(W̄, σ_w² I)``, ``W̄`` learned per weight and **one** standard
deviation per layer, ``σ_w = softplus(ρ)``, initialised at ``σ_init/√fan_in`` (``σ_init = 0.5``,
as the authors do). Only activations are binary. The pre-activation is drawn by the local
reparameterisation (Kingma, Salimans & Welling 2015):

.. math::
    μ = W̄ x + b, \qquad v = σ_w^2 \textstyle\sum_i x_i^2
    \quad(\text{convolution: } v = σ_w^2\, \mathrm{conv}(x \odot x, \mathbf 1))

so ``v`` is one value per position, shared by every output channel. The modes follow
:class:`~sbnn.layers.BernoulliLayer`'s contract (:data:`~sbnn.layers.LAYER_MODES`):

========== ======================================================== ==============
mode       pre-activation                                           ``moments(x)``
========== ======================================================== ==============
``sample`` LRT sample ``μ + sqrt(v)·ξ`` (training)                  ``(μ, v)``
``mode``   the posterior mean (the Gaussian's mode)                 ``(h, None)``
``mean``   the posterior mean                                       ``(h, None)``
``fixed``  a draw ``W ~ q`` from :meth:`GaussianLayer.draw_weights` ``(h, None)``
========== ======================================================== ==============

**Weight prior.** None by default: ``kl()`` is 0, as in the paper's objective. With
``prior_std = σ_p`` the closed form
``KL(N(W̄, σ_w²) ‖ N(0, σ_p²)) = Σ [log(σ_p/σ_w) + (σ_w² + W̄²)/(2σ_p²) − ½]`` is returned.

**Calibration.** A real-weight layer has no separate scale ``α``: :meth:`GaussianLayer.calibrate_scale_`
multiplies the whole posterior by one factor ``c`` (``W̄ ← cW̄``, ``σ_w ← cσ_w``), which scales
``μ`` by ``c`` and ``v`` by ``c²`` exactly as ``α`` does for a Bernoulli layer, and keeps the
initial relative noise ``σ_w/|W̄|``. The SBNN paper's code does not calibrate (the task's
``calibrate: false``).

**Export.** The deployable engine (:mod:`sbnn.kernels`, the ``.sbnn`` file and the NIR export that
reads its graph) carries ±1 weights only and refuses these layers with a message; the mean
network is the layers' ``weight`` (:meth:`GaussianLayer.mean_weight`), saved with the
``state_dict``.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_in_range, check_input, check_positive_int
from .functional.sparse import SpikeIndices, gather_sum
from .layers import Conv2dGeometry, Moments, ModeStateMixin, sample_moments

__all__ = ["GaussianLayer", "GaussianLinear", "GaussianConv2d", "kl_gaussian", "softplus_inverse"]


def softplus_inverse(x: float) -> float:
    """``ρ`` with ``softplus(ρ) = x`` (``x > 0``): ``log(expm1(x))``, in float64."""
    return math.log(math.expm1(x))


def kl_gaussian(mean: Tensor, std: Tensor, prior_std: float) -> Tensor:
    r"""``Σ KL(N(mean, std²) ‖ N(0, prior_std²))`` over all elements (``std`` broadcasts).

    .. math:: \mathrm{KL} = \log\frac{σ_p}{σ} + \frac{σ^2 + m^2}{2σ_p^2} − \frac12
    """
    var = std * std
    terms = math.log(prior_std) - torch.log(std) + (var + mean * mean) / (2.0 * prior_std**2) - 0.5
    return terms.expand_as(mean).sum()


class GaussianLayer(ModeStateMixin, nn.Module):
    """Shared machinery of Gaussian-posterior layers (parameters, modes, KL, calibration).

    Subclasses implement :meth:`_linear` (the layer's linear map with given weights, no bias),
    :meth:`_sum_sq` (``Σ x²`` over each output's receptive field, broadcastable to the output)
    and input validation.

    Args:
        weight_shape: shape of ``W̄``; dimension 0 is the output channel.
        bias: learn a float bias.
        sigma_init: ``σ_w = sigma_init/√fan_in`` at initialisation (``> 0``; the paper's 0.5).
        prior_std: standard deviation ``σ_p > 0`` of a zero-mean Gaussian weight prior, or
            ``None`` (no prior: ``kl()`` is 0).
        variance_input_grad: whether the variance ``σ_w² Σ x²`` sends gradient to ``x`` (the
            paper's code detaches it: ``False``; ``σ_w`` is trained either way).
        return_moments: make ``forward`` return :class:`~sbnn.layers.Moments`.
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        *,
        bias: bool,
        sigma_init: float,
        prior_std: float | None,
        variance_input_grad: bool,
        return_moments: bool,
    ) -> None:
        super().__init__()
        check_in_range("sigma_init", sigma_init, 0.0, low_open=True)
        if prior_std is not None:
            check_in_range("prior_std", prior_std, 0.0, low_open=True)
        self.fan_in = math.prod(weight_shape[1:])
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.sigma_rho = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self.sigma_init, self.prior_std = float(sigma_init), None if prior_std is None else float(prior_std)
        self.variance_input_grad, self.return_moments = bool(variance_input_grad), return_moments
        self.register_buffer("_fixed_weight", torch.zeros(0), persistent=False)
        self._mode = "sample"
        self.reset_parameters()

    # -- parameters ----------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``W̄ ~ U(−1/√fan_in, 1/√fan_in)``, ``σ_w = sigma_init/√fan_in`` (the paper's initialisation)."""
        bound = 1.0 / math.sqrt(self.fan_in)
        self.weight.uniform_(-bound, bound)
        self.sigma_rho.fill_(softplus_inverse(self.sigma_init / math.sqrt(self.fan_in)))
        if self.bias is not None:
            self.bias.zero_()

    @property
    def sigma(self) -> Tensor:
        """``σ_w = softplus(ρ)``, shape ``[1]``."""
        return F.softplus(self.sigma_rho)

    def mean_weight(self) -> Tensor:
        """The weights of the mean network, ``W̄`` (what the ``mode`` and ``mean`` modes run)."""
        return self._masked(self.weight)

    def _masked(self, weight: Tensor) -> Tensor:
        return weight

    def posterior(self) -> torch.distributions.Normal:
        """The weight posterior ``N(W̄, σ_w²)`` as a distribution (keeps the parameters' gradient)."""
        return torch.distributions.Normal(self.weight, self.sigma.expand_as(self.weight), validate_args=False)

    def kl(self) -> Tensor:
        """``KL(q ‖ p)`` summed over the weights: 0 without a prior, the closed form otherwise."""
        if self.prior_std is None:
            return self.weight.new_zeros(())
        return kl_gaussian(self._masked(self.weight), self.sigma, self.prior_std)

    # -- modes (ModeStateMixin) ----------------------------------------------------------------
    @property
    def weight_shape_source(self) -> Tensor:
        """The mean weights ``W̄``: an explicit weight has their shape."""
        return self.weight

    @torch.no_grad()
    def draw_weights(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw explicit weights ``W = W̄ + σ_w ξ`` and keep them for the ``fixed`` mode; returns them."""
        noise = torch.randn(self.weight.shape, dtype=self.weight.dtype, device=self.weight.device, generator=generator)
        self._fixed_weight = self._masked(self.weight + self.sigma * noise)
        return self._fixed_weight

    def deterministic_weight(self) -> Tensor:
        """The weight of the current deterministic mode (``W̄``, or the fixed draw)."""
        if self._mode in ("mode", "mean"):
            return self.mean_weight()
        if self._mode == "fixed":
            return self._fixed_weight
        raise RuntimeError("deterministic_weight() is defined in the 'mode', 'mean' and 'fixed' modes only")

    # -- computation ---------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _linear(self, x: Tensor, weight: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _sum_sq(self, x_sq: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _add_bias(self, h: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _lrt(self, x: Tensor, binary: bool, bias: bool) -> tuple[Tensor, Tensor]:
        mu = self._linear(x, self.mean_weight())
        if bias:
            mu = self._add_bias(mu)
        src = x if self.variance_input_grad else x.detach()
        # spikes without a gradient: x² = x; otherwise x·x (see BernoulliLayer.moments)
        x_sq = src if (binary and not src.requires_grad) else src * src
        var = self._sum_sq(x_sq) * self.sigma.square().reshape(())
        return mu, var.expand_as(mu)

    def moments(self, x: Tensor, *, binary: bool = False, validate: bool = True) -> Moments:
        """Pre-activation moments ``(μ, v)`` of the current mode (``v`` is ``None`` unless ``sample``).

        Args:
            x: the layer's input (see the subclass for its shape).
            binary: ``x`` holds 0/1 spikes (``x² = x`` when no gradient flows into ``x``).
            validate: check the input (models that validated their own input pass ``False``).

        Returns:
            ``(μ, v)``; ``v`` is an expanded view (one value per position, shared by the channels).
        """
        if validate:
            self._check(x)
        if self._mode == "sample":
            return Moments(*self._lrt(x, binary, True))
        return Moments(self._add_bias(self._linear(x, self.deterministic_weight())), None)

    def unit_moments(self, x: Tensor, *, validate: bool = True) -> Moments:
        """LRT moments without bias, whatever the mode: what calibration scales by ``c``.

        Multiplying the posterior by ``c`` (:meth:`rescale_`) gives ``(c μ, c² v)``.
        """
        if validate:
            self._check(x)
        return Moments(*self._lrt(x, False, False))

    def forward(self, x: Tensor) -> Tensor | Moments:
        """The pre-activation: an LRT sample in ``sample`` mode, deterministic otherwise."""
        moments = self.moments(x)
        if self.return_moments:
            return moments
        # the weight has the rank of one unbatched input frame plus one: a time-major input has one axis more
        return sample_moments(moments, batch_dim=x.dim() - self.weight.dim())

    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        """Multiply the posterior by ``factor > 0``: ``W̄ ← cW̄``, ``σ_w ← cσ_w`` (the bias is left alone)."""
        check_in_range("factor", factor, 0.0, low_open=True)
        self.weight.mul_(factor)
        self.sigma_rho.copy_(torch.log(torch.expm1(self.sigma.double() * factor)).to(self.sigma_rho.dtype))

    @torch.no_grad()
    def calibrate_scale_(
        self, x: Tensor, target_std: float, statistic: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Data-dependent initialisation: rescale the posterior so that ``statistic(h)`` has std ``target_std``.

        ``h`` is an LRT sample of the pre-activation without bias; as for
        :meth:`sbnn.BernoulliLayer.calibrate_scale_`, ``statistic`` must be linear.

        Returns:
            The factor ``c`` applied, shape ``[1]`` (1 when the batch is silent, with a warning).
        """
        check_in_range("target_std", target_std, 0.0, low_open=True)
        self._check(x)
        h = sample_moments(self.unit_moments(x, validate=False))
        std = float((statistic(h) if statistic is not None else h).std())
        if not math.isfinite(std) or std < 1e-8:
            warnings.warn(
                f"{type(self).__name__}.calibrate_scale_: the calibration batch gives a constant "
                "pre-activation (no input activity?); the posterior is left unchanged",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.ones(1)
        factor = target_std / std
        self.rescale_(factor)
        return torch.tensor([factor])


class GaussianLinear(GaussianLayer):
    """Gaussian-posterior real-weight linear layer ``h = x W̄ᵀ + b + noise`` (LRT).

    Args:
        in_features: input size.
        out_features: output size.
        bias: learn a float bias (default ``True``, as ``nn.Linear``).
        sigma_init, prior_std, variance_input_grad, return_moments: see :class:`GaussianLayer`.
        zero_diagonal: no self-connection (square layers only, e.g. a recurrent matrix): the
            diagonal of ``W`` is 0 in every mode, with no variance, so
            ``v_j = σ_w² (Σ_i x_i² − x_j²)``.
        self_variance: with ``zero_diagonal``, keep the diagonal's variance term all the same,
            ``v_j = σ_w² Σ_i x_i²`` (the mean has no self-connection, the variance sums over every
            input: the SBNN authors' recurrent layers). Default ``False``.

    Shape:
        - Input: ``[B, in]`` or time-major ``[T, B, in]``.
        - Output: ``[B, out]`` or ``[T, B, out]``.

    Example:
        >>> layer = GaussianLinear(4, 3)
        >>> mu, var = layer.moments(torch.ones(2, 4))
        >>> tuple(mu.shape), bool((var > 0).all())
        ((2, 3), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        sigma_init: float = 0.5,
        prior_std: float | None = None,
        variance_input_grad: bool = True,
        zero_diagonal: bool = False,
        return_moments: bool = False,
        self_variance: bool = False,
    ) -> None:
        check_positive_int("GaussianLinear", in_features=in_features, out_features=out_features)
        if self_variance and not zero_diagonal:
            raise ValueError("GaussianLinear: self_variance=True applies to a zero_diagonal layer only; set zero_diagonal=True")
        if zero_diagonal and in_features != out_features:
            raise ValueError(
                f"GaussianLinear: zero_diagonal needs a square layer, got {in_features} → {out_features}"
            )
        self.in_features, self.out_features, self.zero_diagonal = in_features, out_features, bool(zero_diagonal)
        self.self_variance = bool(self_variance)
        super().__init__(
            (out_features, in_features),
            bias=bias,
            sigma_init=sigma_init,
            prior_std=prior_std,
            variance_input_grad=variance_input_grad,
            return_moments=return_moments,
        )
        if self.zero_diagonal:
            # 1 − I, built once (the recurrent path reads it every time step); not part of the state_dict
            self.register_buffer("off_diagonal", 1.0 - torch.eye(out_features), persistent=False)

    def _masked(self, weight: Tensor) -> Tensor:
        if not self.zero_diagonal:
            return weight
        mask = getattr(self, "off_diagonal", None)
        if mask is None:  # a layer unpickled from before the cached mask
            mask = 1.0 - torch.eye(self.out_features, dtype=weight.dtype, device=weight.device)
        return weight * mask.to(weight.dtype)

    def _check(self, x: Tensor) -> None:
        check_input(x, repr(self), ndims=(2, 3), size=self.in_features, what="([B, in] or [T, B, in])")

    def moments(self, x: Tensor | SpikeIndices, *, binary: bool = False, validate: bool = True) -> Moments:
        """As :meth:`GaussianLayer.moments`; also takes the :class:`~sbnn.functional.sparse.SpikeIndices` of binary ``x``.

        From indices the mean is the sum of the rows of ``W̄ᵀ`` at the active inputs
        (:func:`~sbnn.functional.sparse.gather_sum`) and the variance ``σ_w² Σ_i x_i²`` is
        ``σ_w²`` times the number of active inputs of each row, read from the indices' offsets:
        equal to the dense input's moments within float rounding (the variance exactly), with
        the gradients to ``W̄``, ``σ_w`` and the bias.
        """
        if isinstance(x, SpikeIndices):
            return self._index_moments(x)
        return super().moments(x, binary=binary, validate=validate)

    def _index_moments(self, idx: SpikeIndices) -> Moments:
        if len(idx.shape) not in (2, 3) or idx.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r}: SpikeIndices of shape {idx.shape} given; expected [B, {self.in_features}] or [T, B, {self.in_features}]"
            )
        if self.zero_diagonal and not self.self_variance:
            raise ValueError(
                f"{self!r}: a zero-diagonal layer's variance σ_w²(Σ_i x_i² − x_j²) needs the dense input; pass "
                "SpikeIndices.to_dense()"
            )
        sample = self._mode == "sample"
        weight = self.mean_weight() if sample else self.deterministic_weight()
        mu = self._add_bias(gather_sum(idx, weight.t()))
        if not sample:
            return Moments(mu, None)
        nnz = idx.cols.new_full((1,), idx.cols.numel())
        counts = torch.diff(idx.offsets, append=nnz).to(mu.dtype)  # active inputs per row: Σ_i x_i² for spikes
        var = (counts * self.sigma.square().reshape(())).reshape(*idx.shape[:-1], 1)
        return Moments(mu, var.expand_as(mu))

    def _linear(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight)

    def _add_bias(self, h: Tensor) -> Tensor:
        return h if self.bias is None else h + self.bias

    def _sum_sq(self, x_sq: Tensor) -> Tensor:
        total = x_sq.sum(-1, keepdim=True)
        return total - x_sq if (self.zero_diagonal and not self.self_variance) else total

    def time_weighted(self, x: Tensor, weights: Tensor, *, binary: bool = False, validate: bool = True) -> Tensor:
        """``Σ_t weights[t]·h[t]`` for a time-major input (see :meth:`sbnn.BernoulliLinear.time_weighted`).

        In ``sample`` mode: mean ``W̄·Σ_t w_t x_t + b Σ_t w_t``, variance ``σ_w² Σ_t w_t² Σ_i x_ti²``
        (``−x_tj²`` with a zero diagonal), drawn as one Gaussian.

        Args:
            x: ``[T, B, in]``.
            weights: ``[T]``.
            binary: ``x`` holds 0/1 spikes: ``x² = x`` where no gradient flows through it.
            validate: check ``x`` (a model passing its own hidden spikes skips it).

        Returns:
            ``[B, out]``.
        """
        if validate:
            self._check(x)
        summed = torch.tensordot(weights, x, dims=1)
        if self._mode == "sample":
            src = x if self.variance_input_grad else x.detach()
            src_sq = src if (binary and not src.requires_grad) else src * src
            var = torch.tensordot(weights.square(), self._sum_sq(src_sq), dims=1) * self.sigma.square().reshape(())
            mu = F.linear(summed, self.mean_weight())
            out = sample_moments(Moments(mu, var.expand_as(mu)), batch_dim=0)
        else:
            out = F.linear(summed, self.deterministic_weight())
        return out if self.bias is None else out + self.bias * weights.sum()

    def extra_repr(self) -> str:
        extra = ", zero_diagonal=True" if self.zero_diagonal else ""
        extra += ", self_variance=True" if self.self_variance else ""
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}{extra}, mode={self._mode}"


class GaussianConv2d(Conv2dGeometry, GaussianLayer):
    """Gaussian-posterior real-weight 2-D convolution ``h = conv(x, W̄) + b + noise`` (LRT).

    The variance is ``σ_w²·conv(x ⊙ x, 1)`` with an all-ones kernel over each group's input
    channels: one value per position (and group), shared by the output channels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.Conv2d``.
        sigma_init, prior_std, variance_input_grad, return_moments: see :class:`GaussianLayer`.

    Shape:
        - Input: ``[B, C_in, H, W]`` or time-major ``[T, B, C_in, H, W]``.
        - Output: ``[B, C_out, H', W']`` or ``[T, B, C_out, H', W']``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        sigma_init: float = 0.5,
        prior_std: float | None = None,
        variance_input_grad: bool = True,
        return_moments: bool = False,
    ) -> None:
        super().__init__(
            self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups),
            bias=bias,
            sigma_init=sigma_init,
            prior_std=prior_std,
            variance_input_grad=variance_input_grad,
            return_moments=return_moments,
        )

    def _conv_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)

    def _linear(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._folded(lambda z: F.conv2d(z, weight, None, groups=self.groups, **self._conv_kwargs()), x)

    def _add_bias(self, h: Tensor) -> Tensor:
        return h if self.bias is None else h + self.bias.reshape(-1, 1, 1)

    def _sum_sq(self, x_sq: Tensor) -> Tensor:
        ones = x_sq.new_ones(self.groups, self.in_channels // self.groups, *self.kernel_size)
        per_group = self._folded(lambda z: F.conv2d(z, ones, None, groups=self.groups, **self._conv_kwargs()), x_sq)
        if self.groups == 1:
            return per_group  # [..., 1, H', W'], broadcast over the output channels
        return per_group.repeat_interleave(self.out_channels // self.groups, dim=-3)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, mode={self._mode}"
        )

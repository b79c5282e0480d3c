r"""Bernoulli-posterior binary layers: ``BernoulliLinear`` and ``BernoulliConv2d``.

Each weight is ``α·w`` with ``w ∈ {−1, +1}`` drawn from a learned mean-field posterior
``q(w = +1) = σ(2λ)`` (:class:`sbnn.posterior.BernoulliSign`) and ``α > 0`` a per-layer (or
per-output-channel) scale. A layer is used in one of four modes (``layer.mode``):

=========== ======================================================== =========================
mode        pre-activation                                           ``moments(x)``
=========== ======================================================== =========================
``sample``  LRT sample ``μ + sqrt(v)·ξ`` (training)                   ``(μ, v)``
``mode``    ``α·sign(λ)`` weights (deterministic, what is deployed)   ``(h, None)``
``mean``    ``α·tanh(λ)`` weights                                      ``(h, None)``
``fixed``   ``α·w`` with ``w ~ q`` drawn by :meth:`draw_weights`       ``(h, None)``
=========== ======================================================== =========================

``forward(x)`` always returns one tensor, so a layer drops into any ``nn.Sequential``, e.g. in
front of an snnTorch neuron. ``moments(x)`` returns the LRT moments that
:class:`sbnn.StochasticLIF` turns into posterior noise. In ``mode`` the forward value is exactly
``sign(λ)`` while the gradient reaches ``λ`` straight through ``tanh`` (used by the mode
fine-tune, docs/design.md §7).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._validation import check_choice, check_in_range, check_input, check_positive_int
from .functional.keyed import active_keyed_noise
from .functional.layers import lrt_conv2d, lrt_linear, scale_shape, time_weighted_moments
from .functional._operators import HAS_CUSTOM_OP
from .functional.sparse import (
    SpikeIndices,
    binary_indices,
    gather_sum,
    lrt_linear_gather,
    lrt_table,
    use_gather,
)
from .posterior import BernoulliSign, kl_bernoulli_sign, sign_mean, sign_mode

__all__ = [
    "Moments",
    "ModeState",
    "ModeStateMixin",
    "Conv2dGeometry",
    "BernoulliLayer",
    "BernoulliLinear",
    "BernoulliConv2d",
    "LAYER_MODES",
    "BAYESBINN_LAMBDA",
    "sample_moments",
    "GATHER_CHOICES",
    "gather_path",
]

LAYER_MODES = ("sample", "mode", "mean", "fixed")
#: values of :attr:`BernoulliLinear.gather`: ``auto`` (by the input's density), ``always``, ``never``
GATHER_CHOICES = ("auto", "always", "never")
#: magnitude of BayesBiNN's random ±λ initialisation (Meng et al. 2020, arXiv:2002.10778)
BAYESBINN_LAMBDA = 10.0


class Moments(NamedTuple):
    """Pre-activation moments: ``mean`` and ``var`` (``None`` for a deterministic layer)."""

    mean: Tensor
    var: Tensor | None


class ModeState(NamedTuple):
    """A layer's whole mode state: the mode and the explicit weight the ``fixed`` mode uses.

    ``weight`` is ``None`` until :meth:`BernoulliLayer.draw_weights` or
    :meth:`BernoulliLayer.set_fixed_weight` gives one; it is kept when the layer leaves the
    ``fixed`` mode, so that going back runs the same network.
    """

    mode: str
    weight: Tensor | None


class ModeStateMixin:
    """The mode state ``(mode, weight)`` of a weight layer, and the only ways to write it.

    Shared by both weight families (:class:`BernoulliLayer`, :class:`sbnn.GaussianLayer`). A
    subclass keeps ``_mode`` (a string) and a ``_fixed_weight`` buffer (empty when no weight was
    given), and names the parameter whose shape an explicit weight takes in
    :attr:`weight_shape_source` (with ``weight_shape_name`` for error messages); it defines
    ``draw_weights`` itself (what a draw is depends on the family).
    """

    weight_shape_name = "the weights'"

    @property
    def weight_shape_source(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def mode(self) -> str:
        """One of ``sample``, ``mode``, ``mean``, ``fixed`` (see the module docstring)."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.set_mode(value)

    def set_mode(self, mode: str) -> None:
        """Switch to ``mode`` (one of :data:`LAYER_MODES`); ``fixed`` needs a weight already given.

        Raises:
            ValueError: for an unknown mode, or ``fixed`` before :meth:`draw_weights` or
                :meth:`set_fixed_weight`.
        """
        check_choice(f"{type(self).__name__}.mode", mode, LAYER_MODES)
        if mode == "fixed" and self._fixed_weight.numel() == 0:
            raise ValueError("mode 'fixed' needs drawn weights: call layer.draw_weights() first")
        self._mode = mode

    def mode_state(self) -> ModeState:
        """The whole mode state ``(mode, weight)``, e.g. to restore it later with :meth:`restore_mode_state`."""
        return ModeState(self._mode, self._fixed_weight if self._fixed_weight.numel() else None)

    def restore_mode_state(self, state: ModeState) -> None:
        """Put back a state returned by :meth:`mode_state` (both the mode and the weight)."""
        mode, weight = state
        check_choice(f"{type(self).__name__}.mode", mode, LAYER_MODES)
        if weight is None:
            if mode == "fixed":
                raise ValueError("a 'fixed' mode state needs its weight")
            self._fixed_weight = self._fixed_weight.new_zeros(0)
        else:
            self._check_weight(weight)
            self._fixed_weight = weight
        self._mode = mode

    def _check_weight(self, weight: Tensor) -> None:
        expected = self.weight_shape_source.shape
        if not isinstance(weight, Tensor) or weight.shape != expected:
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ValueError(f"weight must have {self.weight_shape_name} shape {tuple(expected)}, got {shape}")

    def set_fixed_weight(self, weight: Tensor) -> None:
        """Run in the ``fixed`` mode with ``weight`` (the shape of :attr:`weight_shape_source`) from now on.

        For training methods that compute the weight from the layer's parameters themselves (a
        quantiser, a relaxed sample, a latent real weight; :mod:`sbnn.training.methods`): the
        gradient reaches them through ``weight``'s own graph.
        """
        self._check_weight(weight)
        # a Parameter assigned to a buffer attribute would be registered as a new parameter
        self._fixed_weight = weight.view_as(weight) if isinstance(weight, nn.Parameter) else weight
        self._mode = "fixed"


class BernoulliLayer(ModeStateMixin, nn.Module):
    """Shared machinery of Bernoulli-posterior layers (parameters, modes, KL, initialisation).

    Subclasses implement :meth:`_lrt` (moments in ``sample`` mode), :meth:`_unit_lrt` (the same
    at ``α = 1`` without bias) and :meth:`_apply_weight` (the layer's linear map with explicit
    weights), plus input validation.

    **Mode state.** The pair ``(mode, weight)`` (:class:`ModeState`) is written only by
    :meth:`set_mode`, :meth:`draw_weights`, :meth:`set_fixed_weight` and
    :meth:`restore_mode_state`; :func:`sbnn.evaluation` saves and restores it whole.

    Args:
        weight_shape: shape of ``λ``; dimension 0 is the output channel.
        bias: learn a float bias.
        scale: ``"layer"`` (one ``α``) or ``"channel"`` (one per output channel).
        learn_scale: make ``log α`` a trainable parameter (otherwise a buffer).
        lam_init: ``"normal"`` (``λ ~ N(0, lam_std²)``, the default: BayesBiNN's ±10 is dead
            under Adam, docs/design.md §7), ``"bayesbinn"`` (``λ = ±10`` with random signs) or ``"zero"``.
        lam_std: standard deviation of the ``"normal"`` initialisation.
        prior_lam: natural parameter ``λ0`` of the Bernoulli prior (0: uniform); a float or a
            tensor broadcastable to the weights.
        return_moments: make ``forward`` return :class:`Moments` (for a following
            :class:`sbnn.StochasticLIF` inside an ``nn.Sequential``).
    """

    weight_shape_name = "λ's"

    @property
    def weight_shape_source(self) -> Tensor:
        """``λ``: an explicit weight has its shape."""
        return self.lam

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        *,
        bias: bool,
        scale: Literal["layer", "channel"],
        learn_scale: bool,
        lam_init: Literal["normal", "bayesbinn", "zero"],
        lam_std: float,
        prior_lam: float | Tensor,
        return_moments: bool,
    ) -> None:
        super().__init__()
        check_choice("scale", scale, ("layer", "channel"))
        check_choice("lam_init", lam_init, ("normal", "bayesbinn", "zero"))
        check_in_range("lam_std", lam_std, 0.0, low_open=True)
        check_in_range("prior_lam", prior_lam)
        self.lam = nn.Parameter(torch.empty(weight_shape))
        fan_in = math.prod(weight_shape[1:])
        # 1/sqrt(fan_in) is only the value before the data-dependent calibration (docs/design.md §1.1).
        log_scale = torch.full((weight_shape[0] if scale == "channel" else 1,), -0.5 * math.log(fan_in))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self.register_buffer("prior_lam", torch.as_tensor(prior_lam, dtype=torch.float32).clone())
        # the mode state (mode, weight) is written only by set_mode, draw_weights, set_fixed_weight
        # and restore_mode_state; a buffer, so that .to() moves a drawn weight with the layer
        self.register_buffer("_fixed_weight", torch.zeros(0), persistent=False)
        self.lam_init, self.lam_std, self.return_moments = lam_init, lam_std, return_moments
        self._mode = "sample"
        self.reset_parameters()

    # -- parameters ----------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise ``λ`` according to ``lam_init`` (the scale and bias are left alone)."""
        if self.lam_init == "normal":
            self.lam.normal_(0.0, self.lam_std)
        elif self.lam_init == "bayesbinn":
            self.lam.copy_(BAYESBINN_LAMBDA * (2.0 * torch.randint_like(self.lam, 2) - 1.0))
        else:
            self.lam.zero_()

    @property
    def scale(self) -> Tensor:
        """``α = exp(log α)``, shape ``[1]`` or ``[C_out]``."""
        return self.log_scale.exp()

    def posterior(self) -> BernoulliSign:
        """The weight posterior ``q(w)`` as a distribution (shares ``λ``, keeps its gradient)."""
        return BernoulliSign(lam=self.lam, validate_args=False)

    def prior(self) -> BernoulliSign:
        """The weight prior ``p(w)`` with natural parameter ``λ0``."""
        return BernoulliSign(lam=self.prior_lam.expand_as(self.lam), validate_args=False)

    def kl(self) -> Tensor:
        """``KL(q ‖ p)`` summed over the layer's weights (closed form, see :mod:`sbnn.posterior`)."""
        return kl_bernoulli_sign(self.lam, self.prior_lam).sum()

    @torch.no_grad()
    def set_prior(self, prior_lam: float | Tensor) -> None:
        """Set ``λ0`` (e.g. the previous task's posterior ``λ`` for continual learning)."""
        check_in_range("prior_lam", prior_lam)
        self.prior_lam = torch.as_tensor(prior_lam, dtype=self.lam.dtype, device=self.lam.device).clone()

    @torch.no_grad()
    def draw_weights(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw explicit ±1 weights ``w ~ q`` and keep them for the ``fixed`` mode; returns them.

        The mode is left as it is (:func:`sbnn.set_mode` with ``"mc"`` draws and switches).
        """
        self._fixed_weight = self.posterior().sample(generator=generator)
        return self._fixed_weight

    def binary_weight(self) -> Tensor:
        """The ±1 (or mean) weight of the current deterministic mode, without the scale."""
        if self._mode == "mode":
            m = sign_mean(self.lam)
            # forward value exactly sign(λ); gradient straight through tanh (mode fine-tune)
            return sign_mode(self.lam) + (m - m.detach())
        if self._mode == "mean":
            return sign_mean(self.lam)
        if self._mode == "fixed":
            return self._fixed_weight
        raise RuntimeError("binary_weight() is defined in the 'mode', 'mean' and 'fixed' modes only")

    # -- computation ---------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _lrt(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def _apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def _unit_lrt(self, x: Tensor, x_sq: Tensor | None) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def moments(self, x: Tensor, *, binary: bool = False, validate: bool = True) -> Moments:
        """Pre-activation moments ``(μ, v)`` of the current mode (``v`` is ``None`` unless ``sample``).

        Args:
            x: the layer's input (see the subclass for its shape).
            binary: ``x`` holds 0/1 spikes. In ``sample`` mode, for an input that needs no
                gradient, a linear layer then uses ``x² = x`` and computes both moments in one
                matmul. Spikes that carry a straight-through gradient keep ``x·x``: the values
                agree but the derivatives do not (``2x`` against 1), and the estimator's variance
                path was validated with ``x·x`` (``x`` lowered Randman ``mode`` accuracy from
                95.3 ± 0.6 to 93.5 ± 0.6 %, 3 seeds each).
            validate: check the input (models that validated their own input pass ``False``).
        """
        if validate:
            self._check(x)
        if self._mode == "sample":
            x_sq = x if (binary and not x.requires_grad) else None
            return Moments(*self._lrt(x, x_sq))
        return Moments(self._apply_weight(x, self.binary_weight()), None)

    def unit_moments(self, x: Tensor, *, validate: bool = True) -> Moments:
        """LRT moments at unit scale and without bias, ``α = 1``, whatever the current mode.

        What calibration measures: both moments scale with ``α`` (``μ = α μ₁``, ``v = α² v₁``).
        The layer is not changed.
        """
        if validate:
            self._check(x)
        return Moments(*self._unit_lrt(x, None))

    def forward(self, x: Tensor) -> Tensor | Moments:
        """The pre-activation: an LRT sample in ``sample`` mode, deterministic otherwise.

        Returns :class:`Moments` instead when the layer was built with ``return_moments=True``.
        """
        moments = self.moments(x)
        if self.return_moments:
            return moments
        # λ has the rank of one unbatched input frame plus one: a time-major input has one axis more
        return sample_moments(moments, batch_dim=x.dim() - self.lam.dim())

    @torch.no_grad()
    def calibrate_scale_(
        self, x: Tensor, target_std: float, statistic: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """Data-dependent scale: set ``α`` so that ``statistic(h)`` has standard deviation ``target_std``.

        ``h`` is the LRT sample of the pre-activation at ``α = 1`` (no bias) on ``x``;
        ``statistic`` maps it to the quantity whose spread matters, e.g. the free membrane
        ``U[t] = βU[t−1] + h[t]`` of a hidden layer (target ``2ϑ``) or the time-averaged readout
        membrane (target logit std 3), docs/design.md §7. ``statistic`` must be linear, so that one pass
        sets the scale exactly.

        Returns:
            The new ``α`` (all channels get the same value).
        """
        check_in_range("target_std", target_std, 0.0, low_open=True)
        self._check(x)
        h = sample_moments(self.unit_moments(x, validate=False))
        std = float((statistic(h) if statistic is not None else h).std())
        if not math.isfinite(std) or std < 1e-8:  # an all-silent batch leaves only the sqrt floor
            warnings.warn(
                f"{type(self).__name__}.calibrate_scale_: the calibration batch gives a constant "
                "pre-activation (no input activity?); the scale is left unchanged",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.scale
        self.log_scale.fill_(math.log(target_std / std))
        return self.scale


def sample_moments(moments: Moments, generator: torch.Generator | None = None, *, batch_dim: int = 0) -> Tensor:
    """An LRT sample ``μ + sqrt(v)·ξ``, ``ξ ~ N(0, 1)`` (just ``μ`` when ``v`` is ``None``).

    Inside a :func:`~sbnn.functional.keyed.keyed_noise` block (and without ``generator``) ``ξ`` is
    keyed by sample along ``batch_dim`` (``1`` for time-major ``[T, B, ...]`` moments).
    """
    mean, var = moments
    if var is None:
        return mean
    source = active_keyed_noise() if generator is None else None
    if source is not None:
        noise = source.normal(mean.shape, like=mean, batch_dim=batch_dim)
    else:
        noise = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    # v = 0 exactly wherever a unit got no input; sqrt'(0) = inf would turn the gradient into NaN
    return mean + var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() * noise


class BernoulliLinear(BernoulliLayer):
    """Bernoulli-posterior ±1 linear layer ``h = α·x wᵀ + b``.

    Args:
        in_features: input size.
        out_features: output size.
        bias: learn a float bias (default ``True``, as ``nn.Linear``).
        scale, learn_scale, lam_init, lam_std, prior_lam, return_moments: see
            :class:`BernoulliLayer`.

    Shape:
        - Input: ``[B, in]`` or time-major ``[T, B, in]`` (all steps in one matmul).
        - Output: ``[B, out]`` or ``[T, B, out]``.

    **Event-driven path.** For an input declared binary (``moments(x, binary=True)``, what the
    models pass for spikes) whose density is at most the measured crossover for the layer's table
    size (:func:`~sbnn.functional.sparse.density_limit`; :attr:`gather_max_density` overrides it;
    scaled down for fewer than 3200 rows), both LRT
    moments (``sample``) or the deterministic pre-activation (``mode``, ``mean``, ``fixed``)
    are computed by summing the weight-table rows of the active inputs
    (:mod:`sbnn.functional.sparse`) instead of dense matmuls; the weight gradient is a
    scatter-add of the output-gradient rows and the input gradient stays dense. The result equals the dense path's
    within float rounding (exactly, for ±1 weights in ``mode``/``fixed``). The input density is
    estimated on every call; an input whose nonzero values are not all 1 runs dense, and so do
    CUDA tensors. Under ``torch.compile`` (``sample`` mode, CPU) the same choice is made inside
    one operator, ``torch.ops.sbnn.spike_moments``, since a data-dependent branch would break the
    graph; the deterministic modes compile dense.
    ``gather`` (``"auto"``, ``"always"``, ``"never"``) overrides the choice for tests and
    benchmarks (:func:`gather_path`). ``moments`` also accepts a
    :class:`~sbnn.functional.sparse.SpikeIndices`, always gathered.

    Example:
        >>> layer = BernoulliLinear(4, 3)
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
        scale: Literal["layer", "channel"] = "layer",
        learn_scale: bool = True,
        lam_init: Literal["normal", "bayesbinn", "zero"] = "normal",
        lam_std: float = 0.5,
        prior_lam: float | Tensor = 0.0,
        return_moments: bool = False,
    ) -> None:
        check_positive_int("BernoulliLinear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        super().__init__(
            (out_features, in_features),
            bias=bias,
            scale=scale,
            learn_scale=learn_scale,
            lam_init=lam_init,
            lam_std=lam_std,
            prior_lam=prior_lam,
            return_moments=return_moments,
        )

    #: crossover input density of the event-driven path (see the class docstring); ``None``: the
    #: measured one for this layer's table size (:func:`~sbnn.functional.sparse.density_limit`)
    gather_max_density: float | None = None
    #: ``auto`` (by density), ``always`` or ``never``; an override for tests and benchmarks
    gather: str = "auto"

    def _check(self, x: Tensor) -> None:
        check_input(x, repr(self), ndims=(2, 3), size=self.in_features, what="([B, in] or [T, B, in])")

    def table_bytes(self) -> int:
        """Size of the event-driven path's weight table ``[in, 2·out]`` (both LRT moments), in bytes."""
        return 2 * self.in_features * self.out_features * self.lam.element_size()

    def _spike_indices(self, x: Tensor) -> SpikeIndices | None:
        """Indices of a binary ``x`` when the gather path should run on it, else ``None``."""
        check_choice(f"{type(self).__name__}.gather", self.gather, GATHER_CHOICES)
        if self.gather == "never" or x.numel() == 0:
            return None
        if self.gather == "auto" and not use_gather(x, self.gather_max_density, table_bytes=self.table_bytes()):
            return None
        # counts or real values: the dense path
        return binary_indices(x)

    def moments(self, x: Tensor | SpikeIndices, *, binary: bool = False, validate: bool = True) -> Moments:
        """As :meth:`BernoulliLayer.moments`, through the event-driven path where it pays (class docstring)."""
        if isinstance(x, SpikeIndices):
            if len(x.shape) not in (2, 3) or x.shape[-1] != self.in_features:
                raise ValueError(
                    f"{self!r}: SpikeIndices of shape {x.shape} given; expected [B, {self.in_features}] "
                    f"or [T, B, {self.in_features}]"
                )
            return self._gather_moments(None, x)
        if validate:
            self._check(x)
        if binary and torch.compiler.is_compiling():
            return self._compiled_moments(x)
        idx = self._spike_indices(x) if binary else None
        if idx is not None:
            return self._gather_moments(x, idx)
        return super().moments(x, binary=binary, validate=False)

    def _compiled_moments(self, x: Tensor) -> Moments:
        """:meth:`moments` of spikes while ``torch.compile`` traces: the density's choice is made
        inside one operator (:func:`~sbnn.functional._sparse_operators.compiled_spike_moments`),
        since a data-dependent branch would break the graph. ``sample`` mode on CPU floats; the
        deterministic modes and other devices take the dense path."""
        check_choice(f"{type(self).__name__}.gather", self.gather, GATHER_CHOICES)
        if (
            self._mode != "sample" or self.gather == "never" or not HAS_CUSTOM_OP or x.numel() == 0
            or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dtype != self.lam.dtype
        ):
            return super().moments(x, binary=True, validate=False)
        from .functional._sparse_operators import compiled_spike_moments  # registers the operators on first use

        max_density = 1.0 if self.gather == "always" else self.gather_max_density
        return Moments(*compiled_spike_moments(x, lrt_table(self.lam, self.scale), self.bias, max_density))

    def _gather_moments(self, x: Tensor | None, idx: SpikeIndices) -> Moments:
        spikes = idx if x is None else x
        if self._mode == "sample":
            return Moments(*lrt_linear_gather(spikes, self.lam, self.scale, self.bias, indices=None if x is None else idx))
        table = self.binary_weight().t().contiguous()
        # α after the ±1 sum, as in _apply_weight: exact integer sums, bit-identical to the dense path
        out = gather_sum(spikes, table, indices=None if x is None else idx) * self.scale
        return Moments(out if self.bias is None else out + self.bias, None)

    def _lrt(self, x: Tensor, x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return lrt_linear(x, self.lam, self.scale, self.bias, x_sq)

    def _unit_lrt(self, x: Tensor, x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return lrt_linear(x, self.lam, torch.ones_like(self.log_scale), None, x_sq)

    def _apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        # α after the ±1 matmul: for spike or count inputs the sum is then an exact integer, so
        # the deterministic network computes exactly fl(α·n) + b, what the event-driven engine
        # computes (sbnn.kernels' bit-identity guarantee)
        out = F.linear(x, weight) * self.scale
        return out if self.bias is None else out + self.bias

    def time_weighted(self, x: Tensor, weights: Tensor, *, binary: bool = False, validate: bool = True) -> Tensor:
        """``Σ_t weights[t]·h[t]`` for a time-major input, ``h[t]`` this layer's pre-activation.

        In ``sample`` mode the per-step LRT samples are independent Gaussians, so their weighted
        sum is drawn exactly as one: mean ``α m·Σ_t w_t x_t + b Σ_t w_t``, variance
        ``α² (1 − m²)·Σ_t w_t² x_t²``. Two matmuls on ``[B, in]`` instead of ``[T·B, in]``; this
        is how a time-averaged leaky readout membrane is computed (it is linear in ``h``).

        Args:
            x: ``[T, B, in]``.
            weights: ``[T]``.
            binary: ``x`` holds 0/1 spikes (``x² = x``: :func:`~sbnn.functional.layers.time_weighted_moments`).
            validate: check ``x`` (a model passing its own hidden spikes skips it).

        Returns:
            ``[B, out]``.
        """
        if validate:
            self._check(x)
        if self._mode == "sample":
            summed, summed_sq = time_weighted_moments(weights, x, binary=binary)
            out = sample_moments(Moments(*lrt_linear(summed, self.lam, self.scale, None, summed_sq)), batch_dim=0)
        else:
            out = F.linear(torch.tensordot(weights, x, dims=1), self.binary_weight()) * self.scale
        return out if self.bias is None else out + self.bias * weights.sum()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, mode={self._mode}"


class gather_path:
    """Context manager: force the event-driven choice of every :class:`BernoulliLinear` in a module.

    For tests and benchmarks (the default ``auto`` chooses by the input's density); the previous
    choices are restored on exit.

    Args:
        module: a layer or a whole model.
        choice: ``"auto"``, ``"always"`` or ``"never"``.

    Example:
        >>> layer = BernoulliLinear(4, 3)
        >>> with gather_path(layer, "never"):
        ...     layer.gather
        'never'
        >>> layer.gather
        'auto'
    """

    def __init__(self, module: nn.Module, choice: str) -> None:
        check_choice("gather_path choice", choice, GATHER_CHOICES)
        self.layers = [m for m in module.modules() if isinstance(m, BernoulliLinear)]
        self.choice = choice
        self.saved: list[str] = []

    def __enter__(self) -> "gather_path":
        self.saved = [layer.gather for layer in self.layers]
        for layer in self.layers:
            layer.gather = self.choice
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, choice in zip(self.layers, self.saved):
            layer.gather = choice


class Conv2dGeometry:
    """The ``nn.Conv2d`` geometry of a 2-D convolution layer of either weight family: its
    arguments checked and stored, its input checked, a leading time axis folded into the batch."""

    def _set_geometry(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int] | str,
        dilation: int | tuple[int, int],
        groups: int,
    ) -> tuple[int, ...]:
        """Check and store the geometry; returns the weight shape ``[C_out, C_in/groups, kH, kW]``."""
        owner = type(self).__name__
        check_positive_int(owner, in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{owner}: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must both be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        return (out_channels, in_channels // groups, *self.kernel_size)

    def _check(self, x: Tensor) -> None:
        check_input(
            x, repr(self), ndims=(4, 5), size=self.in_channels, dim=x.dim() - 3 if isinstance(x, Tensor) else -3,
            what="([B, C_in, H, W] or [T, B, C_in, H, W])",
        )

    @staticmethod
    def _folded(fn, x: Tensor):
        """Apply ``fn`` to ``[N, C, H, W]``, folding a leading time dimension into the batch."""
        if x.dim() == 4:
            return fn(x)
        t, b = x.shape[:2]
        out = fn(x.reshape(t * b, *x.shape[2:]))
        if isinstance(out, tuple):
            return tuple(o.reshape(t, b, *o.shape[1:]) for o in out)
        return out.reshape(t, b, *out.shape[1:])


class BernoulliConv2d(Conv2dGeometry, BernoulliLayer):
    """Bernoulli-posterior ±1 2-D convolution ``h = α·conv(x, w) + b``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            ``nn.Conv2d``.
        scale, learn_scale, lam_init, lam_std, prior_lam, return_moments: see
            :class:`BernoulliLayer`.

    Shape:
        - Input: ``[B, C_in, H, W]`` or time-major ``[T, B, C_in, H, W]`` (time is folded into the
          batch for one convolution).
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
        scale: Literal["layer", "channel"] = "layer",
        learn_scale: bool = True,
        lam_init: Literal["normal", "bayesbinn", "zero"] = "normal",
        lam_std: float = 0.5,
        prior_lam: float | Tensor = 0.0,
        return_moments: bool = False,
    ) -> None:
        super().__init__(
            self._set_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation, groups),
            bias=bias,
            scale=scale,
            learn_scale=learn_scale,
            lam_init=lam_init,
            lam_std=lam_std,
            prior_lam=prior_lam,
            return_moments=return_moments,
        )

    def _conv_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def _lrt(self, x: Tensor, x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # the convolution has no one-pass x² = x path: ``binary`` changes nothing here
        return self._folded(lambda z: lrt_conv2d(z, self.lam, self.scale, self.bias, **self._conv_kwargs()), x)

    def _unit_lrt(self, x: Tensor, x_sq: Tensor | None = None) -> tuple[Tensor, Tensor]:
        one = torch.ones_like(self.log_scale)
        return self._folded(lambda z: lrt_conv2d(z, self.lam, one, None, **self._conv_kwargs()), x)

    def _apply_weight(self, x: Tensor, weight: Tensor) -> Tensor:
        # α after the ±1 convolution, as in BernoulliLinear (exact integer sums for spikes)
        scale = scale_shape(self.scale, 3, 0)
        bias = None if self.bias is None else scale_shape(self.bias, 3, 0)

        def conv(z: Tensor) -> Tensor:
            out = F.conv2d(z, weight, None, **self._conv_kwargs()) * scale
            return out if bias is None else out + bias

        return self._folded(conv, x)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, mode={self._mode}"
        )

"""Frozen settings records shared by every model of :mod:`sbnn.models`.

One record per concern, so that a neuron or layer option is declared once and every model gets
it: :class:`NeuronSettings` (every :class:`~sbnn.StochasticLIF` constant), :class:`LayerSettings`
(every weight layer option a model exposes, of either family) and :class:`CalibrationSettings`
(the targets of the data-dependent scale initialisation). They are plain frozen dataclasses: they pickle, compare
by value, and a LightningCLI/jsonargparse YAML gives them in nested form::

    network:
      class_path: sbnn.models.SpikingMLP
      init_args:
        in_features: 50
        hidden: [128]
        num_classes: 10
        neuron: {beta: 0.9, estimator: st}
        layer: {bias: false}
        calibration: {hidden_gain: 2.0, readout_std: 3.0}

Every constraint is checked in ``__post_init__``, so a wrong value fails when the record is built,
with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

from .._validation import check_choice, check_in_range
from ..functional.estimators import Estimator, get_estimator
from ..functional.neurons import MEMBRANE_NOISE_MODELS, RESET_MECHANISMS
from ..neurons import StochasticLIF
from ..weight_families import WEIGHT_FAMILIES, WeightLayer, conv_layer, linear_layer

__all__ = ["NeuronSettings", "LayerSettings", "CalibrationSettings", "as_settings"]


@dataclass(frozen=True)
class NeuronSettings:
    """Constants of every :class:`~sbnn.StochasticLIF` of a model (see that class for each one).

    Args:
        beta: membrane leak ``β ∈ [0, 1]``.
        threshold: firing threshold ``ϑ > 0``.
        sigma0: intrinsic noise standard deviation ``σ0 ≥ 0``.
        eps_min: floor of the noise standard deviation (``> 0``).
        noise: ``"gaussian"`` (probit link) or ``"logistic"``.
        estimator: spike-gradient estimator name (see :mod:`sbnn.estimators`).
        estimator_kwargs: its hyper-parameters, e.g. ``{"tau": 0.5}``.
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.
        detach_reset: stop the gradient through the reset term.
        membrane_noise: ``"pathwise"`` or ``"marginal"`` (see :mod:`sbnn.functional.neurons`).
        learn_beta, learn_threshold: make ``β``/``ϑ`` trainable.
        sigma_b: threshold-noise standard deviation ``σ_b ≥ 0`` (0: none; see
            :class:`~sbnn.StochasticLIF`).
        learn_sigma_b: learn ``σ_b = softplus(ρ_b)`` (needs ``sigma_b > 0``, its initial value).
        reset_leak: leak the subtract reset with the membrane, ``M[t] = β(M[t−1] − ϑS[t−1]) + μ[t]``
            (the SBNN authors' code; needs ``membrane_noise="marginal"``; default ``False``).

    Raises:
        ValueError: for a value out of range or an unknown name; TypeError for an estimator
            hyper-parameter the estimator does not take.
    """

    beta: float = 0.9
    threshold: float = 1.0
    sigma0: float = 0.1
    eps_min: float = 1e-3
    noise: Literal["gaussian", "logistic"] = "gaussian"
    estimator: str = "st"
    estimator_kwargs: dict[str, float] | None = None
    reset_mechanism: Literal["subtract", "zero", "none"] = "subtract"
    detach_reset: bool = True
    membrane_noise: Literal["pathwise", "marginal"] = "pathwise"
    learn_beta: bool = False
    learn_threshold: bool = False
    sigma_b: float = 0.0
    learn_sigma_b: bool = False
    reset_leak: bool = False

    def __post_init__(self) -> None:
        if self.reset_leak and (self.membrane_noise != "marginal" or self.reset_mechanism != "subtract"):
            raise ValueError(
                "neuron.reset_leak=True (the leaked subtract reset) needs neuron.membrane_noise: marginal and "
                f"neuron.reset_mechanism: subtract, got {self.membrane_noise!r} and {self.reset_mechanism!r}"
            )
        check_in_range("neuron.beta", self.beta, 0.0, 1.0)
        check_in_range("neuron.sigma_b", self.sigma_b, 0.0)
        if self.learn_sigma_b and not self.sigma_b > 0:
            raise ValueError(
                "neuron.learn_sigma_b=True needs neuron.sigma_b > 0, its initial value "
                "(σ_b = softplus(ρ_b) never reaches 0); e.g. sigma_b: 0.127 (softplus(-2))"
            )
        check_in_range("neuron.threshold", self.threshold, 0.0, low_open=True)
        check_in_range("neuron.sigma0", self.sigma0, 0.0)
        check_in_range("neuron.eps_min", self.eps_min, 0.0, low_open=True)
        check_choice("neuron.noise", self.noise, ("gaussian", "logistic"))
        check_choice("neuron.reset_mechanism", self.reset_mechanism, RESET_MECHANISMS)
        check_choice("neuron.membrane_noise", self.membrane_noise, MEMBRANE_NOISE_MODELS)
        self.make_estimator()  # an unknown name or hyper-parameter fails here, not at the first neuron

    def make_estimator(self) -> Estimator:
        """The configured estimator instance."""
        return get_estimator(self.estimator, **(self.estimator_kwargs or {}))

    def lif_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~sbnn.StochasticLIF` (the estimator as an instance)."""
        kwargs: dict[str, Any] = asdict(self)
        kwargs.pop("estimator_kwargs")
        kwargs["estimator"] = self.make_estimator()
        return kwargs

    def build(self) -> StochasticLIF:
        """A new :class:`~sbnn.StochasticLIF` with these constants."""
        return StochasticLIF(**self.lif_kwargs())


@dataclass(frozen=True)
class LayerSettings:
    """Options of every weight layer of a model, of either family (:mod:`sbnn.weight_families`).

    ``weights`` chooses the family; the other fields apply to one family each (the rest are
    ignored): ``lam_std``, ``prior_lam``, ``lam_init``, ``scale``, ``learn_scale`` to Bernoulli
    layers, ``sigma_init``, ``prior_std``, ``variance_input_grad`` to Gaussian ones. The SBNN
    paper's configuration (Walker et al. 2025's code) is
    ``{weights: gaussian, variance_input_grad: false}`` with the other defaults.

    Args:
        weights: ``"bernoulli"`` (±1 weights, :class:`~sbnn.BernoulliLinear`; default) or
            ``"gaussian"`` (real weights, :class:`~sbnn.GaussianLinear`).
        bias: learn float biases.
        lam_std: standard deviation of the ``λ ~ N(0, lam_std²)`` initialisation (``> 0``).
        prior_lam: natural parameter of the Bernoulli prior (0: uniform).
        lam_init: ``"normal"``, ``"bayesbinn"`` (``±10``) or ``"zero"``.
        scale: ``"layer"`` (one ``α``) or ``"channel"`` (one per output channel).
        learn_scale: make ``log α`` trainable.
        sigma_init: Gaussian layers' ``σ_w = sigma_init/√fan_in`` at initialisation (``> 0``).
        prior_std: standard deviation of a zero-mean Gaussian weight prior (``> 0``), or ``None``
            (no weight KL, the paper's objective).
        variance_input_grad: whether a Gaussian layer's variance ``σ_w² Σ x²`` sends gradient to
            its input.
        time_affine_steps: ``None`` (default) or ``T_max``: give every layer that feeds a hidden
            neuron a learned per-channel gain and bias for each of ``T_max`` time steps
            (:mod:`sbnn.models.time_affine`); longer inputs are refused.
        time_batch_norm: with ``time_affine_steps``, normalise each step's pre-activation by its
            batch statistics first (a BatchNorm per layer and time step, running statistics in
            evaluation): the full-precision baseline of the SBNN paper. Off by default.
        time_affine_variance: whether the per-time-step gain also scales the variance
            (``v' = g²v``, default) or the mean only (the SBNN authors' code).
        time_affine_recurrent: ``"own"`` (default: a recurrent layer's current gets its own gain
            and bias) or ``"shared"`` (the recurrent current shares the feed-forward layer's:
            ``g[t]·(W x + R S[t−1]) + b[t]``, the authors' SHD network).
        recurrent_self_variance: Gaussian recurrent layers keep the diagonal's variance term
            (:class:`~sbnn.GaussianLinear` ``self_variance``; the authors' code). Default ``False``;
            ignored with ±1 weights (their recurrent layers have no zero diagonal), so that one
            setting, ``weights``, switches a paper configuration between the families.
        readout_noise: ``True`` (default): the readout layer is a Bayesian layer like the others
            (LRT noise in ``sample`` mode); ``False``: the readout uses its mean weights in every
            mode (the authors' deterministic output layer).
        readout_bias: the readout layer's bias: ``None`` (default) follows ``bias``; ``True`` or
            ``False`` overrides it (the authors' DVS Gesture readout is an ``nn.Linear`` with a
            bias behind bias-free convolutions).
    """

    bias: bool = False
    lam_std: float = 0.5
    prior_lam: float = 0.0
    lam_init: Literal["normal", "bayesbinn", "zero"] = "normal"
    scale: Literal["layer", "channel"] = "layer"
    learn_scale: bool = True
    weights: Literal["bernoulli", "gaussian"] = "bernoulli"
    sigma_init: float = 0.5
    prior_std: float | None = None
    variance_input_grad: bool = True
    time_affine_steps: int | None = None
    time_batch_norm: bool = False
    time_affine_variance: bool = True
    time_affine_recurrent: Literal["own", "shared"] = "own"
    recurrent_self_variance: bool = False
    readout_noise: bool = True
    readout_bias: bool | None = None

    def __post_init__(self) -> None:
        check_choice("layer.time_affine_recurrent", self.time_affine_recurrent, ("own", "shared"))
        check_in_range("layer.lam_std", self.lam_std, 0.0, low_open=True)
        steps = self.time_affine_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(
                f"layer.time_affine_steps must be None (no per-time-step gain and bias) or a positive integer, the "
                f"longest sequence the model will run; got {steps!r}"
            )
        if self.time_batch_norm and steps is None:
            raise ValueError(
                "layer.time_batch_norm normalises per time step, so it needs layer.time_affine_steps (the longest "
                "sequence the model will run); set both, e.g. {time_affine_steps: 100, time_batch_norm: true}"
            )
        if self.time_batch_norm and self.time_affine_recurrent == "shared":
            raise ValueError(
                "layer.time_batch_norm normalises each layer's own current, which layer.time_affine_recurrent: shared "
                "(one gain for the feed-forward and recurrent currents) cannot share; use one of the two"
            )
        check_in_range("layer.prior_lam", self.prior_lam)
        check_choice("layer.lam_init", self.lam_init, ("normal", "bayesbinn", "zero"))
        check_choice("layer.scale", self.scale, ("layer", "channel"))
        check_choice("layer.weights", self.weights, WEIGHT_FAMILIES)
        check_in_range("layer.sigma_init", self.sigma_init, 0.0, low_open=True)
        if self.prior_std is not None:
            check_in_range("layer.prior_std", self.prior_std, 0.0, low_open=True)

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of the family's layer classes.

        Bernoulli: exactly those of :class:`~sbnn.BernoulliLinear`/:class:`~sbnn.BernoulliConv2d`.
        Gaussian: those of :class:`~sbnn.GaussianLinear`/:class:`~sbnn.GaussianConv2d` plus
        ``weights="gaussian"``, for :func:`sbnn.weight_families.linear_layer`.
        """
        if self.weights == "gaussian":
            kwargs: dict[str, Any] = {name: getattr(self, name) for name in _GAUSSIAN_FIELDS}
            return {"weights": "gaussian", **kwargs, **overrides}
        kwargs = {name: getattr(self, name) for name in _BERNOULLI_FIELDS}
        return {**kwargs, **overrides}

    def linear(self, in_features: int, out_features: int, **overrides: Any) -> WeightLayer:
        """A new linear layer of the family (``overrides``, e.g. ``bias=False``, win)."""
        return linear_layer(in_features, out_features, **self.kwargs(**overrides))

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> WeightLayer:
        """A new 2-D convolution of the family."""
        return conv_layer(in_channels, out_channels, kernel_size, stride, padding, **self.kwargs())


_BERNOULLI_FIELDS = ("bias", "lam_std", "prior_lam", "lam_init", "scale", "learn_scale")
_GAUSSIAN_FIELDS = ("bias", "sigma_init", "prior_std", "variance_input_grad")


@dataclass(frozen=True)
class CalibrationSettings:
    """Targets of a model's data-dependent scale initialisation (:meth:`SpikingClassifier.calibrate`).

    The defaults are the values the recipes train with (``docs/design.md §7``): hidden
    free-membrane standard deviation ``2ϑ`` and logit standard deviation 3. Deep residual
    networks started at the library's ``λ`` initialisation train better from a small logit
    scale, 0.5 (``docs/depth_study.md``): :class:`~sbnn.models.SpikingResNet` and
    :class:`~sbnn.models.ResidualSpikingMLP` default to ``CalibrationSettings(readout_std=0.5)``.
    Started nearer the deterministic network (``LayerSettings(lam_std=2.0)``, as
    ``recipes/shd_resnet.yaml``), a depth-8 residual network trains as well or better at 3
    (``docs/results.md``).

    Args:
        hidden_gain: target standard deviation of a hidden layer's free membrane
            ``U[t] = βU[t−1] + h[t]``, in thresholds (``> 0``).
        readout_std: target standard deviation of the membrane readout's logits (``> 0``).
        recurrent_gain: target of a recurrent input's free-membrane standard deviation, as a
            fraction of the feed-forward one (``> 0``; recurrent layers only).
    """

    hidden_gain: float = 2.0
    readout_std: float = 3.0
    recurrent_gain: float = 0.5

    def __post_init__(self) -> None:
        check_in_range("calibration.hidden_gain", self.hidden_gain, 0.0, low_open=True)
        check_in_range("calibration.readout_std", self.readout_std, 0.0, low_open=True)
        check_in_range("calibration.recurrent_gain", self.recurrent_gain, 0.0, low_open=True)


_S = TypeVar("_S", NeuronSettings, LayerSettings, CalibrationSettings)


def as_settings(cls: type[_S], value: _S | Mapping[str, Any], owner: str, name: str) -> _S:
    """``value`` as a ``cls`` record: a record is returned as is, a mapping (e.g. read from a
    config file) is validated field by field.

    Raises:
        ValueError: for another type, an unknown key (listing the valid ones) or a bad value.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise ValueError(f"{owner}: {name} has unknown keys {unknown}; valid keys are {valid}")
        return cls(**value)
    raise ValueError(
        f"{owner}: {name} must be a {cls.__name__} or a mapping of its fields (in YAML: {name}: {{...}}), "
        f"got {type(value).__name__}"
    )

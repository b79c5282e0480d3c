r"""Deep normalisation-free residual SBNNs: ``SpikingResNet`` (frames) and ``ResidualSpikingMLP``.

Both are ``stem → residual blocks → readout`` with the blocks of :mod:`sbnn.blocks` and no
normalisation layer anywhere:

- **stem**: a Bernoulli layer on the input (membrane shortcut: its LRT moments *are* the stream;
  spike shortcut: followed by a stochastic LIF, whose spikes start the stream);
- **blocks**: ``x + γ·F(x)``, downsampling shortcuts at stage changes;
- **readout**: (membrane shortcut: a final stochastic LIF on the stream) → global average over
  space (or, for ``SpikingResNet(readout_pool="flatten")``, every position) → the time-averaged membrane of a non-spiking leaky Bernoulli output layer, as
  :class:`sbnn.models.SpikingMLP`.

``depth`` counts the Bernoulli layers on the main path, as ResNet does: stem + 2 per block +
readout, so ``depth = 2 + 2·n_blocks`` (``SpikingResNet``: ``n_blocks`` spread evenly over the
stages, i.e. ``depth = 2 + 2·len(widths)·k``: 8, 14, 20, 26, 32, ... for three stages).

Both models follow :class:`~sbnn.models.SpikingMLP`'s contract (``forward``,
``forward_with_spikes``, ``calibrate``), so :class:`sbnn.lightning.SpikingClassificationTask`
trains them, calibrates them on a first batch and logs their firing rates.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, Sequence

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor, nn

from ._validation import check_choice, check_in_range, check_input, check_positive_int
from .blocks import ConvResidualBlock, LinearResidualBlock, calibrate_rms_, lrt_second_moment
from .functional.estimators import get_estimator
from .functional.neurons import leaky_integrate, time_average_weights
from .layers import BernoulliConv2d, BernoulliLayer, BernoulliLinear, Moments
from .modes import evaluation
from .neurons import StochasticLIF

__all__ = ["SpikingResNet", "ResidualSpikingMLP", "lambda_gradient_norms"]


def lambda_gradient_norms(model: nn.Module, x: Tensor, y: Tensor, n_draws: int = 8) -> dict[str, Tensor]:
    """Mean ``‖∂NLL/∂λ‖`` of every Bernoulli layer over ``n_draws`` noisy (``sample``) passes.

    The per-layer gradient-norm profile the depth study reports; ``model``'s existing gradients
    are left untouched (computed with :func:`torch.autograd.grad`).

    Args:
        model: returns logits ``[B, K]``.
        x: a batch in the model's layout; y: ``[B]`` labels.
        n_draws: noise draws averaged (the estimate of one pass is noisy).

    Returns:
        ``{layer name: norm}`` in module order, each a 0-dim tensor.
    """
    check_positive_int("lambda_gradient_norms", n_draws=n_draws)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BernoulliLayer)}
    if not layers:
        raise ValueError(f"lambda_gradient_norms: {type(model).__name__} has no Bernoulli layers")
    total = torch.zeros(len(layers))
    with evaluation(model, "sample"):
        for _ in range(n_draws):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [m.lam for m in layers.values()], allow_unused=True)
            total += torch.stack([g.norm() if g is not None else torch.zeros(()) for g in grads]).detach()
    return dict(zip(layers, total / n_draws))


def _check_depth(owner: str, depth: Any, n_stages: int) -> int:
    """Blocks per stage ``k`` for ``depth = 2 + 2·n_stages·k``, or a ValueError listing valid depths."""
    step = 2 * n_stages
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2 + step or (depth - 2) % step:
        valid = ", ".join(str(2 + step * k) for k in range(1, 6))
        raise ValueError(
            f"{owner}: depth={depth!r} does not fit {n_stages} stage(s): depth counts the stem, two Bernoulli "
            f"layers per residual block and the readout, so it must be 2 + {step}·k with k ≥ 1 blocks per "
            f"stage ({valid}, ...); change depth or the number of widths"
        )
    return (depth - 2) // step


class _ResidualSBNN(nn.Module):
    """Shared forward, calibration and rate bookkeeping of the residual SBNNs."""

    stem: BernoulliConv2d | BernoulliLinear
    blocks: nn.ModuleList
    output: BernoulliLinear

    def _init_common(
        self,
        *,
        shortcut: str,
        beta: float,
        threshold: float,
        sigma0: float,
        noise: str,
        estimator: str,
        estimator_kwargs: dict[str, Any] | None,
        reset_mechanism: str,
        detach_reset: bool,
        readout_beta: float,
        bias: bool,
        lam_std: float,
        prior_lam: float,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        check_choice("shortcut", shortcut, ("membrane", "spike"))
        check_in_range("readout_beta", readout_beta, 0.0, 1.0)
        est = get_estimator(estimator, **(estimator_kwargs or {}))
        neuron = dict(
            beta=beta, threshold=threshold, sigma0=sigma0, noise=noise, estimator=est,
            reset_mechanism=reset_mechanism, detach_reset=detach_reset,
        )
        layer = dict(bias=bias, lam_std=lam_std, prior_lam=prior_lam)
        # membrane shortcut: a final neuron turns the stream into spikes for the readout;
        # spike shortcut: the stem's neuron makes the first spikes
        self.shortcut, self.readout_beta = shortcut, readout_beta
        self.neuron = StochasticLIF(**neuron)
        return neuron, layer

    def _check(self, x: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _pool(self, spikes: Tensor) -> Tensor:
        return spikes

    def _stem_moments(self, x: Tensor) -> Moments:
        return self.stem._moments(x)

    def _features(self, stream: Moments, spikes: list[Tensor]) -> Tensor:
        """What the readout sees (before pooling); appends the final neuron's spikes to ``spikes``."""
        if self.shortcut == "spike":
            return stream.mean
        feats, _ = self.neuron.sequence(stream, validate=False)
        spikes.append(feats)
        return feats

    def forward_with_spikes(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, K]`` and every stochastic neuron's spike trains (for rate logging)."""
        self._check(x)
        spikes: list[Tensor] = []
        stream = self._stem_moments(x)
        if self.shortcut == "spike":
            spk, _ = self.neuron.sequence(stream, validate=False)
            spikes.append(spk)
            stream = Moments(spk, None)
        for block in self.blocks:
            stream, block_spikes = block(stream, validate=False)
            spikes.extend(block_spikes)
        feats = self._features(stream, spikes)
        # mean_t of the leaky readout membrane is a fixed weighted sum over time (SpikingMLP)
        pooled = self._pool(feats)
        weights = time_average_weights(pooled.shape[0], self.readout_beta, like=pooled)
        return self.output.time_weighted(pooled, weights), spikes

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, K]`` for a time-major input."""
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0, readout_std: float = 0.5) -> list[float]:
        """Data-dependent scales ``α`` from the LRT moments on a batch, layer by layer (DESIGN §1.6, §7).

        The stem gives the first neuron a free-membrane RMS of ``hidden_gain·ϑ``; each block
        calibrates itself (:meth:`sbnn.blocks.ConvResidualBlock.calibrate`: its branch matches the
        stream's scale); the readout's logits get standard deviation ``readout_std``. Warns when a
        neuron then fires at a rate below 0.1 %.

        ``readout_std`` defaults to 0.5 here, not :class:`~sbnn.models.SpikingMLP`'s 3: a deep
        residual net started with noisy, confident logits silences its last neuron (cutting the
        readout's LRT noise, which grows with the input spikes) and then stalls; a small initial
        logit scale, as Fixup/SkipInit's zero-initialised last layer, avoids it
        (``docs/depth_study.md``). :class:`~sbnn.lightning.SpikingClassificationTask` passes its
        own ``readout_std``: set it to 0.5 in recipes for these models.

        Args:
            x: a training batch (same layout as ``forward``).

        Returns:
            The firing rate of every neuron, in forward order.
        """
        check_in_range("hidden_gain", hidden_gain, 0.0, low_open=True)
        check_in_range("readout_std", readout_std, 0.0, low_open=True)
        self._check(x)
        rates: list[float] = []
        with evaluation(self, "sample"):
            first = self.blocks[0].lif_in if self.shortcut == "membrane" else self.neuron
            calibrate_rms_(self.stem, x, hidden_gain * float(first.threshold.mean()), first.beta)
            stream = self._stem_moments(x)
            if self.shortcut == "spike":
                spk, _ = self.neuron.sequence(stream, validate=False)
                rates.append(float(spk.mean()))
                stream = Moments(spk, None)
            for block in self.blocks:
                stream, block_rates = block.calibrate(stream, hidden_gain)
                rates.extend(block_rates)
            spikes: list[Tensor] = []
            feats = self._features(stream, spikes)
            rates.extend(float(s.mean()) for s in spikes)
            self.output.calibrate_scale_(
                self._pool(feats), readout_std, lambda h: leaky_integrate(h, self.readout_beta).mean(0)
            )
        silent = [i for i, r in enumerate(rates) if r < 1e-3]
        if silent:
            warnings.warn(
                f"{type(self).__name__}.calibrate: neurons {silent} fire at rates below 1e-3 after calibration; "
                "the network will not learn (raise hidden_gain or check the input activity)",
                RuntimeWarning,
                stacklevel=2,
            )
        return rates

    def stream_second_moments(self, x: Tensor) -> list[float]:
        """Per-step second moment ``E[μ² + v]`` of the stream after the stem and after each block.

        The quantity :mod:`sbnn.blocks` keeps at scale (``docs/theory.md``); runs in the current
        network mode (``v`` counts as 0 in deterministic modes).
        """
        self._check(x)
        with torch.no_grad():
            stream = self._stem_moments(x)
            if self.shortcut == "spike":
                stream = Moments(self.neuron.sequence(stream, validate=False)[0], None)
            out = [float(lrt_second_moment(stream))]
            for block in self.blocks:
                stream, _ = block(stream, validate=False)
                out.append(float(lrt_second_moment(stream)))
        return out


class SpikingResNet(_ResidualSBNN):
    r"""Normalisation-free spiking Bayesian ResNet for frames (DVS Gesture, CIFAR-10-shaped inputs).

    ``stem`` (3×3 Bernoulli conv, ``stem_stride``) → ``len(widths)`` stages of ``k`` residual blocks
    (:class:`~sbnn.blocks.ConvResidualBlock`; stage ``i > 0`` opens with stride 2 and width
    ``widths[i]``) → global average pooling → membrane readout. ``depth = 2 + 2·len(widths)·k``:
    with the default three widths, 8, 14, 20, 26, 32, ...

    Args:
        in_channels: input channels (2 for DVS polarity frames, 3 for RGB).
        num_classes: number of classes ``K``.
        depth: Bernoulli layers on the main path (see above).
        widths: channels of each stage.
        input_size: ``(H, W)`` of the frames the model is built for; checked against the number
            of downsampling stages here and against the data in ``forward``.
        stem_stride: stride of the stem convolution (e.g. 2 or 4 for 128×128 DVS frames).
        shortcut: ``"membrane"`` (default) or ``"spike"`` (SEW), see :mod:`sbnn.blocks`.
        downsample: ``"conv"`` (strided Bernoulli conv) or ``"pool"`` shortcut at stage changes.
        readout_pool: ``"avg"`` (global average pooling, any frame size ``≥`` the minimum) or
            ``"flatten"`` (the readout sees every position of the last feature map; frames must
            then have exactly ``input_size``). On small data sets with few channels ``"flatten"``
            trains far better: global pooling leaves the readout ``widths[-1]`` spike rates.
        gamma_init: initial residual gain ``γ`` of every block.
        beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism, detach_reset, readout_beta, bias, lam_std, prior_lam:
            as :class:`sbnn.models.SpikingMLP`.

    Shape:
        - Input: ``[T, B, in_channels, H, W]`` frames (spikes, counts or real values), with
          ``H, W ≥ stem_stride·2^(len(widths)−1)``.
        - Output: logits ``[B, K]``.

    Raises:
        ValueError: for a depth that does not fit the widths, non-positive widths or sizes, or an
            ``input_size`` too small for the downsampling stages (all at construction); for input
            of the wrong rank, channels or spatial size (in ``forward``).

    Example:
        >>> net = SpikingResNet(2, 11, depth=8, widths=(4, 8, 8), input_size=(8, 8))
        >>> tuple(net(torch.rand(3, 2, 2, 8, 8).round()).shape)
        (2, 11)
    """

    def __init__(
        self,
        in_channels: PositiveInt = 3,
        num_classes: PositiveInt = 10,
        depth: PositiveInt = 20,
        widths: Sequence[int] = (16, 32, 64),
        input_size: tuple[int, int] = (32, 32),
        stem_stride: PositiveInt = 1,
        *,
        shortcut: Literal["membrane", "spike"] = "membrane",
        downsample: Literal["conv", "pool"] = "conv",
        readout_pool: Literal["avg", "flatten"] = "avg",
        gamma_init: NonNegativeFloat = 0.2,
        beta: ClosedUnitInterval = 0.9,
        threshold: PositiveFloat = 1.0,
        sigma0: NonNegativeFloat = 0.1,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str = "st",
        estimator_kwargs: dict[str, Any] | None = None,
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        readout_beta: ClosedUnitInterval = 0.9,
        bias: bool = False,
        lam_std: PositiveFloat = 0.5,
        prior_lam: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("SpikingResNet", in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride)
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"SpikingResNet: widths must be a non-empty sequence of positive integers, got {list(widths)!r}")
        per_stage = _check_depth("SpikingResNet", depth, len(widths))
        input_size = tuple(input_size)
        if len(input_size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in input_size):
            raise ValueError(f"SpikingResNet: input_size must be two positive integers (H, W), got {input_size!r}")
        self.min_size = stem_stride * 2 ** (len(widths) - 1)
        if min(input_size) < self.min_size:
            raise ValueError(
                f"SpikingResNet: input_size {input_size} is too small for {len(widths)} stages with "
                f"stem_stride={stem_stride}: the stem and the {len(widths) - 1} downsampling stage(s) divide H "
                f"and W by {self.min_size}, so both must be at least {self.min_size}; use fewer widths, a "
                "smaller stem_stride or larger frames"
            )
        neuron, layer = self._init_common(
            shortcut=shortcut, beta=beta, threshold=threshold, sigma0=sigma0, noise=noise, estimator=estimator,
            estimator_kwargs=estimator_kwargs, reset_mechanism=reset_mechanism, detach_reset=detach_reset,
            readout_beta=readout_beta, bias=bias, lam_std=lam_std, prior_lam=prior_lam,
        )
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.widths, self.input_size, self.stem_stride = widths, input_size, stem_stride
        check_choice("readout_pool", readout_pool, ("avg", "flatten"))
        self.readout_pool = readout_pool
        # 3×3 convolutions with padding 1: a stride s maps n to ⌈n/s⌉
        final = [-(-n // stem_stride) for n in input_size]
        for _ in widths[1:]:
            final = [-(-n // 2) for n in final]
        self.final_size = tuple(final)
        self.stem = BernoulliConv2d(in_channels, widths[0], 3, stem_stride, 1, **layer)
        blocks, prev = [], widths[0]
        for stage, width in enumerate(widths):
            for k in range(per_stage):
                stride = 2 if (stage > 0 and k == 0) else 1
                blocks.append(
                    ConvResidualBlock(
                        prev, width, stride, shortcut=shortcut, downsample=downsample, gamma_init=gamma_init,
                        neuron=neuron, layer=layer,
                    )
                )
                prev = width
        self.blocks = nn.ModuleList(blocks)
        readout_in = widths[-1] * (math.prod(self.final_size) if readout_pool == "flatten" else 1)
        self.output = BernoulliLinear(readout_in, num_classes, **layer)
        self.out_features = num_classes

    def _check(self, x: Tensor) -> None:
        check_input(
            x, "SpikingResNet", ndims=(5,), size=self.in_channels, dim=2,
            what="([T, B, in_channels, H, W], time-major frames)",
        )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"SpikingResNet: frames of size {tuple(x.shape[-2:])} are too small for its {len(self.widths)} "
                f"stages: H and W must be at least {self.min_size}"
            )
        if self.readout_pool == "flatten" and tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"SpikingResNet with readout_pool='flatten' takes frames of exactly input_size={self.input_size}, "
                f"got {tuple(x.shape[-2:])}; resize the frames or use readout_pool='avg'"
            )

    def _pool(self, spikes: Tensor) -> Tensor:
        if self.readout_pool == "flatten":
            return spikes.flatten(-3)  # [T, B, C·h·w]
        return spikes.mean(dim=(-2, -1))  # global average pooling: [T, B, C]


class ResidualSpikingMLP(_ResidualSBNN):
    r"""Deep normalisation-free residual SBNN for spike channels (SHD: 700 inputs, 20 classes).

    ``stem`` (Bernoulli linear ``in_features → width``) → ``(depth − 2)/2`` residual blocks
    (:class:`~sbnn.blocks.LinearResidualBlock`) → membrane readout.

    Args:
        in_features: input channels ``N`` (700 for SHD).
        num_classes: number of classes ``K`` (20 for SHD).
        depth: Bernoulli layers on the main path, ``2 + 2·n_blocks`` (4, 6, 8, ...).
        width: width of the residual stream.
        binary_input: the input holds 0/1 spikes (``x² = x`` in the stem's LRT variance); checked
            on the calibration batch.
        shortcut, gamma_init, beta, threshold, sigma0, noise, estimator, estimator_kwargs, reset_mechanism, detach_reset, readout_beta, bias, lam_std, prior_lam:
            as :class:`SpikingResNet`.

    Shape:
        - Input: ``[T, B, in_features]``.
        - Output: logits ``[B, K]``.

    Example:
        >>> net = ResidualSpikingMLP(700, 20, depth=6, width=32)
        >>> tuple(net(torch.rand(10, 2, 700).lt(0.05).float()).shape)
        (2, 20)
    """

    def __init__(
        self,
        in_features: PositiveInt = 700,
        num_classes: PositiveInt = 20,
        depth: PositiveInt = 8,
        width: PositiveInt = 128,
        *,
        binary_input: bool = False,
        shortcut: Literal["membrane", "spike"] = "membrane",
        gamma_init: NonNegativeFloat = 0.2,
        beta: ClosedUnitInterval = 0.9,
        threshold: PositiveFloat = 1.0,
        sigma0: NonNegativeFloat = 0.1,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str = "st",
        estimator_kwargs: dict[str, Any] | None = None,
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        readout_beta: ClosedUnitInterval = 0.9,
        bias: bool = False,
        lam_std: PositiveFloat = 0.5,
        prior_lam: float = 0.0,
    ) -> None:
        super().__init__()
        check_positive_int("ResidualSpikingMLP", in_features=in_features, num_classes=num_classes, width=width)
        n_blocks = _check_depth("ResidualSpikingMLP", depth, 1)
        neuron, layer = self._init_common(
            shortcut=shortcut, beta=beta, threshold=threshold, sigma0=sigma0, noise=noise, estimator=estimator,
            estimator_kwargs=estimator_kwargs, reset_mechanism=reset_mechanism, detach_reset=detach_reset,
            readout_beta=readout_beta, bias=bias, lam_std=lam_std, prior_lam=prior_lam,
        )
        self.in_features, self.num_classes, self.depth, self.width = in_features, num_classes, depth, width
        self.binary_input = binary_input
        self.stem = BernoulliLinear(in_features, width, **layer)
        self.blocks = nn.ModuleList(
            LinearResidualBlock(width, shortcut=shortcut, gamma_init=gamma_init, neuron=neuron, layer=layer)
            for _ in range(n_blocks)
        )
        self.output = BernoulliLinear(width, num_classes, **layer)
        self.out_features = num_classes

    def _check(self, x: Tensor) -> None:
        check_input(x, "ResidualSpikingMLP", ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")

    def _stem_moments(self, x: Tensor) -> Moments:
        return self.stem._spike_moments(x) if self.binary_input else self.stem._moments(x)

    @torch.no_grad()
    def calibrate(self, x: Tensor, hidden_gain: float = 2.0, readout_std: float = 0.5) -> list[float]:
        if self.binary_input and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                "ResidualSpikingMLP was built with binary_input=True but the calibration batch holds values "
                "other than 0 and 1; build it with binary_input=False for counts or real-valued inputs"
            )
        return super().calibrate(x, hidden_gain, readout_std)

    calibrate.__doc__ = _ResidualSBNN.calibrate.__doc__

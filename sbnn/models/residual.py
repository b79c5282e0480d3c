r"""Deep normalisation-free residual SBNNs: ``SpikingResNet`` (frames) and ``ResidualSpikingMLP``.

Both are ``stem → residual blocks → readout`` with the blocks of :mod:`sbnn.models.blocks` and no
normalisation layer anywhere:

- **stem**: a Bernoulli layer on the input (membrane shortcut: its LRT moments *are* the stream;
  spike shortcut: followed by a stochastic LIF, whose spikes start the stream);
- **blocks**: ``x + γ·F(x)``, downsampling shortcuts at stage changes;
- **readout**: (membrane shortcut: a final stochastic LIF on the stream) → global average over
  space (or, for ``SpikingResNet(readout_pool="flatten")``, every position) → the time-averaged
  membrane of a non-spiking leaky Bernoulli output layer, as :class:`sbnn.models.SpikingMLP`.

``depth`` counts the Bernoulli layers on the main path, as ResNet does: stem + 2 per block +
readout, so ``depth = 2 + 2·n_blocks`` (``SpikingResNet``: ``n_blocks`` spread evenly over the
stages, i.e. ``depth = 2 + 2·len(widths)·k``: 8, 14, 20, 26, 32, ... for three stages).

Calibration (:meth:`~sbnn.models.SpikingClassifier.calibrate`): the stem gives the first neuron a
free-membrane RMS of ``hidden_gain·ϑ``; each block calibrates itself (its branch matches the
stream's scale); the readout's logits get ``calibration.readout_std``. Other models default to 3;
these two default to ``CalibrationSettings(readout_std=0.5)``: a deep residual net started with
noisy, confident logits silences its last neuron (cutting the readout's LRT noise, which grows
with the input spikes) and then stalls; a small initial logit scale, as Fixup/SkipInit's
zero-initialised last layer, avoids it (``docs/depth_study.md``). The mechanism needs a noisy
posterior: started nearer the deterministic network (``layer.lam_std: 2``), the depth-8
``ResidualSpikingMLP`` of ``recipes/shd_resnet.yaml`` trains as well at 3 in SBNN and better in
full precision, where 0.5 makes the readout's first epoch learn almost nothing
(``docs/results.md``), so that recipe sets 3. The other recipes set their value explicitly.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_input, check_positive_int
from ..layers import BernoulliLayer
from ..modes import evaluation
from .base import SpikingClassifier
from .blocks import ConvResidualBlock, LinearResidualBlock, lrt_second_moment
from .settings import CalibrationSettings, LayerSettings, NeuronSettings
from .stages import Pool, ResidualBlockStage, ResidualStem, SpikeOut, Stage

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


class _ResidualClassifier(SpikingClassifier):
    """Shared stages of the residual SBNNs: stem, blocks, final neuron, pooling."""

    stem: BernoulliLayer
    blocks: nn.ModuleList

    def _init_residual(self, shortcut: str) -> tuple[dict[str, Any], dict[str, Any]]:
        check_choice("shortcut", shortcut, ("membrane", "spike"))
        self.shortcut = shortcut
        # membrane shortcut: a final neuron turns the stream into spikes for the readout;
        # spike shortcut: the stem's neuron makes the first spikes
        self.neuron = self.neuron_settings.build()
        return self.neuron_settings.lif_kwargs(), self.layer_settings.kwargs()

    def _pool_stages(self) -> list[Stage]:
        return []

    def stages(self) -> list[Stage]:
        spike = self.shortcut == "spike"
        first = self.neuron if spike else self.blocks[0].lif_in
        return [
            ResidualStem(self.stem, self.neuron if spike else None, first),
            *(ResidualBlockStage(block) for block in self.blocks),
            SpikeOut(None if spike else self.neuron),
            *self._pool_stages(),
        ]

    def stream_second_moments(self, x: Tensor) -> list[float]:
        """Per-step second moment ``E[μ² + v]`` of the stream after the stem and after each block.

        The quantity :mod:`sbnn.models.blocks` keeps at scale (``docs/theory.md``); runs in the
        current network mode (``v`` counts as 0 in deterministic modes).
        """
        self.check_input(x, type(self).__name__)
        stages = self.stages()
        with torch.no_grad():
            stream, binary, _ = stages[0].forward(x, self.binary_input)
            out = [float(lrt_second_moment(stream))]
            for stage in stages[1 : 1 + len(self.blocks)]:
                stream, binary, _ = stage.forward(stream, binary)
                out.append(float(lrt_second_moment(stream)))
        return out


class SpikingResNet(_ResidualClassifier):
    r"""Normalisation-free spiking Bayesian ResNet for frames (DVS Gesture, CIFAR-10-shaped inputs).

    ``stem`` (3×3 Bernoulli conv, ``stem_stride``) → ``len(widths)`` stages of ``k`` residual blocks
    (:class:`~sbnn.models.blocks.ConvResidualBlock`; stage ``i > 0`` opens with stride 2 and width
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
        shortcut: ``"membrane"`` (default) or ``"spike"`` (SEW), see :mod:`sbnn.models.blocks`.
        downsample: ``"conv"`` (strided Bernoulli conv) or ``"pool"`` shortcut at stage changes.
        readout_pool: ``"avg"`` (global average pooling, any frame size ``≥`` the minimum) or
            ``"flatten"`` (the readout sees every position of the last feature map; frames must
            then have exactly ``input_size``). On small data sets with few channels ``"flatten"``
            trains far better: global pooling leaves the readout ``widths[-1]`` spike rates.
        gamma_init: initial residual gain ``γ`` of every block.
        learn_gamma: train every block's ``γ`` (default); ``False`` keeps it at ``gamma_init``
            (the SBNN paper's blocks add their spikes with a fixed 1).
        neuron, layer, calibration, readout_beta: as :class:`sbnn.models.SpikingMLP` (see the
            module docstring for ``calibration.readout_std``).

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
        in_channels: int = 3,
        num_classes: int = 10,
        depth: int = 20,
        widths: Sequence[int] = (16, 32, 64),
        input_size: tuple[int, int] = (32, 32),
        stem_stride: int = 1,
        *,
        shortcut: Literal["membrane", "spike"] = "membrane",
        downsample: Literal["conv", "pool"] = "conv",
        readout_pool: Literal["avg", "flatten"] = "avg",
        gamma_init: float = 0.2,
        neuron: NeuronSettings = NeuronSettings(),
        layer: LayerSettings = LayerSettings(),
        calibration: CalibrationSettings = CalibrationSettings(readout_std=0.5),
        readout_beta: float = 0.9,
        learn_gamma: bool = True,
    ) -> None:
        check_positive_int("SpikingResNet", in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride)
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"SpikingResNet: widths must be a non-empty sequence of positive integers, got {list(widths)!r}")
        per_stage = _check_depth("SpikingResNet", depth, len(widths))
        input_size = tuple(input_size)
        if len(input_size) != 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in input_size):
            raise ValueError(f"SpikingResNet: input_size must be two positive integers (H, W), got {input_size!r}")
        min_size = stem_stride * 2 ** (len(widths) - 1)
        if min(input_size) < min_size:
            raise ValueError(
                f"SpikingResNet: input_size {input_size} is too small for {len(widths)} stages with "
                f"stem_stride={stem_stride}: the stem and the {len(widths) - 1} downsampling stage(s) divide H "
                f"and W by {min_size}, so both must be at least {min_size}; use fewer widths, a "
                "smaller stem_stride or larger frames"
            )
        check_choice("readout_pool", readout_pool, ("avg", "flatten"))
        super().__init__(num_classes, neuron=neuron, layer=layer, calibration=calibration)
        neuron_kwargs, layer_kwargs = self._init_residual(shortcut)
        self.in_channels, self.depth = in_channels, depth
        self.widths, self.input_size, self.stem_stride = widths, input_size, stem_stride
        self.min_size, self.readout_pool = min_size, readout_pool
        # 3×3 convolutions with padding 1: a stride s maps n to ⌈n/s⌉
        final = [-(-n // stem_stride) for n in input_size]
        for _ in widths[1:]:
            final = [-(-n // 2) for n in final]
        self.final_size = tuple(final)
        self.stem = self.layer_settings.conv(in_channels, widths[0], 3, stem_stride, 1)
        blocks, prev = [], widths[0]
        for stage, width in enumerate(widths):
            for k in range(per_stage):
                stride = 2 if (stage > 0 and k == 0) else 1
                blocks.append(
                    ConvResidualBlock(
                        prev, width, stride, shortcut=shortcut, downsample=downsample, gamma_init=gamma_init,
                        neuron=neuron_kwargs, layer=layer_kwargs, learn_gamma=learn_gamma,
                    )
                )
                prev = width
        self.blocks = nn.ModuleList(blocks)
        readout_in = widths[-1] * (math.prod(self.final_size) if readout_pool == "flatten" else 1)
        self._build_readout(readout_in, "membrane", readout_beta)

    def _pool_stages(self) -> list[Stage]:
        return [Pool(self.readout_pool)]

    def check_input(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(5,), size=self.in_channels, dim=2, what="([T, B, in_channels, H, W], time-major frames)")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{name}: frames of size {tuple(x.shape[-2:])} are too small for its {len(self.widths)} "
                f"stages: H and W must be at least {self.min_size}"
            )
        if self.readout_pool == "flatten" and tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{name} with readout_pool='flatten' takes frames of exactly input_size={self.input_size}, "
                f"got {tuple(x.shape[-2:])}; resize the frames or use readout_pool='avg'"
            )

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self.input_size)


class ResidualSpikingMLP(_ResidualClassifier):
    r"""Deep normalisation-free residual SBNN for spike channels (SHD: 700 inputs, 20 classes).

    ``stem`` (Bernoulli linear ``in_features → width``) → ``(depth − 2)/2`` residual blocks
    (:class:`~sbnn.models.blocks.LinearResidualBlock`) → membrane readout.

    Args:
        in_features: input channels ``N`` (700 for SHD).
        num_classes: number of classes ``K`` (20 for SHD).
        depth: Bernoulli layers on the main path, ``2 + 2·n_blocks`` (4, 6, 8, ...).
        width: width of the residual stream.
        binary_input: the input holds 0/1 spikes (``x² = x`` in the stem's LRT variance); checked
            on the calibration batch.
        shortcut, gamma_init, neuron, layer, calibration, readout_beta: as :class:`SpikingResNet`.

    Shape:
        - Input: ``[T, B, in_features]``, or the :class:`~sbnn.functional.sparse.SpikeIndices`
          of binary spikes ``[T, B, in_features]`` (the stem gathers from them).
        - Output: logits ``[B, K]``.

    Example:
        >>> net = ResidualSpikingMLP(700, 20, depth=6, width=32)
        >>> tuple(net(torch.rand(10, 2, 700).lt(0.05).float()).shape)
        (2, 20)
    """

    index_input = True

    def __init__(
        self,
        in_features: int = 700,
        num_classes: int = 20,
        depth: int = 8,
        width: int = 128,
        *,
        binary_input: bool = False,
        shortcut: Literal["membrane", "spike"] = "membrane",
        gamma_init: float = 0.2,
        neuron: NeuronSettings = NeuronSettings(),
        layer: LayerSettings = LayerSettings(),
        calibration: CalibrationSettings = CalibrationSettings(readout_std=0.5),
        readout_beta: float = 0.9,
    ) -> None:
        check_positive_int("ResidualSpikingMLP", in_features=in_features, num_classes=num_classes, width=width)
        n_blocks = _check_depth("ResidualSpikingMLP", depth, 1)
        super().__init__(num_classes, neuron=neuron, layer=layer, calibration=calibration, binary_input=binary_input)
        neuron_kwargs, layer_kwargs = self._init_residual(shortcut)
        self.in_features, self.depth, self.width = in_features, depth, width
        self.stem = self.layer_settings.linear(in_features, width)
        self.blocks = nn.ModuleList(
            LinearResidualBlock(width, shortcut=shortcut, gamma_init=gamma_init, neuron=neuron_kwargs, layer=layer_kwargs)
            for _ in range(n_blocks)
        )
        self._build_readout(width, "membrane", readout_beta)

    def check_input(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

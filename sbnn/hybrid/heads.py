"""Task heads on binary codes, the plain binary CNN baseline, a full-precision reference, and HyBNN.

* :class:`SBNNHead` — Bernoulli-posterior ±1 weights (:class:`~sbnn.layers.BernoulliLinear`) and
  stochastic binary neurons (:class:`~sbnn.neurons.StochasticLIF` with ``β = 0``, no reset), trained
  by sbnn's ELBO through the local reparameterisation and an IW-ST estimator.
* :class:`STEHead` — the HyBNN paper's BNN (Dua 2022, arXiv 2205.09839): sign weights and sign
  activations with the clipped straight-through estimator, batch normalisation, 128 hidden units.
* :class:`PlainBinaryCNN` — the paper's baseline of equal depth: the encoder's three convolutions and
  its 200-unit layer, then the head, all binary, on sign-binarised input.
* :class:`FullPrecisionNet` — the same network in full precision on the real-valued input.
* :class:`HyBNN` — a frozen encoder followed by a head, with the sizes checked at construction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn._validation import check_positive_int
from sbnn.functional.estimators import Estimator
from sbnn.layers import BernoulliLinear
from sbnn.neurons import StochasticLIF
from sbnn.quantizers import bnn_quantize

from .vae import FrozenEncoder

__all__ = ["SBNNHead", "STEHead", "PlainBinaryCNN", "FullPrecisionNet", "HyBNN"]


def _fold_time(x: Tensor, n_in: int, owner: str) -> tuple[Tensor, int | None]:
    """``[B, N]`` → (x, None); ``[T, B, N]`` → (``[T·B, N]``, T). Checks the feature size."""
    if x.dim() not in (2, 3) or x.shape[-1] != n_in:
        raise ValueError(f"{owner}: expected codes [B, {n_in}] or [T, B, {n_in}], got {tuple(x.shape)}")
    if x.dim() == 3:
        return x.reshape(-1, n_in), x.shape[0]
    return x, None


def _unfold_mean(logits: Tensor, steps: int | None) -> Tensor:
    # a spike train votes by its time-averaged logits
    return logits if steps is None else logits.view(steps, -1, logits.shape[-1]).mean(0)


class SBNNHead(nn.Module):
    """SBNN head: ``n_in → hidden`` Bernoulli ±1 layer, stochastic binary neurons, ``→ num_classes``.

    Args:
        in_features: code size (the encoder's ``n_latent``).
        hidden: hidden units.
        num_classes: output classes.
        estimator: spike-gradient estimator of the hidden neurons (a name or an instance).
        sigma0: intrinsic noise of the hidden neurons.

    Shape:
        - x: codes ``[B, N]`` or a spike train ``[T, B, N]`` in ``{0, 1}``.
        - output: logits ``[B, num_classes]`` (time-averaged for a spike train).

    Example:
        >>> head = SBNNHead(16, hidden=8)
        >>> tuple(head(torch.ones(3, 16)).shape)
        (3, 2)
    """

    def __init__(
        self,
        in_features: int = 200,
        hidden: int = 128,
        num_classes: int = 2,
        estimator: str | Estimator = "st",
        sigma0: float = 0.1,
    ) -> None:
        super().__init__()
        check_positive_int("SBNNHead", in_features=in_features, hidden=hidden, num_classes=num_classes)
        self.in_features = int(in_features)
        self.fc1 = BernoulliLinear(in_features, hidden, return_moments=True)
        self.neuron = StochasticLIF(beta=0.0, threshold=1.0, sigma0=sigma0, estimator=estimator, reset_mechanism="none")
        self.fc2 = BernoulliLinear(hidden, num_classes)
        with torch.no_grad():
            # a code has about half its bits on: aim the hidden drive's spread at ~2ϑ and the
            # logits' at ~3 (sbnn's data-free version of the calibrated scales)
            self.fc1.log_scale.fill_(math.log(2.0 / math.sqrt(in_features / 2.0)))
            self.fc2.log_scale.fill_(math.log(3.0 / math.sqrt(hidden / 2.0)))

    def forward(self, x: Tensor) -> Tensor:
        flat, steps = _fold_time(x, self.in_features, "SBNNHead")
        spikes, _ = self.neuron(self.fc1(flat))
        return _unfold_mean(self.fc2(spikes), steps)


class _SignLinear(nn.Module):
    """``x ↦ x · sign(W)ᵀ`` with latent real weights and the clipped STE (BNN, Hubara et al. 2016)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-1.0, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, bnn_quantize(self.weight))


class _SignConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3).uniform_(-1.0, 1.0))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, bnn_quantize(self.weight), stride=self.stride, padding=1)


class _SignAct(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return bnn_quantize(x)


def clip_latent_weights_(model: nn.Module) -> None:
    """Clip the latent weights of sign layers to ``[−1, 1]`` (the BNN recipe; call after each step)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (_SignLinear, _SignConv)):
                m.weight.clamp_(-1.0, 1.0)


class STEHead(nn.Module):
    """The paper's BNN head: sign-weight layers with batch norm and sign activations (clipped STE).

    Codes ``z ∈ {0, 1}`` enter as ``2z − 1 ∈ {−1, +1}``; ``n_in → hidden`` (BN, sign) ``→ num_classes`` (BN).

    Shape:
        - x: ``[B, N]`` or ``[T, B, N]`` in ``{0, 1}``; output ``[B, num_classes]``.
    """

    def __init__(self, in_features: int = 200, hidden: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        check_positive_int("STEHead", in_features=in_features, hidden=hidden, num_classes=num_classes)
        self.in_features = int(in_features)
        self.net = nn.Sequential(
            _SignLinear(in_features, hidden), nn.BatchNorm1d(hidden), _SignAct(),
            _SignLinear(hidden, num_classes), nn.BatchNorm1d(num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        flat, steps = _fold_time(x, self.in_features, "STEHead")
        return _unfold_mean(self.net(2.0 * flat - 1.0), steps)


def _cnn_trunk(c_in: int, channels: tuple[int, int, int], binary: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for cin, cout, stride in ((c_in, channels[0], 1), (channels[0], channels[1], 2), (channels[1], channels[2], 2)):
        conv = _SignConv(cin, cout, stride) if binary else nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        layers += [conv, nn.BatchNorm2d(cout), _SignAct() if binary else nn.ReLU()]
    return layers


class PlainBinaryCNN(nn.Module):
    """The HyBNN paper's baseline: a binary CNN of the same depth as encoder + head, on binarised input.

    The input is binarised as ``sign(x − threshold)`` (``sign(0) = +1``). ``threshold = 0`` is the
    paper's ``sign(x)``; on pixels in ``[0, 1]`` it maps every pixel to ``+1``, so the network sees
    a constant image. ``threshold = 0.5`` is the informative binarisation.

    Layers: three sign convolutions (BN, sign), a 200-unit sign layer (BN, sign), a ``hidden``-unit
    sign layer (BN, sign), ``num_classes`` outputs (BN).

    Shape:
        - x: ``[B, C, H, W]`` in ``[0, 1]``; output ``[B, num_classes]``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        channels: tuple[int, int, int] = (16, 32, 64),
        n_code: int = 200,
        hidden: int = 128,
        num_classes: int = 2,
        threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.threshold = float(threshold)
        trunk = nn.Sequential(*_cnn_trunk(image_shape[0], channels, True), nn.Flatten())
        with torch.no_grad():
            flat = trunk(torch.zeros(2, *image_shape)).shape[1]
        self.net = nn.Sequential(
            *trunk, _SignLinear(flat, n_code), nn.BatchNorm1d(n_code), _SignAct(),
            _SignLinear(n_code, hidden), nn.BatchNorm1d(hidden), _SignAct(),
            _SignLinear(hidden, num_classes), nn.BatchNorm1d(num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        binary = torch.where(x - self.threshold >= 0, 1.0, -1.0)
        return self.net(binary)


class FullPrecisionNet(nn.Module):
    """:class:`PlainBinaryCNN`'s layout in full precision (ReLU) on the real-valued input."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        channels: tuple[int, int, int] = (16, 32, 64),
        n_code: int = 200,
        hidden: int = 128,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        trunk = nn.Sequential(*_cnn_trunk(image_shape[0], channels, False), nn.Flatten())
        with torch.no_grad():
            flat = trunk(torch.zeros(2, *image_shape)).shape[1]
        self.net = nn.Sequential(
            *trunk, nn.Linear(flat, n_code), nn.BatchNorm1d(n_code), nn.ReLU(),
            nn.Linear(n_code, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class HyBNN(nn.Module):
    """A frozen binary encoder followed by a task head: ``head(encode(x))``.

    Raises:
        ValueError: when the head's input size differs from the encoder's ``n_latent``.

    Example:
        >>> from sbnn.hybrid.vae import BinaryVAE
        >>> net = HyBNN(FrozenEncoder(BinaryVAE((1, 8, 8), n_latent=16)), STEHead(16))
        >>> tuple(net(torch.rand(4, 1, 8, 8)).shape)
        (4, 2)
    """

    def __init__(self, encoder: FrozenEncoder, head: nn.Module) -> None:
        super().__init__()
        n_in = getattr(head, "in_features", None)
        if n_in != encoder.n_latent:
            raise ValueError(
                f"HyBNN: the head takes {n_in} input features but the encoder gives {encoder.n_latent} "
                f"binary codes; build the head with in_features={encoder.n_latent}"
            )
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

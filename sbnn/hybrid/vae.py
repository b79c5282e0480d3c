r"""A full-precision convolutional VAE with a binary latent space, and its frozen encoder.

The encoder follows the BinPlay layout used by HyBNN (Dua 2022, arXiv 2205.09839): three
convolutions with batch normalisation, then a linear layer giving the ``n_latent`` logits of
:class:`~sbnn.hybrid.latent.BinaryLatent`. The decoder mirrors it. The loss is the negative ELBO

.. math::
    \mathcal{L} = \underbrace{-\log p(x \mid z)}_{\text{recon (Bernoulli pixels)}}
    + \beta_{\mathrm{KL}} \sum_i \mathrm{KL}(q(z_i \mid x) \,\|\, \mathrm{Bern}(\tfrac12)),

averaged over the batch, with ``z ~ q(z | x)`` drawn once and differentiated by an sbnn estimator.

The encoder is full precision (normalisation allowed): it runs once per input, the binary network
downstream is what is trained on device.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbnn._validation import check_in_range, check_positive_int
from sbnn.functional.estimators import Estimator

from .latent import BinaryLatent, binary_kl_uniform

__all__ = ["VAETerms", "BinaryVAE", "FrozenEncoder"]


class VAETerms(NamedTuple):
    """Per-batch means of the negative ELBO and its two parts (nats per image)."""

    loss: Tensor
    recon: Tensor
    kl: Tensor


def _check_image(x: Tensor, shape: tuple[int, int, int], owner: str) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"{owner}: expected images [B, {shape[0]}, {shape[1]}, {shape[2]}], got {tuple(x.shape)}")


class BinaryVAE(nn.Module):
    """Convolutional VAE whose latent is ``n_latent`` stochastic binary units.

    Args:
        image_shape: ``(C, H, W)`` of the inputs, pixel values in ``[0, 1]``.
        n_latent: number of binary latent units (HyBNN: 200, i.e. 25 bytes per image).
        channels: output channels of the three convolutions (strides 1, 2, 2).
        estimator: gradient estimator of the binary latent (see :class:`BinaryLatent`).
        kl_weight: ``β_KL`` of the loss (1: the ELBO).

    Shape:
        - x: ``[B, C, H, W]`` in ``[0, 1]``.
        - logits: ``[B, n_latent]``; reconstruction logits ``[B, C, H, W]``.

    Example:
        >>> vae = BinaryVAE((1, 8, 8), n_latent=16)
        >>> terms = vae.loss(torch.rand(4, 1, 8, 8))
        >>> bool(terms.loss > 0)
        True
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        n_latent: int = 200,
        channels: tuple[int, int, int] = (16, 32, 64),
        estimator: str | Estimator = "st",
        kl_weight: float = 1.0,
    ) -> None:
        super().__init__()
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"BinaryVAE: image_shape must be (C, H, W), got {image_shape}")
        check_positive_int("BinaryVAE", n_latent=n_latent, C=image_shape[0], H=image_shape[1], W=image_shape[2])
        if len(channels) != 3:
            raise ValueError(f"BinaryVAE: channels must give three convolutions, got {channels}")
        check_in_range("kl_weight", kl_weight, 0.0)
        self.image_shape, self.n_latent, self.kl_weight = image_shape, int(n_latent), float(kl_weight)
        c0, (c1, c2, c3) = image_shape[0], channels
        layers: list[nn.Module] = []
        for cin, cout, stride in ((c0, c1, 1), (c1, c2, 2), (c2, c3, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(2, *image_shape)).shape[1]
        self.to_logits = nn.Linear(flat, self.n_latent)
        self.latent = BinaryLatent(estimator)
        n_pixels = image_shape[0] * image_shape[1] * image_shape[2]
        # An MLP decoder: the reconstruction only has to make the code informative, and it is
        # discarded after training.
        self.decoder = nn.Sequential(
            nn.Linear(self.n_latent, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, n_pixels)
        )

    def logits(self, x: Tensor) -> Tensor:
        """Encoder logits ``ℓ`` of ``q(z = 1 | x) = σ(ℓ)``, ``[B, n_latent]``."""
        _check_image(x, self.image_shape, "BinaryVAE")
        return self.to_logits(self.features(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction logits ``[B, C, H, W]`` of Bernoulli pixels from codes ``[B, n_latent]``."""
        return self.decoder(z).view(z.shape[0], *self.image_shape)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> VAETerms:
        """Negative ELBO, reconstruction and KL, each averaged over the batch."""
        logits = self.logits(x)
        z = self.latent(logits, generator=generator)
        recon = F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="sum") / x.shape[0]
        kl = binary_kl_uniform(logits).sum() / x.shape[0]
        return VAETerms(recon + self.kl_weight * kl, recon, kl)

    def forward(self, x: Tensor) -> VAETerms:
        return self.loss(x)


class FrozenEncoder(nn.Module):
    """The encoder of a trained :class:`BinaryVAE`, frozen: a binary spike source for any network.

    Its parameters get ``requires_grad=False`` and it stays in ``eval`` mode (batch-norm statistics
    fixed) whatever ``train()`` is called with, so training a head never changes it.

    Args:
        vae: the trained VAE (its encoder modules are shared, not copied).
        kind: ``"mode"`` (the deterministic code ``1{ℓ ≥ 0}``) or ``"sample"`` (``z ~ q(z | x)``).
        n_steps: ``T``. ``0`` returns one binary feature vector ``[B, n_latent]``; ``T ≥ 1``
            returns a time-major spike train ``[T, B, n_latent]`` (``T`` independent samples when
            ``kind="sample"``, the code repeated when ``kind="mode"``).

    Example:
        >>> enc = FrozenEncoder(BinaryVAE((1, 8, 8), n_latent=8))
        >>> tuple(enc(torch.rand(3, 1, 8, 8)).shape)
        (3, 8)
    """

    def __init__(self, vae: BinaryVAE, kind: Literal["mode", "sample"] = "mode", n_steps: int = 0) -> None:
        super().__init__()
        if kind not in ("mode", "sample"):
            raise ValueError(f"FrozenEncoder: kind must be 'mode' or 'sample', got {kind!r}")
        if not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"FrozenEncoder: n_steps must be an int >= 0 (0: no time axis), got {n_steps!r}")
        self.features, self.to_logits = vae.features, vae.to_logits
        self.image_shape, self.n_latent = vae.image_shape, vae.n_latent
        self.kind, self.n_steps = kind, n_steps
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        """A no-op: the encoder always stays in eval mode."""
        return self

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``encode(x)``: codes in ``{0, 1}``, ``[B, n_latent]`` or ``[T, B, n_latent]``."""
        _check_image(x, self.image_shape, "FrozenEncoder")
        logits = self.to_logits(self.features(x))
        steps = max(self.n_steps, 1)
        if self.kind == "mode":
            codes = BinaryLatent.mode(logits).expand(steps, *logits.shape)
        else:
            u = torch.rand((steps, *logits.shape), generator=generator, dtype=logits.dtype)
            codes = (u < torch.sigmoid(logits)).to(logits.dtype)
        return codes[0] if self.n_steps == 0 else codes.contiguous()

    encode = forward

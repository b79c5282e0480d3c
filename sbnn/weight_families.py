"""The two weight families of sbnn's layers, chosen by one setting (``LayerSettings.weights``).

=============== ============================================== ======================================
``weights``     layers                                         posterior
=============== ============================================== ======================================
``bernoulli``   :class:`~sbnn.BernoulliLinear`,                ±1 weights, ``q(w = +1) = σ(2λ)``,
                :class:`~sbnn.BernoulliConv2d`                 scale ``α`` (sbnn's SBNN)
``gaussian``    :class:`~sbnn.GaussianLinear`,                 real weights ``N(W̄, σ_w²)``, one
                :class:`~sbnn.GaussianConv2d`                  ``σ_w`` per layer (the SBNN paper's code)
=============== ============================================== ======================================

Both keep one contract (modes, :class:`~sbnn.layers.ModeState`, ``moments``, ``unit_moments``,
``calibrate_scale_``, ``draw_weights``, ``kl``), so every model builds either through
:func:`linear_layer` and :func:`conv_layer`.
"""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from ._validation import check_choice
from .gaussian_layers import GaussianConv2d, GaussianLayer, GaussianLinear
from .layers import BernoulliConv2d, BernoulliLayer, BernoulliLinear

__all__ = ["WEIGHT_FAMILIES", "WEIGHT_LAYER_TYPES", "WeightLayer", "linear_layer", "conv_layer", "weight_layers"]

WEIGHT_FAMILIES = ("bernoulli", "gaussian")
#: every layer class with a weight posterior (what ``sbnn.set_mode`` switches)
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (BernoulliLayer, GaussianLayer)
WeightLayer = Union[BernoulliLayer, GaussianLayer]


def linear_layer(in_features: int, out_features: int, *, weights: str = "bernoulli", **kwargs: Any) -> WeightLayer:
    """A linear layer of the family ``weights`` (``kwargs`` are that class's keyword arguments)."""
    check_choice("weights", weights, WEIGHT_FAMILIES)
    cls = GaussianLinear if weights == "gaussian" else BernoulliLinear
    return cls(in_features, out_features, **kwargs)


def conv_layer(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, *,
    weights: str = "bernoulli", **kwargs: Any,
) -> WeightLayer:
    """A 2-D convolution of the family ``weights``."""
    check_choice("weights", weights, WEIGHT_FAMILIES)
    cls = GaussianConv2d if weights == "gaussian" else BernoulliConv2d
    return cls(in_channels, out_channels, kernel_size, stride, padding, **kwargs)


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Every layer of either family inside ``model`` (recursively), in module order."""
    return [m for m in model.modules() if isinstance(m, WEIGHT_LAYER_TYPES)]

"""Ready-made spiking Bayesian classifiers on one base, :class:`SpikingClassifier`.

============================= ==================================================================
model                         stages
============================= ==================================================================
:class:`SpikingMLP`           ``[BernoulliLinear → StochasticLIF] × L``
:class:`SpikingRecurrentNet`   the same with recurrent weights ``S[t−1] → h[t]`` per layer
:class:`SpikingConvNet`       ``[BernoulliConv2d → StochasticLIF → pool] × L → flatten → MLP``
:class:`SpikingResNet`        conv stem → normalisation-free residual blocks → pooling
:class:`ResidualSpikingMLP`   linear stem → normalisation-free residual blocks
============================= ==================================================================

Each ends in the same readout (membrane or spike count) and takes the same nested settings
(:class:`NeuronSettings`, :class:`LayerSettings`, :class:`CalibrationSettings`);
``LayerSettings(time_affine_steps=T)`` adds a learned gain and bias per channel and time step
(:class:`TimeAffine`).
:class:`BinaryMLP` is the non-spiking ±1-weight MLP of BayesBiNN's synthetic experiments.
"""

from . import blocks, graph, stages, time_affine
from .base import READOUTS, SpikingClassifier
from .conv import SpikingConvNet
from .mlp import BinaryMLP, SpikingMLP
from .recurrent import SpikingRecurrentNet
from .residual import ResidualSpikingMLP, SpikingResNet, lambda_gradient_norms
from .settings import CalibrationSettings, LayerSettings, NeuronSettings
from .time_affine import TimeAffine

__all__ = [
    "SpikingClassifier",
    "READOUTS",
    "NeuronSettings",
    "LayerSettings",
    "CalibrationSettings",
    "SpikingMLP",
    "BinaryMLP",
    "SpikingRecurrentNet",
    "SpikingConvNet",
    "SpikingResNet",
    "ResidualSpikingMLP",
    "lambda_gradient_norms",
    "blocks",
    "graph",
    "stages",
    "TimeAffine",
    "time_affine",
]

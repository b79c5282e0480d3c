"""sbnn: Spiking Bayesian Neural Networks.

Binary ±1 weights with a learned mean-field Bernoulli posterior, noisy leaky integrate-and-fire
neurons whose noise is the posterior noise, and the importance-weighted straight-through (IW-ST)
family of spike-gradient estimators. The formulation is sbnn's own reading of
Walker, Khajehnejad & Razi 2025 (arXiv:2505.17962), of which only the abstract is public; see
``docs/theory.md``.
"""

from ._checkout import install_kernels_finder as _install_kernels_finder

# In a source checkout, kernels/ sits beside sbnn/; make it sbnn.kernels as an install does.
_install_kernels_finder()

from . import estimators, functional, runtime, training  # noqa: E402
from ._validation import set_validation
from .estimators import get_estimator, spike_grad
from .layers import BernoulliConv2d, BernoulliLayer, BernoulliLinear, Moments
from .gaussian_layers import GaussianConv2d, GaussianLayer, GaussianLinear
from .training.losses import ELBOLoss, ELBOTerms, kl_divergence
from .modes import evaluation, get_mode, lrt_predict, mc_predict, reset, set_mode
from .neurons import StochasticLIF
from .posterior import BernoulliSign

__version__ = "0.1.0"

__all__ = [
    "BernoulliSign",
    "BernoulliLayer",
    "BernoulliLinear",
    "BernoulliConv2d",
    "GaussianLayer",
    "GaussianLinear",
    "GaussianConv2d",
    "Moments",
    "StochasticLIF",
    "get_estimator",
    "spike_grad",
    "estimators",
    "functional",
    "runtime",
    "kl_divergence",
    "ELBOLoss",
    "ELBOTerms",
    "set_mode",
    "get_mode",
    "evaluation",
    "reset",
    "mc_predict",
    "lrt_predict",
    "set_validation",
]

"""Pure, stateless sbnn code: noise families, estimators, LRT moments and neuron step functions.

Modules in :mod:`sbnn` (layers, neurons, models) are thin stateful wrappers over these.
"""

from . import estimators, layers, neurons, noise, signs, sparse

__all__ = ["estimators", "layers", "neurons", "noise", "signs", "sparse"]

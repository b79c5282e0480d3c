"""Pure, stateless sbnn code: noise families, estimators, LRT moments and neuron step functions.

Modules in :mod:`sbnn` (layers, neurons, models) are thin stateful wrappers over these.
The one piece of state, the keyed evaluation noise of :mod:`sbnn.functional.keyed`, is a
context variable that only an evaluation block sets.
"""

from . import estimators, keyed, layers, neurons, noise, recurrent, signs, sparse

__all__ = ["estimators", "keyed", "layers", "neurons", "noise", "recurrent", "signs", "sparse"]

"""HyBNN and FedHyBNN: a binary-latent VAE as the spike encoder, binary heads, Flower federation.

HyBNN (Dua 2022, arXiv 2205.09839) trains a full-precision VAE with a binary latent once on
general data, freezes its encoder and trains small binary heads on its codes. In sbnn the latent is
a layer of stochastic binary units trained through sbnn's estimator family, and a head can be an
SBNN. FedHyBNN federates only the heads; :mod:`sbnn.hybrid.federated` needs the ``federated``
extra (Flower), imported lazily.
"""

from .heads import FullPrecisionNet, HyBNN, PlainBinaryCNN, SBNNHead, STEHead
from .latent import BinaryLatent, binary_kl_uniform
from .vae import BinaryVAE, FrozenEncoder, VAETerms

__all__ = [
    "BinaryLatent",
    "binary_kl_uniform",
    "BinaryVAE",
    "FrozenEncoder",
    "VAETerms",
    "SBNNHead",
    "STEHead",
    "PlainBinaryCNN",
    "FullPrecisionNet",
    "HyBNN",
]

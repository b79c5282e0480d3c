"""Lightning tasks: sbnn's training and evaluation as LightningModules.

:class:`SpikingTask` is the shared base (preparation, divergence guard, exact metrics, seeded
evaluation, prediction); :class:`SpikingClassificationTask` trains with sbnn's ELBO and
:class:`MethodTask` with any :class:`sbnn.training.TrainingMethod`. Everything Lightning-free
lives in :mod:`sbnn.training`.
"""

from .base import SpikingTask, calibrate_network, training_set_size
from .classification import SpikingClassificationTask
from .guards import DivergenceGuard
from .method import MethodTask

__all__ = ["SpikingTask", "SpikingClassificationTask", "MethodTask", "DivergenceGuard", "calibrate_network", "training_set_size"]

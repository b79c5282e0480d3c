"""Built-in offline datasets as LightningDataModules with time-major batches ``[T, B, N]``.

- :class:`RandmanDataModule` / :func:`make_randman`: Randman-style spike-timing manifolds
  (the default temporal dataset), generated from a seed.
- :class:`DigitsDataModule`: scikit-learn's 8x8 digits, rate- or latency-coded.
- :class:`~sbnn.data.cifar10.CIFAR10DataModule`: CIFAR-10 from the python pickle batches, as frames.
- :class:`MoonsDataModule`: scikit-learn's two moons (real values repeated over ``T`` steps).
- :class:`SHDDataModule`, :class:`DVSGestureDataModule`: Spiking Heidelberg Digits and IBM DVS
  Gesture through ``tonic.datasets``, framed into time-major tensors (:mod:`sbnn.data.events`).
- :class:`DVSGestureFramesDataModule`: DVS Gesture from a SpikingJelly frame folder
  (``{train,validation,test}/<class>/*.npz``), sum-pooled and re-binned.
- :mod:`sbnn.data.augment`: random translations of training frames (the DVS modules' ``max_shift``).
- :func:`check_event_array`, :func:`check_spike_sample`: refuse corrupt event data.
- :func:`time_major_collate`: stacks sample-major ``[T, N]`` items into ``[T, B, N]`` batches.
- :func:`spike_indices_collate`: the same, then the batch's spike indices (``input_format="indices"``,
  :mod:`sbnn.data.spike_index`).
"""

from sbnn.data._common import time_major_collate
from sbnn.data.spike_index import spike_indices_collate
from sbnn.data.digits import DigitsDataModule
from sbnn.data.moons import MoonsDataModule, moons_tensors
from sbnn.data.dvs_gesture import DVSGestureDataModule
from sbnn.data.dvs_frames import DVSGestureFramesDataModule
from sbnn.data.checks import CorruptEventsError, check_event_array, check_spike_sample
from sbnn.data.events import DataMissingError
from sbnn.data.shd import SHDDataModule
from sbnn.data.randman import RandmanDataModule, make_randman
from sbnn.data.cifar10 import CIFAR10DataModule

__all__ = [
    "RandmanDataModule",
    "DigitsDataModule",
    "MoonsDataModule",
    "CIFAR10DataModule",
    "SHDDataModule",
    "DVSGestureDataModule",
    "DVSGestureFramesDataModule",
    "DataMissingError",
    "CorruptEventsError",
    "check_event_array",
    "check_spike_sample",
    "moons_tensors",
    "make_randman",
    "time_major_collate",
    "spike_indices_collate",
]

"""Learning-rate schedules: per-epoch factors applied to the optimisers' base learning rates.

Each schedule is a pure function ``epoch -> factor`` (``torch.optim.lr_scheduler.LambdaLR`` takes
it as it is; the Lightning-free :func:`sbnn.training.fit` loop applies it after every epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["TwoPhaseCosine", "cosine"]


def cosine(epoch: int, epochs: int) -> float:
    """``½(1 + cos(π·min(e, E)/E))``: 1 at epoch 0, 0 from epoch ``E = epochs`` on."""
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1)))


@dataclass(frozen=True)
class TwoPhaseCosine:
    r"""Learning-rate factor per epoch: cosine from 1 to 0 over the main phase, then a restart.

    The last ``finetune_epochs`` (the ``mode`` fine-tune) restart at ``finetune_factor`` and
    decay by cosine again. A single cosine over all epochs would leave the fine-tune at < 0.4 % of
    the base rate, where it changes nothing (measured: no change in train NLL, mean ``|m|`` or
    validation accuracy during it).

    ``floor`` (default 0) lifts the main phase's cosine to end at ``floor`` instead of 0,

    .. math:: f(e) = \text{floor} + (1 - \text{floor})\,\tfrac12\bigl(1 + \cos(π e / E)\bigr),

    the schedule of the SBNN paper's code (Walker et al. 2025: floor 1/10 on SHD, 1/50 on DVS
    Gesture and CIFAR-10, with ``E`` the number of epochs). The fine-tune phase is unchanged.
    """

    max_epochs: int
    finetune_epochs: int
    finetune_factor: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"TwoPhaseCosine: floor must lie in [0, 1] (a fraction of the base rate), got {self.floor}")

    def __call__(self, epoch: int) -> float:
        main = max(self.max_epochs - self.finetune_epochs, 1)
        if epoch < main or self.finetune_epochs == 0:
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * min(epoch, main) / main))
        k = epoch - main
        return self.finetune_factor * 0.5 * (1.0 + math.cos(math.pi * k / self.finetune_epochs))

"""SpikingClassificationTask pieces that the CLI test does not pin down by value."""

from __future__ import annotations

import math

import pytest

from sbnn.tasks import SpikingClassificationTask
from sbnn.training import TwoPhaseCosine
from sbnn.models import SpikingMLP


def test_two_phase_cosine_restarts_for_the_mode_finetune():
    s = TwoPhaseCosine(max_epochs=10, finetune_epochs=2, finetune_factor=0.3)
    assert s(0) == 1.0
    assert s(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert s(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert s(8) == pytest.approx(0.3)  # restart: the fine-tune learns at 30 % of the base rate
    assert s(9) == pytest.approx(0.15)
    assert TwoPhaseCosine(10, 0, 0.3)(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lam_lr": -1.0}, "lam_lr"),
        ({"kl_weight": -0.1}, "kl_weight"),
        ({"mc_samples": 0}, "mc_samples"),
        ({"mode_finetune_epochs": -1}, "mode_finetune_epochs"),
    ],
)
def test_bad_task_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpikingClassificationTask(SpikingMLP(4, (8,), 2), **kwargs)

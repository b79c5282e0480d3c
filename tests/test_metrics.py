"""Predictive metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.training.metrics import (
    CalibrationAccumulator,
    accuracy,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_entropy,
)

# confidences away from bin edges (float32 0.6 lies just above 0.6)
PROBS = torch.tensor([[0.93, 0.07], [0.58, 0.42], [0.28, 0.72], [0.53, 0.47]])
TARGET = torch.tensor([0, 1, 1, 0])


def test_accuracy_nll_entropy_by_hand():
    assert accuracy(PROBS, TARGET) == pytest.approx(0.75)
    nll = -(math.log(0.93) + math.log(0.42) + math.log(0.72) + math.log(0.53)) / 4
    assert negative_log_likelihood(PROBS, TARGET) == pytest.approx(nll, rel=1e-6)
    h = [-(a * math.log(a) + b * math.log(b)) for a, b in PROBS.tolist()]
    assert predictive_entropy(PROBS) == pytest.approx(sum(h) / 4, rel=1e-6)
    assert predictive_entropy(torch.tensor([[1.0, 0.0]])) == 0.0  # 0 log 0 = 0, not NaN


def test_ece_by_hand():
    # two bins: (0, .5] and (.5, 1]; every confidence is > .5 -> one bin with
    # acc 3/4 and mean confidence (.93 + .58 + .72 + .53)/4 = .69
    assert expected_calibration_error(PROBS, TARGET, n_bins=2) == pytest.approx(abs(0.75 - 0.69))
    # ten bins: .93 (correct) -> bin 9; .72 (correct) -> bin 7; .58 (wrong) and .53 (correct) -> bin 5
    ece = (abs(1 - 0.93) + abs(1 - 0.72) + 2 * abs(0.5 - 0.555)) / 4
    assert expected_calibration_error(PROBS, TARGET, n_bins=10) == pytest.approx(ece)


def test_accumulator_sums_batches_and_matches_one_shot():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(100, 5, generator=g).softmax(-1)
    target = torch.randint(0, 5, (100,), generator=g)
    acc = CalibrationAccumulator(15)
    for chunk in range(0, 100, 30):
        acc.update(probs[chunk : chunk + 30], target[chunk : chunk + 30])
    assert acc.compute() == pytest.approx(float(expected_calibration_error(probs, target, 15)), rel=1e-6)
    # a rank's state can be summed with another's (what the distributed reduce does)
    other = CalibrationAccumulator(15)
    other.update(probs, target)
    assert acc.compute(acc.state() + other.state()) == pytest.approx(float(acc.compute()), rel=1e-6)
    acc.reset()
    assert math.isnan(float(acc.compute()))


@pytest.mark.parametrize(
    "probs, target, match",
    [
        (torch.rand(4), torch.zeros(4, dtype=torch.long), r"\[B, K\]"),
        (PROBS, torch.tensor([0, 1, 2, 0]), r"labels must lie in \[0, 1\]"),
        (PROBS, torch.tensor([0, 1]), "target must be"),
        (torch.full((2, 2), float("nan")), torch.tensor([0, 1]), "NaN"),
    ],
)
def test_bad_inputs(probs, target, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, target)

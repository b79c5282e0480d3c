"""The diagnostics refuse inputs they would misread, and take estimator names as the rest of the API does."""

from __future__ import annotations

import pytest
import torch

import sbnn
from sbnn.diagnostics import estimator_gradients, exact_gradient, exact_objective, reinforce_gradients
from sbnn.models import LayerSettings, NeuronSettings, SpikingMLP


def _problem():
    g = torch.Generator().manual_seed(3)
    net = SpikingMLP(5, (2,), 3, neuron=NeuronSettings(sigma0=0.3, beta=0.0, reset_mechanism="none"), layer=LayerSettings(bias=True)).double()
    x = torch.rand(2, 4, 5, dtype=torch.float64, generator=g).round()
    y = torch.randint(0, 3, (4,), generator=g)
    return net, x, y


@pytest.mark.parametrize("label, match", [(-1, r"y\[2\] = -1 is not a class label.*\[0, 3\)"), (3, r"y\[2\] = 3 .*\[0, 3\)")])
def test_labels_outside_the_classes_are_refused(label, match):
    net, x, y = _problem()
    y[2] = label  # -1 used to be read as the last class
    for fn in (exact_objective, exact_gradient):
        with pytest.raises(ValueError, match=match):
            fn(net, x, y)
    with pytest.raises(ValueError, match=match):
        estimator_gradients(net, x, y, "st", 2)
    with pytest.raises(ValueError, match=match):
        reinforce_gradients(net, x, y, 2, n_baseline=0)
    with pytest.raises(ValueError, match="integer class labels"):
        exact_objective(net, x, y.double().clamp(0, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_refused(bad):
    net, x, y = _problem()
    x[1, 0, 2] = bad  # used to return a NaN objective
    with pytest.raises(ValueError, match="x holds 1 NaN or infinite values"):
        exact_objective(net, x, y)
    with pytest.raises(ValueError, match="x holds 1 NaN or infinite values"):
        estimator_gradients(net, x, y, "iwst", 2)


def test_estimator_names_and_objects_give_identical_samples():
    net, x, y = _problem()
    by_name = estimator_gradients(net, x, y, "iwst", 3, seed=5)
    by_object = estimator_gradients(net, x, y, sbnn.get_estimator("iwst"), 3, seed=5)
    assert by_name.keys() == by_object.keys()
    for k in by_name:
        assert torch.equal(by_name[k], by_object[k]), k
    other = estimator_gradients(net, x, y, sbnn.get_estimator("iwst", p=0.9), 3, seed=5)
    assert any(not torch.equal(by_name[k], other[k]) for k in by_name)  # the estimator is really swapped in
    assert net.neurons[0].estimator == sbnn.get_estimator("st")  # and restored afterwards
    with pytest.raises(ValueError, match="unknown estimator 'iwsst'.*iwst"):
        estimator_gradients(net, x, y, "iwsst", 3)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        estimator_gradients(net, x, y, "iwst", 0)

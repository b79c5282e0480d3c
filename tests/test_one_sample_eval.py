"""One-noisy-sample evaluation (``sample``): seeded, drawn as ``lrt`` draws, reported by the tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbnn.functional.keyed import keyed_noise, sample_keys
from sbnn.modes import evaluation
from sbnn.models import SpikingConvNet, SpikingMLP
from sbnn.tasks import SpikingClassificationTask
from sbnn.training import PREDICTION_KINDS, SBNNMethod, predict_probabilities


def _net_and_batch():
    torch.manual_seed(0)
    net = SpikingMLP(6, (8,), 3, neuron={"sigma0": 0.5})
    x = torch.rand(5, 16, 6).round()
    net.calibrate(x)
    return net, x


def test_sample_is_a_kind_and_deterministic_under_a_seed():
    assert "sample" in PREDICTION_KINDS
    net, x = _net_and_batch()
    a = predict_probabilities(net, x, kinds=("sample",), seed=3, stream=2)["sample"]
    torch.rand(11)  # the global RNG's state does not matter
    b = predict_probabilities(net, x, kinds=("sample",), seed=3, stream=2)["sample"]
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(-1), torch.ones(16))
    # another seed draws other noise; the batch stream does not matter (noise keyed by example)
    assert not torch.equal(a, predict_probabilities(net, x, kinds=("sample",), seed=4, stream=2)["sample"])
    assert torch.equal(a, predict_probabilities(net, x, kinds=("sample",), seed=3, stream=3)["sample"])
    # one noisy pass, not the deterministic mode network
    assert not torch.equal(a, predict_probabilities(net, x, kinds=("mode",))["mode"])


def test_sample_is_one_lrt_pass_drawn_from_the_same_stream():
    net, x = _net_and_batch()
    out = predict_probabilities(net, x, kinds=("sample", "lrt"), mc_samples=1, seed=7, stream=5)
    assert torch.equal(out["sample"], out["lrt"])  # lrt with one pass is the same draw
    with keyed_noise(sample_keys(x, 1), 7), evaluation(net, "sample"):
        by_hand = F.softmax(net(x), dim=-1)
    assert torch.equal(out["sample"], by_hand)


def test_leaves_the_global_rng_and_the_network_mode_alone():
    net, x = _net_and_batch()
    net.layers[0].set_mode("mode")
    state = torch.get_rng_state()
    predict_probabilities(net, x, kinds=("sample",), seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert net.layers[0].mode == "mode"  # restored after the noisy pass


def test_refused_with_a_training_method():
    net, x = _net_and_batch()
    with pytest.raises(ValueError, match="sample"):
        predict_probabilities(net, x, kinds=("mode", "sample"), method=SBNNMethod())


def test_task_reports_the_one_sample_kind():
    torch.manual_seed(1)
    net = SpikingConvNet(2, 8, (3,), 2, fc=())
    task = SpikingClassificationTask(net, train_size=10, eval_seed=2)
    x = torch.rand(3, 4, 2, 8, 8).round()
    assert "sample" in task.prediction_kinds()
    first = task.predict(x, task.prediction_kinds(), stream=0)
    again = task.predict(x, task.prediction_kinds(), stream=0)
    assert set(first) == {"mode", "mc", "lrt", "sample"}
    assert torch.equal(first["sample"], again["sample"])

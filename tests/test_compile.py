"""The training forward pass (network + ELBO loss) traces into one graph: no graph breaks."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

import sbnn
from sbnn.models import SpikingMLP, SpikingRecurrentNet


@pytest.mark.parametrize("kind", ["mlp", "recurrent"])
def test_training_forward_has_no_graph_break(gen, kind):
    dynamo.reset()
    x = (torch.rand(3, 2, 6, generator=gen) < 0.5).float()
    y = torch.tensor([0, 1])
    net = SpikingMLP(6, (4,), 2, binary_input=True) if kind == "mlp" else SpikingRecurrentNet(6, (4, 4), 2)
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=10, kl_weight=0.1)

    def loss(x, y):
        return loss_fn(net(x), y, net).loss

    explanation = dynamo.explain(loss)(x, y)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    dynamo.reset()

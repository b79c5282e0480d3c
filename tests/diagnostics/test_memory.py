"""saved_for_backward_bytes against hand-counted storages."""

from __future__ import annotations

import torch
from torch import nn

from sbnn.diagnostics import saved_for_backward_bytes


def test_counts_each_saved_storage_once_and_leaves_out_parameters():
    x = torch.randn(5, 3, requires_grad=True)
    # exp saves its output: 5·3 float32 = 60 bytes
    assert saved_for_backward_bytes(nn.Module(), lambda: x.exp().sum()) == 60
    # a matmul saves its input (60 bytes) and the weight, a parameter, which is not counted
    linear = nn.Linear(3, 4, bias=False)
    assert saved_for_backward_bytes(linear, lambda: linear(x).sum()) == 60
    # two views of one storage count once: x·x saves x twice
    assert saved_for_backward_bytes(nn.Module(), lambda: (x * x).sum()) == 60
    # float64 doubles it
    x64 = x.detach().double().requires_grad_()
    assert saved_for_backward_bytes(nn.Module(), lambda: x64.exp().sum()) == 120

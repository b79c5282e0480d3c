"""SpikingRecurrentNet's recurrence: the gradient through the recurrent spikes, and a Randman regression.

The cause of the recurrent network's failure to train: backpropagating through the recurrent
spikes multiplies the adjoint at every step by ``α W_rec diag(p(θ)/s)``; with deterministic
neurons (full-precision training, the `mode` fine-tune) ``s = σ0`` makes the surrogate peak
≈ 4, and once ``α`` grows the gradient that reaches early steps explodes. The fast tests show the
explosion with full BPTT through the recurrence and its absence with the default.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from sbnn.data import RandmanDataModule
from sbnn.training.methods import weights_from
from sbnn.models import SpikingRecurrentNet


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    dm = RandmanDataModule(n_train=32, n_val=1, n_test=1, batch_size=32, seed=3)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def _input_gradient(net: SpikingRecurrentNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|∂L/∂x[t]|`` per step ``[T]`` with full-precision weights and deterministic neurons."""
    x = x.clone().requires_grad_(True)
    with weights_from(net, lambda lam: lam):
        F.cross_entropy(net(x), y).backward()
    return x.grad.norm(dim=(1, 2))


def _net(spike_grad: float, rec_gain: float) -> SpikingRecurrentNet:
    torch.manual_seed(0)
    x, _ = _batch()
    net = SpikingRecurrentNet(x.shape[-1], (64,), 10, binary_input=False, recurrent_spike_grad=spike_grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.calibrate(x)
    with torch.no_grad():  # the recurrent scale that training reaches (α grows by a few times)
        net.recurrent[0].log_scale.add_(math.log(rec_gain))
    return net


@pytest.mark.parametrize("rec_gain", [1.0, 4.0])
def test_default_gradient_does_not_explode_through_the_recurrence(rec_gain):
    """Default: the gradient at the first step stays within 10x of that of the same net without recurrence."""
    x, y = _batch()
    net = _net(0.0, rec_gain)
    g = _input_gradient(net, x, y)
    with torch.no_grad():
        net.recurrent[0].log_scale.fill_(-30.0)  # recurrence off, everything else equal
    g_ff = _input_gradient(net, x, y)
    assert torch.isfinite(g).all()
    assert float(g.max()) < 10 * float(g_ff.max())


def test_full_bptt_through_the_recurrence_explodes():
    """The cause itself: with the gradient through S[t−1] kept, a 4x recurrent scale blows it up."""
    x, y = _batch()
    net = _net(1.0, 4.0)
    g = _input_gradient(net, x, y)
    with torch.no_grad():
        net.recurrent[0].log_scale.fill_(-30.0)
    g_ff = _input_gradient(net, x, y)
    assert float(g.max()) > 1e3 * float(g_ff.max())


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_spike_gradient_factor_leaves_the_forward_pass(factor):
    """The factor changes gradients only: logits are bit-identical, the recurrent weights still learn."""
    x, y = _batch()
    ref = _net(1.0, 2.0)
    net = _net(factor, 2.0)
    with weights_from(ref, lambda lam: lam):
        expected = ref(x)
    xg = x.clone().requires_grad_(True)
    with weights_from(net, lambda lam: lam):
        out = net(xg)
        F.cross_entropy(out, y).backward()
    assert torch.equal(out.detach(), expected.detach())
    assert net.recurrent[0].lam.grad is not None and float(net.recurrent[0].lam.grad.abs().sum()) > 0


def test_spike_gradient_factor_changes_the_input_gradient():
    """Full BPTT (1) and the default (0) give different input gradients: the factor is wired in."""
    x, y = _batch()
    grads = []
    for factor in (0.0, 1.0):
        net = _net(factor, 1.0)
        xg = x.clone().requires_grad_(True)
        with weights_from(net, lambda lam: lam):
            F.cross_entropy(net(xg), y).backward()
        grads.append(xg.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match="recurrent_spike_grad"):
        SpikingRecurrentNet(10, (8,), 3, recurrent_spike_grad=1.5)


def _train(recurrent: bool, method_name: str, seed: int, epochs: int = 30) -> float:
    from sbnn.data._common import time_major_collate
    from sbnn.training import accuracy, fit, make_method, predict_samples

    torch.manual_seed(seed)
    dm = RandmanDataModule(seed=42)
    dm.setup()
    xt, yt = time_major_collate([dm.test_set[i] for i in range(len(dm.test_set))])
    net = SpikingRecurrentNet(dm.input_size, (128,), dm.num_classes, recurrent=recurrent)
    hyper = {"sbnn": dict(lam_lr=0.1, kl_weight=0.1, finetune_epochs=3), "adam": {}}[method_name]
    method = make_method(method_name, **hyper)
    loader = dm.train_dataloader()
    method.setup(net, dm.n_train, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.calibrate(next(iter(loader))[0])
    fit(net, method, loader, epochs, setup=False)
    return float(accuracy(predict_samples(net, method, xt, "mode")[0].softmax(-1), yt))


@pytest.mark.slow
@pytest.mark.parametrize("method_name", ["adam", "sbnn"])
def test_recurrent_matches_feed_forward_on_randman(method_name):
    """30 epochs, hidden 128, 3 seeds: the recurrent net is within 1 point of (or above) the feed-forward one."""
    rec = [_train(True, method_name, s) for s in range(3)]
    ff = [_train(False, method_name, s) for s in range(3)]
    assert sum(rec) / 3 >= sum(ff) / 3 - 0.01, (rec, ff)

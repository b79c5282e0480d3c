"""SpikingResNet and ResidualSpikingMLP: no normalisation, gradient profile at depth, errors, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sbnn
from sbnn.models import ResidualSpikingMLP, SpikingResNet, lambda_gradient_norms


def _frames(t=3, b=16, c=2, size=8, n_classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(t, b, c, size, size, generator=gen) < 0.3).float()
    return x, torch.randint(0, n_classes, (b,), generator=gen)


VARIANTS = [
    dict(shortcut="membrane", downsample="conv"),
    dict(shortcut="membrane", downsample="pool"),
    dict(shortcut="spike", downsample="conv"),
    dict(shortcut="spike", downsample="pool"),
]


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_resnet_has_no_normalisation_and_runs_in_every_mode(kwargs):
    torch.manual_seed(0)
    net = SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 8), **kwargs)
    names = [type(m).__name__ for m in net.modules()]
    assert not [n for n in names if "Norm" in n], names
    assert sum(isinstance(m, sbnn.BernoulliLayer) and ".proj" not in n for n, m in net.named_modules()) == 8
    x, _ = _frames()
    rates = net.calibrate(x)
    assert all(0.001 < r < 0.9 for r in rates)
    logits, spikes = net.forward_with_spikes(x)
    assert logits.shape == (16, 5) and torch.isfinite(logits).all()
    assert len(spikes) == len(rates) and all(torch.all((s == 0) | (s == 1)) for s in spikes)
    with sbnn.evaluation(net, "mode"):
        a, b = net(x), net(x)
    assert torch.equal(a, b)  # the deployed network is deterministic
    p = sbnn.mc_predict(net, x, n_samples=2)
    torch.testing.assert_close(p.sum(-1), torch.ones(16))


def test_flatten_readout_sees_every_position_and_needs_the_built_size():
    torch.manual_seed(0)
    net = SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 6), readout_pool="flatten")
    assert net.final_size == (2, 2) and net.output.in_features == 8 * 2 * 2  # 8→8→4→2, 6→6→3→2
    x = (torch.rand(3, 4, 2, 8, 6) < 0.3).float()
    net.calibrate(x)
    assert net(x).shape == (4, 5)
    with pytest.raises(ValueError, match="exactly input_size"):
        net(torch.zeros(3, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="readout_pool"):
        SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 8), readout_pool="max")


def test_residual_mlp_has_no_normalisation():
    for shortcut in ("membrane", "spike"):
        net = ResidualSpikingMLP(700, 20, depth=8, width=16, shortcut=shortcut)
        assert not [m for m in net.modules() if "Norm" in type(m).__name__]
        assert len(net.blocks) == 3


def test_depth_20_residual_gradients_at_init_are_within_10x():
    """At depth 20, no normalisation: per-weight λ-gradient norms of every residual layer within 10×.

    The measure is ‖∂L/∂λ‖/√n per Bernoulli layer of the residual branches (the stem, projection
    shortcuts and readout sit on the identity path and are reported separately by the depth
    study). Within a stage, where only depth differs, the raw norms of the same layer role agree
    within 2×: no decay with depth.
    """
    torch.manual_seed(0)
    net = SpikingResNet(2, 5, depth=20, widths=(8, 16, 32), input_size=(8, 8))
    x, y = _frames(b=16)
    net.calibrate(x)
    norms = lambda_gradient_norms(net, x, y, n_draws=6)
    modules = dict(net.named_modules())
    branch = {k: v for k, v in norms.items() if ".layer" in k}
    assert len(branch) == 18 and all(v > 0 and torch.isfinite(v) for v in norms.values())
    rms = torch.stack([v / modules[k].lam.numel() ** 0.5 for k, v in branch.items()])
    assert rms.max() / rms.min() < 10.0
    for stage in range(3):
        for role in ("layer1", "layer2"):
            # the first block of a stage changes the width: compare the blocks after it
            same = torch.stack([branch[f"blocks.{3 * stage + k}.{role}"] for k in (1, 2)])
            assert same.max() / same.min() < 2.0


def test_lambda_gradient_norms_leaves_existing_gradients_alone():
    net = ResidualSpikingMLP(12, 3, depth=4, width=8)
    x = (torch.rand(5, 4, 12) < 0.3).float()
    norms = lambda_gradient_norms(net, x, torch.tensor([0, 1, 2, 0]), n_draws=2)
    assert list(norms) == ["stem", "blocks.0.layer1", "blocks.0.layer2", "output"]
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="no Bernoulli layers"):
        lambda_gradient_norms(nn.Linear(3, 2), torch.zeros(1, 3), torch.tensor([0]))


def _sign_weight(layer):
    return torch.where(layer.lam >= 0, 1.0, -1.0) * layer.scale.reshape(-1, 1)


def _lif(cur, lif):
    mem, spk, out = torch.zeros_like(cur[0]), torch.zeros_like(cur[0]), []
    for c in cur:
        mem = lif.beta * mem + c - lif.threshold * spk
        spk = (mem >= lif.threshold).float()
        out.append(spk)
    return torch.stack(out)


def test_residual_mlp_mode_forward_equals_the_explicit_network():
    """Membrane shortcut, written out: x_{l+1} = x_l + γ W2 LIF(W1 LIF(x_l)), readout on LIF(x_L)."""
    torch.manual_seed(0)
    net = ResidualSpikingMLP(12, 3, depth=6, width=10, gamma_init=0.4)
    x = (torch.rand(8, 4, 12) < 0.3).float()
    net.calibrate(x)
    with sbnn.evaluation(net, "mode"):
        logits = net(x)
    stream = x @ _sign_weight(net.stem).T
    for block in net.blocks:
        s_in = _lif(stream, block.lif_in)
        s_mid = _lif(s_in @ _sign_weight(block.layer1).T, block.lif_mid)
        stream = stream + 0.4 * (s_mid @ _sign_weight(block.layer2).T)
    cur = _lif(stream, net.neuron) @ _sign_weight(net.output).T
    mem, acc = torch.zeros_like(cur[0]), []
    for c in cur:
        mem = net.readout_beta * mem + c
        acc.append(mem)
    torch.testing.assert_close(logits, torch.stack(acc).mean(0), rtol=1e-5, atol=1e-5)


def test_calibrated_stream_keeps_its_scale_with_depth():
    """The stream's second moment grows by ≈ 1 + γ² per block: bounded by exp(γ²·L) (docs/theory.md)."""
    torch.manual_seed(0)
    net = ResidualSpikingMLP(40, 3, depth=22, width=64, gamma_init=0.2)
    x = (torch.rand(10, 32, 40) < 0.2).float()
    net.calibrate(x)
    q = net.stream_second_moments(x)
    growth = [b / a for a, b in zip(q[:-1], q[1:])]
    assert all(0.97 < g < 1.1 for g in growth), growth
    assert q[-1] / q[0] < 1.5  # exp(0.04·10) = 1.49


def _train(net, x, y, steps, kl_weight=0.1):
    net.calibrate(x)
    lam = [p for n, p in net.named_parameters() if n.endswith("lam")]
    rest = [p for n, p in net.named_parameters() if not n.endswith("lam")]
    opt = torch.optim.Adam([{"params": lam, "lr": 0.1}, {"params": rest, "lr": 1e-2}])
    loss_fn = sbnn.ELBOLoss(n_train=len(y), kl_weight=kl_weight)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(x), y, net).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_depth_20_resnet_training_loss_decreases():
    torch.manual_seed(0)
    net = SpikingResNet(2, 4, depth=20, widths=(4, 8, 8), input_size=(8, 8))
    x, y = _frames(b=16, n_classes=4)
    losses = _train(net, x, y, 20)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize("shortcut", ["membrane", "spike"])
def test_residual_mlp_trains(shortcut):
    torch.manual_seed(0)
    net = ResidualSpikingMLP(12, 3, depth=8, width=24, shortcut=shortcut, binary_input=True)
    x = (torch.rand(6, 24, 12) < 0.3).float()
    y = torch.randint(0, 3, (24,))
    losses = _train(net, x, y, 20)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=10), r"depth=10 does not fit 3 stage\(s\).*8, 14, 20"),
        (dict(depth=20, widths=(8, 16)), r"2 stage\(s\).*6, 10, 14, 18, 22"),
        (dict(widths=()), "widths must be a non-empty"),
        (dict(widths=(8, 0, 16)), "widths must be a non-empty"),
        (dict(input_size=(3, 32)), r"too small for 3 stages.*at least 4"),
        (dict(input_size=(16, 16), stem_stride=8), r"too small.*at least 32"),
        (dict(input_size=(32,)), "two positive integers"),
        (dict(in_channels=0), "in_channels must be a positive integer"),
        (dict(neuron={"estimator": "nope"}), "valid names"),
        (dict(shortcut="sew"), "shortcut"),
        (dict(downsample="stride"), "downsample"),
    ],
)
def test_bad_resnet_arguments_fail_at_construction(kwargs, match):
    args = dict(in_channels=2, num_classes=5, depth=8, widths=(8, 16, 32), input_size=(32, 32)) | kwargs
    with pytest.raises(ValueError, match=match):
        SpikingResNet(**args)


def test_bad_inputs_fail_with_clear_messages():
    net = SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 8))
    with pytest.raises(ValueError, match="2 features in dimension 2"):
        net(torch.zeros(3, 2, 3, 8, 8))  # RGB frames into a DVS (2-polarity) network
    with pytest.raises(ValueError, match="too small"):
        net(torch.zeros(3, 2, 2, 3, 3))
    with pytest.raises(ValueError, match="5 dimensions"):
        net(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="in_channels"):
        net.calibrate(torch.zeros(3, 2, 1, 8, 8))
    mlp = ResidualSpikingMLP(700, 20, depth=4, width=8, binary_input=True)
    with pytest.raises(ValueError, match="700 features"):
        mlp(torch.zeros(5, 2, 64))
    with pytest.raises(ValueError, match="binary_input=False"):
        mlp.calibrate(torch.full((5, 2, 700), 2.0))
    with pytest.raises(ValueError, match=r"depth=5 does not fit 1 stage"):
        ResidualSpikingMLP(700, 20, depth=5)


def test_resnet_state_dict_round_trip_and_dtype(tmp_path):
    torch.manual_seed(0)
    net = SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 8)).double()
    assert all(t.dtype == torch.float64 for t in net.state_dict().values() if t.is_floating_point())
    torch.save(net.state_dict(), tmp_path / "net.pt")
    other = SpikingResNet(2, 5, depth=8, widths=(4, 8, 8), input_size=(8, 8)).double()
    other.load_state_dict(torch.load(tmp_path / "net.pt"))
    x, _ = _frames()
    with sbnn.evaluation(net, "mode"), sbnn.evaluation(other, "mode"):
        assert torch.equal(net(x.double()), other(x.double()))

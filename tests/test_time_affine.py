"""Per-time-step gain and bias (``LayerSettings.time_affine_steps``) in every network family."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.layers import Moments
from sbnn.modes import evaluation
from sbnn.models import (
    BinaryMLP,
    LayerSettings,
    ResidualSpikingMLP,
    SpikingConvNet,
    SpikingMLP,
    SpikingRecurrentNet,
    SpikingResNet,
)
from sbnn.models.time_affine import TimeAffine

FAMILIES = {
    "mlp": (lambda layer: SpikingMLP(6, (5, 4), 3, layer=layer), (4, 2, 6)),
    "recurrent": (lambda layer: SpikingRecurrentNet(6, (5,), 3, layer=layer), (4, 2, 6)),
    "conv": (lambda layer: SpikingConvNet(2, 8, (3,), 3, fc=(4,), layer=layer), (3, 2, 2, 8, 8)),
    "resnet-membrane": (lambda layer: SpikingResNet(2, 3, depth=4, widths=(3,), input_size=(6, 6), layer=layer), (3, 2, 2, 6, 6)),
    "resnet-spike": (
        lambda layer: SpikingResNet(2, 3, depth=6, widths=(3, 4), input_size=(6, 6), shortcut="spike", layer=layer),
        (3, 2, 2, 6, 6),
    ),
    "residual-mlp": (lambda layer: ResidualSpikingMLP(6, 3, depth=4, width=5, layer=layer), (4, 2, 6)),
}


def test_value_by_hand_with_an_offset():
    affine = TimeAffine(5, 3).double()
    with torch.no_grad():
        affine.gain.copy_(torch.arange(15, dtype=torch.float64).reshape(5, 3) / 10)
        affine.bias.copy_(-torch.arange(15, dtype=torch.float64).reshape(5, 3))
    mean = torch.randn(2, 4, 3, dtype=torch.float64)
    var = torch.rand(2, 4, 3, dtype=torch.float64)
    out = affine(Moments(mean, var), start=2)
    for t in range(2):
        for c in range(3):
            g, b = float(affine.gain[2 + t, c]), float(affine.bias[2 + t, c])
            torch.testing.assert_close(out.mean[t, :, c], g * mean[t, :, c] + b)
            torch.testing.assert_close(out.var[t, :, c], g * g * var[t, :, c])
    assert affine(Moments(mean, None)).var is None


def test_conv_shape_broadcasts_over_space():
    affine = TimeAffine(4, 2, spatial_dims=2)
    with torch.no_grad():
        affine.gain[1, 1] = 3.0
    out = affine(Moments(torch.ones(2, 1, 2, 3, 3), None))
    assert torch.equal(out.mean[1, 0, 1], torch.full((3, 3), 3.0)) and torch.equal(out.mean[0], torch.ones(1, 2, 3, 3))


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "10"])
def test_bad_steps_are_refused_naming_the_setting(steps):
    with pytest.raises(ValueError, match="layer.time_affine_steps"):
        LayerSettings(time_affine_steps=steps)


def test_default_adds_nothing_and_a_mapping_works():
    net = SpikingMLP(6, (5,), 3)
    assert not any(isinstance(m, TimeAffine) for m in net.modules())
    yaml_like = SpikingMLP(6, (5,), 3, layer={"time_affine_steps": 7})
    names = [n for n, m in yaml_like.named_modules() if isinstance(m, TimeAffine)]
    assert names == ["layers.0.time_affine"]
    assert yaml_like.layers[0].time_affine.gain.shape == (7, 5)
    with pytest.raises(ValueError, match="layer.time_affine_steps"):
        BinaryMLP(2, (4,), 2, layer=LayerSettings(time_affine_steps=3))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_identity_at_init_then_trained(family):
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    x = torch.rand(*shape).round()
    plain = build(LayerSettings())
    affine = build(LayerSettings(time_affine_steps=shape[0] + 2))
    missing, unexpected = affine.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".time_affine." in k for k in missing)
    # every hidden Bernoulli layer has one, the readout none
    with_affine = {n.rsplit(".time_affine", 1)[0] for n in missing}
    assert "output" not in with_affine
    assert len(with_affine) == sum(1 for n, m in plain.named_modules() if hasattr(m, "lam") and n != "output")
    with evaluation(plain, "mode"), evaluation(affine, "mode"):
        assert torch.equal(plain(x), affine(x))  # gain 1, bias 0: the same network
    if family != "recurrent":  # a recurrent layer with a gain runs step by step, drawing its noise per step
        torch.manual_seed(1)
        a = plain(x)
        torch.manual_seed(1)
        b = affine(x)
        assert torch.equal(a, b)  # the same noisy network too
    torch.manual_seed(2)
    loss = torch.nn.functional.cross_entropy(affine(x), torch.tensor([0, 1]))
    loss.backward()
    grads = [m.bias.grad for m in affine.modules() if isinstance(m, TimeAffine)]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_constant_gain_equals_a_larger_weight_scale():
    """``g·h`` with ``v`` scaled by ``g²`` is the layer with ``α·g``: the same spikes, the same logits."""
    torch.manual_seed(3)
    x = torch.rand(5, 3, 6, dtype=torch.float64).round()
    scaled = SpikingMLP(6, (5,), 3).double()
    affine = SpikingMLP(6, (5,), 3, layer=LayerSettings(time_affine_steps=5)).double()
    affine.load_state_dict(scaled.state_dict(), strict=False)
    with torch.no_grad():
        affine.layers[0].time_affine.gain.fill_(1.7)
        scaled.layers[0].log_scale.add_(math.log(1.7))
    torch.manual_seed(4)
    a = scaled(x)
    torch.manual_seed(4)
    b = affine(x)
    torch.testing.assert_close(a, b)


def test_recurrent_layer_gets_its_gain_from_step_one_on():
    torch.manual_seed(5)
    net = SpikingRecurrentNet(6, (5,), 3, layer=LayerSettings(time_affine_steps=6), neuron={"sigma0": 0.5})
    x = torch.rand(4, 8, 6).round()
    net.calibrate(x)
    torch.nn.functional.cross_entropy(net(x), torch.randint(0, 3, (8,))).backward()
    rec = net.recurrent[0].time_affine.bias.grad
    assert float(rec[0].abs().sum()) == 0  # S[-1] = 0: no recurrent current at t = 0
    assert float(rec[1:4].abs().sum()) > 0
    assert float(rec[4:].abs().sum()) == 0  # steps past the sequence are unused
    assert float(net.layers[0].time_affine.bias.grad[0].abs().sum()) > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_longer_sequence_is_refused_before_any_work(family):
    build, shape = FAMILIES[family]
    net = build(LayerSettings(time_affine_steps=shape[0] - 1))
    x = torch.rand(*shape).round()

    def never(*args, **kwargs):
        raise AssertionError("a layer ran before the check")

    for m in net.modules():
        if hasattr(m, "lam"):
            m.moments = never
    for call in (net, net.calibrate):
        with pytest.raises(ValueError, match=rf"{shape[0]} time steps.*layer.time_affine_steps = {shape[0] - 1}"):
            call(x)


def test_export_is_refused_with_a_clear_error():
    net = SpikingMLP(6, (5,), 3, layer=LayerSettings(time_affine_steps=4))
    with pytest.raises(ValueError, match="time_affine_steps"):
        net.export_graph()


def test_module_contract_float64_state_dict_and_pickle():
    import pickle

    net = SpikingConvNet(2, 8, (3,), 3, fc=(), layer=LayerSettings(time_affine_steps=3)).double()
    assert net.convs[0].time_affine.gain.dtype == torch.float64
    clone = pickle.loads(pickle.dumps(net))
    with torch.no_grad():
        net.convs[0].time_affine.bias.add_(0.5)
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone.convs[0].time_affine.bias, net.convs[0].time_affine.bias)


# -- per-time-step BatchNorm (layer.time_batch_norm) ------------------------------------------------
@pytest.mark.parametrize("spatial", [0, 2])
def test_batch_norm_equals_one_torch_batchnorm_per_step(spatial):
    """Training and eval outputs, running statistics and gradients equal a torch BatchNorm per step."""
    torch.manual_seed(0)
    steps, c = 5, 3
    shape = (4, 6, c) + (3, 3) * (spatial // 2)
    norm = TimeAffine(steps, c, spatial_dims=spatial, batch_norm=True)
    with torch.no_grad():
        norm.gain.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    bn_cls = torch.nn.BatchNorm2d if spatial else torch.nn.BatchNorm1d
    refs = [bn_cls(c) for _ in range(steps)]
    for t, bn in enumerate(refs):
        with torch.no_grad():
            bn.weight.copy_(norm.gain[t])
            bn.bias.copy_(norm.bias[t])
    start = 1
    for _ in range(3):  # three training batches move the running statistics
        x = torch.randn(*shape) * 2 + 1
        xr = x.clone().requires_grad_(True)
        xs = x.clone().requires_grad_(True)
        ours = norm(Moments(xs, None), start).mean
        theirs = torch.stack([refs[start + t](xr[t]) for t in range(shape[0])])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        w = torch.randn_like(ours)
        (ours * w).sum().backward()
        (theirs * w).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for t in range(shape[0]):
        torch.testing.assert_close(norm.running_mean[start + t], refs[start + t].running_mean)
        torch.testing.assert_close(norm.running_var[start + t], refs[start + t].running_var)
    assert torch.equal(norm.running_mean[0], torch.zeros(c))  # steps outside the window untouched
    norm.eval()
    for bn in refs:
        bn.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(norm(Moments(x, None), start).mean, torch.stack([refs[start + t](x[t]) for t in range(shape[0])]))


def test_batch_norm_scales_the_lrt_variance_by_the_same_factor():
    torch.manual_seed(1)
    norm = TimeAffine(2, 3, batch_norm=True)
    mean, var = torch.randn(2, 8, 3) * 3, torch.rand(2, 8, 3)
    out = norm(Moments(mean, var))
    s2 = mean.var(dim=1, unbiased=False)
    torch.testing.assert_close(out.var, var / (s2[:, None] + TimeAffine.eps))
    mean_only = TimeAffine(2, 3, batch_norm=True, scale_variance=False)
    assert torch.equal(mean_only(Moments(mean, var)).var, var)  # the mean-only option holds for the normalisation too


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_norm_in_every_family_normalises_and_trains(family):
    build, shape = FAMILIES[family]
    torch.manual_seed(0)
    x = torch.rand(*shape).round()
    net = build(LayerSettings(time_affine_steps=shape[0], time_batch_norm=True))
    norms = [m for m in net.modules() if isinstance(m, TimeAffine)]
    assert norms and all(m.batch_norm for m in norms)
    with evaluation(net, "mode"):
        net(x).sum().backward()
    assert any(float(m.running_mean.abs().sum()) > 0 for m in norms)  # statistics were gathered
    assert all(m.gain.grad is not None for m in norms)
    net.eval()
    with evaluation(net, "mode"):
        a, b = net(x), net(x[:, :1])
    torch.testing.assert_close(a[:1], b)  # eval: running statistics, so batch-invariant


def test_batch_norm_without_steps_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="time_affine_steps"):
        LayerSettings(time_batch_norm=True)


def test_batch_norm_state_dict_round_trip_carries_the_running_statistics():
    a = SpikingMLP(6, (5,), 3, layer=LayerSettings(time_affine_steps=4, time_batch_norm=True))
    with evaluation(a, "mode"):
        a(torch.rand(4, 8, 6).round())
    b = SpikingMLP(6, (5,), 3, layer=LayerSettings(time_affine_steps=4, time_batch_norm=True))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(4, 3, 6).round()
    with evaluation(a, "mode"), evaluation(b, "mode"):
        assert torch.equal(a(x), b(x))

"""sbnn.models.blocks: moment arithmetic, pooling shortcut, LRT-moment calibration and the residual blocks."""

from __future__ import annotations

import pytest
import torch

import sbnn
from sbnn.models.blocks import (
    ConvResidualBlock,
    LinearResidualBlock,
    add_moments,
    calibrate_rms_,
    lrt_second_moment,
    pool_moments,
)
from sbnn.layers import Moments


def test_add_moments_adds_means_and_scaled_variances():
    a = Moments(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0]))
    b = Moments(torch.tensor([3.0, -1.0]), torch.tensor([2.0, 4.0]))
    out = add_moments(a, b, 0.5)
    torch.testing.assert_close(out.mean, torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(out.var, torch.tensor([1.0, 2.0]))  # 0.5 + 0.25·2, 1 + 0.25·4
    assert add_moments(Moments(a.mean, None), Moments(b.mean, None), 0.5).var is None
    torch.testing.assert_close(add_moments(Moments(a.mean, None), b, 0.5).var, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(add_moments(a, Moments(b.mean, None), 0.5).var, a.var)


def test_pool_moments_is_exact_per_window_with_ceil_edges_and_zero_channels():
    mean = torch.arange(9.0).reshape(1, 1, 1, 3, 3)  # [T, B, C, H, W]
    var = torch.ones(1, 1, 1, 3, 3)
    out = pool_moments(Moments(mean, var), 2, 3)
    assert out.mean.shape == (1, 1, 3, 2, 2)
    # windows: {0,1,3,4}, {2,5}, {6,7}, {8}
    torch.testing.assert_close(out.mean[0, 0, 0], torch.tensor([[2.0, 3.5], [6.5, 8.0]]))
    # variance of a window mean of n unit-variance terms: 1/n
    torch.testing.assert_close(out.var[0, 0, 0], torch.tensor([[0.25, 0.5], [0.5, 1.0]]))
    assert torch.all(out.mean[:, :, 1:] == 0) and torch.all(out.var[:, :, 1:] == 0)
    assert pool_moments(Moments(mean, None), 2, 1).var is None


def test_lrt_second_moment_by_hand():
    mean = torch.tensor([[1.0], [2.0]])  # [T=2, 1]
    var = torch.tensor([[0.5], [1.0]])
    assert float(lrt_second_moment(Moments(mean, var))) == pytest.approx((1 + 4 + 0.5 + 1.0) / 2)
    # free membrane with β = 0.5: μ_U = [1, 2.5], v_U = [0.5, 0.25·0.5 + 1]
    expected = (1 + 6.25 + 0.5 + 1.125) / 2
    assert float(lrt_second_moment(Moments(mean, var), 0.5)) == pytest.approx(expected)


@pytest.mark.parametrize("beta", [None, 0.9])
def test_calibrate_rms_sets_the_exact_lrt_second_moment(beta):
    torch.manual_seed(0)
    layer = sbnn.BernoulliConv2d(3, 5, 3, padding=1, bias=True).double()
    with torch.no_grad():
        layer.bias.fill_(7.0)  # ignored by the calibration, restored afterwards
    layer.mode = "mode"
    x = (torch.rand(6, 4, 3, 5, 5, dtype=torch.float64) < 0.3).double()
    state = torch.random.get_rng_state()
    alpha = calibrate_rms_(layer, x, 1.7, beta)
    assert torch.equal(state, torch.random.get_rng_state())  # no noise drawn: deterministic
    assert layer.mode == "mode" and float(layer.bias[0].detach()) == 7.0
    assert float(layer.scale.detach()) == pytest.approx(alpha)
    layer.bias, layer.mode = None, "sample"
    second = lrt_second_moment(layer.moments(x), beta)
    assert float(second.detach()) == pytest.approx(1.7**2, rel=1e-10)


def test_calibrate_rms_warns_and_keeps_the_scale_on_silent_input():
    layer = sbnn.BernoulliLinear(4, 3)
    before = layer.scale.clone()
    with pytest.warns(RuntimeWarning, match="silent"):
        calibrate_rms_(layer, torch.zeros(5, 2, 4), 1.0)
    assert torch.equal(layer.scale, before)
    with pytest.raises(ValueError, match="target_rms"):
        calibrate_rms_(layer, torch.ones(5, 2, 4), 0.0)


def _sign_weight(layer):
    return torch.where(layer.lam >= 0, 1.0, -1.0) * layer.scale.reshape(-1, *([1] * (layer.lam.dim() - 1)))


def _lif(cur, lif):
    """The deterministic LIF (subtract reset) written out by hand."""
    mem, spk, out = torch.zeros_like(cur[0]), torch.zeros_like(cur[0]), []
    for c in cur:
        mem = lif.beta * mem + c - lif.threshold * spk
        spk = (mem >= lif.threshold).float()
        out.append(spk)
    return torch.stack(out)


def test_linear_block_mode_forward_equals_the_explicit_network():
    torch.manual_seed(0)
    block = LinearResidualBlock(6, gamma_init=0.3)
    x = torch.randn(7, 4, 6) * 2
    with sbnn.evaluation(block, "mode"):
        stream, spikes = block(x)
    s_in = _lif(x, block.lif_in)
    s_mid = _lif(s_in @ _sign_weight(block.layer1).T, block.lif_mid)
    expected = x + 0.3 * (s_mid @ _sign_weight(block.layer2).T)
    assert stream.var is None
    torch.testing.assert_close(stream.mean, expected)
    torch.testing.assert_close(spikes[0], s_in)
    torch.testing.assert_close(spikes[1], s_mid)


def test_zero_gamma_block_is_the_identity_on_the_stream_moments():
    block = ConvResidualBlock(3, gamma_init=0.0)
    x = Moments(torch.randn(2, 2, 3, 4, 4), torch.rand(2, 2, 3, 4, 4))
    out, _ = block(x)
    assert torch.equal(out.mean, x.mean) and torch.equal(out.var, x.var)


def test_membrane_block_stream_variance_adds_the_branch_lrt_variance():
    """In sample mode v' = v + γ²·v_F, where v_F is the second layer's LRT variance on its spikes."""
    torch.manual_seed(0)
    block = LinearResidualBlock(8, gamma_init=0.5)
    x = Moments(torch.randn(5, 3, 8), torch.rand(5, 3, 8))
    out, (_, s_mid) = block(x)
    _, v_branch = block.layer2.moments(s_mid)
    torch.testing.assert_close(out.var, x.var + 0.25 * v_branch)


@pytest.mark.parametrize("shortcut", ["membrane", "spike"])
@pytest.mark.parametrize("downsample", ["conv", "pool"])
def test_conv_block_shapes_and_gradients(shortcut, downsample):
    torch.manual_seed(0)
    block = ConvResidualBlock(4, 8, stride=2, shortcut=shortcut, downsample=downsample)
    assert (block.proj is not None) == (downsample == "conv")
    x = (torch.rand(3, 2, 4, 5, 5) < 0.4).float()
    stream, rates = block.calibrate(x if shortcut == "spike" else Moments(x, None))
    assert stream.mean.shape == (3, 2, 8, 3, 3) and all(0 < r < 1 for r in rates)
    out, spikes = block(x)
    (out.mean.sum() + (0 if out.var is None else out.var.sum())).backward()
    assert block.gamma.grad is not None and block.gamma.grad != 0
    assert block.layer1.lam.grad.abs().sum() > 0


def test_block_calibration_matches_the_branch_to_the_stream_scale():
    torch.manual_seed(0)
    block = ConvResidualBlock(4, gamma_init=0.2)
    x = Moments(torch.randn(4, 8, 4, 6, 6) * 1.5, torch.rand(4, 8, 4, 6, 6))
    q_in = float(lrt_second_moment(x))
    out, _ = block.calibrate(x)
    with torch.no_grad():  # a fresh draw: the branch scale is set per the LRT law
        spk_in, _ = block.lif_in.sequence(x)
        s_mid, _ = block.lif_mid.sequence(block.layer1.moments(spk_in))
        q_branch = float(lrt_second_moment(block.layer2.moments(s_mid)))
    assert q_branch == pytest.approx(q_in, rel=0.15)
    # the stream's second moment grows by about 1 + γ² (cross term ≈ 0 for random-sign weights)
    assert 1.0 < float(lrt_second_moment(out)) / q_in < 1.1


def test_bad_block_arguments_and_inputs():
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ConvResidualBlock(4, 4, stride=3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvResidualBlock(4, 4, kernel_size=2)
    with pytest.raises(ValueError, match="cannot reduce"):
        ConvResidualBlock(8, 4, downsample="pool")
    with pytest.raises(ValueError, match="shortcut"):
        LinearResidualBlock(4, shortcut="sew")
    with pytest.raises(ValueError, match="gamma_init"):
        LinearResidualBlock(4, gamma_init=-0.1)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        LinearResidualBlock(0)
    with pytest.raises(ValueError, match="4 features in dimension 2"):
        ConvResidualBlock(4)(torch.zeros(2, 2, 3, 5, 5))
    with pytest.raises(ValueError, match="spike-sum stream"):
        LinearResidualBlock(4, shortcut="spike")(Moments(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="variance shape"):
        LinearResidualBlock(4)(Moments(torch.zeros(2, 2, 4), torch.zeros(2, 2, 3)))


def test_block_contract_dtype_state_dict_and_reset(tmp_path):
    block = ConvResidualBlock(2, 4, stride=2).double()
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert all(b.dtype == torch.float64 for b in block.buffers() if b.is_floating_point())
    path = tmp_path / "block.pt"
    torch.save(block.state_dict(), path)
    other = ConvResidualBlock(2, 4, stride=2).double()
    other.load_state_dict(torch.load(path))
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), other.state_dict().values()))
    assert float(other.gamma.detach()) == pytest.approx(0.2)

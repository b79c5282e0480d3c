"""ProxConnect++ quantisers: forward values and backward gradients against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.quantizers import bnn_plus_plus_quantize, bnn_plus_quantize, bnn_quantize, get_quantizer, sign_swish, sign_swish_grad

W = [-2.0, -1.0, -0.4, 0.0, 0.3, 1.0, 1.5]


def _grad(fn, w):
    w = torch.tensor(w, requires_grad=True)
    out = fn(w)
    out.backward(torch.ones_like(out))
    return out.detach(), w.grad


def _ss(w, mu):  # the sign-Swish formula, written out per element
    s = 1 / (1 + math.exp(-mu * w))
    return 2 * s * (1 + mu * w * (1 - s)) - 1


def _ss_grad(w, mu):
    return mu * (2 - mu * w * math.tanh(mu * w / 2)) / (1 + math.cosh(mu * w))


def test_bnn_sign_forward_and_clipped_identity_backward():
    out, grad = _grad(bnn_quantize, W)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]  # sign, with 0 → +1
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # 1{|w| ≤ 1}


def test_sign_swish_matches_its_formula_and_hand_values():
    mu = 2.0
    torch.testing.assert_close(sign_swish(torch.tensor(W, dtype=torch.float64), mu), torch.tensor([_ss(w, mu) for w in W], dtype=torch.float64))
    assert float(sign_swish(torch.tensor(0.0), mu)) == 0.0
    assert float(sign_swish_grad(torch.tensor(0.0), mu)) == pytest.approx(mu)  # μ·2/2 at 0
    # the closed-form derivative is the derivative of SS_μ
    w = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    (auto,) = torch.autograd.grad(sign_swish(w, mu).sum(), w)
    torch.testing.assert_close(sign_swish_grad(w.detach(), mu), auto)
    # and it tends to sign as μ grows
    assert torch.equal(sign_swish(torch.tensor([-0.5, 0.5]), 200.0).round(), torch.tensor([-1.0, 1.0]))


def test_bnn_plus_sign_forward_sign_swish_backward():
    mu = 3.0
    out, grad = _grad(lambda w: bnn_plus_quantize(w, mu), W)
    assert out.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(grad, torch.tensor([_ss_grad(w, mu) for w in W]))


def test_bnn_plus_plus_sign_swish_forward_and_backward():
    mu = 1.5
    out, grad = _grad(lambda w: bnn_plus_plus_quantize(w, mu), W)
    torch.testing.assert_close(out, torch.tensor([_ss(w, mu) for w in W]))
    torch.testing.assert_close(grad, torch.tensor([_ss_grad(w, mu) for w in W]))


def test_get_quantizer_checks_its_arguments_and_pickles():
    import pickle

    q = pickle.loads(pickle.dumps(get_quantizer("bnn+", mu=4.0)))
    assert q(torch.tensor([0.2])).tolist() == [1.0]
    with pytest.raises(ValueError, match="quantizer"):
        get_quantizer("bnn+++")
    with pytest.raises(ValueError, match="mu"):
        get_quantizer("bnn++", mu=0.0)
    with pytest.raises(ValueError, match="mu"):
        bnn_plus_quantize(torch.zeros(1), mu=-1.0)

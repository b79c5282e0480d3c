r"""Forward–backward weight quantisers of BinaryConnect-style training (ProxConnect++).

A latent real weight ``w`` is quantised to ``w̃ = F(w)`` for the forward pass, and the gradient
``∂ℓ/∂w̃`` is carried back to ``w`` through the derivative of a *backward* quantiser ``B``:

.. math::

    \tilde w = F(w), \qquad \frac{\partial \ell}{\partial w} := B'(w)\,\frac{\partial \ell}{\partial \tilde w}.

Lu, Yu, Li & Partovi Nia (NeurIPS 2023, arXiv:2402.17710) call the pair ``(F, B)``
ProxConnect++ and show that the classic binarisation tricks are members of it:

=========== ============================== ======================================== ==========================
name        forward ``F(w)``               backward ``B'(w)``                       reference
=========== ============================== ======================================== ==========================
``bnn``     ``sign(w)``                    ``1{|w| ≤ 1}`` (``B = clip(w, −1, 1)``)   Hubara et al. 2016
``bnn+``    ``sign(w)``                    ``SS'_μ(w)`` (``B = SS_μ``)                Darabi et al. 2018
``bnn++``   ``SS_μ(w)``                    ``SS'_μ(w)`` (``F = B = SS_μ``)            Lu et al. 2023
=========== ============================== ======================================== ==========================

with the sign-Swish function (Darabi et al. 2018, arXiv:1812.11800)

.. math::

    SS_μ(w) = 2σ(μw)\,[1 + μw\,(1 − σ(μw))] − 1,
    \qquad SS'_μ(w) = \frac{μ\,[2 − μw \tanh(μw/2)]}{1 + \cosh(μw)}.

``SS_μ → sign`` as ``μ → ∞``, so BNN++ trains with a smooth forward quantiser whose sharpness
``μ`` is raised during training (see :class:`sbnn.training.QuantizerMethod`) and is evaluated
with ``sign``. ``sign`` sends 0 to ``+1`` here (ties go to ``+1``, as ``sbnn.posterior.sign_mode``).

.. note:: The formulas above are our reading of ProxConnect++ (Lu et al.) and the papers it
   cites for each pair.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from ._validation import check_choice, check_in_range

__all__ = ["sign_swish", "sign_swish_grad", "bnn_quantize", "bnn_plus_quantize", "bnn_plus_plus_quantize", "QUANTIZERS", "get_quantizer"]


def _sign(w: Tensor) -> Tensor:
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def sign_swish(w: Tensor, mu: float) -> Tensor:
    """``SS_μ(w) = 2σ(μw)[1 + μw(1 − σ(μw))] − 1`` (elementwise; see the module docstring)."""
    s = torch.sigmoid(mu * w)
    return 2.0 * s * (1.0 + mu * w * (1.0 - s)) - 1.0


def sign_swish_grad(w: Tensor, mu: float) -> Tensor:
    """``SS'_μ(w) = μ[2 − μw·tanh(μw/2)] / (1 + cosh(μw))`` (elementwise)."""
    z = (mu * w).clamp(-80.0, 80.0)  # cosh overflows beyond; the value is 0 to float precision there
    return mu * (2.0 - z * torch.tanh(z / 2.0)) / (1.0 + torch.cosh(z))


class _BNN(torch.autograd.Function):
    """Forward ``sign(w)``, backward ``1{|w| ≤ 1}·g`` (clipped identity)."""

    @staticmethod
    def forward(w: Tensor) -> Tensor:
        return _sign(w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (w,) = inputs
        ctx.save_for_backward(w)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1.0).to(grad.dtype)


class _SignSwishBackward(torch.autograd.Function):
    """Forward ``sign(w)``, backward ``SS'_μ(w)·g``."""

    @staticmethod
    def forward(w: Tensor, mu: float) -> Tensor:
        return _sign(w)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, mu = inputs
        ctx.save_for_backward(w)
        ctx.mu = mu

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None
        (w,) = ctx.saved_tensors
        return grad * sign_swish_grad(w, ctx.mu), None


class _SignSwish(_SignSwishBackward):
    """Forward ``SS_μ(w)``, backward ``SS'_μ(w)·g`` (its exact derivative, in closed form)."""

    @staticmethod
    def forward(w: Tensor, mu: float) -> Tensor:
        return sign_swish(w, mu)


def bnn_quantize(w: Tensor) -> Tensor:
    """BNN pair: ``sign(w)`` forward, clipped identity ``1{|w| ≤ 1}`` backward (the classic STE).

    Shape:
        any; the output has the shape of ``w``.

    Example:
        >>> bnn_quantize(torch.tensor([-2.0, -0.5, 0.0, 0.3])).tolist()
        [-1.0, -1.0, 1.0, 1.0]
    """
    return _BNN.apply(w)


def bnn_plus_quantize(w: Tensor, mu: float = 5.0) -> Tensor:
    """BNN+ pair: ``sign(w)`` forward, ``SS'_μ(w)`` backward (``μ > 0``)."""
    check_in_range("mu", mu, 0.0, low_open=True)
    return _SignSwishBackward.apply(w, float(mu))


def bnn_plus_plus_quantize(w: Tensor, mu: float = 5.0) -> Tensor:
    """BNN++ pair: ``SS_μ(w)`` forward, ``SS'_μ(w)`` backward (``μ > 0``)."""
    check_in_range("mu", mu, 0.0, low_open=True)
    return _SignSwish.apply(w, float(mu))


#: name -> (quantiser, takes μ)
QUANTIZERS: dict[str, tuple[Callable[..., Tensor], bool]] = {
    "bnn": (bnn_quantize, False),
    "bnn+": (bnn_plus_quantize, True),
    "bnn++": (bnn_plus_plus_quantize, True),
}


def get_quantizer(name: str, mu: float = 5.0) -> Callable[[Tensor], Tensor]:
    """The quantiser ``w ↦ F(w)`` (with backward ``B'``) called ``name``; ``mu`` for BNN+/BNN++."""
    check_choice("quantizer", name, tuple(QUANTIZERS))
    fn, takes_mu = QUANTIZERS[name]
    if takes_mu:
        check_in_range("mu", mu, 0.0, low_open=True)
        return functools.partial(fn, mu=float(mu))  # picklable, unlike a lambda
    return fn

r"""Optimisers of published binary-network training methods: ``BayesBiNN`` and ``Bop``.

**BayesBiNN** (Meng, Bachmann & Khan 2020, arXiv:2002.10778) is the Bayesian learning rule for a
mean-field Bernoulli posterior over ±1 weights, ``q(w = +1) = σ(2λ)``. It owns the natural
parameters ``λ`` of sbnn's Bernoulli layers (the same ``λ`` that :class:`sbnn.BernoulliLinear`
stores and that ``mode`` / MC evaluation read). One step, for ``s = 1..S``:

.. math::

    ε_s \sim U(0,1),\quad δ_s = \tfrac12 \log\frac{ε_s}{1-ε_s},\quad
    w_r^{(s)} = \tanh\!\Big(\frac{λ + δ_s}{τ}\Big),\quad
    g_s = ∇_{w} \bar\ell(w_r^{(s)}),\quad
    \mathrm{s}_s = \frac{1 - (w_r^{(s)})^2}{τ\,(1 - \tanh^2 λ)},

    \hat g = \frac{N}{S} \sum_s \mathrm{s}_s \odot g_s,\qquad
    m \leftarrow β m + (1-β)\,[\hat g + κ(λ - λ_0)],\qquad
    λ \leftarrow λ - α\, \frac{m}{1-β^t},

with ``ℓ̄`` the mean minibatch loss, ``N`` the training-set size, ``λ0`` the prior (each layer's
``prior_lam`` buffer: 0 for a uniform prior, the previous task's ``λ`` for continual learning,
see :meth:`BayesBiNN.set_prior_from_posterior`) and ``κ`` the KL weight (1 in the paper). With
``β = 0, κ = 1`` this is the paper's ``λ ← (1 − α)λ − α(N s ⊙ g − λ0)``. ``(1 − w_r²)`` and
``(1 − tanh² λ)`` are computed as ``4σ(2x)σ(−2x)``, exact where ``tanh`` rounds to ±1, and a
floor ``eps`` (1e−10, as in the authors' code) is added to both so the ratio stays defined at
tiny ``τ``.

*BayesBiNN or Adam-on-λ + KL (sbnn's default)?* Both fit the same variational objective over the
same ``λ``. BayesBiNN follows the natural gradient of the ELBO with the *whole* KL (``N``-scaled
data term), relaxed weight samples and deterministic neurons; it is what the BayesBiNN paper's tables use
and it is the better choice when you want the BayesBiNN paper's behaviour, the ±10 initialisation, tiny
``τ`` (STE-like training) or continual learning with the exact prior term. sbnn's
:class:`sbnn.tasks.SpikingClassificationTask` uses Adam on ``λ`` with local
reparameterisation (two matmuls per layer, one pass per step instead of ``S``), a tempered KL
(``kl_weight``) and posterior noise inside the neurons; it is the better choice for spiking
networks trained on small data, where the LRT noise is the neurons' noise and one pass per step
is cheaper. ``λ = ±10`` is dead under Adam (``1 − tanh² 10 ≈ 8e−9``, docs/design.md §7), alive under
BayesBiNN, whose scale vector divides by that same factor.

**Bop** (Helwegen et al. 2019, arXiv:1906.02107) keeps no latent weights: an exponential moving
average ``m ← (1 − γ)m + γ g`` of the gradient flips a binary weight when ``|m| > τ_b`` and
``sign(m) = sign(w)`` (the ``hyst1`` form of BayesBiNN (Meng et al. 2020) appendix A, eqs. 22–23).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from .._validation import check_in_range, check_positive_int
from ..gaussian_layers import GaussianLayer
from ..layers import BernoulliLayer
from ..neurons import StochasticLIF
from ..posterior import sign_variance

__all__ = ["BayesBiNN", "Bop", "relaxed_sample", "bernoulli_layers", "random_sign_", "noise_scale_parameters"]


def bernoulli_layers(model: nn.Module) -> list[BernoulliLayer]:
    """Every :class:`sbnn.BernoulliLayer` inside ``model`` (recursively), in module order."""
    return [m for m in model.modules() if isinstance(m, BernoulliLayer)]


def noise_scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned noise scales of ``model``, in module order: every Gaussian layer's ``σ_w``
    (``sigma_rho``) and every neuron's learned ``σ_b`` (``sigma_b_rho``).

    The SBNN paper trains them with their own learning rate (Walker et al. 2025: 10× the weights');
    :class:`sbnn.tasks.SpikingClassificationTask` gives them the group ``sigma_lr``.
    """
    out: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, GaussianLayer):
            out.append(m.sigma_rho)
        elif isinstance(m, StochasticLIF) and isinstance(m.sigma_b_rho, nn.Parameter):
            out.append(m.sigma_b_rho)
    return out


@torch.no_grad()
def random_sign_(layers: Iterable[BernoulliLayer], magnitude: float, generator: torch.Generator | None = None) -> None:
    """Set every layer's ``λ`` to ``±magnitude`` with independent fair signs (in place, layer order)."""
    for layer in layers:
        signs = torch.randint(0, 2, layer.lam.shape, generator=generator).to(layer.lam)
        layer.lam.copy_(magnitude * (2.0 * signs - 1.0))


def relaxed_sample(lam: Tensor, temperature: float, uniform: Tensor) -> Tensor:
    r"""BayesBiNN's relaxed (Gumbel-softmax / Concrete) sample ``tanh((λ + δ)/τ)``.

    ``δ = ½ log(ε / (1 − ε))`` is half a standard logistic draw made from ``ε ~ U(0, 1)``; as
    ``τ → 0`` the sample tends to the hard draw ``+1`` if ``ε > σ(−2λ)`` else ``−1``, a ±1 weight
    with ``P(+1) = σ(2λ)``.

    Args:
        lam: natural parameters ``λ``.
        temperature: ``τ > 0``.
        uniform: ``ε`` in (0, 1), shape of ``lam``.

    Shape:
        ``lam``, ``uniform`` and the output share one shape.

    Example:
        >>> relaxed_sample(torch.tensor([0.0]), 1.0, torch.tensor([0.5])).tolist()
        [0.0]
    """
    check_in_range("temperature", temperature, 0.0, low_open=True)
    return torch.tanh((lam + _half_logistic(uniform)) / temperature)


def _half_logistic(uniform: Tensor) -> Tensor:
    """``δ = ½ log(ε / (1 − ε))``."""
    return 0.5 * (torch.log(uniform) - torch.log1p(-uniform))


class BayesBiNN(torch.optim.Optimizer):
    """The BayesBiNN optimiser over the ``λ`` of every Bernoulli layer of ``model``.

    ``step(closure)`` needs a closure that runs the model and returns the *mean* minibatch loss
    (it must not call ``backward``). The closure runs ``S`` times; each time every Bernoulli layer
    uses a fresh relaxed sample ``w_r`` as its weight (the layer's ``fixed`` mode), and the loss is
    back-propagated with weight ``1/S``. So the model's *other* parameters (scales ``α``,
    biases) end the step holding the MC-averaged gradient, ready for a companion optimiser (e.g.
    Adam) to step them; zero their gradients before each step. Layer modes are restored after.

    Args:
        model: a module holding at least one :class:`sbnn.BernoulliLayer`.
        train_size: ``N``, the number of training examples (gradients are scaled by it).
        lr: learning rate ``α > 0``.
        momentum: ``β ∈ [0, 1)``, with Adam-style bias correction.
        temperature: ``τ > 0`` of the relaxation.
        num_samples: ``S ≥ 1`` Monte Carlo samples per step.
        lam_init: magnitude of the random ``±lam_init`` initialisation of ``λ`` (the paper's
            ±10; table 3 uses ±15); ``None`` keeps the layers' current ``λ``.
        kl_weight: ``κ ≥ 0``, weight of the prior term ``λ − λ0``.
        eps: floor added to ``1 − w_r²`` and ``1 − tanh²λ`` (``≥ 0``).
        generator: source of the ``ε`` draws and of the initial signs.

    Raises:
        ValueError: a hyper-parameter is out of range, or ``model`` has no Bernoulli layers.

    Example:
        >>> from sbnn import BernoulliLinear
        >>> net = BernoulliLinear(3, 2)
        >>> opt = BayesBiNN(net, train_size=100, lr=1e-3, temperature=1.0)
        >>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> loss = opt.step(lambda: torch.nn.functional.cross_entropy(net(x), y))
    """

    def __init__(
        self,
        model: nn.Module,
        train_size: int,
        lr: float = 1e-4,
        momentum: float = 0.0,
        temperature: float = 1e-10,
        num_samples: int = 1,
        lam_init: float | None = 10.0,
        kl_weight: float = 1.0,
        eps: float = 1e-10,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"BayesBiNN expects the model (an nn.Module), got {type(model).__name__}")
        check_positive_int("BayesBiNN", train_size=train_size, num_samples=num_samples)
        check_in_range("lr", lr, 0.0, low_open=True)
        check_in_range("momentum", momentum, 0.0, 1.0, high_open=True)
        check_in_range("temperature", temperature, 0.0, low_open=True)
        check_in_range("kl_weight", kl_weight, 0.0)
        check_in_range("eps", eps, 0.0)
        if lam_init is not None:
            check_in_range("lam_init", lam_init, 0.0, low_open=True)
        layers = bernoulli_layers(model)
        if not layers:
            raise ValueError(
                f"BayesBiNN: the model ({type(model).__name__}) has no Bernoulli layers; BayesBiNN updates the "
                "natural parameters λ of sbnn.BernoulliLinear / BernoulliConv2d layers. Build the network from "
                "them, or train a float network with a standard optimiser"
            )
        self.layers = layers
        self.generator = generator
        defaults = dict(lr=lr, momentum=momentum, temperature=temperature, num_samples=num_samples,
                        train_size=train_size, kl_weight=kl_weight, eps=eps)
        super().__init__([layer.lam for layer in layers], defaults)
        if lam_init is not None:
            random_sign_(layers, lam_init, generator)

    def _uniform(self, like: Tensor) -> Tensor:
        # ε ∈ (0, 1) strictly: log(0) would make δ infinite
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype).to(like.device)
        tiny = torch.finfo(like.dtype).tiny
        return u.clamp(tiny, 1.0 - torch.finfo(like.dtype).eps)

    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """One BayesBiNN update; returns the loss averaged over the ``S`` samples (detached)."""
        if closure is None or not callable(closure):
            raise ValueError("BayesBiNN.step needs a closure that runs the model and returns the mean minibatch loss")
        group = self.param_groups[0]
        tau, n_samples = group["temperature"], group["num_samples"]
        lams = group["params"]
        saved_modes = [(layer, layer.mode_state()) for layer in self.layers]
        grad_hat = [torch.zeros_like(lam) for lam in lams]
        losses = []
        try:
            for _ in range(n_samples):
                samples = []
                for layer, lam in zip(self.layers, lams):
                    u = (lam.detach() + _half_logistic(self._uniform(lam))) / tau
                    w_r = torch.tanh(u).requires_grad_(True)
                    layer.set_fixed_weight(w_r)
                    samples.append((u, w_r))
                with torch.enable_grad():
                    loss = closure()
                    if not isinstance(loss, Tensor) or loss.dim() != 0:
                        raise ValueError("BayesBiNN.step: the closure must return the scalar mean minibatch loss")
                    (loss / n_samples).backward()
                losses.append(loss.detach())
                for acc, lam, (u, w_r) in zip(grad_hat, lams, samples):
                    if w_r.grad is not None:  # None: a layer the loss does not use
                        acc.add_(self._scale(lam.detach(), u, tau, group["eps"]) * w_r.grad)
        finally:
            for layer, state in saved_modes:
                layer.restore_mode_state(state)
        # each w_r.grad already carries the 1/S of the backward
        with torch.no_grad():
            for layer, lam, g in zip(self.layers, lams, grad_hat):
                self._update(lam, g * group["train_size"], layer.prior_lam, group)
        return torch.stack(losses).mean()

    @staticmethod
    def _scale(lam: Tensor, u: Tensor, tau: float, eps: float) -> Tensor:
        """``(1 − tanh²u + eps) / (τ (1 − tanh²λ + eps))``, both ``1 − tanh²`` as ``4σ(2x)σ(−2x)``."""
        return (sign_variance(u) + eps) / (tau * (sign_variance(lam) + eps))

    def _update(self, lam: Tensor, g: Tensor, prior_lam: Tensor, group: dict) -> None:
        state = self.state[lam]
        if not state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(lam)
        state["step"] += 1
        beta = group["momentum"]
        direction = g + group["kl_weight"] * (lam - prior_lam.to(lam))
        m = state["momentum_buffer"]
        m.mul_(beta).add_(direction, alpha=1.0 - beta)
        lam.sub_(m, alpha=group["lr"] / (1.0 - beta ** state["step"]))

    @torch.no_grad()
    def set_prior_from_posterior(self) -> None:
        """Make the current posterior the prior of the next task: ``λ0 ← λ`` in every layer."""
        for layer in self.layers:
            layer.set_prior(layer.lam.detach())


class Bop(torch.optim.Optimizer):
    r"""Binary optimiser: flip a ±1 weight when the gradient's moving average is large and agrees.

    .. math::

        m \leftarrow (1-γ)\,m + γ\,g, \qquad
        w \leftarrow \begin{cases} -w & |m| > τ_b \text{ and } \operatorname{sign}(m) = \operatorname{sign}(w) \\
        w & \text{otherwise} \end{cases}

    (Helwegen et al. 2019, arXiv:1906.02107; BayesBiNN (Meng et al. 2020) appendix A, eqs. 22–23; table 9 uses
    ``τ_b = 1e−8`` and ``γ = 1e−5 … 1e−4``). A weight moves against its gradient's sign, so a
    flip happens when the gradient persistently says the weight is on the wrong side.

    Args:
        params: parameters holding ±1 values only (e.g. Bernoulli layers' ``λ`` after
            ``λ ← sign(λ)``).
        threshold: ``τ_b ≥ 0``.
        adaptivity: ``γ ∈ (0, 1]``.

    Raises:
        ValueError: ``threshold < 0``, ``adaptivity`` outside (0, 1], or a parameter that is
            not ±1.
    """

    def __init__(self, params: Iterable[Tensor], threshold: float = 1e-8, adaptivity: float = 1e-4) -> None:
        check_in_range("threshold", threshold, 0.0)
        check_in_range("adaptivity", adaptivity, 0.0, 1.0, low_open=True)
        super().__init__(params, dict(threshold=threshold, adaptivity=adaptivity))
        for group in self.param_groups:
            for p in group["params"]:
                if not bool((p.detach().abs() == 1).all()):
                    raise ValueError(
                        "Bop: every parameter must hold ±1 values only; binarise them first "
                        "(with torch.no_grad(): p.copy_(torch.where(p >= 0, 1.0, -1.0)))"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            gamma, threshold = group["adaptivity"], group["threshold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                flip = (m.abs() > threshold) & (torch.sign(m) == torch.sign(p))
                p.copy_(torch.where(flip, -p, p))
        return loss

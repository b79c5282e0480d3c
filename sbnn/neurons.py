r"""``StochasticLIF``: the noisy leaky integrate-and-fire neuron as an snnTorch-compatible module.

A thin stateful wrapper over :mod:`sbnn.functional.neurons` (the equations are there). It follows
snnTorch's neuron contract so it drops into snnTorch-style code:

================================= ===================================== ===========================
construction                      call                                  returns
================================= ===================================== ===========================
``init_hidden=False`` (default)   ``spk, mem = lif(x, mem)``            ``(spk, mem)``
``init_hidden=True``              ``spk = lif(x)``                      ``spk``
``init_hidden=True, output=True`` ``spk, mem = lif(x)``                 ``(spk, mem)``
================================= ===================================== ===========================

``x`` is the input current for one time step, either a tensor (the mean; only ``σ0`` noise) or
the :class:`sbnn.layers.Moments` ``(μ, v)`` of a Bernoulli layer (posterior noise). With explicit
state (``init_hidden=False``) the previous spike needed by the reset is recomputed as
``H(mem − ϑ)`` as snnTorch does; this is exact, because the neuron fires exactly when its (noisy)
membrane reaches the threshold. :meth:`StochasticLIF.sequence` runs a whole time-major sequence
at once (one fused autograd node) and is what sbnn's models use.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._validation import check_choice, check_in_range, check_input
from .functional.estimators import Estimator, get_estimator
from .functional.neurons import (
    MEMBRANE_NOISE_MODELS,
    RESET_MECHANISMS,
    Drive,
    StochasticLIFParameters,
    StochasticLIFState,
    stochastic_lif_sequence,
    stochastic_lif_step,
)
from .functional.noise import NoiseFamily, get_noise
from .layers import Moments

__all__ = ["StochasticLIF", "DriveHook", "DriveRecorder", "record_drives", "NoiseSource", "NoiseReplay", "replay_noise"]

#: ``hook(neuron, drive)``, called after every noisy :meth:`StochasticLIF.sequence`
DriveHook = Callable[["StochasticLIF", Drive], None]
#: ``source(shape, like) -> ε``: standard noise draws of ``shape`` with ``like``'s dtype and device
NoiseSource = Callable[[tuple, Tensor], Tensor]


def _constant(module: nn.Module, name: str, value: float | Tensor, learn: bool) -> None:
    """Register ``value`` as a Parameter (``learn``) or a buffer, so ``.to()`` and ``state_dict`` see it."""
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
    if learn:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor)


class StochasticLIF(nn.Module):
    r"""Stochastic LIF neuron whose noise is the posterior noise of its input (docs/design.md §1.3).

    Args:
        beta: membrane leak ``β ∈ [0, 1]`` (scalar or per-unit tensor); ``0`` with
            ``reset_mechanism="none"`` is a binary stochastic neuron.
        threshold: firing threshold ``ϑ > 0``.
        sigma0: intrinsic noise standard deviation ``σ0 ≥ 0`` (default 0.1, docs/design.md §7).
        eps_min: floor of the noise standard deviation (``> 0``): keeps ``θ`` finite when a unit
            gets no input (``v = 0``) and ``σ0 = 0``.
        noise: ``"gaussian"`` (probit link) or ``"logistic"`` (sigmoid link).
        estimator: gradient estimator, a name from :data:`sbnn.estimators.ESTIMATORS` (default
            hyper-parameters) or an :class:`sbnn.estimators.Estimator` instance.
        reset_mechanism: ``"subtract"``, ``"zero"`` or ``"none"``.
        detach_reset: stop the gradient through the reset term (snnTorch's choice).
        membrane_noise: ``"pathwise"`` (default: the drawn noise stays in the membrane, ``θ`` sees
            the per-step scale) or ``"marginal"`` (the membrane keeps its conditional mean and
            ``θ`` sees the accumulated variance; see :mod:`sbnn.functional.neurons`). The
            marginal model's state includes a variance, so it runs with ``init_hidden=True`` or
            :meth:`sequence`, not with an explicit ``mem`` argument.
        learn_beta, learn_threshold: make ``β``/``ϑ`` trainable parameters.
        sigma_b: threshold-noise standard deviation ``σ_b ≥ 0`` (0: none). Pathwise model: it
            adds to ``σ0`` as intrinsic noise, ``s² = v + σ0² + ε_min² + σ_b²``. Marginal model: it
            is added when the accumulated variance is read, ``s² = V[t] + σ_b²``, and is not
            itself accumulated (the SBNN paper's ``σ_b``, Walker et al. 2025).
        learn_sigma_b: make ``σ_b = softplus(ρ_b)`` trainable (parameter ``sigma_b_rho``,
            initialised at ``softplus⁻¹(sigma_b)``; needs ``sigma_b > 0``). Its gradient is the
            σ-gradient through the spike, ``∂S/∂s = −(θ/s)·∂S/∂θ`` (``docs/theory.md``).
        reset_leak: the subtract reset leaks with the membrane, ``M[t] = β(M[t−1] − ϑS[t−1]) + μ[t]``
            (a reset of ``βϑ``; the SBNN authors' code) instead of ``βM[t−1] + μ[t] − ϑS[t−1]``
            (default ``False``; ``membrane_noise="marginal"`` and ``reset_mechanism="subtract"`` only).
        init_hidden: keep the state on the module (snnTorch contract).
        output: with ``init_hidden``, also return the membrane.

    Shape:
        - Input (one step): ``[B, ...]`` tensor or :class:`~sbnn.layers.Moments` of that shape.
        - Output: spikes ``[B, ...]`` in ``{0, 1}`` (and membrane ``[B, ...]``).

    Example:
        >>> lif = StochasticLIF(beta=0.9, init_hidden=True)
        >>> spk = lif(torch.full((2, 3), 2.0))
        >>> tuple(spk.shape)
        (2, 3)
    """

    def __init__(
        self,
        beta: float | Tensor = 0.9,
        threshold: float | Tensor = 1.0,
        sigma0: float = 0.1,
        eps_min: float = 1e-3,
        noise: Literal["gaussian", "logistic"] = "gaussian",
        estimator: str | Estimator = "st",
        reset_mechanism: Literal["subtract", "zero", "none"] = "subtract",
        detach_reset: bool = True,
        membrane_noise: Literal["pathwise", "marginal"] = "pathwise",
        learn_beta: bool = False,
        learn_threshold: bool = False,
        init_hidden: bool = False,
        output: bool = False,
        sigma_b: float = 0.0,
        learn_sigma_b: bool = False,
        reset_leak: bool = False,
    ) -> None:
        super().__init__()
        if reset_leak and (membrane_noise != "marginal" or reset_mechanism != "subtract"):
            raise ValueError(
                "reset_leak=True (the leaked subtract reset) needs membrane_noise='marginal' and "
                f"reset_mechanism='subtract', got membrane_noise={membrane_noise!r}, reset_mechanism={reset_mechanism!r}"
            )
        check_in_range("sigma_b", sigma_b, 0.0)
        if learn_sigma_b and not sigma_b > 0:
            raise ValueError(
                "learn_sigma_b=True needs sigma_b > 0, its initial value (σ_b = softplus(ρ_b) never reaches 0); "
                "e.g. sigma_b=0.127 (softplus(-2))"
            )
        check_in_range("beta", beta, 0.0, 1.0)
        check_in_range("threshold", threshold, 0.0, low_open=True)
        check_in_range("sigma0", sigma0, 0.0)
        check_in_range("eps_min", eps_min, 0.0, low_open=True)
        check_choice("reset_mechanism", reset_mechanism, RESET_MECHANISMS)
        check_choice("membrane_noise", membrane_noise, MEMBRANE_NOISE_MODELS)
        self.noise: NoiseFamily = get_noise(noise)
        self.estimator: Estimator = get_estimator(estimator)
        _constant(self, "beta", beta, learn_beta)
        _constant(self, "threshold", threshold, learn_threshold)
        self.sigma0, self.eps_min = float(sigma0), float(eps_min)
        self.reset_mechanism, self.detach_reset = reset_mechanism, bool(detach_reset)
        self.membrane_noise = membrane_noise
        self.reset_leak = bool(reset_leak)
        # standard noise supplied from outside (set_noise_source), e.g. to replay another implementation's draws
        self._noise_source: NoiseSource | None = None
        self.init_hidden, self.output = bool(init_hidden), bool(output)
        self._stochastic = True
        # hooks that receive the Drive of every noisy sequence (register_drive_hook)
        self._drive_hooks: OrderedDict[int, DriveHook] = OrderedDict()
        self.register_buffer("mem", torch.zeros(0), persistent=False)
        self.register_buffer("spk", torch.zeros(0), persistent=False)
        self.register_buffer("var", torch.zeros(0), persistent=False)
        if sigma_b > 0:
            # softplus⁻¹(σ) = log(expm1(σ)), in float64 so that small σ keep their digits
            _constant(self, "sigma_b_rho", math.log(math.expm1(float(sigma_b))), learn_sigma_b)
        else:
            self.sigma_b_rho = None

    @property
    def sigma_b(self) -> Tensor | None:
        """``σ_b = softplus(ρ_b)`` (a 0-dim tensor, with its graph when learned), or ``None``."""
        return None if self.sigma_b_rho is None else F.softplus(self.sigma_b_rho)

    def __getstate__(self) -> dict:
        # drive hooks belong to whoever registered them on this instance (and may hold a forward
        # pass's graph): a copy or a pickle starts without them, as it starts without hidden state
        state = self.__dict__.copy()
        state["_drive_hooks"] = OrderedDict()
        state["_noise_source"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("reset_leak", False)  # pickles made before the option existed
        state.setdefault("_noise_source", None)
        super().__setstate__(state)

    @property
    def noise_source(self) -> NoiseSource | None:
        """The supplier of this neuron's standard noise draws, or ``None`` (it draws its own)."""
        return self._noise_source

    def set_noise_source(self, source: NoiseSource | None) -> None:
        """Take every noisy step's standard draws ``ε`` from ``source(shape, like)`` (``None``: draw them).

        ``shape`` is that of the draw, ``[T, B, ...]`` for a :meth:`sequence` of ``T`` steps
        (``[1, B, ...]`` for one step of :meth:`forward`). :func:`replay_noise` is the
        context-manager form for a whole model; a source is not copied or pickled.
        """
        self._noise_source = source

    @property
    def stochastic(self) -> bool:
        """Whether the neuron draws noise (``False`` in the deterministic ``mode``/``mean``/``mc`` evaluations)."""
        return self._stochastic

    def set_stochastic(self, stochastic: bool) -> None:
        """Draw noise (``True``, training) or run deterministically (``ε = 0``)."""
        self._stochastic = bool(stochastic)

    @property
    def reports_drive(self) -> bool:
        """Whether a noisy :meth:`sequence` now calls drive hooks (then it must run through :meth:`sequence`)."""
        return bool(self._drive_hooks) and self._stochastic

    def register_drive_hook(self, hook: DriveHook) -> RemovableHandle:
        """Call ``hook(neuron, drive)`` after every noisy :meth:`sequence` with its :class:`~sbnn.functional.neurons.Drive`.

        As a torch forward hook: the returned handle's ``remove()`` unregisters it. Deterministic
        passes (``stochastic`` off) are not reported. Hooks are not copied or pickled with the
        neuron. :func:`record_drives` is the context-manager form for a whole model.
        """
        handle = RemovableHandle(self._drive_hooks)
        self._drive_hooks[handle.id] = hook
        return handle

    def parameters_tuple(self) -> StochasticLIFParameters:
        """The neuron's constants as the record the functional code takes."""
        return StochasticLIFParameters(
            self.beta,
            self.threshold,
            self.sigma0,
            self.eps_min,
            self.reset_mechanism,
            self.detach_reset,
            self.noise,
            self.estimator,
            self.membrane_noise,
            self.sigma_b,
            self.reset_leak,
        )

    def reset_state(self) -> None:
        """Forget the hidden state (it is re-sized to the next input)."""
        self.mem = torch.zeros(0, device=self.mem.device, dtype=self.mem.dtype)
        self.spk = torch.zeros(0, device=self.spk.device, dtype=self.spk.dtype)
        self.var = torch.zeros(0, device=self.var.device, dtype=self.var.dtype)

    def reset_mem(self) -> None:
        """snnTorch's name for :meth:`reset_state`."""
        self.reset_state()

    @staticmethod
    def _split(x: Tensor | Moments) -> tuple[Tensor, Tensor | None]:
        if isinstance(x, tuple):
            return x[0], x[1]
        return x, None

    def _check_input(self, mu: Tensor, var: Tensor | None, min_dim: int) -> None:
        name = type(self).__name__
        check_input(mu, name, ndims=range(min_dim, 8))
        if var is not None:
            check_input(var, f"{name} (input variance)", ndims=(mu.dim(),))
            if var.shape != mu.shape:
                raise ValueError(f"{name}: variance shape {tuple(var.shape)} differs from mean shape {tuple(mu.shape)}")

    def _noise(self, mu: Tensor) -> Tensor:
        if self._stochastic and self._noise_source is not None:
            return self._noise_source((1, *mu.shape), mu)[0]
        if self._stochastic:
            return self.noise.sample(mu.shape, like=mu, batch_dim=0)  # one step: [B, ...]
        return torch.zeros_like(mu)

    def forward(self, x: Tensor | Moments, mem: Tensor | None = None):
        """One time step (snnTorch contract; see the module docstring for the return arity)."""
        mu, var = self._split(x)
        self._check_input(mu, var, 1)
        p = self.parameters_tuple()
        if self.init_hidden:
            if mem is not None:
                raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
            if self.mem.numel() == 0:
                self.mem, self.spk, self.var = torch.zeros_like(mu), torch.zeros_like(mu), torch.zeros_like(mu)
            elif self.mem.shape != mu.shape:
                raise ValueError(
                    f"StochasticLIF: hidden state has shape {tuple(self.mem.shape)} but the input has "
                    f"shape {tuple(mu.shape)}; call sbnn.reset(model) before a new sequence or batch size"
                )
            marginal = self.membrane_noise == "marginal"
            prev = StochasticLIFState(self.mem, self.spk, self.var if marginal else None)
            spk, state = stochastic_lif_step(mu, var, prev, p, self._noise(mu))
            self.mem, self.spk = state.mem, state.spk
            if marginal:
                self.var = state.var
            return (spk, state.mem) if self.output else spk
        if self.membrane_noise == "marginal":
            raise ValueError(
                "StochasticLIF(membrane_noise='marginal') carries a membrane variance that an explicit "
                "`mem` argument cannot hold: build it with init_hidden=True, or use .sequence()"
            )
        if mem is None:
            mem = torch.zeros_like(mu)
        elif mem.shape != mu.shape:
            raise ValueError(f"StochasticLIF: mem has shape {tuple(mem.shape)}, input {tuple(mu.shape)}")
        prev_spk = (mem >= self.threshold).to(mu.dtype)
        spk, state = stochastic_lif_step(mu, var, StochasticLIFState(mem, prev_spk), p, self._noise(mu))
        return spk, state.mem

    def sequence(
        self,
        x: Tensor | Moments,
        *,
        state: StochasticLIFState | None = None,
        eps: Tensor | None = None,
        generator: torch.Generator | None = None,
        validate: bool = True,
        return_state: bool = False,
    ):
        """Run a whole time-major sequence from ``state`` (default: rest); the hidden state is untouched.

        Args:
            x: ``[T, B, ...]`` input means, or :class:`~sbnn.layers.Moments` of that shape.
            state: initial ``(mem, spk)``.
            eps: explicit standard noise ``[T, B, ...]`` to replay a draw.
            generator: RNG for the noise.
            validate: check the input (models that validated their own input pass ``False``).
            return_state: also return the final :class:`~sbnn.functional.neurons.StochasticLIFState`
                (with its graph; the marginal model's carries the conditional mean and the
                variance), to continue the sequence from it.

        Returns:
            ``(spk, mem)``, each ``[T, B, ...]``; with ``return_state``, ``(spk, mem, state)``.
        """
        mu, var = self._split(x)
        if validate:
            self._check_input(mu, var, 2)
        report = bool(self._drive_hooks) and self._stochastic  # deterministic passes are not reported
        if eps is None and self._stochastic and self._noise_source is not None:
            eps = self._noise_source(tuple(mu.shape), mu)
        out = stochastic_lif_sequence(
            mu, var, self.parameters_tuple(), state=state, stochastic=self._stochastic, eps=eps,
            generator=generator, return_drive=report,
        )
        if report:
            for hook in list(self._drive_hooks.values()):
                hook(self, out[3])
        if return_state:
            return out[0], out[1], out[2]
        return out[0], out[1]

    def extra_repr(self) -> str:
        return (
            f"noise={self.noise.name}, estimator={self.estimator!r}, reset_mechanism={self.reset_mechanism}, "
            f"membrane_noise={self.membrane_noise}, "
            + ("" if self.sigma_b_rho is None else f"sigma_b={float(self.sigma_b):.4g}, ")
            + f"sigma0={self.sigma0}, init_hidden={self.init_hidden}, stochastic={self._stochastic}"
        )


@contextlib.contextmanager
def record_drives(model: nn.Module) -> Iterator[dict[str, Drive]]:
    """Record the :class:`~sbnn.functional.neurons.Drive` of every :class:`StochasticLIF` in ``model``.

    Yields a dict, filled as the model runs, from each neuron's qualified name (as in
    ``model.named_modules()``, e.g. ``"neurons.0"``) to the drive of its last noisy sequence.
    The hooks are removed on exit; the dict (and the graph its drives hold) belongs to the
    caller, not to the model.

    Example:
        >>> from sbnn.models import SpikingMLP
        >>> net = SpikingMLP(4, (8,), 3)
        >>> with record_drives(net) as drives:
        ...     logits = net(torch.rand(5, 2, 4).round())
        >>> sorted(drives), tuple(drives["neurons.0"].theta.shape)
        (['neurons.0'], (5, 2, 8))
    """
    drives: dict[str, Drive] = {}
    handles = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, StochasticLIF):
                handles.append(module.register_drive_hook(DriveRecorder(drives, name)))
        yield drives
    finally:
        for handle in handles:
            handle.remove()


class DriveRecorder:
    """A drive hook (:meth:`StochasticLIF.register_drive_hook`) keeping the last drive in ``drives[name]``."""

    def __init__(self, drives: dict[str, Drive], name: str) -> None:
        self.drives, self.name = drives, name

    def __call__(self, neuron: StochasticLIF, drive: Drive) -> None:
        self.drives[self.name] = drive


class NoiseReplay:
    """A :data:`NoiseSource` handing out consecutive time slices of given standard draws.

    Each call takes the next ``shape[0]`` steps of ``eps``, so a neuron that runs its sequence
    at once and one that runs it a step at a time (a recurrent layer) consume the same draws.

    Args:
        eps: standard draws ``[T, B, ...]`` for one neuron layer, time-major.

    Raises:
        ValueError: on a call whose shape does not fit ``eps`` or that runs past its end.

    Example:
        >>> replay = NoiseReplay(torch.arange(6.0).reshape(3, 1, 2))
        >>> replay((2, 1, 2), torch.zeros(())).flatten().tolist(), replay.position
        ([0.0, 1.0, 2.0, 3.0], 2)
    """

    def __init__(self, eps: Tensor) -> None:
        check_input(eps, "NoiseReplay", ndims=range(2, 8))
        self.eps, self.position = eps, 0

    def __call__(self, shape: tuple, like: Tensor) -> Tensor:
        n = int(shape[0])
        if tuple(shape[1:]) != tuple(self.eps.shape[1:]) or self.position + n > self.eps.shape[0]:
            raise ValueError(
                f"NoiseReplay: asked for draws of shape {tuple(shape)} at step {self.position}, but it holds "
                f"{tuple(self.eps.shape)}; supply draws shaped like the neuron's input, [T, B, ...]"
            )
        out = self.eps[self.position : self.position + n]
        self.position += n
        return out.to(dtype=like.dtype, device=like.device)

    @property
    def exhausted(self) -> bool:
        """Whether every step has been handed out."""
        return self.position == self.eps.shape[0]


@contextlib.contextmanager
def replay_noise(model: nn.Module, draws: dict[str, Tensor]) -> Iterator[dict[str, NoiseReplay]]:
    """Make the named :class:`StochasticLIF` of ``model`` take their noise from ``draws`` (see :class:`NoiseReplay`).

    Args:
        model: a network.
        draws: ``{neuron name (as in model.named_modules()): standard draws [T, B, ...]}``.

    Yields:
        ``{name: NoiseReplay}`` (check ``exhausted`` after the pass). Sources are removed on exit.

    Raises:
        ValueError: for a name that is not a :class:`StochasticLIF` of ``model`` (before any change).

    Example:
        >>> lif = StochasticLIF(sigma0=1.0)
        >>> net = nn.Sequential(lif)
        >>> eps = torch.full((2, 1, 3), -10.0)  # far below threshold: never fires
        >>> with replay_noise(net, {"0": eps}) as used:
        ...     spk, _ = lif.sequence(torch.full((2, 1, 3), 1.5))
        >>> float(spk.sum()), used["0"].exhausted
        (0.0, True)
    """
    modules = dict(model.named_modules())
    bad = [n for n in draws if not isinstance(modules.get(n), StochasticLIF)]
    if bad:
        valid = [n for n, m in modules.items() if isinstance(m, StochasticLIF)]
        raise ValueError(f"replay_noise: {bad} are not StochasticLIF modules of the model; its neurons are {valid}")
    sources = {name: NoiseReplay(eps) for name, eps in draws.items()}
    try:
        for name, source in sources.items():
            modules[name].set_noise_source(source)
        yield sources
    finally:
        for name in sources:
            modules[name].set_noise_source(None)

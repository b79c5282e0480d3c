r"""Keyed evaluation noise: draws that depend on the sample, not on its place in the batch.

``torch.randn`` gives the ``i``-th element of a batch the ``i``-th number of one stream, so the
noise an example receives depends on the batch it falls in, its position there, the batch size
and (under data parallelism) the rank. Here every element is instead a pure function of a key:

.. math::

    c_b = \operatorname{mix}_{64}(k_b \oplus \operatorname{mix}_{64}(\text{seed})), \qquad
    r_{b,d} = \operatorname{top}_{32}\,\operatorname{mix}_{64}(c_b + d\,\gamma), \qquad
    h = \operatorname{mix}_{32}\bigl(r_{b,d} \oplus (j + 1)\,\gamma_{32}\bigr),

with ``k_b`` the key of batch row ``b`` (:func:`sample_keys`: an exact hash of the sample's own
values), ``d = 1, 2, …`` the draw's number in the :func:`keyed_noise` block (which layer, which
time step of a step-by-step loop, which noisy pass), ``j`` the element's flat index over the
non-batch axes of the draw (time step and unit), ``γ = 0x9E3779B97F4A7C15``,
``γ₃₂ = 0x9E3779B9``, ``mix₆₄`` the SplitMix64 finaliser (Steele, Lea & Flood 2014,
doi:10.1145/2714064.2660195) and ``mix₃₂`` Wellons' ``lowbias32`` (hash-prospector, 2018), in
wrapping integer arithmetic, which torch computes bit-identically on every device. The top 24
bits of the hashes of two elements of a row give two standard normals by Box–Muller
(:meth:`KeyedNoise.normal`); uniforms are exact multiples of ``2⁻²⁴`` (:meth:`KeyedNoise.uniform`).

The per-element hash is 32-bit because int32 arithmetic is 3x cheaper than int64 on CPU
(measured). Within one draw of one row the ``h`` are distinct (``mix₃₂`` is a bijection); two
rows ``b, b'`` share a value only at elements with ``r_b ⊕ r_b' = (j + 1)γ₃₂ ⊕ (j' + 1)γ₃₂``, on
average ``L²/2³²`` isolated pairs for draws of ``L`` elements per row, which leaves every row's own
noise independent across its elements.

A draw site takes part by asking :func:`active_keyed_noise` for the source (``None`` outside a
block: training draws from torch's RNG exactly as before) and naming its batch axis, because a
draw may be ``[B, ...]`` (one time step, a time-summed readout) or time-major ``[T, B, ...]``. The
draws must come in the same order for every batch (true of a network's forward pass).

Two rows with identical values get identical noise (they are the same sample).

Example:
    >>> x = torch.rand(5, 4, 3).round()              # [T, B, N]
    >>> with keyed_noise(sample_keys(x, batch_dim=1), seed=0) as source:
    ...     a = source.normal((5, 4, 8), like=x, batch_dim=1)
    >>> with keyed_noise(sample_keys(x[:, 2:], batch_dim=1), seed=0) as source:
    ...     b = source.normal((5, 2, 8), like=x, batch_dim=1)
    >>> torch.equal(a[:, 2:], b)
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["splitmix64", "lowbias32_", "sample_keys", "KeyedNoise", "keyed_noise", "active_keyed_noise"]


def _signed(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GAMMA = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_GAMMA32 = 0x9E3779B9
_H1, _H2 = 0x7FEB352D, 0x846CA68B - (1 << 32)
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _shift_right(z: Tensor, k: int) -> Tensor:
    # torch's >> on int64 is arithmetic; the mask makes it the logical shift SplitMix64 needs
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: Tensor) -> Tensor:
    """The SplitMix64 finaliser, a bijection of 64-bit integers, on an int64 tensor (bits as ``uint64``).

    ``z ← (z ⊕ z≫30)·0xBF58476D1CE4E5B9; z ← (z ⊕ z≫27)·0x94D049BB133111EB; z ⊕ z≫31``,
    products modulo ``2⁶⁴``, ``≫`` logical.
    """
    z = (z ^ _shift_right(z, 30)) * _M1
    z = (z ^ _shift_right(z, 27)) * _M2
    return z ^ _shift_right(z, 31)


def lowbias32_(z: Tensor, tmp: Tensor) -> Tensor:
    """Wellons' ``lowbias32`` hash (hash-prospector, 2018), in place on an int32 tensor (bits as ``uint32``).

    ``z ← (z ⊕ z≫16)·0x7FEB352D; z ← (z ⊕ z≫15)·0x846CA68B; z ⊕ z≫16``, products modulo
    ``2³²``, ``≫`` logical; ``tmp`` is a work buffer of ``z``'s shape. A bijection of 32-bit
    integers. Returns ``z``.
    """
    # copy, then shift in place: bitwise_right_shift(z, k, out=tmp) is 7x slower on CPU (measured)
    for shift, factor in ((16, _H1), (15, _H2), (16, None)):
        tmp.copy_(z)
        tmp >>= shift
        tmp &= (1 << (32 - shift)) - 1
        z ^= tmp
        if factor is not None:
            z *= factor
    return z


def sample_keys(x: Tensor, batch_dim: int = 1) -> Tensor:
    """A 64-bit key ``[B]`` per batch row of ``x``: an exact hash of the row's own values.

    Every element's bit pattern (floats viewed as integers, so nothing is rounded) is mixed with
    its position in the row and the mixes are summed modulo ``2⁶⁴``: a sum does not depend on the
    reduction order, so the key of a row is the same in any batch, on any device. Rows with
    identical values (bit for bit) get identical keys.

    Args:
        x: a batch, e.g. time-major ``[T, B, ...]`` with ``batch_dim=1``.
        batch_dim: the batch axis of ``x``.

    Returns:
        ``[B]`` int64 keys.
    """
    if not isinstance(x, Tensor) or x.dim() == 0:
        raise ValueError(f"sample_keys: x must be a tensor with a batch axis, got {type(x).__name__} {getattr(x, 'shape', '')}")
    if x.is_complex():
        raise ValueError("sample_keys: complex inputs are not supported; pass real and imaginary parts as a real tensor")
    if x.dtype.is_floating_point:
        x = x.view(_INT_VIEW[x.element_size()])
    rows = x.movedim(batch_dim, 0).reshape(x.shape[batch_dim], -1).to(torch.int64)
    position = splitmix64(torch.arange(rows.shape[1], dtype=torch.int64, device=x.device) * _GAMMA + _GAMMA)
    total = splitmix64(rows + position).sum(1)  # wraps modulo 2⁶⁴
    return splitmix64(total ^ rows.shape[1])


class KeyedNoise:
    """The noise source of a :func:`keyed_noise` block: uniform and normal draws keyed by sample.

    Args:
        keys: ``[B]`` int64 sample keys (:func:`sample_keys`).
        seed: the evaluation seed.

    Attributes:
        draws: the number of draws made so far (the ``d`` of the module formula).
    """

    def __init__(self, keys: Tensor, seed: int) -> None:
        if not isinstance(keys, Tensor) or keys.dim() != 1 or keys.dtype != torch.int64:
            raise ValueError(f"KeyedNoise: keys must be a [B] int64 tensor (sample_keys), got {getattr(keys, 'dtype', type(keys).__name__)} {tuple(getattr(keys, 'shape', ()))}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"KeyedNoise: seed must be an integer, got {seed!r}")
        seed_mix = splitmix64(torch.tensor(_signed(seed % (1 << 64)), dtype=torch.int64))
        self._keys = splitmix64(keys ^ seed_mix.to(keys.device))
        self.draws = 0
        self._buffers: tuple[Tensor, Tensor] | None = None
        self._counters: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """``B``, the number of keyed rows."""
        return self._keys.shape[0]

    def _rows(self, shape: Sequence[int], batch_dim: int) -> tuple[torch.Size, int, torch.Size]:
        """Check a draw's shape against the keys: ``(shape, batch axis, non-batch shape)``."""
        shape = torch.Size(shape)
        batch_dim = batch_dim % len(shape) if len(shape) else 0
        if len(shape) == 0 or shape[batch_dim] != self.batch_size:
            raise ValueError(
                f"keyed noise: a draw of shape {tuple(shape)} has batch axis {batch_dim} of size "
                f"{shape[batch_dim] if len(shape) else 'none'}, but the block holds {self.batch_size} sample keys; "
                "the network must keep the batch of the keyed input, and the draw site must name its batch axis"
            )
        return shape, batch_dim, shape[:batch_dim] + shape[batch_dim + 1:]

    def _hashes(self, shape: torch.Size, batch_dim: int, device: torch.device) -> Tensor:
        """This draw's hashes ``h`` in the layout ``shape``, int32 (bits as ``uint32``).

        ``j`` is the flat index over the non-batch axes of ``shape``. Returns a view of a
        scratch buffer that the next draw overwrites.
        """
        self.draws += 1
        base = splitmix64(self._keys.to(device) + _signed(self.draws * (_GAMMA % (1 << 64)) % (1 << 64)))
        base = (base >> 32).to(torch.int32)  # the top 32 bits: exactly an int32
        view = [1] * len(shape)
        view[batch_dim] = self.batch_size
        rest = shape[:batch_dim] + shape[batch_dim + 1:]
        z, tmp = self._scratch(shape.numel(), device)
        z, tmp = z.view(shape), tmp.view(shape)
        torch.bitwise_xor(base.reshape(view), self._counter(rest.numel(), device).view(rest).unsqueeze(batch_dim), out=z)
        return lowbias32_(z, tmp)

    def _scratch(self, numel: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Two int32 work buffers of ``numel`` elements, reused by the draws of the block.

        In-place work on reused buffers: fresh temporaries cost more than the arithmetic
        (page faults of freshly mapped memory, measured).
        """
        if self._buffers is None or self._buffers[0].numel() < numel or self._buffers[0].device != device:
            self._buffers = tuple(torch.empty(numel, dtype=torch.int32, device=device) for _ in range(2))
        return self._buffers[0][:numel], self._buffers[1][:numel]

    def _counter(self, n: int, device: torch.device) -> Tensor:
        """``(j + 1)·γ₃₂ mod 2³²`` (as int32) for ``j < n``."""
        if self._counters is None or self._counters.numel() < n or self._counters.device != device:
            c = (torch.arange(1, n + 1, dtype=torch.int64, device=device) * _GAMMA32) & 0xFFFFFFFF
            self._counters = (c - ((c >> 31) << 32)).to(torch.int32)  # two's complement, exact
        return self._counters[:n]

    def uniform(self, shape: Sequence[int], *, like: Tensor, batch_dim: int) -> Tensor:
        """Uniforms ``(2k + 1)·2⁻²⁴`` in the open ``(0, 1)``, ``k`` the top 23 bits of ``h``.

        Exact in float32; cast to ``like``'s dtype.
        """
        shape, batch_dim, _ = self._rows(shape, batch_dim)
        k = self._hashes(shape, batch_dim, like.device)
        k >>= 9
        k &= (1 << 23) - 1
        u = torch.empty(shape, dtype=torch.float32, device=like.device).copy_(k)
        u *= 2.0 ** -23
        u += 2.0 ** -24  # exact: 2k + 1 < 2²⁴
        return u.to(like.dtype)

    def normal(self, shape: Sequence[int], *, like: Tensor, batch_dim: int) -> Tensor:
        """Standard normals by Box–Muller on the two halves of the last axis.

        The last non-batch axis (a unit axis is appended when the batch axis is last) is padded
        to an even length ``2m`` and ``j`` runs over that padded layout; element ``i < m`` pairs
        with ``i + m``. With ``s₁, s₂`` the top 24 bits of their hashes read as signed integers,
        ``u₁ = (s₁ + 2²³ + 1)·2⁻²⁴ ∈ (0, 1]`` and ``θ = 2π s₂ 2⁻²⁴``: ``ξ_i = R cos θ``,
        ``ξ_{i+m} = R sin θ``, ``R = sqrt(−2 log u₁)`` (finite: ``|ξ| ≤ 5.8``). Computed in float32
        and cast to ``like``'s dtype, so a float64 network gets the same draws. Box–Muller rather
        than ``erfinv``/``ndtri``, whose CPU kernels are not vectorised (several times slower,
        measured); halves rather than neighbours, so that every operation runs on contiguous rows.
        """
        shape, batch_dim, _ = self._rows(shape, batch_dim)
        ext = shape if batch_dim < len(shape) - 1 else shape + (1,)
        last = ext[-1]
        half = (last + 1) // 2
        padded = ext[:-1] + (2 * half,)
        h = self._hashes(padded, batch_dim, like.device)
        h >>= 8  # arithmetic: the top 24 bits as a signed integer
        f = torch.empty(padded, dtype=torch.float32, device=like.device).copy_(h)
        pairs = f.view(*padded[:-1], 2, half)
        radius, angle = pairs.select(-2, 0), pairs.select(-2, 1)
        radius.add_(2.0 ** 23 + 1.0).mul_(2.0 ** -24).log_().mul_(-2.0).sqrt_()  # exact sum: ≤ 2²⁴
        angle.mul_(2.0 * math.pi * 2.0 ** -24)
        cos = torch.cos(angle)
        angle.sin_().mul_(radius)  # ξ_{i+m} = R sin θ
        radius.mul_(cos)  # ξ_i = R cos θ
        out = f if last == 2 * half else f[..., :last]
        return out.reshape(shape).to(like.dtype).contiguous()


_ACTIVE: contextvars.ContextVar[KeyedNoise | None] = contextvars.ContextVar("sbnn_keyed_noise", default=None)


def active_keyed_noise() -> KeyedNoise | None:
    """The source of the innermost :func:`keyed_noise` block, or ``None`` (draw from torch's RNG).

    Always ``None`` while ``torch.compile`` traces: dynamo cannot trace a ``ContextVar`` lookup,
    and keyed noise belongs to evaluation, which is not compiled (a compiled forward draws from
    torch's RNG).
    """
    if torch.compiler.is_compiling():
        return None
    return _ACTIVE.get()


@contextlib.contextmanager
def keyed_noise(keys: Tensor, seed: int) -> Iterator[KeyedNoise]:
    """Within the block, sbnn's noise draw sites draw keyed noise (module docstring), not from torch's RNG.

    Args:
        keys: ``[B]`` sample keys of the batch the block runs (:func:`sample_keys`).
        seed: the evaluation seed.

    Yields:
        The :class:`KeyedNoise` source, its draw counter at 0.
    """
    token = _ACTIVE.set(KeyedNoise(keys, seed))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)

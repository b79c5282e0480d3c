"""Keyed noise (:mod:`sbnn.functional.keyed`): the hash, the sample keys, the draws and the context."""

from __future__ import annotations

import math

import pytest
import torch

from sbnn.functional.keyed import KeyedNoise, active_keyed_noise, keyed_noise, lowbias32_, sample_keys, splitmix64
from sbnn.functional.noise import Gaussian, Logistic


def _unsigned(t: torch.Tensor) -> list[int]:
    return [int(v) % (1 << 64) for v in t]


def test_splitmix64_gives_the_published_sequence():
    # SplitMix64 seeded with 0 outputs mix(γ), mix(2γ), mix(3γ): Vigna's splitmix64.c reference values
    gamma = 0x9E3779B97F4A7C15
    counters = torch.tensor([(k * gamma) % (1 << 64) - (1 << 64) * ((k * gamma) % (1 << 64) >= 1 << 63) for k in (1, 2, 3)])
    assert _unsigned(splitmix64(counters)) == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def _lowbias32(x: int) -> int:
    """Python reference: Wellons' lowbias32 on an unsigned 32-bit integer."""
    m = (1 << 32) - 1
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_lowbias32_matches_the_reference_in_vector_body_and_tail():
    assert [_lowbias32(v) for v in (1, 2, 0xDEADBEEF)] == [0x688990C0, 0xD1132181, 0xE628C683]  # hand-checked
    gen = torch.Generator().manual_seed(0)
    z = torch.randint(-(1 << 31), 1 << 31, (1037,), dtype=torch.int32, generator=gen)  # odd length: a scalar tail
    expected = [_lowbias32(int(v) % (1 << 32)) for v in z]
    out = lowbias32_(z.clone(), torch.empty_like(z))
    assert [int(v) % (1 << 32) for v in out] == expected


def test_sample_keys_depend_on_the_row_alone():
    x = torch.rand(5, 6, 4)  # [T, B, N]
    keys = sample_keys(x, batch_dim=1)
    assert keys.shape == (6,) and keys.dtype == torch.int64
    assert torch.equal(sample_keys(x[:, 2:5], batch_dim=1), keys[2:5])
    assert torch.equal(sample_keys(x[:, [3, 0]], batch_dim=1), keys[[3, 0]])
    assert torch.equal(sample_keys(x.transpose(0, 1).contiguous(), batch_dim=0), keys)
    assert len(set(keys.tolist())) == 6
    # exact: one ulp, or the same values in another order, is another sample
    y = x.clone()
    y[4, 1, 3] = torch.nextafter(y[4, 1, 3], torch.tensor(2.0))
    z = x.clone()
    z[:, 1] = x[:, 1].flip(0)
    assert sample_keys(y, 1)[1] != keys[1] and sample_keys(z, 1)[1] != keys[1]
    assert torch.equal(sample_keys(y, 1)[[0, 2, 3, 4, 5]], keys[[0, 2, 3, 4, 5]])
    # identical rows, identical keys; integer and boolean inputs work
    assert sample_keys(torch.stack([x[:, 0], x[:, 0]], 1), 1).unique().numel() == 1
    spikes = x > 0.5
    assert torch.equal(sample_keys(spikes, 1), sample_keys(spikes.to(torch.uint8), 1))


def test_sample_keys_refuse_what_has_no_batch():
    with pytest.raises(ValueError, match="batch axis"):
        sample_keys(torch.tensor(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_are_keyed_by_row_and_follow_their_laws(dtype):
    x = torch.rand(3, 64, 2)
    keys = sample_keys(x, 1)
    like = torch.zeros((), dtype=dtype)
    with keyed_noise(keys, seed=7) as source:
        normal = source.normal((50, 64, 40), like=like, batch_dim=1)
        uniform = source.uniform((64, 2000), like=like, batch_dim=0)
        assert source.draws == 2
    assert normal.dtype == uniform.dtype == dtype
    # computed in float32: a float64 network gets the same draws as a float32 one
    with keyed_noise(keys, seed=7) as source:
        assert torch.equal(source.normal((50, 64, 40), like=torch.zeros(()), batch_dim=1).to(dtype), normal)
    # deterministic draws, so fixed bounds: 128k normals and uniforms
    assert abs(float(normal.mean())) < 0.02 and abs(float(normal.std()) - 1.0) < 0.02
    assert float((normal.abs() > 1.96).double().mean()) == pytest.approx(0.05, abs=0.005)
    assert 0.0 < float(uniform.min()) and float(uniform.max()) < 1.0
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.005)
    # every row is a function of its key, the draw number and the element: any subset, any order
    rows = [40, 3, 17]
    with keyed_noise(keys[rows], seed=7) as source:
        assert torch.equal(source.normal((50, 3, 40), like=like, batch_dim=1), normal[:, rows])
        assert torch.equal(source.uniform((3, 2000), like=like, batch_dim=0), uniform[rows])
    # the element index is over the non-batch axes: a shorter sequence is a prefix
    with keyed_noise(keys, seed=7) as source:
        assert torch.equal(source.normal((20, 64, 40), like=like, batch_dim=1), normal[:20])
    # another seed, other draws; the second draw of a block differs from the first
    with keyed_noise(keys, seed=8) as source:
        other = source.normal((50, 64, 40), like=like, batch_dim=1)
        second = source.normal((50, 64, 40), like=like, batch_dim=1)
    assert not torch.equal(other, normal) and not torch.equal(other, second)
    assert abs(float(torch.corrcoef(torch.stack([other.flatten(), normal.flatten()]))[0, 1])) < 0.02


def test_the_extreme_draws_are_finite_and_hand_computed():
    source = KeyedNoise(torch.zeros(1, dtype=torch.int64), 0)
    # hashes as int32 whose top 24 bits, signed, are −2²³ and 0; pairs (0, 2) and (1, 3)
    hashes = torch.tensor([[-(1 << 31), 0, 0, -(1 << 31)]], dtype=torch.int32)
    source._hashes = lambda shape, batch_dim, device: hashes.clone().view(shape)
    z = source.normal((1, 4), like=torch.zeros(()), batch_dim=0)
    # element 0: u₁ = 2⁻²⁴, θ = 0 → (sqrt(48 log 2), 0); element 1: u₁ = (2²³ + 1)·2⁻²⁴, θ = −π → (−R₁, 0)
    r0, r1 = math.sqrt(48 * math.log(2.0)), math.sqrt(-2 * math.log((2 ** 23 + 1) * 2.0 ** -24))
    assert z[0].tolist() == pytest.approx([r0, -r1, 0.0, 0.0], abs=1e-5)
    assert torch.isfinite(z).all()
    source._hashes = lambda shape, batch_dim, device: torch.tensor([[0, -1]], dtype=torch.int32)
    u = source.uniform((1, 2), like=torch.zeros(()), batch_dim=0)
    assert u.tolist() == [[2.0 ** -24, 1.0 - 2.0 ** -24]]


def test_odd_lengths_and_a_trailing_batch_axis_are_keyed_too():
    x = torch.rand(2, 5, 3)
    keys = sample_keys(x, 1)
    like = torch.zeros(())
    for shape, batch_dim, part in (((5, 7), 0, (slice(1, 3),)), ((3, 5), 1, (slice(None), slice(1, 3))), ((5,), 0, (slice(1, 3),))):
        with keyed_noise(keys, 0) as source:
            whole = source.normal(shape, like=like, batch_dim=batch_dim)
        with keyed_noise(keys[1:3], 0) as source:
            sub = source.normal(tuple(2 if d == batch_dim else n for d, n in enumerate(shape)), like=like, batch_dim=batch_dim)
        assert whole.shape == shape and whole.is_contiguous() and torch.isfinite(whole).all()
        assert torch.equal(sub, whole[part])


def test_a_draw_that_lost_the_batch_is_refused():
    with keyed_noise(sample_keys(torch.rand(2, 4, 3), 1), 0) as source:
        with pytest.raises(ValueError, match=r"batch axis 0 of size 2.*4 sample keys"):
            source.normal((2, 4, 5), like=torch.zeros(()), batch_dim=0)
        assert source.draws == 0


def test_the_context_is_scoped_and_nests():
    assert active_keyed_noise() is None
    keys = sample_keys(torch.rand(1, 3, 2), 1)
    with keyed_noise(keys, 0) as outer:
        assert active_keyed_noise() is outer
        with keyed_noise(keys[:1], 1) as inner:
            assert active_keyed_noise() is inner
        assert active_keyed_noise() is outer
    assert active_keyed_noise() is None
    with pytest.raises(RuntimeError):
        with keyed_noise(keys, 0):
            raise RuntimeError("inside")
    assert active_keyed_noise() is None


@pytest.mark.parametrize("family", [Gaussian(), Logistic()])
def test_noise_families_draw_keyed_inside_a_block_and_from_torch_outside(family):
    like = torch.zeros(())
    torch.manual_seed(3)
    plain = family.sample(torch.Size((4, 5)), like=like)
    torch.manual_seed(3)
    if isinstance(family, Gaussian):
        assert torch.equal(plain, torch.randn(4, 5))  # training draws exactly as before
    else:
        u = torch.rand(4, 5).clamp(torch.finfo(like.dtype).tiny, 1.0 - torch.finfo(like.dtype).eps)
        assert torch.equal(plain, torch.logit(u))
    keys = sample_keys(torch.rand(1, 5, 2), 1)
    with keyed_noise(keys, 0):
        torch.manual_seed(0)
        a = family.sample(torch.Size((4, 5)), like=like, batch_dim=1)
    with keyed_noise(keys[3:], 0):
        torch.manual_seed(1)
        b = family.sample(torch.Size((4, 2)), like=like, batch_dim=1)
    assert torch.equal(a[:, 3:], b)
    # an explicit generator is the caller's stream, keyed block or not
    with keyed_noise(keys, 0):
        g = family.sample(torch.Size((4, 5)), like=like, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g, plain)
    assert math.isfinite(float(a.abs().max()))

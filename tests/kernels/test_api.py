"""The validated kernel API: packing, events, integer propagation, LIF, conv and pooling."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sbnn.functional.estimators import get_estimator
from sbnn.functional.neurons import StochasticLIFParameters, stochastic_lif_sequence
from sbnn.functional.noise import get_noise
from sbnn.kernels import api


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 65, 130])
def test_pack_unpack_round_trip(np_rng, n):
    sign = np_rng.choice([-1, 1], size=(5, n)).astype(np.int8)
    sign[0] = 1  # all-one row
    sign[1] = -1  # all-minus row (all bits clear)
    packed = api.pack_signs(sign)
    assert packed.shape == (5, (n + 7) // 8)
    assert (api.unpack_signs(packed, n) == sign).all()
    assert (packed[1] == 0).all()


def test_bitorder_is_little_and_documented():
    # element 0 -> bit 0 (value 1), element 3 -> bit 3 (value 8); +1 is a set bit
    packed = api.pack_signs(np.array([1, -1, -1, 1, -1, -1, -1, -1, 1]))
    assert packed.tolist() == [1 + 8, 1]
    words = api.packed_words(api.pack_signs(np.where(np.arange(70) == 65, 1, -1)))
    assert words.shape == (2,) and words[0] == 0 and words[1] == 2


@pytest.mark.parametrize("bad", [np.array([[0, 1]]), np.array([[2, -1]]), np.zeros((2, 0))])
def test_pack_rejects_non_signs(bad):
    with pytest.raises(ValueError, match="pack_signs"):
        api.pack_signs(bad)


def test_events_from_dense_repeats_counts():
    ev = api.events_from_dense(np.array([[0, 2, 0, 1], [0, 0, 0, 0]]))
    assert ev.ptr.tolist() == [0, 3, 3] and ev.idx.tolist() == [1, 1, 3] and ev.n_in == 4


@pytest.mark.parametrize("bad, match", [(np.array([[0.5, 1.0]]), "integer"), (np.array([[-1, 0]]), "non-negative"),
                                        (np.array([[np.nan, 0]]), "integer")])
def test_events_from_dense_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        api.events_from_dense(bad)


@pytest.mark.parametrize("fmt", ["packed", "int8"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_in, n_out", [(700, 256), (33, 1), (20, 65), (9, 130)])
def test_linear_counts_match_integer_matmul(np_rng, fmt, threads, n_in, n_out):
    sign = np_rng.choice([-1, 1], size=(n_out, n_in)).astype(np.int8)
    x = np_rng.integers(0, 3, size=(12, n_in)) * (np_rng.random((12, n_in)) < 0.3)
    x[0] = 0  # a row without events
    x[1] = 1  # every input active
    x[2, :] = 0
    x[2, 0] = 40_000  # one input firing more often than an int16 or byte counter holds
    ev = api.events_from_dense(x)
    with api.threads(min(threads, numba.config.NUMBA_NUM_THREADS)):
        got = api.linear_counts(ev, api.dense_rows(sign, fmt))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x @ sign.T.astype(np.int64))


def test_linear_counts_rejects_out_of_range_indices(np_rng):
    rows = api.dense_rows(np_rng.choice([-1, 1], size=(4, 10)))
    bad = api.Events(np.array([0, 2], dtype=np.intp), np.array([3, 10], dtype=np.intp), 10)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 10\)"):
        api.linear_counts(bad, rows)
    with pytest.raises(ValueError, match="address 11 inputs"):
        api.linear_counts(api.events_from_dense(np.ones((1, 11), np.uint8)), rows)


def _torch_lif(mu: torch.Tensor, beta, threshold, reset: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = StochasticLIFParameters(beta, threshold, 0.1, 1e-3, reset, True, get_noise("gaussian"), get_estimator("st"))
    spk, mem, _ = stochastic_lif_sequence(mu, None, p, stochastic=False)
    return spk, mem


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("per_unit", [False, True])
def test_lif_sequence_is_bit_identical_to_torch(np_rng, gen, reset, per_unit):
    t, b, m = 40, 3, 37
    n = np_rng.integers(-6, 9, size=(t, b, m)).astype(np.int32)
    alpha = np.float32(0.1373)  # not a power of two: α·n rounds, in the same way on both sides
    beta = torch.rand(m, generator=gen) if per_unit else torch.tensor(0.9)
    thr = (0.5 + torch.rand(m, generator=gen)) if per_unit else torch.tensor(1.0)
    mu = torch.from_numpy(n).float() * torch.tensor(alpha)  # the proposed op order: integer sum, then α
    spk_t, mem_t = _torch_lif(mu, beta, thr, reset)
    spk, mem = api.lif_sequence(n, alpha, beta, thr, reset=reset)
    assert 0.05 < spk.mean() < 0.95
    np.testing.assert_array_equal(spk, spk_t.numpy().astype(np.uint8))
    np.testing.assert_array_equal(mem, mem_t.numpy())


def test_lif_threshold_exactly_hit():
    # α = 0.25, β = 0.5 (all values exact): U = 0.5, 0.25 + 0.75 = 1.0 = ϑ (spike: ≥), 0.5 + 1 − 1, 0.25
    n = np.array([[[2]], [[3]], [[4]], [[0]]], dtype=np.int32)
    mu = torch.from_numpy(n).float() * 0.25
    spk_t, mem_t = _torch_lif(mu, torch.tensor(0.5), torch.tensor(1.0), "subtract")
    spk, mem = api.lif_sequence(n, 0.25, 0.5, 1.0)
    assert mem[:, 0, 0].tolist() == [0.5, 1.0, 0.5, 0.25] and spk[:, 0, 0].tolist() == [0, 1, 0, 0]
    np.testing.assert_array_equal(spk, spk_t.numpy().astype(np.uint8))
    np.testing.assert_array_equal(mem, mem_t.numpy())


def test_lif_with_bias_matches_hand_computation():
    n = np.array([[[2, -1]], [[0, 3]]], dtype=np.int32)
    spk, mem = api.lif_sequence(n, [0.5, 0.25], 0.5, 1.0, bias=[0.25, -0.5], reset="zero")
    # unit 0: U0 = 2·0.5 + 0.25 = 1.25 (spike) → zero reset → U1 = 0·0.5 + 0.25 = 0.25
    # unit 1: U0 = −0.25 − 0.5 = −0.75 → U1 = 0.75 − 0.5 + 0.5·(−0.75) = −0.125
    np.testing.assert_array_equal(mem[:, 0], np.array([[1.25, -0.75], [0.25, -0.125]], np.float32))
    np.testing.assert_array_equal(spk[:, 0], [[1, 0], [0, 0]])


@pytest.mark.parametrize("fmt", ["packed", "int8"])
@pytest.mark.parametrize("kernel, stride, padding, dilation", [(3, 1, 0, 1), (3, 2, 1, 1), ((2, 3), (1, 2), (1, 0), 1), (3, 1, 2, 2)])
def test_conv2d_counts_match_torch(np_rng, fmt, kernel, stride, padding, dilation):
    c_in, c_out, h, w = 3, 70, 9, 8
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sign = np_rng.choice([-1, 1], size=(c_out, c_in, kh, kw)).astype(np.int8)
    x = (np_rng.random((5, c_in, h, w)) < 0.3).astype(np.uint8)
    x[0] = 0
    x[1] = 1
    n, synops, out_shape = api.conv2d_counts(
        api.events_from_dense(x.reshape(5, -1)), api.conv_rows(sign, fmt), (c_in, h, w), stride=stride, padding=padding, dilation=dilation
    )
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(sign).double(), stride=stride, padding=padding, dilation=dilation)
    assert out_shape == tuple(ref.shape[1:])
    np.testing.assert_array_equal(n.reshape(ref.shape), ref.numpy().astype(np.int64))
    taps = F.conv2d(torch.from_numpy(x).double(), torch.ones(1, c_in, kh, kw, dtype=torch.float64), stride=stride, padding=padding, dilation=dilation)
    assert synops == int(taps.sum()) * c_out


def test_maxpool_matches_torch(np_rng):
    x = (np_rng.random((4, 2, 7, 6)) < 0.2).astype(np.uint8)
    y, shape = api.maxpool2d(x.reshape(4, -1), (2, 7, 6), 3, 2, 1)
    ref = F.max_pool2d(torch.from_numpy(x).float(), 3, 2, 1)
    assert shape == tuple(ref.shape[1:])
    np.testing.assert_array_equal(y.reshape(ref.shape), ref.numpy().astype(np.uint8))


def _tonic_events(t, x, p=None):
    dtype = [("t", "<i8"), ("x", "<i8"), ("p", "<i8")]
    ev = np.zeros(len(t), dtype=dtype)
    ev["t"], ev["x"] = t, x
    ev["p"] = 0 if p is None else p
    return ev


def test_events_from_tonic_bins_and_clamps():
    ev = _tonic_events([0, 5, 5, 12, 31, 45], [3, 1, 1, 0, 2, 2], [0, 0, 0, 1, 0, 0])
    got = api.events_from_tonic(ev, (4, 1, 2), n_steps=4, time_window=10.0)
    # steps 0: {3, 1}; 1: {4 (x=0, p=1)}; 3: {2}; t=45 falls past the last step
    rows = [sorted(got.idx[got.ptr[r]:got.ptr[r + 1]].tolist()) for r in range(4)]
    assert rows == [[1, 3], [4], [], [2]]
    counts = api.events_from_tonic(ev, (4, 1, 2), n_steps=4, time_window=10.0, binary=False)
    assert sorted(counts.idx[: counts.ptr[1]].tolist()) == [1, 1, 3]



def test_events_from_tonic_single_polarity_as_tonic():
    # tonic's SHD writes p = 1 on its (700, 1, 1) sensor; ToFrame maps a single polarity to 0
    ev = _tonic_events([0, 5, 12], [3, 1, 0], [1, 1, 1])
    got = api.events_from_tonic(ev, (4, 1, 1), n_steps=2, time_window=10.0)
    assert [sorted(got.idx[got.ptr[r]:got.ptr[r + 1]].tolist()) for r in range(2)] == [[1, 3], [0]]


@pytest.mark.parametrize(
    "events, sensor, match",
    [
        (_tonic_events([0, 5, 3], [0, 1, 1]), (4, 1, 1), "sorted"),
        (_tonic_events([0, 5], [0, 4]), (4, 1, 1), "x=4 outside the sensor"),
        (_tonic_events([0, 5], [0, 1], [0, 2]), (4, 1, 2), "p=2 outside"),
        (_tonic_events([0, 5], [0, 1], [0, 1]), (4, 1, 1), "single polarity but the events hold polarities \\[0, 1\\]"),
        (np.zeros(3), (4, 1, 1), "structured array"),
    ],
)
def test_events_from_tonic_rejects_bad_input(events, sensor, match):
    with pytest.raises(ValueError, match=match):
        api.events_from_tonic(events, sensor, n_steps=3, time_window=10.0)


def test_threads_context_restores_and_validates():
    import numba

    before = numba.get_num_threads()
    with api.threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with api.threads(0):
            pass

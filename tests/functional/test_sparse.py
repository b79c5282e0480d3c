"""Gather/scatter products of spikes with a weight table: equal to the dense products, gradients too."""

from __future__ import annotations

import pytest
import torch

from sbnn.functional.layers import lrt_linear
from sbnn.functional.sparse import (
    SpikeIndices,
    all_ones,
    estimate_density,
    gather_moments,
    gather_sum,
    lrt_linear_gather,
    lrt_table,
    spike_indices,
    use_gather,
)


def _spikes(gen: torch.Generator, shape: tuple[int, ...], density: float, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < density).to(dtype)


def test_spike_indices_by_hand():
    x = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    idx = spike_indices(x)
    assert idx.rows.tolist() == [0, 0, 2, 2]
    assert idx.cols.tolist() == [1, 2, 0, 2]
    assert idx.offsets.tolist() == [0, 2, 2]  # the empty row 1 is a zero-length bag
    assert idx.shape == (3, 3)
    assert idx.density == pytest.approx(4 / 9)
    torch.testing.assert_close(idx.to_dense(), x, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.int64, torch.uint8]
)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "empty"])
def test_spike_indices_equal_torch_nonzero(gen, dtype, layout):
    """The NumPy scan (CPU dtypes NumPy has) and the torch path (bfloat16) give torch.nonzero's indices."""
    x = _spikes(gen, (7, 5, 13), 0.2, torch.float64)
    x[2] = 0.0  # empty rows
    x[3, 1, 4] = -0.0  # a negative zero is no spike
    if layout == "transposed":
        x = x.transpose(0, 1)  # not contiguous
    elif layout == "empty":
        x = x[:0]
    x = x.to(dtype)
    idx = spike_indices(x)
    flat = x.reshape(-1, 13)
    rows, cols = flat.nonzero().t()
    assert idx.rows.dtype == idx.cols.dtype == idx.offsets.dtype == torch.int64
    assert idx.rows.tolist() == rows.tolist() and idx.cols.tolist() == cols.tolist()
    counts = torch.bincount(rows, minlength=flat.shape[0])
    assert idx.offsets.tolist() == (torch.cumsum(counts, 0) - counts).tolist()
    assert idx.shape == tuple(x.shape)


def test_gather_sum_by_hand_with_an_empty_row():
    x = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    table = torch.tensor([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    assert gather_sum(x, table).tolist() == [[6.0, 60.0], [0.0, 0.0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("squared_from", [None, 3])
def test_gather_sum_equals_matmul_with_gradients(gen, dtype, squared_from):
    x = _spikes(gen, (4, 5, 9), 0.3, dtype).requires_grad_()
    table = torch.randn(9, 6, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    weights = torch.randn(4, 5, 6, generator=gen, dtype=torch.float64).to(dtype)
    out = gather_sum(x, table, squared_from=squared_from)
    # the dense formula: columns from squared_from on are linear in x·x
    k = 6 if squared_from is None else squared_from
    ref = torch.cat([x @ table[:, :k], (x * x) @ table[:, k:]], dim=-1)
    torch.testing.assert_close(out, ref)
    g_out = torch.autograd.grad((out * weights).sum(), (x, table))
    g_ref = torch.autograd.grad((ref * weights).sum(), (x, table))
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)


def test_input_gradient_of_the_squared_columns_is_twice_at_active_inputs_only():
    x = torch.tensor([[1.0, 0.0]], requires_grad=True)
    table = torch.tensor([[3.0, 5.0], [7.0, 11.0]])  # column 0 linear, column 1 in x²
    out = gather_sum(x, table, squared_from=1)
    (grad,) = torch.autograd.grad(out.sum(), x)
    # ∂/∂x_0 = 3 + 2·1·5 = 13 (active); ∂/∂x_1 = 7 + 2·0·11 = 7 (silent)
    assert grad.tolist() == [[13.0, 7.0]]


def test_gather_from_indices_equals_gather_from_dense(gen):
    x = _spikes(gen, (3, 4, 8), 0.25)
    table = torch.randn(8, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    a = gather_sum(x, table)
    b = gather_sum(spike_indices(x), table)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ga = torch.autograd.grad(a.square().sum(), table)[0]
    gb = torch.autograd.grad(b.square().sum(), table)[0]
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channel_scale", [False, True])
def test_lrt_linear_gather_equals_lrt_linear(gen, dtype, channel_scale):
    x = _spikes(gen, (6, 3, 11), 0.2, dtype).requires_grad_()
    lam = torch.randn(5, 11, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    alpha = (torch.rand(5 if channel_scale else 1, generator=gen, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    bias = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    wm, wv = torch.randn(2, 6, 3, 5, generator=gen, dtype=torch.float64).to(dtype)
    sparse = lrt_linear_gather(x, lam, alpha, bias)
    dense = lrt_linear(x, lam, alpha, bias)  # x·x in the variance: what a hidden layer differentiates
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b)
    params = (x, lam, alpha, bias)
    g_sparse = torch.autograd.grad((sparse[0] * wm + sparse[1] * wv).sum(), params)
    g_dense = torch.autograd.grad((dense[0] * wm + dense[1] * wv).sum(), params)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b)


def test_lrt_table_rows_are_the_per_input_moments():
    lam = torch.tensor([[0.5, -1.0], [2.0, 0.0]])  # [out=2, in=2]
    alpha = torch.tensor([0.5, 2.0])
    table = lrt_table(lam, alpha)
    m = torch.tanh(lam)
    expected = torch.cat([(m * alpha[:, None]).t(), ((1 - m * m) * alpha[:, None] ** 2).t()], dim=1)
    torch.testing.assert_close(table, expected)
    assert table.shape == (2, 4) and table.is_contiguous()


def test_gather_moments_with_a_gaussian_table(gen):
    # real weights W with variance σ²: mean x Wᵀ, variance σ² Σ x² (a table [Wᵀ | σ²·1])
    x = _spikes(gen, (7, 10), 0.3)
    w = torch.randn(4, 10, dtype=torch.float64, generator=gen)
    sigma_sq = torch.full((10, 4), 0.3, dtype=torch.float64)
    mean, var = gather_moments(x, torch.cat([w.t(), sigma_sq], dim=1))
    torch.testing.assert_close(mean, x @ w.t())
    torch.testing.assert_close(var, 0.3 * x.sum(-1, keepdim=True).expand(7, 4))


def test_density_estimate_and_choice():
    x = torch.zeros(3200, 100)
    x[:, :3] = 1.0  # 3 % in every row
    assert estimate_density(x) == pytest.approx(0.03)
    assert use_gather(x, 0.05) and not use_gather(x, 0.02)
    # fewer rows, lower threshold: 800 rows give 0.05 · 800/3200 = 1.25 % < 3 %
    assert not use_gather(x[:800], 0.05) and use_gather(x[:800], 0.2)
    assert not use_gather(torch.zeros(0, 4))
    assert estimate_density(torch.ones(3, 2)) == 1.0


def test_density_limit_follows_table_size_input_form_and_rows(monkeypatch):
    from sbnn.functional.sparse import SPARSE_CACHED_TABLE_BYTES, density_limit
    from sbnn.layers import BernoulliLinear

    small, large = SPARSE_CACHED_TABLE_BYTES, SPARSE_CACHED_TABLE_BYTES + 1
    assert density_limit(3200, small, threads=1) == pytest.approx(0.15)
    assert density_limit(3200, small, threads=2) == pytest.approx(0.15 / 2**0.5)  # the matmuls use both threads
    assert density_limit(3200, small, threads=4) == pytest.approx(0.075)
    assert density_limit(3200, small, indices=True, threads=2) == pytest.approx(0.15)
    assert density_limit(3200, small, indices=True) == pytest.approx(0.15)
    assert density_limit(3200, large) == density_limit(3200, large, indices=True) == pytest.approx(0.05)
    assert density_limit(800, small, threads=1) == pytest.approx(0.15 / 4)
    assert density_limit(6400, small, max_density=0.2) == pytest.approx(0.2)
    # the [700, 2·256] float32 table of an SHD first layer stays in cache, a [700, 2·2048] one does not
    assert BernoulliLinear(700, 256).table_bytes() == 700 * 512 * 4 <= small
    assert BernoulliLinear(700, 2048).table_bytes() > small
    x = torch.zeros(3200, 700)
    x[:, :84] = 1.0  # 12 %: gathered for a cached table, dense for a large one (one thread)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert use_gather(x, table_bytes=small) and not use_gather(x, table_bytes=large)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the dense matmuls on two threads win at 12 %
    assert not use_gather(x, table_bytes=small)


def test_all_ones_tells_spikes_from_counts():
    spikes = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    counts = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    assert all_ones(spikes, spike_indices(spikes))
    assert not all_ones(counts, spike_indices(counts))


def test_bad_tables_are_refused():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"table must be \[in=3, K\]"):
        gather_sum(x, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\[in=3, 2H\]"):
        gather_moments(x, torch.ones(3, 3))
    with pytest.raises(ValueError, match="indices describe shape"):
        gather_sum(x, torch.ones(3, 2), indices=spike_indices(torch.ones(3, 3)))


def test_spike_indices_is_a_named_tuple_of_plain_fields():
    idx = spike_indices(torch.eye(3))
    assert isinstance(idx, SpikeIndices) and idx._fields == ("rows", "cols", "offsets", "shape")

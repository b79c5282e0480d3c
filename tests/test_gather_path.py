"""The event-driven (gather) path of BernoulliLinear and the models: equal to the dense path."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import sbnn
import sbnn.layers as layers_module
from sbnn.functional.estimators import ESTIMATORS
from sbnn.functional.sparse import spike_indices
from sbnn.layers import BernoulliLinear, gather_path
from sbnn.models import NeuronSettings, SpikingMLP


def _spikes(gen: torch.Generator, shape: tuple[int, ...], density: float, dtype=torch.float64) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < density).to(dtype)


def _run(module, choice: str, fn, seed: int = 7):
    params = [p for p in module.parameters() if p.requires_grad]
    with gather_path(module, choice):
        torch.manual_seed(seed)  # the same noise draws on both paths
        out = fn()
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    return out.detach(), grads


def _assert_paths_equal(module, fn, exact: bool = False):
    """Outputs equal (bit for bit with ``exact``); parameter gradients within float rounding.

    The gradients are real-valued sums whose order the two paths' kernels choose (and a BLAS
    chooses per CPU), so only the outputs of ±1 weights on spikes are exact integers times α.
    """
    out_dense, g_dense = _run(module, "never", fn)
    out_sparse, g_sparse = _run(module, "always", fn)
    torch.testing.assert_close(out_sparse, out_dense, **(dict(rtol=0, atol=0) if exact else {}))
    for a, b in zip(g_sparse, g_dense):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["sample", "mode", "mean", "fixed"])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("scale", ["layer", "channel"])
def test_layer_moments_equal_dense(gen, dtype, mode, input_grad, scale):
    layer = BernoulliLinear(12, 5, scale=scale).to(dtype)
    with torch.no_grad():
        layer.bias.normal_(generator=gen)
    if mode == "fixed":
        layer.draw_weights(gen)
    layer.set_mode(mode)
    x = _spikes(gen, (6, 4, 12), 0.2, dtype)

    def fn():
        xx = x.clone().requires_grad_(input_grad)
        m = layer.moments(xx, binary=True)
        out = m.mean if m.var is None else torch.cat([m.mean, m.var], dim=-1)
        if input_grad:  # the input gradient, through an extra output channel
            out = torch.cat([out, torch.autograd.grad(out.square().sum(), xx, create_graph=True)[0]], dim=-1)
        return out

    # ±1 weights with the scale applied after the sum: integer sums, so bit-identical
    _assert_paths_equal(layer, fn, exact=mode in ("mode", "fixed"))


def test_input_gradient_equals_dense(gen):
    layer = BernoulliLinear(9, 4).double()
    x = _spikes(gen, (5, 9), 0.3)
    grads = []
    for choice in ("never", "always"):
        xx = x.clone().requires_grad_()
        with gather_path(layer, choice):
            m = layer.moments(xx, binary=True)
        grads.append(torch.autograd.grad((m.mean * 2 + m.var * 3).sum(), xx)[0])
    torch.testing.assert_close(grads[0], grads[1])


def _mlp(dtype, estimator: str = "st", **neuron) -> SpikingMLP:
    torch.manual_seed(0)
    net = SpikingMLP(40, (24, 16), 5, binary_input=True, neuron=NeuronSettings(estimator=estimator, **neuron))
    return net.to(dtype)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_network_forward_and_gradients_equal_dense_for_every_estimator(gen, estimator):
    net = _mlp(torch.float64, estimator)
    x = _spikes(gen, (8, 3, 40), 0.1)
    _assert_paths_equal(net, lambda: net(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["sample", "mode", "mean", "mc"])
def test_network_modes_equal_dense(gen, dtype, mode):
    net = _mlp(dtype)
    x = _spikes(gen, (8, 3, 40), 0.1, dtype)
    sbnn.set_mode(net, mode, generator=gen)  # "mc": one drawn network, used by both paths
    _assert_paths_equal(net, lambda: net(x), exact=mode == "mode")


def test_network_with_marginal_membrane_noise_equals_dense(gen):
    net = _mlp(torch.float64, membrane_noise="marginal")
    x = _spikes(gen, (8, 3, 40), 0.1)
    _assert_paths_equal(net, lambda: net(x))


def _count_gathers(monkeypatch) -> list[int]:
    calls = [0]
    original = layers_module.lrt_linear_gather

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(layers_module, "lrt_linear_gather", counting)
    return calls


def test_auto_choice_follows_the_density(gen, monkeypatch):
    calls = _count_gathers(monkeypatch)
    layer = BernoulliLinear(50, 8)
    sparse, dense = _spikes(gen, (32, 100, 50), 0.02, torch.float32), _spikes(gen, (32, 100, 50), 0.5, torch.float32)
    layer.moments(sparse, binary=True)
    assert calls[0] == 1
    layer.moments(dense, binary=True)
    assert calls[0] == 1
    layer.moments(sparse)  # not declared binary: dense
    assert calls[0] == 1
    layer.gather_max_density = 0.0
    layer.moments(sparse, binary=True)
    assert calls[0] == 1


def test_counts_run_dense_even_when_forced(gen, monkeypatch):
    calls = _count_gathers(monkeypatch)
    layer = BernoulliLinear(6, 3)
    counts = torch.tensor([[0.0, 2.0, 0.0, 0.0, 1.0, 0.0]])
    with gather_path(layer, "always"):
        a = layer.moments(counts, binary=True)
    assert calls[0] == 0
    b = layer.moments(counts, binary=True)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)


def test_spike_indices_input(gen):
    layer = BernoulliLinear(10, 4).double()
    x = _spikes(gen, (3, 2, 10), 0.3)
    a = layer.moments(spike_indices(x))
    b = layer.moments(x, binary=True)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.var, b.var)
    with pytest.raises(ValueError, match=r"expected \[B, 10\] or \[T, B, 10\]"):
        layer.moments(spike_indices(torch.ones(2, 7)))


def test_gather_choice_is_checked_and_restored():
    net = _mlp(torch.float32)
    with gather_path(net, "never"):
        assert {m.gather for m in net.modules() if isinstance(m, BernoulliLinear)} == {"never"}
    assert {m.gather for m in net.modules() if isinstance(m, BernoulliLinear)} == {"auto"}
    with pytest.raises(ValueError, match="gather_path choice"):
        gather_path(net, "sometimes")
    layer = BernoulliLinear(3, 2)
    layer.gather = "sometimes"
    with pytest.raises(ValueError, match="BernoulliLinear.gather"):
        layer.moments(torch.ones(1, 3), binary=True)


def test_the_choice_survives_pickle_and_deepcopy():
    layer = BernoulliLinear(3, 2)
    layer.gather, layer.gather_max_density = "never", 0.2
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert (clone.gather, clone.gather_max_density) == ("never", 0.2)
    assert "gather" not in layer.state_dict()


def test_compiled_code_stays_dense_without_graph_breaks(gen):
    layer = BernoulliLinear(20, 5)
    x = _spikes(gen, (4, 3, 20), 0.02, torch.float32)
    explained = torch._dynamo.explain(lambda z: layer.moments(z, binary=True, validate=False).mean)(x)
    assert explained.graph_break_count == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_table_gradient_kernel_equals_transposed_gather(gen, dtype):
    """The CPU scatter-add of the weight gradient against the transposed embedding_bag, and against x·g;
    the split form (the two LRT gradients, not joined) against the joined one."""
    from sbnn.functional.sparse import _kernels_apply, _table_grad, _transposed

    x = _spikes(gen, (7, 3, 11), 0.25, dtype)
    x[:, 0] = 0  # rows without events
    x[..., 4] = 0  # an input that never fires
    idx = spike_indices(x)
    grad = torch.randn(21, 6, generator=gen, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        assert _kernels_apply(grad)
        kernel = _table_grad(idx, grad, 11)
        split = _table_grad(idx, grad[:, :4].contiguous(), 11, grad[:, 4:].contiguous())
    rows_t, offsets_t = _transposed(idx, 11)
    reference = torch.nn.functional.embedding_bag(rows_t, grad, offsets_t, mode="sum")
    torch.testing.assert_close(kernel, reference)
    torch.testing.assert_close(kernel, x.reshape(21, 11).t() @ grad)
    torch.testing.assert_close(split, kernel, rtol=0, atol=0)  # the same sums in the same order
    assert kernel[4].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_moments_kernel_equals_the_embedding_bag_path(gen, monkeypatch, dtype, with_bias):
    """The CPU kernel's two contiguous moments (and their gradients) against the portable path and the matmul."""
    from sbnn.functional import sparse

    x = _spikes(gen, (6, 4, 9), 0.3, dtype)
    x[:, 1] = 0  # rows without events
    table = torch.randn(9, 10, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    bias = torch.randn(5, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if with_bias else None
    weights = torch.randn(2, 6, 4, 5, generator=gen, dtype=torch.float64).to(dtype)
    params = (table,) if bias is None else (table, bias)

    def run():
        mean, var = sparse.gather_moments(x, table, bias)
        grads = torch.autograd.grad((mean * weights[0] + var * weights[1]).sum(), params)
        return mean, var, grads

    mean, var, grads = run()
    assert mean.is_contiguous() and var.is_contiguous() and mean.shape == var.shape == (6, 4, 5)
    monkeypatch.setattr(sparse, "_kernels_apply", lambda t: False)
    mean_ref, var_ref, grads_ref = run()
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(var, var_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    flat = x.reshape(24, 9)
    dense_mean = flat @ table[:, :5] + (0 if bias is None else bias)
    torch.testing.assert_close(mean.reshape(24, 5), dense_mean.detach())
    torch.testing.assert_close(var.reshape(24, 5), (flat @ table[:, 5:]).detach())
    assert var[:, 1].abs().max() == 0  # an empty row sums nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.bool, torch.int64])
def test_binary_indices_tells_spikes_from_other_values(gen, dtype):
    from sbnn.functional.sparse import binary_indices

    x = _spikes(gen, (5, 3, 8), 0.3, torch.float64)
    x[1] = 0
    idx = binary_indices(x.to(dtype))
    rows, cols = x.reshape(15, 8).nonzero().t()
    assert idx.rows.tolist() == rows.tolist() and idx.cols.tolist() == cols.tolist()
    if dtype != torch.bool:
        counts = x.clone()
        counts[4, 2, 7] = 2  # one count of two
        assert binary_indices(counts.to(dtype)) is None
    if dtype.is_floating_point:
        real = x.clone()
        real[0, 0, 0] = 0.5
        assert binary_indices(real.to(dtype)) is None
    assert binary_indices(torch.zeros(4, 0, dtype=dtype)).rows.numel() == 0


def test_table_gradient_keeps_a_graph_for_double_backward(gen):
    """create_graph=True takes the torch path, so second derivatives through the table exist."""
    from sbnn.functional.sparse import gather_sum

    x = _spikes(gen, (10, 8), 0.3)
    table = torch.randn(8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(gather_sum(x, table).square().sum(), table, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), table)
    # d/dA Σ 2 xᵀ(xA) = 2 xᵀx·1: the Hessian-vector product with ones
    torch.testing.assert_close(gg, 2 * (x.t() @ x) @ torch.ones(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("alpha_shape", [(1,), (5,)])
def test_lrt_table_node_gradients(gen, alpha_shape):
    """The fused table node's hand-written backward (and its second derivative) against finite differences."""
    from sbnn.functional.sparse import lrt_table

    lam = (2 * torch.randn(5, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    alpha = (torch.rand(alpha_shape, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    table = lrt_table(lam, alpha)
    m, v = torch.tanh(lam), 1 - torch.tanh(lam) ** 2
    a = alpha.reshape(-1, 1)
    torch.testing.assert_close(table, torch.cat([m * a, v * a * a]).t())
    assert torch.autograd.gradcheck(lrt_table, (lam, alpha))
    assert torch.autograd.gradgradcheck(lrt_table, (lam, alpha))


@pytest.mark.parametrize("n_chunks", [2, 3, 5])
def test_parallel_sparse_kernels_give_the_serial_numbers(gen, n_chunks):
    """Rows split into ranges (gather, scan): the same arrays, bit for bit."""
    from sbnn.functional import _sparse_kernels as k

    x = _spikes(gen, (9, 7, 23), 0.2, torch.float32)
    x[:, 2] = 0  # rows without events
    x[4, 1, 5] = 3.0  # a count: not binary
    flat = x.reshape(63, 23).numpy()
    serial, parallel = k.binary_spike_indices(flat), k.binary_spike_indices_parallel(flat, n_chunks)
    for a, b in zip(serial[:3], parallel[:3]):
        np.testing.assert_array_equal(a, b)
    assert serial[3] is False and parallel[3] is False
    assert k.binary_spike_indices_parallel((flat != 0).astype(np.float32), n_chunks)[3] is True
    _, cols, offsets, _ = serial
    table = torch.randn(23, 14, generator=gen).numpy()
    bias = torch.randn(6, generator=gen).numpy()
    outs = [(np.empty((63, 6), np.float32), np.empty((63, 8), np.float32)) for _ in range(2)]
    k.gather_rows_split(cols, offsets, table, bias, *outs[0])
    k.gather_rows_split_parallel(cols, offsets, table, bias, *outs[1], n_chunks)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)

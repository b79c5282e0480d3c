"""The training forward pass (network + ELBO loss) traces into one graph: no graph breaks."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

import sbnn
from sbnn.functional import _operators
from sbnn.models import NeuronSettings, ResidualSpikingMLP, SpikingConvNet, SpikingMLP, SpikingRecurrentNet


@pytest.mark.parametrize("kind", ["mlp", "recurrent"])
def test_training_forward_has_no_graph_break(gen, kind):
    dynamo.reset()
    x = (torch.rand(3, 2, 6, generator=gen) < 0.5).float()
    y = torch.tensor([0, 1])
    net = SpikingMLP(6, (4,), 2, binary_input=True) if kind == "mlp" else SpikingRecurrentNet(6, (4, 4), 2)
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=10, kl_weight=0.1)

    def loss(x, y):
        return loss_fn(net(x), y, net).loss

    explanation = dynamo.explain(loss)(x, y)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    dynamo.reset()


def _compiled_and_eager_step(gen, kind: str, backend: str, estimator: str = "st", noise: str = "pathwise"):
    """Loss and gradients of one training step, eager and compiled, from the same seed."""
    x = (torch.rand(12, 3, 8, generator=gen) < 0.4).float()
    y = torch.tensor([0, 1, 1])
    neuron = NeuronSettings(estimator=estimator, membrane_noise=noise)
    if kind == "mlp":
        net = SpikingMLP(8, (6,), 2, binary_input=True, neuron=neuron)
    elif kind == "recurrent":
        net = SpikingRecurrentNet(8, (6, 5), 2, neuron=neuron)
    elif kind == "residual":
        net = ResidualSpikingMLP(8, 2, depth=4, width=5, neuron=neuron)
    else:  # conv: [T, B, C, H, W] frames
        x = (torch.rand(6, 3, 2, 8, 8, generator=gen) < 0.3).float()
        net = SpikingConvNet(2, 8, (3,), 2, fc=(5,), neuron=neuron)
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=10, kl_weight=0.1)

    def loss(x, y):
        return loss_fn(net(x), y, net).loss

    results = []
    for fn in (loss, torch.compile(loss, backend=backend, fullgraph=True)):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same noise draws: eager and compiled sample from torch's generator
        value = fn(x, y)
        value.backward()
        results.append((value.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    return results


@pytest.mark.parametrize(
    "kind, estimator, noise",
    [
        ("mlp", "st", "pathwise"), ("mlp", "iwst", "pathwise"), ("mlp", "st", "marginal"), ("recurrent", "st", "pathwise"),
        # slow: the default suite keeps one network per node kind (the CI budget)
        pytest.param("mlp", "agr", "pathwise", marks=pytest.mark.slow),
        pytest.param("residual", "st", "pathwise", marks=pytest.mark.slow),
        pytest.param("conv", "st", "pathwise", marks=pytest.mark.slow),
    ],
)
def test_compiled_step_equals_eager(gen, kind, estimator, noise):
    """AOTAutograd traces the neuron's kernel operators by their fake (shape) implementations and
    runs them as opaque nodes: the compiled loss and gradients equal the eager ones."""
    dynamo.reset()
    (loss_e, grads_e), (loss_c, grads_c) = _compiled_and_eager_step(gen, kind, "aot_eager", estimator, noise)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    dynamo.reset()


@pytest.mark.parametrize("kind", ["mlp", "recurrent"])
def test_the_neuron_loop_is_one_operator_in_the_graph(gen, kind):
    """The time loops reach the compiled graph as operators, not unrolled per step."""
    if not _operators.HAS_CUSTOM_OP:
        pytest.skip("torch < 2.4 has no torch.library.custom_op: the loop is unrolled")
    dynamo.reset()
    x = (torch.rand(30, 2, 6, generator=gen) < 0.5).float()
    net = SpikingMLP(6, (4,), 2, binary_input=True) if kind == "mlp" else SpikingRecurrentNet(6, (4,), 2)
    net.calibrate(x)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(net, backend=backend, fullgraph=True)(x)
    code = graphs[0].print_readable(print_output=False)  # with the autograd node's forward and backward bodies
    op = "lif" if kind == "mlp" else "recurrent_lif"
    assert code.count(f"torch.ops.sbnn.{op}_forward.default(") == 1
    assert code.count(f"torch.ops.sbnn.{op}_backward.default(") == 1
    assert "torch.ge(" not in code and ".ge(" not in code, "a per-step threshold comparison: the loop was unrolled"
    dynamo.reset()


@pytest.mark.slow
def test_inductor_compiled_step_equals_eager(gen):
    """The full compiler (Inductor, C++ code generation) with torch's own random draws."""
    dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        (loss_e, grads_e), (loss_c, grads_c) = _compiled_and_eager_step(gen, "mlp", "inductor")
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    dynamo.reset()


def _aot_eager(monkeypatch):
    """``torch.compile`` in the task with the AOTAutograd backend (no C++ code generation: fast)."""
    real = torch.compile

    def compile_(fn, options=None, **kwargs):
        assert options == {"fallback_random": True}  # what the task asks of Inductor
        return real(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_)


def test_task_compile_gives_the_eager_step(monkeypatch, gen):
    from sbnn.tasks import SpikingClassificationTask

    dynamo.reset()
    _aot_eager(monkeypatch)
    x = (torch.rand(10, 3, 8, generator=gen) < 0.3).float()
    y = torch.tensor([0, 1, 1])
    losses, grads = [], []
    for compile_ in (False, True):
        torch.manual_seed(0)
        net = SpikingMLP(8, (6,), 2, binary_input=True)
        net.calibrate(x)
        task = SpikingClassificationTask(net, train_size=10, compile=compile_)
        for step in range(2):  # the second step reuses the compiled code
            torch.manual_seed(step)
            loss = task.training_step((x, y), step)
        loss.backward()
        losses.append(loss.detach())
        grads.append(net.layers[0].lam.grad)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert task._compiled_terms is not None
    dynamo.reset()


def test_task_compile_refuses_the_hooked_auxiliary_loss():
    from sbnn.tasks import SpikingClassificationTask

    with pytest.raises(ValueError, match="aux_weight: 0 or compile: false"):
        SpikingClassificationTask(SpikingMLP(4, (3,), 2), aux_weight=0.1, compile=True)
    with pytest.raises(ValueError, match="compile must be true or false"):
        SpikingClassificationTask(SpikingMLP(4, (3,), 2), compile="yes")


def _count_calls(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (looked up when a compiled operator runs)."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize(
    "choice, rate, gathers",
    [("auto", 0.03, True), ("auto", 0.5, False), ("always", 0.5, True), ("never", 0.03, False)],
)
@pytest.mark.parametrize("input_grad", [False, True])
def test_compiled_spike_moments_choose_the_path_inside_one_operator(gen, monkeypatch, choice, rate, gathers, input_grad):
    """Compiled code hands spikes to one operator that chooses the gather or the matmuls by the
    input's density, as eager code does: the moments and every gradient (λ, α, bias and, for
    hidden spikes, the input) equal the eager layer's, and the gather runs where it should."""
    if not _operators.HAS_CUSTOM_OP:
        pytest.skip("torch < 2.4 has no torch.library.custom_op: compiled code stays dense")
    from sbnn.functional import _sparse_operators

    dynamo.reset()
    layer = sbnn.BernoulliLinear(40, 6)
    layer.gather = choice
    # T·B = 3200 rows: the measured crossover applies unscaled (3 % gathers, 50 % does not)
    x = (torch.rand(100, 32, 40, generator=gen) < rate).float()
    weights = torch.randn(2, 6, generator=gen)

    def loss(x):
        mu, var = layer.moments(x, binary=True)
        return (mu * weights[0]).sum() + (var * weights[1]).sum()

    results = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        layer.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(input_grad)
        if fn is not loss:
            gathered = _count_calls(monkeypatch, _sparse_operators, "_gather_moments_rows")
            scattered = _count_calls(monkeypatch, _sparse_operators, "_table_grad")
        value = fn(x_in)
        value.backward()
        grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
        results.append((value.detach(), grads, x_in.grad))
    (loss_e, grads_e, gx_e), (loss_c, grads_c, gx_c) = results
    # sums over 3200 rows in another order (table rows against the layer's matmuls): float32
    # rounding relative to each tensor's largest entry
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-4)
    for name, g in grads_e.items():
        atol = 1e-5 * float(g.abs().max())
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")
    if input_grad:
        torch.testing.assert_close(gx_c, gx_e, rtol=1e-5, atol=1e-5 * float(gx_e.abs().max()))
    assert (len(gathered), len(scattered)) == ((1, 1) if gathers else (0, 0))
    dynamo.reset()

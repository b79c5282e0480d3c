"""The Numba CPU kernels of the pathwise neuron against its torch loop (``neurons.CPU_KERNELS``).

The kernels follow the torch loop's arithmetic element by element: spikes and membranes must be
bit-identical, gradients equal up to the order of the sums over time. One exception: with a
variance input the kernels form the scale ``sqrt(v + f)`` themselves, correctly rounded, where
torch's vectorised ``sqrt`` may be 1 ulp off; the membranes then agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sbnn
import sbnn.functional._cpu_kernels as kernels
from sbnn.functional import _operators, neurons
from sbnn.functional.estimators import AGR, IWST, ST, Relaxed
from sbnn.functional.neurons import StochasticLIFParameters, StochasticLIFState, stochastic_lif_sequence
from sbnn.functional.noise import get_noise
from sbnn.models import NeuronSettings, SpikingConvNet, SpikingMLP

TOL = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}
MEM_TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-14, atol=1e-14)}
NAMES = ["mu", "var", "beta", "threshold", "mem0", "spk0"]


@pytest.fixture
def calls(monkeypatch):
    """Counts of the kernel calls, by name (the kernels still run)."""
    counts = {"lif_forward": 0, "lif_backward": 0, "marginal_mean": 0, "reverse_recurrence": 0, "marginal_backward": 0}
    for name in counts:
        original = getattr(kernels, name)

        def spy(*args, _name=name, _original=original):
            counts[_name] += 1
            return _original(*args)

        monkeypatch.setattr(kernels, name, spy)
    return counts


def _problem(dtype, per_unit, noise="gaussian", shape=(20, 4, 6), seed=3):
    gen = torch.Generator().manual_seed(seed)
    t, b, n = shape[0], shape[1], shape[-1]
    kw = dict(dtype=dtype)
    mu = (0.6 * torch.randn(shape, generator=gen, **kw) + 0.4).requires_grad_()
    var = (0.2 * torch.rand(shape, generator=gen, **kw)).requires_grad_()
    eps = get_noise(noise).sample(torch.Size(shape), like=mu.detach(), generator=gen)
    unit = (n,) if len(shape) == 3 else (shape[2], 1, 1)  # per unit, or per channel of [T, B, C, H, W]
    beta = (torch.linspace(0.6, 0.95, unit[0], **kw).reshape(unit) if per_unit else torch.tensor(0.8, **kw)).requires_grad_()
    thr = (torch.linspace(0.8, 1.2, unit[0], **kw).reshape(unit) if per_unit else torch.tensor(1.0, **kw)).requires_grad_()
    mem0 = (0.5 * torch.randn(shape[1:], generator=gen, **kw)).requires_grad_()
    spk0 = (torch.rand(shape[1:], generator=gen, **kw) < 0.5).to(dtype).requires_grad_()
    g_spk = torch.randn(shape, generator=gen, **kw)
    g_mem = torch.randn(shape, generator=gen, **kw)
    return mu, var, eps, beta, thr, mem0, spk0, g_spk, g_mem


def _run(kernel, monkeypatch, problem, reset, detach, estimator, noise="gaussian", use_mem=True):
    monkeypatch.setattr(neurons, "CPU_KERNELS", kernel)
    mu, var, eps, beta, thr, mem0, spk0, g_spk, g_mem = problem
    p = StochasticLIFParameters(beta, thr, 0.1, 1e-3, reset, detach, get_noise(noise), estimator)
    spk, mem, _ = stochastic_lif_sequence(mu, var, p, state=StochasticLIFState(mem0, spk0), eps=eps)
    objective = (spk * g_spk).sum() + ((mem * g_mem).sum() if use_mem else 0.0)
    grads = torch.autograd.grad(objective, [mu, var, beta, thr, mem0, spk0], allow_unused=True)
    return spk, mem, grads


def _assert_same(kernel_out, torch_out, dtype, exact_mem=False):
    (spk, mem, grads), (ref_spk, ref_mem, ref_grads) = kernel_out, torch_out
    assert 0 < ref_spk.mean() < 1  # both outcomes occur: the reset paths run
    assert torch.equal(spk, ref_spk)
    if exact_mem:
        assert torch.equal(mem, ref_mem)  # bit for bit: the same operations in the same order
    else:  # the scale from the variance: correctly rounded sqrt against torch's (module docstring)
        torch.testing.assert_close(mem, ref_mem, **MEM_TOL[dtype])
    for name, g, r in zip(NAMES, grads, ref_grads):
        if r is None or g is None:
            assert (g is None or torch.count_nonzero(g) == 0) and (r is None or torch.count_nonzero(r) == 0), name
            continue
        assert g.shape == r.shape, name
        # atol relative to the gradient's scale: an element that sums terms of both signs keeps the
        # rounding error of its largest terms, and the two loops round differently per CPU (SIMD width)
        tol = dict(TOL[dtype], atol=TOL[dtype]["atol"] * max(1.0, float(r.abs().max())))
        torch.testing.assert_close(g, r, **tol, msg=name)


@pytest.mark.parametrize("reset", ["subtract", "zero", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("estimator", [ST(), IWST(0.5), AGR(0.7), Relaxed(0.5)], ids=lambda e: e.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("per_unit", [False, True], ids=["scalar", "per_unit"])
def test_kernels_match_the_torch_loop(monkeypatch, calls, reset, detach, estimator, dtype, per_unit):
    problem = _problem(dtype, per_unit)
    got = _run(True, monkeypatch, problem, reset, detach, estimator)
    assert calls["lif_forward"] == calls["lif_backward"] == 1
    ref = _run(False, monkeypatch, problem, reset, detach, estimator)
    assert calls["lif_forward"] == calls["lif_backward"] == 1  # the switch took the torch loop
    _assert_same(got, ref, dtype)


@pytest.mark.parametrize("estimator", [ST(), AGR(0.5)], ids=lambda e: e.name)
@pytest.mark.parametrize("reset, detach", [("subtract", False), ("zero", False), ("zero", True)])
def test_kernels_match_with_logistic_noise_conv_shapes_and_no_membrane_gradient(monkeypatch, calls, reset, detach, estimator):
    """``[T, B, C, H, W]`` with a per-channel ``β``/``ϑ`` ``[C, 1, 1]``; only the spikes reach the loss."""
    problem = _problem(torch.float64, True, noise="logistic", shape=(9, 3, 4, 2, 5))
    got = _run(True, monkeypatch, problem, reset, detach, estimator, noise="logistic", use_mem=False)
    ref = _run(False, monkeypatch, problem, reset, detach, estimator, noise="logistic", use_mem=False)
    assert calls["lif_backward"] == 1
    _assert_same(got, ref, torch.float64)


@pytest.mark.parametrize("case", ["no variance", "learned sigma_b"])
def test_a_scale_given_to_the_kernels_keeps_float32_membranes_bit_for_bit(monkeypatch, calls, case):
    """Without a variance (scale from the constants) or with a learned ``σ_b`` torch forms the scale
    and the kernels take it: the float32 membranes are then the torch loop's, bit for bit."""
    mu, var, eps, beta, thr, mem0, spk0, g_spk, g_mem = _problem(torch.float32, True)
    sigma_b = torch.tensor(0.3, requires_grad=True) if case == "learned sigma_b" else None
    p = StochasticLIFParameters(beta, thr, 0.4, 1e-3, "subtract", False, get_noise("gaussian"), IWST(0.5), sigma_b=sigma_b)
    out = []
    for kernel in (True, False):
        monkeypatch.setattr(neurons, "CPU_KERNELS", kernel)
        spk, mem, _ = stochastic_lif_sequence(mu, None if sigma_b is None else var, p, state=StochasticLIFState(mem0, spk0), eps=eps)
        inputs = [mu, beta, thr] + ([var, sigma_b] if sigma_b is not None else [])
        out.append((spk, mem, torch.autograd.grad((spk * g_spk).sum() + (mem * g_mem).sum(), inputs)))
    assert calls["lif_forward"] == calls["lif_backward"] == 1
    (spk_k, mem_k, grads_k), (spk_t, mem_t, grads_t) = out
    assert 0 < spk_t.mean() < 1 and torch.equal(spk_k, spk_t) and torch.equal(mem_k, mem_t)
    for g, r in zip(grads_k, grads_t):
        torch.testing.assert_close(g, r, **TOL[torch.float32])


def test_the_kernels_compute_the_st_factor_and_the_gaussian_iwst_agr_densities_only():
    pytest.importorskip("numba")
    from sbnn.functional import _kernel_ops

    neurons._cpu_kernels_for(torch.zeros(2, 1), *[torch.zeros(2, 1)] * 2, *[torch.zeros(1)] * 4)  # loads the kernels

    class MyST(ST):
        pass

    theta = torch.tensor([[-2.0, 0.5], [1.0, 40.0]], dtype=torch.float64)
    spikes = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # θ = 40 without a spike: Φ(−40) underflows

    def code(estimator, noise, th=theta):
        return neurons._kernel_factor(estimator, get_noise(noise), lambda: th, spikes, torch.zeros_like(th))[0]

    assert code(ST(), "gaussian") == _kernel_ops.FACTOR_ST_GAUSSIAN
    assert code(ST(), "logistic") == _kernel_ops.FACTOR_ST_LOGISTIC
    assert code(IWST(0.5), "gaussian") == _kernel_ops.FACTOR_IWST_GAUSSIAN
    assert code(AGR(0.7), "gaussian") == _kernel_ops.FACTOR_AGR_ERFC_ARG  # resolved inside the operator
    # float32: the kernel forms erfc itself, from θ and the spikes (no array from torch)
    theta32, spikes32 = theta.float(), spikes.float()
    for est, expected in ((IWST(0.5), _kernel_ops.FACTOR_IWST_ERFC), (AGR(0.7), _kernel_ops.FACTOR_AGR_ERFC)):
        got = neurons._kernel_factor(est, get_noise("gaussian"), lambda: theta32, spikes32, torch.zeros_like(theta32))
        assert got[0] == expected and got[1] is None
    assert code(MyST(), "gaussian") == code(IWST(0.5), "logistic") == code(Relaxed(0.5), "gaussian") == _kernel_ops.FACTOR_GIVEN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_agr_terms_take_the_ratio_or_the_log_space_factor_where_phi_underflows(dtype):
    """``agr``'s Gaussian terms from ``erfc``'s argument: the ratio ``Φ(στθ/c)/Φ(σθ)`` for the
    kernel, or, when any ``Φ(σθ)`` underflows, torch's whole (log-space) factor."""
    pytest.importorskip("numba")
    from sbnn.functional import _kernel_ops
    from sbnn.functional.estimators import _agr_gaussian_factor, gaussian_erfc_arg

    tau, c = 0.7, math.sqrt(1.0 + 0.7**2)
    spikes = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)
    for theta in (torch.tensor([[-2.0, 0.5], [1.0, 3.0]], dtype=dtype), torch.tensor([[-2.0, 0.5], [1.0, 40.0]], dtype=dtype)):
        arg = gaussian_erfc_arg(theta, spikes)
        code, factor, params = _kernel_ops.agr_gaussian_terms(arg.clone(), spikes, tau, lambda: theta)
        if theta.max() < 40:
            sign = 2.0 * spikes - 1.0
            norm = torch.distributions.Normal(0.0, 1.0)
            expected = norm.cdf(sign * theta * (tau / c)) / norm.cdf(sign * theta)
            assert code == _kernel_ops.FACTOR_RATIO_GAUSSIAN
            torch.testing.assert_close(factor, expected.to(dtype), rtol=1e-5, atol=0)
            assert params[3:] == pytest.approx((0.5 / c**2, 0.5 * math.log(2 * math.pi) + math.log(c)))
        else:  # θ = 40 without a spike: Φ(−40) underflows in both dtypes
            assert code == _kernel_ops.FACTOR_GIVEN and params == ()
            torch.testing.assert_close(factor, _agr_gaussian_factor(theta, spikes, get_noise("gaussian"), tau))
            assert bool(torch.isfinite(factor).all())


@pytest.mark.parametrize("estimator", [IWST(0.5), IWST(0.3, w_max=2.0), AGR(0.7), AGR(2.0)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_in_kernel_iwst_and_agr_factors_match_torchs(monkeypatch, estimator, dtype):
    """The weighted Gaussian codes against the same estimator's factor given by torch (FACTOR_GIVEN)."""
    problem = _problem(dtype, True, shape=(30, 4, 9))
    ops = _kernel_ops_module()
    given, agr_terms, codes = neurons._kernel_factor, ops.agr_gaussian_terms, []

    def recorded(*args):
        out = given(*args)
        codes.append(out[0])
        return out

    def recorded_agr(*args):
        out = agr_terms(*args)
        codes.append(out[0])
        return out

    monkeypatch.setattr(neurons, "_kernel_factor", recorded)
    monkeypatch.setattr(ops, "agr_gaussian_terms", recorded_agr)
    got = _run(True, monkeypatch, problem, "subtract", True, estimator)
    if dtype == torch.float32:  # erfc formed in the kernel
        expected = [ops.FACTOR_IWST_ERFC] if isinstance(estimator, IWST) else [ops.FACTOR_AGR_ERFC]
    else:
        expected = (
            [ops.FACTOR_IWST_GAUSSIAN] if isinstance(estimator, IWST) else [ops.FACTOR_AGR_ERFC_ARG, ops.FACTOR_RATIO_GAUSSIAN]
        )
    assert codes == expected

    def torch_factor(est, noise, theta, spks, eps, erfc_arg=None):
        th = theta()
        return ops.FACTOR_GIVEN, est.factor(th, spks, eps, noise).to(th.dtype), ()

    monkeypatch.setattr(neurons, "_kernel_factor", torch_factor)
    ref = _run(True, monkeypatch, problem, "subtract", True, estimator)
    _assert_same(got, ref, dtype, exact_mem=True)


def _weighted_factor_row(code, theta, spikes, params):
    """The backward kernels' factor row for ``code`` on float32 ``θ`` and spikes ``[N]``."""
    ops = _kernel_ops_module()
    theta = theta.numpy()
    out = np.empty_like(theta)
    constants, params = ops._FACTOR_CONSTANTS[torch.float32], np.array(params, dtype=np.float32)
    kernels._factor_row(theta, code, theta, spikes.numpy(), constants, params, out)
    return torch.from_numpy(out)


def _iwst_params(estimator):
    p = estimator.p
    return (2.0 * (1.0 - p), 2.0 * (2.0 * p - 1.0), estimator.w_max, 0.5, 0.5 * math.log(2.0 * math.pi))


@pytest.mark.parametrize("estimator", [AGR(0.3), AGR(1.0), AGR(3.0), IWST(0.5), IWST(0.2, w_max=1e4)], ids=repr)
def test_the_in_kernel_erfc_factors_are_exact_to_float32_rounding_far_in_the_tail(estimator):
    """``FACTOR_AGR_ERFC`` and ``FACTOR_IWST_ERFC`` against the float64 log-space factors for ``θ``
    up to ±60, where ``Φ(σθ)`` underflows even in float64: the Gaussian factors of the weight and
    of the density cancel, so no element is lost."""
    from sbnn.functional.estimators import _agr_gaussian_factor_logspace, _iwst_factor_logspace

    ops = _kernel_ops_module()
    noise = get_noise("gaussian")
    theta = torch.linspace(-60.0, 60.0, 24001)
    for s in (0.0, 1.0):
        spikes = torch.full_like(theta, s)
        if isinstance(estimator, AGR):
            got = _weighted_factor_row(ops.FACTOR_AGR_ERFC, theta, spikes, ops.agr_factor_params(estimator.tau))
            ref = _agr_gaussian_factor_logspace(theta.double(), spikes.double(), noise, estimator.tau)
        else:
            got = _weighted_factor_row(ops.FACTOR_IWST_ERFC, theta, spikes, _iwst_params(estimator))
            ref = _iwst_factor_logspace(theta.double(), spikes.double(), noise, estimator.p, estimator.w_max)
        got = got.double()
        kept = ref >= torch.finfo(torch.float32).tiny ** 0.5  # the kernels' factor cut
        assert torch.isfinite(got).all() and (got[~kept] == 0).all()
        rel = ((got[kept] - ref[kept]).abs() / ref[kept]).max().item()
        # where σθ > 0 the density is formed directly: its exponent, up to 44 above the cut, rounds
        # in float32 (6e-8 relative), which moves the factor by up to 44·1.2e-7 (measured 5.3e-6)
        assert rel < 1e-5, rel
        # the closed-form branch (σθ ≤ 0) is among them: for agr deep in the tail (Φ(σθ) < 1e-88);
        # iwst's weight reaches w_max within a few σ, where w_max·φ(θ) soon falls below the cut
        deep = -20.0 if isinstance(estimator, AGR) else -2.0
        assert kept[(theta * (2 * s - 1)) < deep].any()


def _kernel_ops_module():
    from sbnn.functional import _kernel_ops

    return _kernel_ops


def test_hand_computed_trajectory_through_the_kernels(monkeypatch, calls):
    """One unit, subtract reset, ``β = 0.5``, ``ϑ = 1``, no noise: ``U = 0.5U + μ − S``."""
    monkeypatch.setattr(neurons, "CPU_KERNELS", True)
    mu = torch.tensor([0.6, 0.8, 0.9, 0.2], dtype=torch.float64).reshape(4, 1, 1)
    p = StochasticLIFParameters(0.5, 1.0, 0.0, 1e-3, "subtract", True, get_noise("gaussian"), ST())
    spk, mem, state = stochastic_lif_sequence(mu, None, p, stochastic=False)
    # U: 0.6; 0.3 + 0.8 = 1.1 (spike); 0.55 + 0.9 − 1 = 0.45; 0.225 + 0.2 = 0.425
    assert mem.flatten().tolist() == pytest.approx([0.6, 1.1, 0.45, 0.425], abs=1e-15)
    assert spk.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]
    assert calls["lif_forward"] == 1
    assert state.mem.item() == mem[-1].item()


def _cases():
    x = torch.zeros(3, 2, 4)
    ok = [torch.ones(3, 2, 4), torch.ones(3, 2, 4), torch.tensor(0.9), torch.ones(4), torch.zeros(2, 4), torch.zeros(2, 4)]
    yield "cpu float32", x, ok, True
    yield "float64", x.double(), [o.double() for o in ok], True
    yield "bfloat16", x.bfloat16(), [o.bfloat16() for o in ok], False
    yield "mixed dtypes", x, [ok[0].double(), *ok[1:]], False
    yield "per-step beta", x, [ok[0], ok[1], torch.full((3, 1, 4), 0.9), *ok[3:]], False
    yield "meta device", x.to("meta"), [o.to("meta") for o in ok], False


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_the_kernels_are_chosen_only_for_cpu_float_inputs_they_support(case):
    _, mu, others, expected = case
    assert (neurons._cpu_kernels_for(mu, *others) is not None) == expected


def test_switch_off_and_compiling_without_operators_take_the_torch_loop(monkeypatch, calls):
    mu, var, eps, beta, thr, mem0, spk0, g_spk, _ = _problem(torch.float32, True)
    p = StochasticLIFParameters(beta, thr, 0.1, 1e-3, "subtract", False, get_noise("gaussian"), ST())
    monkeypatch.setattr(neurons, "CPU_KERNELS", False)
    stochastic_lif_sequence(mu, var, p, eps=eps)[0].backward(g_spk)
    assert calls["lif_forward"] == calls["lif_backward"] == 0
    monkeypatch.setattr(neurons, "CPU_KERNELS", True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    stochastic_lif_sequence(mu, var, p, eps=eps)[0].backward(g_spk)  # compiling: the operators
    assert calls["lif_forward"] == calls["lif_backward"] == 1
    monkeypatch.setattr(_operators, "HAS_CUSTOM_OP", False)  # torch < 2.4: no opaque operators
    stochastic_lif_sequence(mu, var, p, eps=eps)[0].backward(g_spk)
    assert calls["lif_forward"] == calls["lif_backward"] == 1


def test_the_kernels_are_registered_torch_operators():
    if not _operators.HAS_CUSTOM_OP:
        pytest.skip("torch < 2.4 has no torch.library.custom_op")
    for name in ("lif_forward", "lif_theta", "lif_backward", "marginal_variance", "marginal_mean", "reverse_recurrence"):
        assert hasattr(torch.ops.sbnn, name), name
    # the fake (shape-only) implementations: what the compiler traces
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        mu = mode.from_tensor(torch.zeros(5, 2, 3))
        step = mode.from_tensor(torch.zeros(2, 3))
        spks, mems = torch.ops.sbnn.lif_forward(mu, mu, mu, step, step, step, step, 0, True, 0.01, 1.0)
        g = torch.ops.sbnn.lif_backward(
            None, None, None, 1, [], mu, mu, mu, mu, step, step, step, step, 0, True, True, 0.01, 1.0, False, True, True
        )
    assert spks.shape == mems.shape == (5, 2, 3)
    assert [x.shape for x in g] == [(5, 2, 3), (0,), (2, 3), (2, 3)]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("reset, detach", [("subtract", True), ("zero", False)])
def test_a_training_step_is_the_same_under_both_paths(monkeypatch, calls, kind, reset, detach):
    """Same loss and parameter gradients (float64); the spikes decide the same way on both paths."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand((12, 5, 10) if kind == "mlp" else (6, 5, 2, 8, 8), generator=gen) < 0.3).double()
    y = torch.tensor([0, 1, 2, 1, 0])
    neuron = NeuronSettings(reset_mechanism=reset, detach_reset=detach, learn_beta=True, learn_threshold=True)
    torch.manual_seed(1)
    if kind == "mlp":
        net = SpikingMLP(10, (16, 12), 3, neuron=neuron, binary_input=True)
    else:
        net = SpikingConvNet(2, 8, (3,), 3, fc=(5,), neuron=neuron)
    net = net.double()
    net.calibrate(x)
    loss_fn = sbnn.ELBOLoss(n_train=100, kl_weight=0.1)
    out, n_layers = [], 2
    for kernel in (True, False):
        monkeypatch.setattr(neurons, "CPU_KERNELS", kernel)
        calls.update(lif_forward=0, lif_backward=0)
        net.zero_grad()
        torch.manual_seed(2)  # the same noise draws on both paths
        loss = loss_fn(net(x), y, net).loss
        loss.backward()
        out.append((loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
        assert calls["lif_forward"] == calls["lif_backward"] == (n_layers if kernel else 0)
    (loss_k, grads_k), (loss_t, grads_t) = out
    torch.testing.assert_close(loss_k, loss_t, rtol=1e-12, atol=0)
    assert grads_k.keys() == grads_t.keys() and any("beta" in n for n in grads_k)
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-10, atol=1e-12, msg=name)


def test_every_reset_code_is_the_kernels():
    assert neurons._RESET_CODES == {
        "subtract": kernels.RESET_SUBTRACT, "zero": kernels.RESET_ZERO, "none": kernels.RESET_NONE,
    }
    assert set(neurons._RESET_CODES) == set(neurons.RESET_MECHANISMS)


def _marginal_run(
    kernel, monkeypatch, reset, detach, dtype, *, var_kind="full", noise="gaussian", leak=False, learned_sigma_b=True,
    estimator=AGR(0.5),
):
    """The marginal model's outputs and the gradients of every input, with per-unit ``β``/``ϑ`` and a learned ``σ_b``
    (unless ``learned_sigma_b`` is false)."""
    monkeypatch.setattr(neurons, "CPU_KERNELS", kernel)
    gen = torch.Generator().manual_seed(5)
    t, b, n = 20, 4, 6
    kw = dict(dtype=dtype)
    mu = (0.6 * torch.randn(t, b, n, generator=gen, **kw) + 0.4).requires_grad_()
    leaf_var = None
    if var_kind == "full":
        leaf_var = (0.2 * torch.rand(t, b, n, generator=gen, **kw)).requires_grad_()
    elif var_kind == "shared":  # one variance per position, shared by the batch: the compact path
        leaf_var = (0.2 * torch.rand(t, 1, n, generator=gen, **kw)).requires_grad_()
    var = None if leaf_var is None else leaf_var.expand(t, b, n)
    eps = get_noise(noise).sample(torch.Size([t, b, n]), like=mu.detach(), generator=gen)
    beta = torch.linspace(0.6, 0.95, n, **kw).requires_grad_()
    thr = torch.linspace(0.8, 1.2, n, **kw).requires_grad_()
    sigma_b = torch.tensor(0.3, **kw).requires_grad_() if learned_sigma_b else None
    mem0 = (0.5 * torch.randn(b, n, generator=gen, **kw)).requires_grad_()
    spk0 = (torch.rand(b, n, generator=gen, **kw) < 0.5).to(dtype).requires_grad_()
    var0 = (0.1 * torch.rand(b, n, generator=gen, **kw)).requires_grad_()
    p = StochasticLIFParameters(
        beta, thr, 0.1, 1e-3, reset, detach, get_noise(noise), estimator, membrane_noise="marginal",
        sigma_b=sigma_b, reset_leak=leak,
    )
    spk, mem, state = stochastic_lif_sequence(mu, var, p, state=StochasticLIFState(mem0, spk0, var0), eps=eps)
    g_spk, g_mem = torch.randn(t, b, n, generator=gen, **kw), torch.randn(t, b, n, generator=gen, **kw)
    leaves = [x for x in (mu, leaf_var, beta, thr, sigma_b, mem0, spk0, var0) if x is not None]
    objective = (spk * g_spk).sum() + (mem * g_mem).sum() + state.mem.sum() + state.var.sum()
    return spk, mem, torch.autograd.grad(objective, leaves, allow_unused=True)


@pytest.mark.parametrize("reset", ["subtract", "none"])
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "case",
    [
        dict(), dict(var_kind="shared"), dict(var_kind=None, noise="logistic"), dict(leak=True),
        # no σ_b, per-unit variance: with a detached reset the whole backward is one kernel
        dict(learned_sigma_b=False), dict(learned_sigma_b=False, estimator=ST()),
        dict(learned_sigma_b=False, var_kind=None, noise="logistic", estimator=ST()),
    ],
    ids=["full_var", "shared_var", "no_var_logistic", "reset_leak", "no_sigma_b", "no_sigma_b_st", "no_var_logistic_st"],
)
def test_marginal_forward_kernels_match_the_torch_loop(monkeypatch, calls, reset, detach, dtype, case):
    if case.get("leak") and reset != "subtract":
        pytest.skip("the leaked reset is a subtract reset")
    got = _marginal_run(True, monkeypatch, reset, detach, dtype, **case)
    assert calls["marginal_mean"] == 1
    fused = (detach or reset == "none") and case.get("learned_sigma_b") is False
    assert calls["marginal_backward"] == int(fused)
    assert calls["reverse_recurrence"] == (0 if fused else 2 if detach or reset == "none" else 1)  # gM (detached) and gV
    ref = _marginal_run(False, monkeypatch, reset, detach, dtype, **case)
    assert calls["marginal_mean"] == 1 and calls["reverse_recurrence"] <= 2
    assert 0 < ref[0].mean() < 1
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    for g, r in zip(got[2], ref[2]):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, **TOL[dtype])


def test_marginal_zero_reset_keeps_the_torch_loop(monkeypatch, calls):
    """``√V`` sits inside the zero reset's recurrence, and torch's ``sqrt`` is not a kernel's: no kernel."""
    _marginal_run(True, monkeypatch, "zero", True, torch.float64)
    assert calls["marginal_mean"] == calls["reverse_recurrence"] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
def test_the_vectorised_exp_is_within_a_few_ulp_of_numpy(dtype):
    from numba import njit

    @njit
    def run(x, c, out):
        for i in range(x.size):
            out[i] = kernels._exp_nonpositive(x[i], c)

    lo = math.log(np.finfo(dtype).tiny) + 1.0
    x = np.concatenate([np.linspace(lo, 0.0, 20001), [lo, 0.0, -1e-30, -0.5 * math.log(2.0), -math.log(2.0), -1.5]]).astype(dtype)
    out = np.empty_like(x)
    run(x, kernels.factor_constants(dtype, 0.0, 0.0, 0.0), out)  # exp reads only its own constants (and 1)
    ref = np.exp(x.astype(np.float64))
    ulp = np.finfo(dtype).eps
    assert np.max(np.abs(out / ref - 1.0)) <= 4 * ulp
    assert out[-5] == 1.0  # exp(0)


def test_factors_below_the_cut_count_as_zero():
    """A factor of safe_exp's floor (e·tiny) gives the same gradients as a factor of 0: the kernel
    cuts it (products with it would be subnormal numbers, ~100× slower)."""
    from sbnn.functional import _kernel_ops as ops

    mu, var, eps, beta, thr, mem0, spk0, g_spk, g_mem = (t.detach() for t in _problem(torch.float32, True))
    beta, thr = beta.expand(mem0.shape), thr.expand(mem0.shape)  # the operator takes one step's shape
    scale = torch.sqrt(var + 0.01)
    mems = torch.randn_like(mu)
    spks = (mems >= 1).float()
    factor = torch.rand_like(mu)
    far = torch.rand_like(mu) < 0.5
    floor = math.e * torch.finfo(torch.float32).tiny

    def grads(f):
        return ops.lif_backward(
            g_spk, g_mem, f, ops.FACTOR_GIVEN, [], scale, eps, mems, spks, beta, thr, mem0, spk0,
            0, False, False, 0.0, 1.0, True, True, True,
        )

    tiny, zero = grads(torch.where(far, floor, factor)), grads(torch.where(far, 0.0, factor))
    assert all(torch.equal(a, b) for a, b in zip(tiny, zero))
    assert not torch.equal(zero[0], grads(factor)[0])  # the factor is read


@pytest.mark.parametrize("reset", ["subtract", "none"])
def test_the_fused_marginal_backward_takes_the_drive_gradient(monkeypatch, calls, reset):
    """The drive's ``θ`` (rebuilt from the scale output, as the auxiliary losses read it) sends a
    gradient into the scale: the one-kernel backward adds it as the torch backward does."""
    gen = torch.Generator().manual_seed(11)
    t, b, n = 15, 3, 5
    mu = (0.6 * torch.randn(t, b, n, generator=gen, dtype=torch.float64) + 0.4).requires_grad_()
    var = (0.2 * torch.rand(t, b, n, generator=gen, dtype=torch.float64)).requires_grad_()
    eps = torch.randn(t, b, n, generator=gen, dtype=torch.float64)
    beta = torch.linspace(0.6, 0.95, n, dtype=torch.float64).requires_grad_()
    p = StochasticLIFParameters(beta, 1.0, 0.1, 1e-3, reset, True, get_noise("gaussian"), ST(), membrane_noise="marginal")
    out = []
    for kernel in (True, False):
        monkeypatch.setattr(neurons, "CPU_KERNELS", kernel)
        spk, mem, _, drive = stochastic_lif_sequence(mu, var, p, eps=eps, return_drive=True)
        objective = spk.sum() + (drive.theta * torch.linspace(-1, 1, n, dtype=torch.float64)).sum() + mem.square().sum()
        out.append(torch.autograd.grad(objective, [mu, var, beta]))
    assert calls["marginal_backward"] == 1
    for g, r in zip(*out):
        torch.testing.assert_close(g, r, **TOL[torch.float64])


@pytest.mark.parametrize("estimator", [IWST(0.4), AGR(0.7)], ids=repr)
def test_the_marginal_backward_forms_iwst_and_agr_in_float32_as_torch_does(monkeypatch, calls, estimator):
    """The marginal node's kernel with the in-kernel ``erfc`` codes against torch's whole factor."""
    gen = torch.Generator().manual_seed(12)
    t, b, n = 25, 4, 9
    mu = (0.6 * torch.randn(t, b, n, generator=gen) + 0.4).requires_grad_()
    var = (0.2 * torch.rand(t, b, n, generator=gen)).requires_grad_()
    eps = torch.randn(t, b, n, generator=gen)
    beta = torch.linspace(0.6, 0.95, n).requires_grad_()
    p = StochasticLIFParameters(
        beta, 1.0, 0.1, 1e-3, "subtract", True, get_noise("gaussian"), estimator, membrane_noise="marginal"
    )
    ops, given, codes = _kernel_ops_module(), neurons._kernel_factor, []

    def recorded(*args, **kwargs):
        out = given(*args, **kwargs)
        codes.append(out[0])
        return out

    def torch_factor(est, noise, theta, spks, eps, erfc_arg=None):
        th = theta()
        return ops.FACTOR_GIVEN, est.factor(th, spks, eps, noise).to(th.dtype), ()

    out = []
    for factor in (recorded, torch_factor):
        monkeypatch.setattr(neurons, "_kernel_factor", factor)
        spk, mem, _ = stochastic_lif_sequence(mu, var, p, eps=eps)
        out.append(torch.autograd.grad((spk * torch.linspace(-1, 1, n)).sum() + mem.square().sum(), [mu, var, beta]))
    assert calls["marginal_backward"] == 2
    assert codes == [ops.FACTOR_IWST_ERFC if isinstance(estimator, IWST) else ops.FACTOR_AGR_ERFC]
    for g, r in zip(*out):
        torch.testing.assert_close(g, r, **TOL[torch.float32])


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("estimator", [ST(), IWST(0.5)], ids=lambda e: e.name)
@pytest.mark.parametrize("chunks", [2, 3])
def test_the_parallel_kernels_give_the_serial_numbers(monkeypatch, reset, estimator, chunks):
    """Units split into ranges run in parallel: spikes, membranes and every gradient bit for bit."""
    from sbnn.functional import _kernel_ops

    problem = _problem(torch.float32, True, shape=(12, 3, 37))  # 111 units: ranges of 64 + 47, or 48 + 48 + 15
    serial = _run(True, monkeypatch, problem, reset, False, estimator)
    used = []
    for name in ("lif_forward_parallel", "lif_backward_parallel"):
        original = getattr(kernels, name)

        def spy(*args, _name=name, _original=original):
            used.append((_name, args[-1]))
            return _original(*args)

        monkeypatch.setattr(kernels, name, spy)
    monkeypatch.setattr(_kernel_ops, "parallel_chunks", lambda n_ranges, work: chunks)
    parallel = _run(True, monkeypatch, problem, reset, False, estimator)
    assert used == [("lif_forward_parallel", chunks), ("lif_backward_parallel", chunks)]
    (spk, mem, grads), (ref_spk, ref_mem, ref_grads) = parallel, serial
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem)
    for g, r in zip(grads, ref_grads):
        assert (g is None and r is None) or torch.equal(g, r)


def test_parallel_ranges_cover_the_units_on_whole_vectors():
    for n, n_chunks, align in [(111, 2, 16), (111, 3, 16), (8192, 2, 16), (5, 4, 16), (16, 3, 16), (100, 3, 1)]:
        bounds = [kernels._chunk(c, n_chunks, n, align) for c in range(n_chunks)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all((lo % align == 0 or lo == n) and lo <= hi for lo, hi in bounds)  # empty ranges at the end
    assert [kernels._chunk(c, 2, 100, 1) for c in range(2)] == [(0, 50), (50, 100)]


def test_parallel_chunks_follow_torchs_thread_count(monkeypatch):
    from sbnn.functional import _kernel_ops

    import numba

    threads = numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(_kernel_ops, "_LAYER_POOLED", True)  # OpenMP or TBB, whatever this machine has
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert _kernel_ops.parallel_chunks(8192, 10**6) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert _kernel_ops.parallel_chunks(8192, _kernel_ops.PARALLEL_MIN_WORK - 1) == 1  # too little work
    assert _kernel_ops.parallel_chunks(16 * min(64, threads) - 1, 10**6) == 1  # ranges too short
    assert _kernel_ops.parallel_chunks(8192, _kernel_ops.PARALLEL_MIN_WORK) == (min(64, threads) if threads > 1 else 1)


def test_a_forked_child_runs_the_serial_kernels(monkeypatch):
    from sbnn.functional import _kernel_ops

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_kernel_ops.numba.config, "NUMBA_NUM_THREADS", 2)
    monkeypatch.setattr(_kernel_ops, "_POOL_PID", None)
    monkeypatch.setattr(_kernel_ops, "_LAYER_POOLED", True)  # OpenMP or TBB, whatever this machine has
    assert _kernel_ops.parallel_chunks(8192, 10**6) == 2
    monkeypatch.setattr(_kernel_ops.os, "getpid", lambda: -1)  # as if forked after the pool started
    assert _kernel_ops.parallel_chunks(8192, 10**6) == 1


def test_the_theta_kernel_gives_erfcs_signed_argument():
    """``lif_theta`` with the spikes and ``k``: ``−σθ·k`` (``σ = 2S − 1``), what ``gaussian_erfc_arg`` forms."""
    from sbnn.functional import _kernel_ops as ops
    from sbnn.functional.estimators import gaussian_erfc_arg

    mu, var, eps, beta, thr, mem0, spk0, _, _ = (t.detach() for t in _problem(torch.float64, True))
    mems = torch.randn_like(mu)
    spks = (mems >= 1).to(mu.dtype)
    thr = thr.expand(mem0.shape)
    theta = ops.lif_theta(mems, var, eps, thr, True, 0.01, 1.0)
    signed = ops.lif_theta(mems, var, eps, thr, True, 0.01, 1.0, spks, math.sqrt(0.5))
    torch.testing.assert_close(signed, gaussian_erfc_arg(theta, spks), rtol=1e-15, atol=0)
    assert torch.equal(signed.abs(), (theta * math.sqrt(0.5)).abs())


def test_without_a_thread_pool_layer_the_kernels_stay_serial(monkeypatch):
    """Numba's workqueue fallback made the parallel kernels slower than the serial ones."""
    from sbnn.functional import _kernel_ops

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_kernel_ops.numba.config, "NUMBA_NUM_THREADS", 2)
    monkeypatch.setattr(_kernel_ops, "_POOL_PID", None)
    monkeypatch.setattr(_kernel_ops, "_LAYER_POOLED", None)
    monkeypatch.setattr(_kernel_ops.numba, "threading_layer", lambda: "workqueue")
    assert _kernel_ops.parallel_chunks(8192, 10**6) == 1
    monkeypatch.setattr(_kernel_ops, "_LAYER_POOLED", None)
    monkeypatch.setattr(_kernel_ops.numba, "threading_layer", lambda: "omp")
    assert _kernel_ops.parallel_chunks(8192, 10**6) == 2

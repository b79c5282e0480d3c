"""NIR export/import: round trips, and agreement with snnTorch's and Norse's own NIR code.

Identical spikes are expected where the semantics match exactly: zero reset, scales that are
powers of two (so every float32 partial sum of ``±α`` is exact whatever the summation order), and
for Norse additionally ``β = 0`` (Norse's NIR import ignores ``R``, so its input gain is
``dt/τ = 1 − β`` instead of 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from sbnn.export import to_graph  # noqa: E402
from sbnn.interop.nir import NIRConversionError, from_nir, graph_from_nir, to_nir  # noqa: E402
from sbnn.kernels.engine import Engine  # noqa: E402
from sbnn.kernels.graph import LIF, Conv2d, Dense, Graph, MaxPool2d, MembraneReadout, Synapses  # noqa: E402
from sbnn.models import SpikingMLP  # noqa: E402
from sbnn.modes import evaluation, reset  # noqa: E402
from sbnn.models import LayerSettings, NeuronSettings, SpikingConvNet, SpikingRecurrentNet  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _signs(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1, 1)


def _assert_graphs_equal(a: Graph, b: Graph) -> None:
    assert a.input_shape == b.input_shape
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes):
        assert type(x) is type(y)
        if isinstance(x, MaxPool2d):
            assert x == y
            continue
        for sx, sy in ((x.synapses, y.synapses), (getattr(x, "recurrent", None), getattr(y, "recurrent", None))):
            if sx is None:
                assert sy is None
                continue
            np.testing.assert_array_equal(sx.sign, sy.sign)
            np.testing.assert_array_equal(sx.alpha, sy.alpha)
            assert (sx.bias is None) == (sy.bias is None)
            if sx.bias is not None:
                np.testing.assert_array_equal(sx.bias, sy.bias)
        if isinstance(x.neuron, LIF):
            np.testing.assert_array_equal(x.neuron.beta, y.neuron.beta)
            np.testing.assert_array_equal(x.neuron.threshold, y.neuron.threshold)
            assert x.neuron.reset == y.neuron.reset
        else:
            assert x.neuron.beta == y.neuron.beta
        if isinstance(x, Conv2d):
            assert (x.in_shape, x.stride, x.padding, x.dilation) == (y.in_shape, y.stride, y.padding, y.dilation)


def _write_read(graph, tmp_path):
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    return nir.read(path)


# -- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("readout", ["membrane", "spike_count"])
def test_mlp_round_trip_reproduces_the_mode_network_bit_for_bit(tmp_path, readout):
    torch.manual_seed(0)
    net = SpikingMLP(7, [6, 5], 3, neuron=NeuronSettings(reset_mechanism="zero", beta=0.8, threshold=0.7), layer=LayerSettings(bias=True), readout=readout)
    back = from_nir(_write_read(to_nir(net), tmp_path))
    assert type(back) is SpikingMLP
    _assert_graphs_equal(to_graph(net), to_graph(back))
    x = (torch.rand(12, 4, 7) < 0.5).float()
    with evaluation(net, "mode"), evaluation(back, "mode"):
        a, b = net(x), reset(back)(x)
    assert torch.equal(a, b)


def test_recurrent_round_trip_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    net = SpikingRecurrentNet(6, [5, 4], 3, neuron=NeuronSettings(reset_mechanism="zero", beta=0.9))
    ng = _write_read(to_nir(net), tmp_path)
    assert ("lif0", "rec0") in ng.edges and ("rec0", "lif0") in ng.edges
    back = from_nir(ng)
    assert type(back) is SpikingRecurrentNet
    _assert_graphs_equal(to_graph(net), to_graph(back))
    x = (torch.rand(10, 3, 6) < 0.5).float()
    with evaluation(net, "mode"), evaluation(back, "mode"):
        assert torch.equal(net(x), back(x))


def test_conv_round_trip_graph_and_engine(tmp_path):
    torch.manual_seed(2)
    net = SpikingConvNet(2, 8, channels=(3,), fc=(6,), num_classes=4, neuron=NeuronSettings(reset_mechanism="zero"), pool_type="max")
    graph = to_graph(net)
    ng = _write_read(to_nir(graph), tmp_path)
    assert {"conv0", "pool1", "pool1_or", "flatten2"} <= set(ng.nodes)
    back = graph_from_nir(ng)
    _assert_graphs_equal(graph, back)
    x = (np.random.default_rng(0).random((6, 2, 2, 8, 8)) < 0.3).astype(np.uint8)
    np.testing.assert_array_equal(Engine(graph).run(x).output, Engine(back).run(x).output)


def test_reset_none_exports_as_li_then_threshold_and_returns(rng):
    g = Graph((5,), (Dense(Synapses(_signs(rng, 4, 5), [0.5]), LIF([0.9, 0.5, 0.0, 0.25], [1.0], "none"),
                           Synapses(_signs(rng, 4, 4), [0.25])),
                     Dense(Synapses(_signs(rng, 2, 4), [1.0]), MembraneReadout(0.95))))
    ng = to_nir(g)
    assert type(ng.nodes["li0"]).__name__ == "LI" and type(ng.nodes["lif0_spike"]).__name__ == "Threshold"
    assert ("lif0_spike", "rec0") in ng.edges and ("rec0", "li0") in ng.edges
    _assert_graphs_equal(g, graph_from_nir(ng))


def test_threshold_is_the_float32_just_below(rng):
    g = Graph((3,), (Dense(Synapses(_signs(rng, 2, 3), [1.0]), LIF([0.5], [1.0], "zero")),))
    lif = to_nir(g).nodes["lif0"]
    assert np.float32(lif.v_threshold[0]) == np.nextafter(np.float32(1.0), np.float32(0))
    # an input of exactly ϑ fires in sbnn (U ≥ ϑ) and under NIR's v > θ
    ones = Graph((1,), (Dense(Synapses(np.ones((1, 1)), [1.0]), LIF([0.0], [1.0], "zero")),))
    assert Engine(ones).run(np.ones((1, 1, 1))).output.tolist() == [[1]]
    assert np.float32(1.0) > np.float32(to_nir(ones).nodes["lif0"].v_threshold[0])


def test_beta_one_exports_as_integrate_and_fire(rng):
    g = Graph((3,), (Dense(Synapses(_signs(rng, 2, 3), [0.5]), LIF([1.0], [1.0], "zero")),))
    node = to_nir(g, dt=1e-3).nodes["lif0"]
    assert type(node).__name__ == "IF"
    np.testing.assert_allclose(node.r, 1e3)
    _assert_graphs_equal(g, graph_from_nir(to_nir(g, dt=1e-3), dt=1e-3))


# -- refusals --------------------------------------------------------------------------------------
def test_subtract_reset_is_refused_naming_the_setting_and_the_exact_choices():
    net = SpikingMLP(4, [3], 2)  # sbnn's default reset is subtract
    with pytest.raises(NIRConversionError, match=r"graph node 0.*reset_mechanism='subtract'.*'zero'.*'none'"):
        to_nir(net)


def test_mixed_beta_one_is_refused(rng):
    g = Graph((3,), (Dense(Synapses(_signs(rng, 2, 3), [0.5]), LIF([1.0, 0.5], [1.0], "zero")),))
    with pytest.raises(NIRConversionError, match="β = 1 for some units"):
        to_nir(g)


def test_bad_dt():
    with pytest.raises(ValueError, match="dt"):
        to_nir(Graph((1,), (Dense(Synapses(np.ones((1, 1)), [1.0]), LIF([0.5], [1.0], "zero")),)), dt=0.0)


def _lif(n, **kw):
    p = dict(tau=np.full(n, 2e-4), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n))
    p.update(kw)
    return nir.LIF(**p)


def _chain(*pairs, shape=(3,)):
    nodes = {"input": nir.Input(input_type=np.array(shape))}
    edges, prev = [], "input"
    for name, node in pairs:
        nodes[name] = node
        edges.append((prev, name))
        prev = name
    nodes["output"] = nir.Output(output_type=np.array([2]))
    edges.append((prev, "output"))
    return nodes, edges


def test_import_refuses_unsupported_nodes_by_name():
    cuba = nir.CubaLIF(tau_syn=np.ones(2), tau_mem=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2))
    nodes, edges = _chain(("fc", nir.Linear(weight=np.ones((2, 3)))), ("syn", cuba))
    with pytest.raises(NIRConversionError, match=r"node 'syn' \(CubaLIF\): not supported"):
        graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_import_refuses_inconsistent_shapes():
    nodes, edges = _chain(("fc", nir.Linear(weight=np.ones((2, 4)))), ("lif", _lif(2)))
    with pytest.raises(NIRConversionError, match=r"node 'fc' \(Linear\): weight \(2, 4\) does not take the 3 inputs"):
        graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_import_refuses_non_finite_parameters():
    nodes, edges = _chain(("fc", nir.Linear(weight=np.ones((2, 3)))), ("lif", _lif(2, tau=np.array([2e-4, np.nan]))))
    with pytest.raises(NIRConversionError, match=r"node 'lif' \(LIF\): tau has non-finite values"):
        graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_import_refuses_a_cycle_through_several_layers():
    nodes, edges = _chain(("fc0", nir.Linear(weight=np.ones((2, 3)))), ("lif0", _lif(2)),
                          ("fc1", nir.Linear(weight=np.ones((2, 2)))), ("lif1", _lif(2)))
    edges.append(("lif1", "fc1"))  # fc1 now has two inputs: not a self-recurrent layer
    with pytest.raises(NIRConversionError, match=r"node 'fc1' \(Linear\): has 2 incoming edges"):
        graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_import_refuses_a_reset_value_sbnn_lacks():
    nodes, edges = _chain(("fc", nir.Linear(weight=np.ones((2, 3)))), ("lif", _lif(2, v_reset=np.full(2, -0.5))))
    with pytest.raises(NIRConversionError, match=r"node 'lif' \(LIF\): v_reset ≠ 0"):
        graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))


def test_import_folds_gain_and_binarises_real_weights():
    w = np.array([[0.3, -0.1, 0.2], [-0.4, 0.0, 0.4]])
    nodes, edges = _chain(("fc", nir.Linear(weight=w)), ("lif", _lif(2)))  # R·dt/τ = 2·1e-4/2e-4 = 1
    g = graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    syn = g.nodes[0].synapses
    np.testing.assert_array_equal(syn.sign, [[1, -1, 1], [-1, 1, 1]])  # 0 → +1 (ties of sign(λ))
    np.testing.assert_allclose(syn.alpha, [0.2, 0.8 / 3], rtol=1e-6)
    assert g.nodes[0].neuron.beta.tolist() == [0.5]  # β = 1 − dt/τ
    nodes["lif"] = _lif(2, r=np.full(2, 1.0))  # gain 0.5 folds into α
    g = graph_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    np.testing.assert_allclose(g.nodes[0].synapses.alpha, [0.1, 0.4 / 3], rtol=1e-6)


def test_from_nir_confidence_sets_lambda():
    torch.manual_seed(3)
    net = SpikingMLP(4, [3], 2, neuron=NeuronSettings(reset_mechanism="zero"))
    back = from_nir(to_nir(net), confidence=0.75)
    lam = back.layers[0].lam.detach()
    torch.testing.assert_close(torch.sigmoid(2 * lam.abs()), torch.full_like(lam, 0.75))
    with pytest.raises(ValueError, match="confidence"):
        from_nir(to_nir(net), confidence=1.0)


# -- other libraries' code -------------------------------------------------------------------------
def _exact_graph(rng, beta: float) -> Graph:
    """Two zero-reset LIF layers with power-of-two scales and bias: every float32 sum is exact."""
    return Graph((12,), (
        Dense(Synapses(_signs(rng, 10, 12), [0.5], rng.integers(-2, 3, 10) * 0.25), LIF([beta], [1.0], "zero")),
        Dense(Synapses(_signs(rng, 4, 10), [0.25]), LIF([beta], [0.5], "zero")),
    ))


@pytest.mark.parametrize("beta", [0.0, 0.75, 0.5])
def test_snntorch_import_spikes_equal_sbnn(rng, tmp_path, beta):
    import_from_nir = pytest.importorskip("snntorch.import_nir").import_from_nir
    g = _exact_graph(rng, beta)
    x = (rng.random((20, 3, 12)) < 0.4).astype(np.float32)
    ref = Engine(g).run(x, record=True).spikes[-1]
    assert ref.sum() > 0
    net = import_from_nir(_write_read(to_nir(g), tmp_path))  # snnTorch hard-codes dt = 1e-4 = DEFAULT_DT
    with torch.no_grad():
        out = torch.stack([net(torch.from_numpy(x[t]))[0] for t in range(len(x))]).numpy()
    np.testing.assert_array_equal(out, ref)


def _norse_run(ng, x, dt=1e-4):
    norse = pytest.importorskip("norse.torch")
    net = norse.from_nir(ng, dt=dt, ignore_warnings=True)
    state, outs = None, []
    with torch.no_grad():
        for t in range(len(x)):
            out, state = net(torch.from_numpy(x[t]), state)
            outs.append(out)
    return torch.stack(outs).numpy()


def test_norse_import_spikes_equal_sbnn_for_binary_neurons(rng, tmp_path):
    g = _exact_graph(rng, 0.0)
    x = (rng.random((20, 3, 12)) < 0.4).astype(np.float32)
    ref = Engine(g).run(x, record=True).spikes[-1]
    assert ref.sum() > 0
    np.testing.assert_array_equal(_norse_run(_write_read(to_nir(g), tmp_path), x), ref)


def test_norse_import_drops_r_so_its_input_gain_is_one_minus_beta(rng):
    """Documented difference: Norse's LIFBox integrates dt/τ·(I − v), ignoring NIR's R = τ/dt.

    Its spikes therefore equal those of the sbnn network whose scales and biases are multiplied
    by 1 − β (here 0.5, so the products stay exact).
    """
    g = _exact_graph(rng, 0.5)
    x = (rng.random((20, 3, 12)) < 0.6).astype(np.float32)
    damped = Graph(g.input_shape, tuple(
        Dense(Synapses(n.synapses.sign, n.synapses.alpha * 0.5, None if n.synapses.bias is None else n.synapses.bias * 0.5), n.neuron)
        for n in g.nodes
    ))
    out = _norse_run(to_nir(g), x)
    np.testing.assert_array_equal(out, Engine(damped).run(x, record=True).spikes[-1])
    assert not np.array_equal(out, Engine(g).run(x, record=True).spikes[-1])


def test_snntorch_exported_network_runs_equal_in_sbnn(rng):
    """snnTorch → NIR (snnTorch's exporter) → sbnn, for ±α weights and zero reset.

    snnTorch's exporter writes v_reset = 0 whatever the Leaky's reset_mechanism (so a default
    "subtract" Leaky would be silently changed); the network here uses "zero", which it expresses.
    """
    snn = pytest.importorskip("snntorch")
    export_to_nir = pytest.importorskip("snntorch.export_nir").export_to_nir
    fc0, fc1 = torch.nn.Linear(8, 6), torch.nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        fc0.weight.copy_(torch.from_numpy(_signs(rng, 6, 8) * 0.5))
        fc0.bias.copy_(torch.from_numpy(rng.integers(-2, 3, 6) * 0.25))
        fc1.weight.copy_(torch.from_numpy(_signs(rng, 3, 6) * 0.25))
    # per-neuron β and ϑ: with scalars, snnTorch's exporter writes 0-d LIF parameters and nir's type
    # check then fails ("type mismatch: 0.output: [[6]] -> 1.input: []"), upstream
    # jeshraghian/snntorch#410 (reported for Synaptic; Leaky with scalar β has the same defect)
    lif0 = snn.Leaky(beta=torch.full((6,), 0.75), threshold=torch.full((6,), 1.0), reset_mechanism="zero",
                     init_hidden=True, reset_delay=False)
    lif1 = snn.Leaky(beta=torch.full((3,), 0.5), threshold=torch.full((3,), 0.5), reset_mechanism="zero",
                     init_hidden=True, reset_delay=False)
    model = torch.nn.Sequential(fc0, lif0, fc1, lif1)
    # a batch axis in sample_data breaks nir's type check ("input.output: [[1 8]] -> 0.input: [[8]]")
    ng = export_to_nir(model, torch.zeros(8))
    g = graph_from_nir(ng)
    assert [n.neuron.reset for n in g.nodes] == ["zero", "zero"]
    x = (rng.random((16, 2, 8)) < 0.5).astype(np.float32)
    pytest.importorskip("snntorch.utils").reset(model)
    with torch.no_grad():
        ref = torch.stack([model(torch.from_numpy(x[t])) for t in range(len(x))]).numpy()
    assert ref.sum() > 0
    np.testing.assert_array_equal(Engine(g).run(x, record=True).spikes[-1], ref)


# -- sbnn-export --format nir ----------------------------------------------------------------------
def _checkpoint(tmp_path, reset_mechanism: str):
    from sbnn.tasks import SpikingClassificationTask

    torch.manual_seed(4)
    net = SpikingMLP(6, [5], 3, neuron=NeuronSettings(reset_mechanism=reset_mechanism))
    run_dir = tmp_path / reset_mechanism
    run_dir.mkdir()
    ckpt = run_dir / "last.ckpt"
    torch.save({"state_dict": SpikingClassificationTask(net, train_size=10).state_dict()}, ckpt)
    (run_dir / "config.yaml").write_text(
        "model:\n  class_path: sbnn.tasks.SpikingClassificationTask\n  init_args:\n    network:\n"
        "      class_path: sbnn.models.SpikingMLP\n      init_args:\n        in_features: 6\n"
        f"        hidden: [5]\n        num_classes: 3\n        neuron:\n          reset_mechanism: {reset_mechanism}\n"
    )
    return net, ckpt


def test_sbnn_export_format_nir_console_script(tmp_path):
    import shutil
    import subprocess

    net, ckpt = _checkpoint(tmp_path, "zero")
    exe = shutil.which("sbnn-export") or pytest.skip("sbnn-export is not installed (pip install -e .)")
    out = tmp_path / "net.nir"
    run = subprocess.run([exe, str(ckpt), str(out), "--format", "nir", "--dt", "1e-3"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    _assert_graphs_equal(to_graph(net), graph_from_nir(nir.read(out), dt=1e-3))
    _, bad = _checkpoint(tmp_path, "subtract")
    from sbnn.export import main

    with pytest.raises(SystemExit, match="reset_mechanism='subtract'") as exc:  # in-process: one subprocess is enough
        main([str(bad), str(tmp_path / "x.nir"), "--format", "nir"])
    assert exc.value.code != 0
    assert not (tmp_path / "x.nir").exists()


def test_snntorch_exported_recurrent_network_runs_equal_in_sbnn(rng):
    """snnTorch's RLeaky (all-to-all, zero reset) → its NIR export → sbnn's recurrent layer."""
    snn = pytest.importorskip("snntorch")
    export_to_nir = pytest.importorskip("snntorch.export_nir").export_to_nir
    fc0 = torch.nn.Linear(8, 6, bias=False)
    rleaky = snn.RLeaky(beta=torch.full((6,), 0.75), threshold=torch.full((6,), 1.0), linear_features=6,
                        reset_mechanism="zero", init_hidden=True, reset_delay=False)
    with torch.no_grad():
        fc0.weight.copy_(torch.from_numpy(_signs(rng, 6, 8) * 0.5))
        rleaky.recurrent.weight.copy_(torch.from_numpy(_signs(rng, 6, 6) * 0.25))
        rleaky.recurrent.bias.zero_()
    model = torch.nn.Sequential(fc0, rleaky)
    g = graph_from_nir(export_to_nir(model, torch.zeros(8)))
    assert g.nodes[0].recurrent is not None
    x = (rng.random((16, 2, 8)) < 0.5).astype(np.float32)
    pytest.importorskip("snntorch.utils").reset(model)
    with torch.no_grad():
        ref = torch.stack([model(torch.from_numpy(x[t])) for t in range(len(x))]).numpy()
    assert ref.sum() > 0
    np.testing.assert_array_equal(Engine(g).run(x, record=True).spikes[-1], ref)


def test_nested_recurrent_subgraph_is_inlined(rng):
    """A layer wrapped as a nested NIRGraph (Input → LIF ⇄ W_rec → Output) reads as the flat graph."""
    g = Graph((5,), (Dense(Synapses(_signs(rng, 4, 5), [0.5]), LIF([0.5], [1.0], "zero"), Synapses(_signs(rng, 4, 4), [0.25])),))
    flat = to_nir(g)
    sub = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([4])), "lif": flat.nodes["lif0"], "w_rec": flat.nodes["rec0"],
               "output": nir.Output(output_type=np.array([4]))},
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
        type_check=False,
    )
    nested = nir.NIRGraph(
        nodes={"input": flat.nodes["input"], "fc0": flat.nodes["fc0"], "layer": sub, "output": flat.nodes["output"]},
        edges=[("input", "fc0"), ("fc0", "layer"), ("layer", "output")],
        type_check=False,
    )
    _assert_graphs_equal(g, graph_from_nir(nested))

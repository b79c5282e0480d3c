"""Spike inputs as indices end to end: models, data modules, tasks and the CLI.

A model whose first layer is linear takes the :class:`SpikeIndices` of a binary input and must
give the dense input's logits, spikes and parameter gradients (same noise: the RNG is reseeded
before each pass; float64, so that no spike flips on rounding). The dense reference runs with the
gather path off (dense matmuls). The loaders' ``input_format="indices"`` must hand out exactly
``spike_indices`` of the dense batch.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sbnn
from sbnn import GaussianLinear
from sbnn.data import DigitsDataModule, RandmanDataModule, SHDDataModule, spike_indices_collate, time_major_collate
from sbnn.data.spike_index import IndexCollate, batch_spike_indices
from sbnn.functional.sparse import SpikeIndices, spike_indices
from sbnn.layers import gather_path
from sbnn.models import (
    CalibrationSettings,
    LayerSettings,
    NeuronSettings,
    ResidualSpikingMLP,
    SpikingConvNet,
    SpikingMLP,
    SpikingRecurrentNet,
    SpikingResNet,
)
from sbnn.tasks import SpikingClassificationTask
from sbnn.training.evaluation import predict_probabilities

T, B, N = 12, 3, 30
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _spikes(gen: torch.Generator, shape=(T, B, N), rate: float = 0.15) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) < rate).double()


def _run(net, x, y, seed: int = 7):
    """Logits, spikes and every parameter's gradient of one noisy pass (RNG reseeded first)."""
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits, spikes = net.forward_with_spikes(x)
    loss = F.cross_entropy(logits, y) + sum(s.sum() for s in spikes) * 1e-3
    if loss.requires_grad:  # a drawn Gaussian network ("mc") holds no parameter in its graph
        loss.backward()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()}
    return logits.detach(), [s.detach() for s in spikes], grads


@contextlib.contextmanager
def _gathering(net):
    """Every layer that can gathers, whatever the density (these test batches are too small for "auto")."""
    gaussian = [m for m in net.modules() if isinstance(m, GaussianLinear)]
    with gather_path(net, "always"):
        for m in gaussian:
            m.gather = "always"
        try:
            yield
        finally:
            for m in gaussian:
                del m.gather


def _assert_same(net, x_dense, y, *, exact: bool = False, grads: bool = True):
    with gather_path(net, "never"):
        ref = _run(net, x_dense, y)
    with _gathering(net):
        got = _run(net, spike_indices(x_dense), y)
    check = torch.testing.assert_close if not exact else (lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0))
    check(got[0], ref[0])
    assert len(got[1]) == len(ref[1]) and len(got[1]) > 0
    for a, b in zip(got[1], ref[1]):
        assert torch.equal(a, b)  # identical spikes: the membranes differ by rounding at most
    assert got[2].keys() == ref[2].keys()
    with_grad = 0
    for name in ref[2]:
        a, b = got[2][name], ref[2][name]
        assert (a is None) == (b is None), name
        if b is not None:
            with_grad += 1
            torch.testing.assert_close(a, b, msg=lambda m: f"{name}: {m}")
    assert (with_grad > 0) == grads
    return ref


def _labels(gen: torch.Generator, k: int = 4) -> torch.Tensor:
    return torch.randint(0, k, (B,), generator=gen)


def _calibrated(net, x):
    net.calibrate(x)
    return net


# -- models: outputs and gradients equal to the dense input's --------------------------------------
@pytest.mark.parametrize("weights", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("estimator", ["st", "iwst", "agr"])
def test_mlp_indices_equal_dense(gen, estimator, weights):
    torch.manual_seed(0)
    net = SpikingMLP(N, (16, 8), 4, binary_input=True, neuron=NeuronSettings(estimator=estimator),
                     layer=LayerSettings(weights=weights)).double()
    x = _spikes(gen)
    _assert_same(_calibrated(net, x), x, _labels(gen))


@pytest.mark.parametrize(
    "layer",
    [
        dict(time_affine_steps=T),
        dict(time_affine_steps=T + 5, time_affine_variance=False),
        dict(time_affine_steps=T, time_batch_norm=True),
        dict(time_affine_steps=T, weights="gaussian"),
    ],
    ids=["affine", "affine-mean-only", "batch-norm", "affine-gaussian"],
)
def test_mlp_with_time_affine_indices_equal_dense(gen, layer):
    torch.manual_seed(1)
    net = SpikingMLP(N, (16,), 4, binary_input=True, layer=LayerSettings(**layer)).double()
    x = _spikes(gen)
    net = _calibrated(net, x)
    with torch.no_grad():  # gains and biases away from their identity start, so that they matter
        for m in net.modules():
            if isinstance(m, sbnn.models.TimeAffine):
                m.gain.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    _assert_same(net, x, _labels(gen))


@pytest.mark.parametrize("weights", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("spike_grad", [0.0, 1.0])
def test_recurrent_indices_equal_dense(gen, weights, spike_grad):
    torch.manual_seed(2)
    net = SpikingRecurrentNet(N, (16, 12), 4, recurrent_spike_grad=spike_grad, layer=LayerSettings(weights=weights)).double()
    x = _spikes(gen)
    _assert_same(_calibrated(net, x), x, _labels(gen))


def test_recurrent_with_shared_time_affine_and_spike_count_readout_equal_dense(gen):
    torch.manual_seed(3)
    net = SpikingRecurrentNet(N, (16,), 4, readout="spike_count",
                              layer=LayerSettings(time_affine_steps=T, time_affine_recurrent="shared")).double()
    x = _spikes(gen)
    _assert_same(_calibrated(net, x), x, _labels(gen))


@pytest.mark.parametrize("shortcut", ["membrane", "spike"])
def test_residual_mlp_indices_equal_dense(gen, shortcut):
    torch.manual_seed(4)
    net = ResidualSpikingMLP(N, 4, depth=4, width=16, shortcut=shortcut, binary_input=True).double()
    x = _spikes(gen)
    _assert_same(_calibrated(net, x), x, _labels(gen))


@pytest.mark.parametrize("mode", ["mode", "mean", "mc"])
@pytest.mark.parametrize("weights", ["bernoulli", "gaussian"])
def test_deterministic_modes_equal_dense(gen, mode, weights):
    torch.manual_seed(5)
    net = SpikingMLP(N, (16,), 4, binary_input=True, layer=LayerSettings(weights=weights)).double()
    x = _spikes(gen)
    net = _calibrated(net, x)
    sbnn.set_mode(net, mode, generator=gen)  # "mc": one drawn network, used by both inputs
    # ±1 weights in `mode`: integer sums, bit-identical
    _assert_same(net, x, _labels(gen), exact=mode == "mode" and weights == "bernoulli",
                 grads=not (mode == "mc" and weights == "gaussian"))


@pytest.mark.parametrize(
    "rate, steps, choice, gathers",
    [(0.02, 100, "auto", True), (0.3, 100, "auto", False), (0.02, 4, "auto", False),
     (0.3, 4, "always", True), (0.02, 100, "never", False)],
    ids=["sparse", "dense", "few-rows", "always", "never"],
)
def test_first_layer_gathers_from_indices_only_where_it_pays(gen, monkeypatch, rate, steps, choice, gathers):
    net = SpikingMLP(N, (8,), 4, binary_input=True)
    first, seen = net.layers[0], []
    moments = first.moments

    def spy(x, **kwargs):
        seen.append(type(x))
        return moments(x, **kwargs)

    monkeypatch.setattr(first, "moments", spy)
    x = (torch.rand(steps, 32, N, generator=gen) < rate).float()  # 32·steps rows: 3200 at 100 steps
    torch.manual_seed(0)
    with torch.no_grad(), gather_path(net, choice):
        out = net(spike_indices(x))
        torch.manual_seed(0)
        ref = net(x)
    assert seen == [SpikeIndices if gathers else torch.Tensor, torch.Tensor]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_mlp_without_hidden_layers_takes_indices(gen):
    torch.manual_seed(6)
    net = SpikingMLP(N, (), 4, binary_input=True).double()
    x = _spikes(gen)
    net = _calibrated(net, x)
    torch.manual_seed(0)
    ref = net(x)
    torch.manual_seed(0)
    torch.testing.assert_close(net(spike_indices(x)), ref)


def test_calibration_from_indices_equals_dense(gen):
    x = _spikes(gen)
    nets = []
    for inp in (x, spike_indices(x)):
        torch.manual_seed(8)
        net = SpikingRecurrentNet(N, (16,), 4).double()
        rates = net.calibrate(inp)
        nets.append((net, rates))
    assert nets[0][1] == nets[1][1]
    for (k, a), b in zip(nets[0][0].state_dict().items(), nets[1][0].state_dict().values()):
        assert torch.equal(a, b), k


def test_gaussian_linear_moments_from_indices(gen):
    torch.manual_seed(9)
    layer = GaussianLinear(N, 7).double()
    x = _spikes(gen, (T * B, N))
    for mode in ("sample", "mode", "mc"):  # "mc": the fixed mode with one drawn weight
        sbnn.set_mode(layer, mode, generator=gen)
        dense, sparse = layer.moments(x, binary=True), layer.moments(spike_indices(x))
        torch.testing.assert_close(sparse.mean, dense.mean)
        if mode == "sample":
            assert torch.equal(sparse.var, dense.var)  # σ² times an exact count
        else:
            assert sparse.var is None and dense.var is None
    square = GaussianLinear(N, N, zero_diagonal=True)
    with pytest.raises(ValueError, match="zero-diagonal.*to_dense"):
        square.moments(spike_indices(x.float()))


# -- bad input -------------------------------------------------------------------------------------
def _good(gen) -> SpikeIndices:
    return spike_indices(_spikes(gen).float())


@pytest.mark.parametrize(
    "bad, needle",
    [
        (lambda i: SpikeIndices(i.rows, i.cols, i.offsets, (T, B, N + 1)), r"expected \[T, B, 30\]"),
        (lambda i: SpikeIndices(i.rows, i.cols, i.offsets, (T * B, N)), r"shape \(36, 30\) given; expected the shape \[T, B, 30\]"),
        (lambda i: SpikeIndices(i.rows, i.cols, i.offsets[:-1], i.shape), "offsets has 35 entries"),
        (lambda i: SpikeIndices(i.rows, i.cols[:-1], i.offsets, i.shape), "must pair up"),
        (lambda i: SpikeIndices(i.rows, i.cols.int(), i.offsets, i.shape), "cols must be a 1-D int64"),
        (lambda i: SpikeIndices(i.rows, i.cols + N, i.offsets, i.shape), r"outside \[0, 30\)"),
    ],
    ids=["width", "rank", "offsets", "lengths", "dtype", "range"],
)
def test_bad_indices_are_refused_before_any_work(gen, bad, needle):
    net = SpikingMLP(N, (8,), 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for call in (net, net.calibrate):
        with pytest.raises(ValueError, match=needle):
            call(bad(_good(gen)))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "net",
    [
        lambda: SpikingConvNet(2, 8, (4,), 3, fc=()),
        lambda: SpikingResNet(2, 4, depth=8, widths=(4, 4, 4), input_size=(8, 8)),
    ],
    ids=["convnet", "resnet"],
)
def test_conv_models_refuse_indices_and_say_to_pass_dense_frames(gen, net):
    model = net()
    idx = _good(gen)
    for call in (model, model.calibrate):
        with pytest.raises(ValueError, match="takes dense time-major frames.*to_dense"):
            call(idx)


def test_non_binary_batch_with_index_format_is_refused():
    counts = [(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor(0))]
    with pytest.raises(ValueError, match="binary spikes.*input_format='dense'"):
        spike_indices_collate(counts)
    with pytest.raises(ValueError, match=r"\[T, B, N\] float batches"):
        batch_spike_indices(torch.zeros(2, 3, 4, 5))


def test_bad_input_format_and_counts_with_indices_are_refused_at_construction(tmp_path):
    with pytest.raises(ValueError, match="input_format must be one of"):
        RandmanDataModule(input_format="sparse")
    with pytest.raises(ValueError, match="binary=False keeps spike counts; set binary=True"):
        SHDDataModule(root=str(tmp_path), binary=False, input_format="indices")


# -- data: the collate and the data modules --------------------------------------------------------
def test_collate_equals_spike_indices_of_the_dense_batch(gen):
    items = [((torch.rand(T, N, generator=gen) < 0.2).float(), torch.tensor(i)) for i in range(5)]
    dense, y_dense = time_major_collate(items)
    idx, y = spike_indices_collate(items)
    ref = spike_indices(dense)
    assert idx.shape == (T, 5, N) == ref.shape
    for a, b in zip(idx[:3], ref[:3]):
        assert torch.equal(a, b)
    assert torch.equal(y, y_dense)
    # rows are time-major flattened: row t·B + b holds item b's step t
    assert torch.equal(idx.to_dense(), dense)


@pytest.mark.parametrize("fill", ["zeros", "ones", "first-row"])
def test_batch_indices_of_corner_batches_equal_spike_indices(fill):
    x = torch.zeros(4, 3, 5)
    if fill == "ones":
        x += 1
    elif fill == "first-row":
        x[0, 0] = 1
    idx, ref = batch_spike_indices(x), spike_indices(x)
    assert idx.shape == ref.shape and all(torch.equal(a, b) and a.dtype == torch.int64 for a, b in zip(idx[:3], ref[:3]))
    assert torch.equal(idx.to_dense(), x)


def test_index_collate_wraps_a_padding_collate(gen):
    from tonic.collation import PadTensors

    items = [((torch.rand(n, N, generator=gen) < 0.2).float(), i) for i, n in enumerate((4, 7, 5))]
    dense, _ = PadTensors(batch_first=False)(items)
    idx, _ = IndexCollate(PadTensors(batch_first=False))(items)
    assert idx.shape == (7, 3, N)
    assert torch.equal(idx.to_dense(), dense)


@pytest.mark.parametrize("make", [
    # the index batches built in a loader worker process
    lambda fmt: RandmanDataModule(n_train=16, n_val=8, n_test=8, batch_size=4, input_format=fmt,
                                  num_workers=int(fmt == "indices")),
    lambda fmt: DigitsDataModule(n_steps=5, batch_size=8, input_format=fmt),
], ids=["randman", "digits"])
def test_datamodule_index_batches_equal_the_dense_ones(make):
    loaders = []
    for fmt in ("dense", "indices"):
        dm = make(fmt)
        dm.setup()
        loaders.append((dm.train_dataloader(), dm.val_dataloader()))
    for dense_loader, index_loader in zip(*loaders):
        for (x, y), (idx, y2) in zip(dense_loader, index_loader):
            assert isinstance(idx, SpikeIndices) and torch.equal(y, y2)
            ref = spike_indices(x)
            assert idx.shape == ref.shape and all(torch.equal(a, b) for a, b in zip(idx[:3], ref[:3]))


def test_lightning_moves_spike_indices_as_a_batch():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    idx = spike_indices((torch.rand(3, 2, 5) < 0.4).float())
    moved, y = move_data_to_device((idx, torch.tensor([0, 1])), torch.device("cpu"))
    assert isinstance(moved, SpikeIndices) and moved.shape == (3, 2, 5)
    assert all(torch.equal(a, b) for a, b in zip(moved[:3], idx[:3]))


# -- tasks -----------------------------------------------------------------------------------------
def test_task_training_step_and_predictions_equal_dense(gen):
    x = _spikes(gen).float()
    y = _labels(gen)
    torch.manual_seed(10)
    task = SpikingClassificationTask(SpikingMLP(N, (16,), 4, binary_input=True), train_size=100)
    task.network.calibrate(spike_indices(x))
    losses, grads = [], []
    for inp in (x, spike_indices(x)):
        task.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        with gather_path(task.network, "never"):
            loss = task.training_step((inp, y), 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in task.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[1], losses[0])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    dense = predict_probabilities(task.network, x, mc_samples=2)
    sparse = predict_probabilities(task.network, spike_indices(x), mc_samples=2)
    for kind in dense:
        assert torch.equal(dense[kind], sparse[kind]), kind  # evaluation reads the same dense batch
    step = task.predict_step(spike_indices(x), 0)  # a bare SpikeIndices batch is the input, not a pair
    assert set(step) == set(dense)


def test_sbnn_fit_with_index_batches_exits_zero(tmp_path):
    beside = Path(sys.executable).parent / "sbnn"
    cmd = [str(beside)] if beside.is_file() else [sys.executable, "-m", "sbnn.cli"]
    args = [
        "fit", "--config", str(RECIPES / "quickstart.yaml"),
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.n_train", "64", "--data.init_args.n_val", "32", "--data.init_args.n_test", "32",
        "--data.init_args.input_format", "indices",
        "--model.init_args.mc_samples", "2", "--model.init_args.mode_finetune_epochs", "0",
        "--threads", "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "SBNN_DEBUG"}
    proc = subprocess.run([*cmd, *args], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "final test accuracy" in proc.stdout + proc.stderr
    assert list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.parametrize("duration", [1_000_000.0, None], ids=["dense-cache", "padded"])
def test_shd_index_batches_equal_the_dense_ones(tmp_path, duration):
    pytest.importorskip("h5py")
    from sbnn.data._fixtures import write_shd

    root = write_shd(tmp_path / "data", n_train=12, n_test=4)
    batches = []
    for fmt in ("dense", "indices"):
        dm = SHDDataModule(root=str(root), time_window=100_000.0, duration=duration, batch_size=4, download=False,
                           cache_dir=str(tmp_path / f"cache-{fmt}"), input_format=fmt)
        dm.prepare_data()
        dm.setup()
        batches.append(list(dm.train_dataloader()) + list(dm.test_dataloader()))
    assert len(batches[0]) == len(batches[1]) > 0
    for (x, y), (idx, y2) in zip(*batches):
        assert isinstance(idx, SpikeIndices) and idx.shape == tuple(x.shape) and torch.equal(y, y2)
        assert torch.equal(idx.to_dense(), x)

r"""``SpikingClassifier``: the base of every spiking Bayesian classifier in :mod:`sbnn.models`.

A classifier is ``input → stages → readout → logits [B, K]``. The base owns the forward pass,
the data-dependent calibration, the spike bookkeeping and the export to the event-driven engine;
a subclass builds its modules and declares, in :meth:`SpikingClassifier.stages`, the order in
which they run (:mod:`sbnn.models.stages`). Every model takes the same nested settings:

- ``neuron``: :class:`~sbnn.models.NeuronSettings`, the constants of every stochastic LIF;
- ``layer``: :class:`~sbnn.models.LayerSettings`, the options of every weight layer (of either
  family, ``layer.weights``: ±1 Bernoulli or real Gaussian);
- ``calibration``: :class:`~sbnn.models.CalibrationSettings`, the targets of :meth:`calibrate`.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_in_range, check_positive_int
from ..gaussian_layers import GaussianLayer
from ..modes import evaluation
from ..functional.sparse import SpikeIndices
from ..neurons import StochasticLIF
from .index_input import check_spike_indices, dense_input, gathers_from_indices
from .settings import CalibrationSettings, LayerSettings, NeuronSettings, as_settings
from .stages import Readout, Stage
from .time_affine import TimeAffine, attach_time_affines, check_time_steps

__all__ = ["SpikingClassifier", "READOUTS"]

READOUTS = ("membrane", "spike_count")


class SpikingClassifier(nn.Module):
    """Base of the spiking classifiers: forward, calibration and export over declared stages.

    Subclasses call ``super().__init__`` first, build their modules, then :meth:`_build_readout`,
    and implement :meth:`stages` and :meth:`check_input`.

    Args:
        num_classes: number of classes ``K``.
        neuron: constants of every stochastic LIF neuron (a mapping of its fields is accepted).
        layer: options of every Bernoulli layer (or a mapping).
        calibration: targets of :meth:`calibrate` (or a mapping).
        binary_input: the input holds 0/1 spikes (``x² = x`` in the first layer's LRT variance;
            checked on the calibration batch).

    Attributes:
        output: the readout's :class:`~sbnn.BernoulliLinear`.
        output_neuron: the spike-count readout's neurons, or ``None`` (membrane readout).
    """

    output: nn.Module
    output_neuron: StochasticLIF | None
    #: the first layer is linear, so :meth:`forward` also takes a binary input as
    #: :class:`~sbnn.functional.sparse.SpikeIndices` (:meth:`check_index_input`)
    index_input: bool = False

    def __init__(
        self,
        num_classes: int,
        *,
        neuron: NeuronSettings,
        layer: LayerSettings,
        calibration: CalibrationSettings,
        binary_input: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive_int(owner, num_classes=num_classes)
        neuron = as_settings(NeuronSettings, neuron, owner, "neuron")
        layer = as_settings(LayerSettings, layer, owner, "layer")
        calibration = as_settings(CalibrationSettings, calibration, owner, "calibration")
        self.num_classes = num_classes
        self.neuron_settings, self.layer_settings, self.calibration = neuron, layer, calibration
        self.binary_input = bool(binary_input)

    def _build_readout(self, in_features: int, readout: Literal["membrane", "spike_count"], readout_beta: float) -> None:
        """Create ``output`` (and ``output_neuron`` for a spike-count readout)."""
        check_choice("readout", readout, READOUTS)
        check_in_range("readout_beta", readout_beta, 0.0, 1.0)
        self.readout, self.readout_beta = readout, float(readout_beta)
        settings = self.layer_settings
        bias = {} if settings.readout_bias is None else {"bias": settings.readout_bias}
        self.output = settings.linear(in_features, self.num_classes, **bias)
        self.output_neuron = self.neuron_settings.build() if readout == "spike_count" else None
        # the last construction step of every model: the hidden layers exist now
        if settings.time_affine_steps is not None:
            attach_time_affines(
                self, settings.time_affine_steps, exclude=(self.output, *self._shared_affine_layers()),
                scale_variance=settings.time_affine_variance, batch_norm=settings.time_batch_norm,
            )

    def _shared_affine_layers(self) -> tuple[nn.Module, ...]:
        """Layers whose current shares another layer's per-time-step gain and bias (they get none of their own)."""
        return ()

    # -- what a subclass declares ---------------------------------------------------------------
    def stages(self) -> list[Stage]:  # pragma: no cover - interface
        """The hidden path, in order (views over the model's own modules)."""
        raise NotImplementedError

    def check_input(self, x: Tensor, name: str) -> None:  # pragma: no cover - interface
        """Raise ``ValueError`` for an input of the wrong layout; ``name`` leads the message."""
        raise NotImplementedError

    def check_index_input(self, x: SpikeIndices, name: str) -> None:
        """Raise ``ValueError`` for indices the model cannot take; ``name`` leads the message.

        Models with ``index_input`` check the shape ``[T, B, in_features]``
        (:func:`sbnn.models.index_input.check_spike_indices`); the others refuse indices.
        """
        if not self.index_input:
            raise ValueError(
                f"{name} takes dense time-major frames {self.input_shape()} per step, not SpikeIndices: only models whose "
                "first layer is linear (SpikingMLP, SpikingRecurrentNet, ResidualSpikingMLP) gather from indices; pass "
                "the dense tensor (SpikeIndices.to_dense()) or use the data module's input_format='dense'"
            )
        check_spike_indices(x, name, self.input_shape()[0])

    def _check_any_input(self, x: Tensor | SpikeIndices, name: str) -> None:
        if isinstance(x, SpikeIndices):
            self.check_index_input(x, name)
        else:
            self.check_input(x, name)
        check_time_steps(self, x, name)

    def _dense(self, x: SpikeIndices) -> Tensor:
        return dense_input(x, next(self.parameters()))

    def readout_stage(self) -> Readout:
        """The readout as a stage over ``output`` / ``output_neuron``."""
        return Readout(self.output, self.output_neuron, self.readout_beta, noise=self.layer_settings.readout_noise)

    # -- what the base provides -------------------------------------------------------------------
    def forward_with_spikes(self, x: Tensor | SpikeIndices) -> tuple[Tensor, list[Tensor]]:
        """Logits ``[B, K]`` and the spike trains of every hidden stochastic neuron layer, in forward order.

        ``x``: ``[T, B, ...]`` time-major, or (models with ``index_input``) the
        :class:`~sbnn.functional.sparse.SpikeIndices` of a binary ``[T, B, in_features]``, which the
        first layer gathers from where that pays (else they are made dense:
        :func:`~sbnn.models.index_input.gathers_from_indices`); equal to the dense input's result
        within float rounding.
        """
        self._check_any_input(x, type(self).__name__)
        stages = self.stages()
        if isinstance(x, SpikeIndices) and not (stages and gathers_from_indices(getattr(stages[0], "layer", None), x)):
            # above the crossover density the dense matmuls are faster (sbnn.functional.sparse);
            # with no hidden layer the readout is first, whose time-weighted sum reads the dense input
            x = self._dense(x)
        binary, spikes = self.binary_input or isinstance(x, SpikeIndices), []
        for stage in stages:
            x, binary, stage_spikes = stage.forward(x, binary)
            spikes.extend(stage_spikes)
        return self.readout_stage().forward(x, binary), spikes

    def forward(self, x: Tensor | SpikeIndices) -> Tensor:
        """Logits ``[B, K]`` for a time-major input (or its spike indices, see :meth:`forward_with_spikes`)."""
        return self.forward_with_spikes(x)[0]

    @torch.no_grad()
    def calibrate(self, x: Tensor | SpikeIndices) -> list[float]:
        """Data-dependent initialisation of every layer's scale ``α`` on a batch (``docs/design.md §7``).

        Stage by stage, in ``sample`` mode, with the targets of ``self.calibration``: each hidden
        layer's free membrane (``U[t] = βU[t−1] + h[t]``, no reset) gets standard deviation
        ``hidden_gain·ϑ`` (residual branches match the stream they join), then the layer's spikes
        feed the next; the membrane readout's logits get ``readout_std`` (a spike-count output
        layer is treated as hidden). The layers' modes are restored afterwards. Warns when a
        layer then fires at a rate below 0.1 %.

        Args:
            x: a training batch, in the layout of :meth:`forward` (spike indices are made dense
                once, here).

        Returns:
            The firing rates of the hidden neuron layers (and of a spike-count output layer).

        Raises:
            ValueError: for an input of the wrong layout, or values other than 0 and 1 when the
                model was built with ``binary_input=True``.
        """
        name = f"{type(self).__name__}.calibrate"
        self._check_any_input(x, name)
        if isinstance(x, SpikeIndices):
            x = self._dense(x)  # once per run: calibration's moments and statistics read the dense batch
        if self.binary_input and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"{type(self).__name__} was built with binary_input=True but the calibration batch holds values "
                "other than 0 and 1; build it with binary_input=False for counts or real-valued inputs"
            )
        rates: list[float] = []
        binary = self.binary_input
        with evaluation(self, "sample"):
            for stage in self.stages():
                x, binary, stage_rates = stage.calibrate(x, binary, self.calibration)
                rates.extend(stage_rates)
            rates.extend(self.readout_stage().calibrate(x, self.calibration))
        for i, rate in enumerate(rates):
            if rate < 1e-3:
                warnings.warn(
                    f"{name}: layer {i} fires at rate {rate:.2e} after calibration; the network will not learn "
                    "(raise calibration.hidden_gain or check the input activity)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return rates

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one time step of one example (the deployed graph's input)."""
        raise NotImplementedError  # pragma: no cover - interface

    def export_meta(self) -> dict[str, Any]:
        """Metadata stored with the deployed graph."""
        return {"model": type(self).__name__, "binary_input": self.binary_input, "readout": self.readout}

    def export_graph(self):
        """The deployable ``mode`` network as a :class:`sbnn.kernels.graph.Graph`.

        Raises:
            ValueError: for a stage the event-driven engine cannot run (residual blocks,
                average pooling), naming it, or for real-weight (Gaussian-posterior) layers.
        """
        from ..kernels.graph import Graph

        real = [name for name, m in self.named_modules() if isinstance(m, GaussianLayer)]
        if real:
            raise ValueError(
                f"{type(self).__name__} cannot be exported: its layers ({', '.join(real[:3])}"
                f"{', ...' if len(real) > 3 else ''}) have real-valued Gaussian-posterior weights "
                "(layer.weights='gaussian'), and the event-driven engine, its .sbnn file and the NIR export "
                "built from it hold ±1 weights only; the mean network is every layer's weight "
                "(GaussianLayer.mean_weight()), saved with the model's state_dict, or train with "
                "layer.weights='bernoulli' to deploy"
            )

        if any(isinstance(m, TimeAffine) for m in self.modules()):
            raise ValueError(
                f"{type(self).__name__} cannot be exported: the event-driven engine has no per-time-step gain and "
                "bias; train without layer.time_affine_steps to deploy"
            )
        shape = self.input_shape()
        nodes: list = []
        for stage in self.stages():
            try:
                stage_nodes, shape = stage.export(shape)
            except ValueError as err:
                raise ValueError(f"{type(self).__name__} cannot be exported: {err}") from None
            nodes.extend(stage_nodes)
        nodes.extend(self.readout_stage().export())
        return Graph(self.input_shape(), tuple(nodes), self.export_meta())

"""``SpikingRecurrentNet``: a recurrent spiking Bayesian network for spike-train inputs such as SHD."""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn

from .._validation import check_in_range, check_input
from .base import SpikingClassifier
from .mlp import check_sizes
from .settings import CalibrationSettings, LayerSettings, NeuronSettings
from .stages import SpikingStage, Stage

__all__ = ["SpikingRecurrentNet"]


class SpikingRecurrentNet(SpikingClassifier):
    """Recurrent (or feed-forward) spiking Bayesian network for spike-train inputs such as SHD.

    Each hidden layer's neurons get, at step ``t``, the sum of the feed-forward LRT moments of the
    input and the recurrent LRT moments of the layer's own spikes ``S[t−1]``: means add and, the
    two weight sets being independent under the posterior, variances add. Modules, per hidden
    layer ``i``::

        layers[i]     BernoulliLinear   feed-forward weights           (all T steps in one matmul)
        recurrent[i]  BernoulliLinear   recurrent weights S[t-1] -> h  (absent if recurrent=False)
        neurons[i]    StochasticLIF     input moments = layers[i](x)[t] + recurrent[i](S[t-1])
        output        BernoulliLinear   readout weights
        output_neuron StochasticLIF     only for readout="spike_count"

    Args:
        in_features: input channels ``N`` (700 for SHD, fewer after down-sampling).
        hidden: sizes of the hidden spiking layers (at least one).
        num_classes: number of classes ``K``.
        recurrent: add recurrent weights to every hidden layer (``False``: feed-forward).
        neuron: neuron constants (default leak 0.95).
        layer: weight layer options (``bias`` applies to the feed-forward and output layers,
            never to the recurrent ones). With ``weights="gaussian"`` the recurrent matrices have a
            zero diagonal (no self-connection, :class:`~sbnn.GaussianLinear` ``zero_diagonal``).
        calibration: targets of :meth:`calibrate`; ``recurrent_gain`` sets the recurrent
            input's free-membrane std as a fraction of the feed-forward one (our choice:
            recurrence refines, the input drives).
        readout: ``"membrane"`` (time-averaged non-spiking membrane, default) or ``"spike_count"``.
        readout_beta: leak of the readout membrane.
        binary_input: the input holds 0/1 spikes (``x² = x`` in the first layer).
        recurrent_spike_grad: factor on the gradient that flows back through the recurrent
            spikes ``S[t−1]`` (the forward pass is unchanged; the recurrent weights always get
            their gradient ``gμ[t]·S[t−1]ᵀ``). 0 (default) cuts it, 1 is full BPTT through the
            recurrence. Full BPTT multiplies the adjoint at every step by
            ``α W_rec diag(p(θ)/s)``, whose gain exceeds 1 once ``α`` grows in training with
            deterministic neurons (``s = σ0``: a surrogate peak of ≈ 4ϑ⁻¹), and the gradient
            explodes (``docs/recipes/shd.md``, "Why the recurrent spikes carry no gradient").

    Shape:
        - Input: ``[T, B, N]``, time-major, or the :class:`~sbnn.functional.sparse.SpikeIndices`
          of binary spikes ``[T, B, N]`` (the first layer gathers from them).
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingRecurrentNet(20, (16,), 4)
        >>> tuple(net(torch.rand(10, 3, 20).round()).shape)
        (3, 4)
    """

    index_input = True

    def __init__(
        self,
        in_features: int = 700,
        hidden: Sequence[int] = (256,),
        num_classes: int = 20,
        *,
        recurrent: bool = True,
        neuron: NeuronSettings = NeuronSettings(beta=0.95),
        layer: LayerSettings = LayerSettings(),
        calibration: CalibrationSettings = CalibrationSettings(),
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: float = 0.95,
        binary_input: bool = True,
        recurrent_spike_grad: float = 0.0,
    ) -> None:
        hidden = list(hidden)
        check_sizes("SpikingRecurrentNet", in_features=in_features, hidden=hidden, num_classes=num_classes)
        if not hidden:
            raise ValueError("SpikingRecurrentNet: hidden must name at least one layer, e.g. [256]")
        check_in_range("recurrent_spike_grad", recurrent_spike_grad, 0.0, 1.0)
        super().__init__(num_classes, neuron=neuron, layer=layer, calibration=calibration, binary_input=binary_input)
        sizes = [in_features, *hidden]
        self.in_features = in_features
        self.recurrent_spike_grad = float(recurrent_spike_grad)
        self.layers = nn.ModuleList(self.layer_settings.linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        # real-weight recurrent matrices have no self-connection (zero diagonal), as in the SBNN paper
        rec = {"zero_diagonal": True} if self.layer_settings.weights == "gaussian" else {}
        if self.layer_settings.recurrent_self_variance and self.layer_settings.weights == "gaussian":
            rec["self_variance"] = True
        self.recurrent = nn.ModuleList(self.layer_settings.linear(h, h, bias=False, **rec) for h in hidden) if recurrent else None
        self.neurons = nn.ModuleList(self.neuron_settings.build() for _ in hidden)
        self._build_readout(hidden[-1], readout, readout_beta)

    def _shared_affine(self) -> bool:
        return self.recurrent is not None and self.layer_settings.time_affine_recurrent == "shared"

    def _shared_affine_layers(self) -> tuple[nn.Module, ...]:
        # time_affine_recurrent="shared": the recurrent current takes the feed-forward layer's gain
        return tuple(self.recurrent) if self._shared_affine() else ()

    def stages(self) -> list[Stage]:
        recurrent = self.recurrent if self.recurrent is not None else [None] * len(self.layers)
        shared = self._shared_affine()
        return [
            SpikingStage(layer, neuron, recurrent=rec, recurrent_spike_grad=self.recurrent_spike_grad, shared_affine=shared)
            for layer, neuron, rec in zip(self.layers, self.neurons, recurrent)
        ]

    def check_input(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(3,), size=self.in_features, what="([T, B, in_features], time-major)")

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_features,)

    def export_graph(self):
        # the net computes μ[t] = ff(x)[t] + rec(S[t−1]) and skips the recurrent term at t = 0; the
        # engine adds rec(S[−1] = 0) = fl(0·α_r) + b_r there, which is +0 only without a recurrent bias
        for i, rec in enumerate(self.recurrent or []):
            if rec.bias is not None:
                raise ValueError(
                    f"SpikingRecurrentNet: recurrent[{i}] has a bias, which the net adds from t = 1 on but the engine "
                    "at every step; the engine cannot run it exactly (the net never builds one: remove it with "
                    f"net.recurrent[{i}].bias = None, or fold it into layers[{i}].bias)"
                )
        return super().export_graph()

"""``SpikingConvNet``: a convolutional spiking Bayesian network for event frames such as DVS Gesture."""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn

from .._validation import check_choice, check_input
from .base import SpikingClassifier
from .mlp import check_sizes
from .settings import CalibrationSettings, LayerSettings, NeuronSettings
from .stages import Flatten, SpikingStage, Stage

__all__ = ["SpikingConvNet"]


class SpikingConvNet(SpikingClassifier):
    """Convolutional spiking Bayesian network for event frames such as DVS Gesture.

    ``[BernoulliConv2d → StochasticLIF → pool] × len(channels) → flatten →
    [BernoulliLinear → StochasticLIF] × len(fc) → readout``; no normalisation layers. Every
    convolution runs on all ``T`` frames at once (time folded into the batch); only the neurons
    loop over time. Modules: ``convs[i]``, ``conv_neurons[i]``, ``pools[i]``, ``fcs[j]``,
    ``fc_neurons[j]``, ``output`` (and ``output_neuron``).

    Args:
        in_channels: input channels (2 polarities for DVS Gesture).
        input_size: input height and width (an int for square frames), e.g. 32 after 4×
            down-sampling of the 128×128 sensor.
        channels: output channels of the convolution blocks (at least one).
        num_classes: number of classes ``K``.
        kernel_size: convolution kernel (odd; 'same' padding).
        pool: pooling window and stride after every block (1: no pooling).
        pool_type: ``"max"`` (keeps spikes binary: an OR over the window, which deploys as
            bit operations) or ``"avg"``.
        fc: sizes of hidden fully connected spiking layers after the convolutions.
        neuron, layer, calibration, readout, readout_beta: as :class:`~sbnn.models.SpikingMLP`.

    Shape:
        - Input: ``[T, B, C_in, H, W]`` frames (spikes or counts), time-major.
        - Output: logits ``[B, K]``.

    Example:
        >>> net = SpikingConvNet(2, 8, (4,), 3, fc=())
        >>> tuple(net(torch.rand(5, 2, 2, 8, 8).round()).shape)
        (2, 3)
    """

    def __init__(
        self,
        in_channels: int = 2,
        input_size: int | tuple[int, int] = 32,
        channels: Sequence[int] = (32, 64),
        num_classes: int = 11,
        *,
        kernel_size: int = 3,
        pool: int = 2,
        pool_type: Literal["max", "avg"] = "max",
        fc: Sequence[int] = (128,),
        neuron: NeuronSettings = NeuronSettings(),
        layer: LayerSettings = LayerSettings(),
        calibration: CalibrationSettings = CalibrationSettings(),
        readout: Literal["membrane", "spike_count"] = "membrane",
        readout_beta: float = 0.9,
    ) -> None:
        channels, fc = list(channels), list(fc)
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        check_sizes("SpikingConvNet", in_channels=in_channels, input_size=[h, w], channels=channels, fc=fc,
                    num_classes=num_classes, kernel_size=kernel_size, pool=pool)
        if not channels:
            raise ValueError("SpikingConvNet: channels must name at least one convolution block, e.g. [32, 64]")
        if kernel_size % 2 == 0:
            raise ValueError(f"SpikingConvNet: kernel_size must be odd for 'same' padding, got {kernel_size}")
        check_choice("pool_type", pool_type, ("max", "avg"))
        for _ in channels:
            if h < pool or w < pool:
                raise ValueError(
                    f"SpikingConvNet: input_size {input_size} is too small for {len(channels)} blocks pooling by {pool}; "
                    "use fewer channels entries, a smaller pool or a larger input"
                )
            h, w = h // pool, w // pool
        super().__init__(num_classes, neuron=neuron, layer=layer, calibration=calibration)
        self.in_channels, self.input_size, self.pool_type = in_channels, input_size, pool_type
        self.convs = nn.ModuleList(
            self.layer_settings.conv(a, b, kernel_size, padding=kernel_size // 2) for a, b in zip([in_channels, *channels[:-1]], channels)
        )
        self.conv_neurons = nn.ModuleList(self.neuron_settings.build() for _ in channels)
        pool_cls = nn.MaxPool2d if pool_type == "max" else nn.AvgPool2d
        self.pools = nn.ModuleList(pool_cls(pool) if pool > 1 else nn.Identity() for _ in channels)
        sizes = [channels[-1] * h * w, *fc]
        self.fcs = nn.ModuleList(self.layer_settings.linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc_neurons = nn.ModuleList(self.neuron_settings.build() for _ in fc)
        self._build_readout(sizes[-1], readout, readout_beta)

    def _frame_size(self) -> tuple[int, int]:
        return (self.input_size, self.input_size) if isinstance(self.input_size, int) else tuple(self.input_size)

    def stages(self) -> list[Stage]:
        # max pooling keeps spikes 0/1 (an OR over the window); average pooling does not
        binary = self.pool_type == "max"
        convs = [
            SpikingStage(conv, neuron, pool=pool, output_binary=binary)
            for conv, neuron, pool in zip(self.convs, self.conv_neurons, self.pools)
        ]
        return [*convs, Flatten(), *(SpikingStage(fc, neuron) for fc, neuron in zip(self.fcs, self.fc_neurons))]

    def check_input(self, x: Tensor, name: str) -> None:
        check_input(x, name, ndims=(5,), size=self.in_channels, dim=2, what="([T, B, C_in, H, W], time-major)")
        size = self._frame_size()
        if tuple(x.shape[3:]) != size:
            raise ValueError(f"{name} expects frames of size {size}, got shape {tuple(x.shape)}; check the down-sampling")

    def input_shape(self) -> tuple[int, ...]:
        return (self.in_channels, *self._frame_size())

    def export_meta(self) -> dict:
        return {"model": "SpikingConvNet", "pool_type": self.pool_type, "readout": self.readout}

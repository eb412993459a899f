"""MAFNet: MobileNetV1 (width 1.0) with an attention block after every depthwise-separable unit.

Each unit is followed by a channel gate and then a spatial gate, both built from first- and
second-order statistics (mean and standard deviation). A unit whose input and output shapes match
(stride 1, same channel count) also gets an identity shortcut around the unit and its attention.

The channel gate's hidden layer has ``channels // 16`` units: the reduction of 16 is applied to the
channel count C, although the gate's input has 2C values (mean and standard deviation per channel).
"""

import torch
from torch import Tensor, nn

from models.initialization import init_weights
from models.mobilenet_v1 import STEM_CHANNELS, UNITS, DepthwiseSeparable, conv_bn_relu

REDUCTION = 16
SPATIAL_KERNEL = 7
# Added to variances before the square root, so the gradient stays finite on constant inputs.
VARIANCE_EPS = 1e-5


def mean_and_std(x: Tensor, dim) -> tuple[Tensor, Tensor]:
    """Return the mean and the (biased) standard deviation of ``x`` over ``dim``, keeping dimensions."""
    variance, mean = torch.var_mean(x, dim=dim, correction=0, keepdim=True)
    return mean, torch.sqrt(variance + VARIANCE_EPS)


class ChannelGate(nn.Module):
    """Rescale each channel by a sigmoid gate computed from its global mean and standard deviation."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        mean, std = mean_and_std(x, dim=(2, 3))
        gate = self.mlp(torch.cat([mean, std], dim=1).flatten(1))
        return x * gate[:, :, None, None]


class SpatialGate(nn.Module):
    """Rescale each position by a sigmoid gate computed from the mean and standard deviation across channels."""

    def __init__(self, kernel_size: int = SPATIAL_KERNEL):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        mean, std = mean_and_std(x, dim=1)
        gate = torch.sigmoid(self.bn(self.conv(torch.cat([mean, std], dim=1))))
        return x * gate


class AttentionUnit(nn.Module):
    """A depthwise-separable unit, its channel and spatial gates, and an identity shortcut where shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.unit = DepthwiseSeparable(in_channels, out_channels, stride)
        self.channel_gate = ChannelGate(out_channels)
        self.spatial_gate = SpatialGate()
        self.has_shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.spatial_gate(self.channel_gate(self.unit(x)))
        return out + x if self.has_shortcut else out


class MAFNet(nn.Module):
    """MAFNet for ``num_classes`` classes; any input of at least 32x32 pixels works (total stride 32)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [conv_bn_relu(3, STEM_CHANNELS, 3, stride=2)]
        channels = STEM_CHANNELS
        for out_channels, stride in UNITS:
            layers.append(AttentionUnit(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))

"""MobileNetV1 (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", 2017), width multiplier 1.0.

Layer sizes follow Table 1 of the paper. The table marks the second-to-last depthwise convolution as
stride 2 although its input and output are both 7x7, so it is built with stride 1 here.
"""

from torch import Tensor, nn

from models.initialization import init_weights

STEM_CHANNELS = 32

# (output channels, stride) of the 13 depthwise-separable units in Table 1.
UNITS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Return a convolution without bias, batch norm and ReLU; padding keeps the size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """A 3x3 depthwise convolution and a 1x1 pointwise convolution, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(
            conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
            conv_bn_relu(in_channels, out_channels, 1),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride


class MobileNetV1(nn.Module):
    """MobileNetV1 for ``num_classes`` classes; any input of at least 32x32 pixels works (total stride 32)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [conv_bn_relu(3, STEM_CHANNELS, 3, stride=2)]
        channels = STEM_CHANNELS
        for out_channels, stride in UNITS:
            layers.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))

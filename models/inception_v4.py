"""Inception-v4 (Szegedy et al., "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", AAAI 2017).

Layer sizes follow Figures 3 to 9 of the paper: the stem, 4 Inception-A blocks, Reduction-A with
k=192, l=224, m=256, n=384, 7 Inception-B blocks, Reduction-B, 3 Inception-C blocks, global
average pooling and dropout with keep probability 0.8. Convolutions marked "V" in the paper are
unpadded; the others keep the spatial size. A 299x299 input gives 35x35, 17x17 and 8x8 grids; a
224x224 input gives 25x25, 12x12 and 5x5. The unpadded layers need inputs of at least 75x75.
"""

import torch
from torch import Tensor, nn

from models.initialization import init_weights

MIN_INPUT_SIZE = 75
DROPOUT = 0.2


class ConvBN(nn.Sequential):
    """Convolution without bias, batch norm and ReLU. ``padding='same'`` is only valid at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride: int = 1, padding="same"):
        if padding == "same":
            kernel = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = (kernel[0] // 2, kernel[1] // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class Concat(nn.Module):
    """Run parallel branches on the same input and concatenate their outputs along the channels."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def pooled_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return 3x3 average pooling at stride 1 followed by a 1x1 convolution, the pooling branch of blocks A to C."""
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), ConvBN(in_channels, out_channels, 1))


def stem() -> nn.Sequential:
    """Return the stem of Figure 3: 3 input channels to 384 channels, 299x299 to 35x35."""
    return nn.Sequential(
        ConvBN(3, 32, 3, stride=2, padding=0),
        ConvBN(32, 32, 3, padding=0),
        ConvBN(32, 64, 3),
        Concat(nn.MaxPool2d(3, stride=2), ConvBN(64, 96, 3, stride=2, padding=0)),
        Concat(
            nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 96, 3, padding=0)),
            nn.Sequential(ConvBN(160, 64, 1), ConvBN(64, 64, (7, 1)), ConvBN(64, 64, (1, 7)), ConvBN(64, 96, 3, padding=0)),
        ),
        Concat(ConvBN(192, 192, 3, stride=2, padding=0), nn.MaxPool2d(3, stride=2)),
    )


def inception_a() -> Concat:
    """Return the Inception-A block of Figure 4 (384 channels in and out)."""
    return Concat(
        pooled_conv(384, 96),
        ConvBN(384, 96, 1),
        nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3)),
        nn.Sequential(ConvBN(384, 64, 1), ConvBN(64, 96, 3), ConvBN(96, 96, 3)),
    )


def reduction_a(k: int = 192, l: int = 224, m: int = 256, n: int = 384) -> Concat:
    """Return the Reduction-A block of Figure 7 (384 to 384 + n + m channels, half the grid)."""
    return Concat(
        nn.MaxPool2d(3, stride=2),
        ConvBN(384, n, 3, stride=2, padding=0),
        nn.Sequential(ConvBN(384, k, 1), ConvBN(k, l, 3), ConvBN(l, m, 3, stride=2, padding=0)),
    )


def inception_b() -> Concat:
    """Return the Inception-B block of Figure 5 (1024 channels in and out)."""
    return Concat(
        pooled_conv(1024, 128),
        ConvBN(1024, 384, 1),
        nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 224, (1, 7)), ConvBN(224, 256, (7, 1))),
        nn.Sequential(
            ConvBN(1024, 192, 1),
            ConvBN(192, 192, (1, 7)),
            ConvBN(192, 224, (7, 1)),
            ConvBN(224, 224, (1, 7)),
            ConvBN(224, 256, (7, 1)),
        ),
    )


def reduction_b() -> Concat:
    """Return the Reduction-B block of Figure 8 (1024 to 1536 channels, half the grid)."""
    return Concat(
        nn.MaxPool2d(3, stride=2),
        nn.Sequential(ConvBN(1024, 192, 1), ConvBN(192, 192, 3, stride=2, padding=0)),
        nn.Sequential(
            ConvBN(1024, 256, 1),
            ConvBN(256, 256, (1, 7)),
            ConvBN(256, 320, (7, 1)),
            ConvBN(320, 320, 3, stride=2, padding=0),
        ),
    )


class InceptionC(nn.Module):
    """The Inception-C block of Figure 6 (1536 channels in and out), whose 3x3 branches split into 1x3 and 3x1."""

    def __init__(self):
        super().__init__()
        self.pool_branch = pooled_conv(1536, 256)
        self.conv_branch = ConvBN(1536, 256, 1)
        self.split_reduce = ConvBN(1536, 384, 1)
        self.split_1x3 = ConvBN(384, 256, (1, 3))
        self.split_3x1 = ConvBN(384, 256, (3, 1))
        self.deep_reduce = nn.Sequential(ConvBN(1536, 384, 1), ConvBN(384, 448, (1, 3)), ConvBN(448, 512, (3, 1)))
        self.deep_3x1 = ConvBN(512, 256, (3, 1))
        self.deep_1x3 = ConvBN(512, 256, (1, 3))

    def forward(self, x: Tensor) -> Tensor:
        split = self.split_reduce(x)
        deep = self.deep_reduce(x)
        outputs = [
            self.pool_branch(x),
            self.conv_branch(x),
            self.split_1x3(split),
            self.split_3x1(split),
            self.deep_3x1(deep),
            self.deep_1x3(deep),
        ]
        return torch.cat(outputs, dim=1)


class InceptionV4(nn.Module):
    """Inception-v4 for ``num_classes`` classes; inputs must be at least 75x75 pixels."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            stem(),
            *[inception_a() for _ in range(4)],
            reduction_a(),
            *[inception_b() for _ in range(7)],
            reduction_b(),
            *[InceptionC() for _ in range(3)],
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(1536, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(self.dropout(x.flatten(1)))

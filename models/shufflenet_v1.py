"""ShuffleNetV1 (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices", CVPR 2018), 3 groups and width 1.0x.

Layer sizes follow Table 1 of the paper: a 3x3 stride-2 convolution with 24 channels, 3x3 max
pooling, then three stages of 240, 480 and 960 channels with 4, 8 and 4 units. Each unit's
bottleneck has a quarter of the stage's output channels. The first 1x1 convolution of the first
unit is not grouped because its input has only 24 channels.
"""

import torch
from torch import Tensor, nn

from models.initialization import init_weights

GROUPS = 3
STEM_CHANNELS = 24
# (output channels, units) of stages 2, 3 and 4 for 3 groups at width 1.0x.
STAGES: tuple[tuple[int, int], ...] = ((240, 4), (480, 8), (960, 4))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups, so the next grouped convolution mixes them."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 convolution, channel shuffle, 3x3 depthwise convolution and grouped 1x1 convolution.

    With stride 1 the input is added to the result. With stride 2 the input is average-pooled and
    concatenated, so the convolution branch produces ``out_channels - in_channels`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, group_first: bool = True):
        super().__init__()
        self.stride = stride
        self.groups = groups
        bottleneck = out_channels // 4
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if group_first else 1
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, bottleneck, 1, groups=first_groups, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True),
        )
        # The paper applies no ReLU after the depthwise convolution.
        self.depthwise = nn.Sequential(
            nn.Conv2d(bottleneck, bottleneck, 3, stride, padding=1, groups=bottleneck, bias=False),
            nn.BatchNorm2d(bottleneck),
        )
        self.expand = nn.Sequential(
            nn.Conv2d(bottleneck, branch_channels, 1, groups=groups, bias=False),
            nn.BatchNorm2d(branch_channels),
        )
        self.shortcut_pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.shuffle_groups = first_groups

    def forward(self, x: Tensor) -> Tensor:
        out = self.reduce(x)
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = self.expand(self.depthwise(out))
        if self.shortcut_pool is None:
            return torch.relu(out + x)
        return torch.relu(torch.cat([self.shortcut_pool(x), out], dim=1))


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 (3 groups, 1.0x) for ``num_classes`` classes; inputs of at least 32x32 pixels work (total stride 32)."""

    def __init__(self, num_classes: int = 1000, groups: int = GROUPS):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        units = []
        channels = STEM_CHANNELS
        for stage_index, (out_channels, repeats) in enumerate(STAGES):
            for unit_index in range(repeats):
                stride = 2 if unit_index == 0 else 1
                group_first = not (stage_index == 0 and unit_index == 0)
                units.append(ShuffleUnit(channels, out_channels, stride, groups, group_first))
                channels = out_channels
        self.stages = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.classifier(x.flatten(1))

"""A small CNN for 28x28 images: the pretrained network of the Fashion-MNIST demo (about 29,000 parameters)."""

from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FashionMNISTCNN(nn.Module):
    """Three 3x3 convolution stages with 2x2 max pooling (28 -> 14 -> 7 -> 3), then a linear classifier.

    Other input sizes are pooled to the same 3x3 grid, so the network also trains at --image-size 32;
    at 28x28 that pooling does nothing.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16), nn.MaxPool2d(2),
            conv_bn_relu(16, 32), nn.MaxPool2d(2),
            conv_bn_relu(32, 64), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(3),
        )
        self.classifier = nn.Linear(64 * 3 * 3, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))

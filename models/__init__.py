"""The networks that the training scripts can train, by name.

`ARCHITECTURES` maps each name to a builder ``builder(num_classes) -> nn.Module``. The ten reference
networks of the results table are registered here. Other modules may add networks with
`register_architecture`. A network added with ``reference=False`` can be trained by name, but it is
not part of the default list or of `--list-archs`.
"""

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv

from models.inception_v4 import MIN_INPUT_SIZE as INCEPTION_V4_MIN_INPUT_SIZE
from models.inception_v4 import InceptionV4
from models.mafnet import MAFNet
from models.fashion_mnist_cnn import FashionMNISTCNN
from models.mobilenet_v1 import MobileNetV1
from models.shufflenet_v1 import ShuffleNetV1
from utils.errors import UserError

Builder = Callable[[int], nn.Module]

# Networks whose feature maps halve five times with padded layers: a 32x32 input ends as a 1x1 map.
TOTAL_STRIDE = 32

ARCHITECTURES: dict[str, Builder] = {}
MIN_INPUT_SIZES: dict[str, int] = {}
REFERENCE_ARCHITECTURES: list[str] = []


def register_architecture(name: str, builder: Builder, min_input_size: int = TOTAL_STRIDE, reference: bool = False) -> None:
    """Add a network under ``name``; ``reference=True`` also adds it to the default list and `--list-archs`."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is already registered")
    ARCHITECTURES[name] = builder
    MIN_INPUT_SIZES[name] = min_input_size
    if reference:
        REFERENCE_ARCHITECTURES.append(name)


def check_architecture(name: str) -> None:
    """Raise a UserError naming the valid architectures unless ``name`` is registered."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_model(arch: str, num_classes: int) -> nn.Module:
    """Build the network ``arch`` with freshly initialized weights and ``num_classes`` outputs."""
    check_architecture(arch)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    return ARCHITECTURES[arch](num_classes)


def min_input_size(arch: str) -> int:
    """Return the smallest square input side, in pixels, that the network ``arch`` accepts."""
    check_architecture(arch)
    return MIN_INPUT_SIZES[arch]


def count_parameters(arch: str, num_classes: int = 1000) -> int:
    """Count the parameters of ``arch`` without allocating its weights (built on the meta device)."""
    with torch.device("meta"):
        model = build_model(arch, num_classes)
    return sum(parameter.numel() for parameter in model.parameters())


def _googlenet(num_classes: int) -> nn.Module:
    # Without pretrained weights torchvision's defaults would add the two auxiliary classifiers,
    # so they are disabled explicitly and the network returns plain logits.
    return tv.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)


register_architecture("MAFNet", MAFNet, reference=True)
register_architecture("MobileNetV1", MobileNetV1, reference=True)
register_architecture("MobileNetV2", lambda n: tv.mobilenet_v2(weights=None, num_classes=n), reference=True)
register_architecture("MobileNetV3", lambda n: tv.mobilenet_v3_large(weights=None, num_classes=n), reference=True)
register_architecture("ShuffleNetV1", ShuffleNetV1, reference=True)
register_architecture("ShuffleNetV2", lambda n: tv.shufflenet_v2_x1_0(weights=None, num_classes=n), reference=True)
register_architecture("ResNet18", lambda n: tv.resnet18(weights=None, num_classes=n), reference=True)
register_architecture("GoogLeNet", _googlenet, reference=True)
register_architecture("InceptionV4", InceptionV4, min_input_size=INCEPTION_V4_MIN_INPUT_SIZE, reference=True)
register_architecture("VGG16", lambda n: tv.vgg16(weights=None, num_classes=n), reference=True)
# The Fashion-MNIST demo's pretrained network; trainable by name, not part of the reference table.
register_architecture("fashion_mnist_cnn", FashionMNISTCNN, min_input_size=8)

"""The ten reference networks: building, shapes, parameter counts and the registry."""

import pytest
import torch
from torch import nn
from torchvision import models as tv

from models import (
    ARCHITECTURES,
    MIN_INPUT_SIZES,
    REFERENCE_ARCHITECTURES,
    build_model,
    count_parameters,
    min_input_size,
    register_architecture,
)
from models.inception_v4 import InceptionV4
from models.mafnet import AttentionUnit
from models.mobilenet_v1 import UNITS
from models.shufflenet_v1 import channel_shuffle
from utils.errors import UserError
from utils.training import print_architectures

REFERENCE_NAMES = ["MAFNet", "MobileNetV1", "MobileNetV2", "MobileNetV3", "ShuffleNetV1",
                   "ShuffleNetV2", "ResNet18", "GoogLeNet", "InceptionV4", "VGG16"]


def mobilenet_v1_parameters(num_classes: int) -> int:
    """Count MobileNetV1's parameters from Table 1 of its paper: convolutions without bias, batch norm weight and bias."""
    total = 3 * 3 * 3 * 32 + 2 * 32
    for in_channels, (out_channels, _) in zip([32] + [c for c, _ in UNITS], UNITS):
        total += 3 * 3 * in_channels + 2 * in_channels  # depthwise convolution and its batch norm
        total += in_channels * out_channels + 2 * out_channels  # pointwise convolution and its batch norm
    return total + 1024 * num_classes + num_classes


# Parameter counts for 1,000 classes. InceptionV4's rounds to the 42.7M of timm's
# inception_v4.tf_in1k model card, and ShuffleNetV1's to the 1.87M that mmpretrain lists for
# shufflenet-v1-1x (3 groups).
EXPECTED_PARAMETERS = {
    "MobileNetV1": mobilenet_v1_parameters(1000),
    "ShuffleNetV1": 1_865_728,
    "InceptionV4": 42_679_816,
}
# The torchvision networks must match the counts stored with torchvision's ImageNet weights.
TORCHVISION_WEIGHTS = {
    "MobileNetV2": tv.MobileNet_V2_Weights.IMAGENET1K_V1,
    "MobileNetV3": tv.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "ShuffleNetV2": tv.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1,
    "ResNet18": tv.ResNet18_Weights.IMAGENET1K_V1,
    "GoogLeNet": tv.GoogLeNet_Weights.IMAGENET1K_V1,
    "VGG16": tv.VGG16_Weights.IMAGENET1K_V1,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Use one thread: on a small machine shared with other jobs, two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_lists_ten_reference_networks():
    assert REFERENCE_ARCHITECTURES == REFERENCE_NAMES


@pytest.mark.parametrize("arch", REFERENCE_NAMES)
def test_forward_backward_at_min_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5)
    size = min_input_size(arch)
    images = torch.randn(2, 3, size, size)

    logits = model(images)
    logits.sum().backward()

    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 5)
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in gradients)
    assert all(torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("side", [8, 28, 32, 64])
def test_fashion_mnist_cnn_runs_from_its_min_size(side):
    assert min_input_size("fashion_mnist_cnn") == 8
    model = build_model("fashion_mnist_cnn", num_classes=4).eval()
    assert model(torch.randn(2, 3, side, side)).shape == (2, 4)


def test_fashion_cnn_pooling_keeps_28x28():
    # The pooling that admits other sizes must leave the demo network's 28x28 features as they are.
    model = build_model("fashion_mnist_cnn", num_classes=10).eval()
    images = torch.randn(2, 3, 28, 28)
    convolved = model.features[:-1](images)
    assert convolved.shape[-2:] == (3, 3)
    assert torch.equal(model.features(images), convolved)


def test_min_input_sizes():
    expected = {arch: 32 for arch in REFERENCE_NAMES}
    expected["InceptionV4"] = 75
    assert {arch: min_input_size(arch) for arch in REFERENCE_NAMES} == expected


@pytest.mark.parametrize("arch", sorted(EXPECTED_PARAMETERS))
def test_parameter_count(arch):
    assert count_parameters(arch, 1000) == EXPECTED_PARAMETERS[arch]


@pytest.mark.parametrize("arch", sorted(TORCHVISION_WEIGHTS))
def test_torchvision_parameter_count(arch):
    assert count_parameters(arch, 1000) == TORCHVISION_WEIGHTS[arch].meta["num_params"]


def test_mafnet_adds_attention_parameters_to_mobilenet_v1():
    # Per unit with C output channels: Linear(2C, C/16) and Linear(C/16, C) with biases, plus a
    # 2-to-1 7x7 convolution without bias and a one-channel batch norm (weight and bias).
    extra = 0
    for channels, _ in UNITS:
        hidden = channels // 16
        extra += 2 * channels * hidden + hidden + hidden * channels + channels
        extra += 2 * 7 * 7 + 2
    assert count_parameters("MAFNet") == EXPECTED_PARAMETERS["MobileNetV1"] + extra


def test_mafnet_shortcuts_where_shapes_match():
    model = build_model("MAFNet", 10)
    units = [m for m in model.modules() if isinstance(m, AttentionUnit)]

    # Stride-1 units whose input has as many channels as the output: 128, 256, 5 x 512 and 1024.
    assert [u.has_shortcut for u in units] == [False, False, True, False, True, False, True, True, True, True, True, False, True]


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)

    shuffled = channel_shuffle(x, groups=3)

    assert shuffled.flatten().tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]


@pytest.mark.parametrize("side, grid", [(299, 8), (224, 5), (75, 1)])
def test_inception_v4_final_grid(side, grid):
    with torch.device("meta"):
        model = InceptionV4(10).eval()
        features = model.features(torch.empty(1, 3, side, side))

    assert features.shape == (1, 1536, grid, grid)


def test_inception_v4_rejects_input_below_75():
    with torch.device("meta"):
        model = InceptionV4(10).eval()
        with pytest.raises(RuntimeError):
            model.features(torch.empty(1, 3, 74, 74))


def test_unknown_architecture_lists_names():
    with pytest.raises(UserError) as error:
        build_model("ResNet19", 10)

    assert "ResNet19" in str(error.value)
    assert "ResNet18" in str(error.value)


def test_extra_architecture_stays_out_of_reference_list():
    register_architecture("tiny_test_cnn", lambda n: nn.Sequential(nn.Flatten(), nn.LazyLinear(n)), min_input_size=8)
    try:
        assert "tiny_test_cnn" in ARCHITECTURES
        assert "tiny_test_cnn" not in REFERENCE_ARCHITECTURES
        assert build_model("tiny_test_cnn", 3)(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    finally:
        del ARCHITECTURES["tiny_test_cnn"], MIN_INPUT_SIZES["tiny_test_cnn"]


def test_register_rejects_duplicate_name():
    with pytest.raises(ValueError):
        register_architecture("ResNet18", lambda n: nn.Identity())


def test_list_archs_prints_ten_counts(capsys):
    print_architectures()

    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == REFERENCE_NAMES
    assert "11.69M parameters (11,689,512)" in lines[REFERENCE_NAMES.index("ResNet18")]

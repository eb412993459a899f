"""Fast paths against the plain torchvision pipelines they replace: same outcomes, same geometry.

The baselines are written as a user would without this project: PIL decoding, then
`torchvision.transforms` per image.
"""

import contextlib
import os
import threading

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

from tests.helpers import PHOTOS, photo, write_jpeg
from utils.image_decoding import JPEG_HEADER_LIMIT, JPEG_START_BYTES, BatchNormalizer, EvalTransform, Preprocessing, decode_jpeg_file, jpeg_frame, open_rgb, read_jpeg_start, resized_size
from utils.networks import IMAGENET_MEAN, IMAGENET_STD, load_network
from utils.train_data import DraftedRandomResizedCrop, _draft_for_box
from utils.validation_pass import fold_batch_norms

CPU = torch.device("cpu")


def baseline_eval(mean, std) -> T.Compose:
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(mean, std)])


@pytest.fixture(scope="module")
def lite_probabilities():
    """EfficientNet-Lite0's probabilities for the real photos, with the project's and the baseline's preprocessing."""
    network = load_network("efficientnet_lite0", None)
    preprocessing = network.preprocessing
    transform = EvalTransform(preprocessing)
    normalize = BatchNormalizer(preprocessing.mean, preprocessing.std, CPU)
    baseline = baseline_eval(preprocessing.mean, preprocessing.std)
    paths = [path for path, _ in PHOTOS.values()]
    project_batch = normalize(torch.stack([transform(path) for path in paths]))
    baseline_batch = torch.stack([baseline(Image.open(path).convert("RGB")) for path in paths])
    with torch.inference_mode():
        project = network.module(project_batch).softmax(dim=1)
        reference = network.module(baseline_batch).softmax(dim=1)
    return dict(zip(PHOTOS, project)), dict(zip(PHOTOS, reference))


@pytest.mark.parametrize("name", list(PHOTOS))
def test_photo_top1_matches_baseline(lite_probabilities, name):
    project, reference = lite_probabilities

    assert project[name].argmax() == reference[name].argmax()


@pytest.mark.parametrize("name", list(PHOTOS))
def test_photo_top5_overlaps_baseline(lite_probabilities, name):
    project, reference = lite_probabilities

    shared = set(project[name].topk(5).indices.tolist()) & set(reference[name].topk(5).indices.tolist())

    assert len(shared) >= 4


def test_eval_transform_pixels_match_torchvision():
    preprocessing = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    path = PHOTOS["chelsea"][0]
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(Image.open(path).convert("RGB"))

    pixels = EvalTransform(preprocessing)(path)

    assert pixels.dtype == torch.uint8
    assert pixels.shape == (3, 224, 224)
    assert (pixels.int() - reference.int()).abs().max() <= 1


def test_resamplers_agree_within_one_level():
    path = PHOTOS["coffee"][0]
    torch_pixels = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, resampler="torch"))(path)
    pil_pixels = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, resampler="pil"))(path)

    assert (torch_pixels.int() - pil_pixels.int()).abs().max() <= 1


@pytest.mark.parametrize(("size", "same_as"), [((500, 375), "torch"), ((1024, 768), "pil")])
def test_auto_resampler_follows_decoder(tmp_path, size, same_as):
    # torchvision decodes the 500x375 JPEG and torch resizes it. PIL drafts the 1024x768 JPEG and resizes it.
    path = write_jpeg(tmp_path / "photo.jpg", photo("chelsea").resize(size))
    auto = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))
    chosen = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, resampler=same_as))

    assert (auto.decode_plain_jpeg(path) is not None) == (same_as == "torch")
    assert torch.equal(auto(path), chosen(path))


def test_draft_skipped_below_gap(tmp_path):
    # 512x600 would draft to exactly 256x300 at 1/2, with no resize left to filter the image.
    path = write_jpeg(tmp_path / "exact.jpg", photo("grace_hopper").resize((512, 600)))
    transform = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))

    with Image.open(path) as image:
        assert transform.draft_request(image, 256, 300, orientation=1) is None


def test_draft_used_above_gap(tmp_path):
    # 1.5 times the resized 256x300 is 384x450, which a 1/2 reduction of 800x938 still covers.
    path = write_jpeg(tmp_path / "large.jpg", photo("grace_hopper").resize((800, 938)))
    transform = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))

    with Image.open(path) as image:
        assert transform.draft_request(image, 256, 300, orientation=1) == (384, 450)


def test_decode_jpeg_file_matches_pil():
    path = PHOTOS["rocket"][0]

    pixels = decode_jpeg_file(path)

    assert torch.equal(pixels.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(path).convert("RGB"))))


def test_decode_jpeg_file_rejects_truncated_file(tmp_path):
    path = write_jpeg(tmp_path / "whole.jpg", photo("rocket"))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(path.read_bytes()[:2000])

    assert decode_jpeg_file(truncated) is None


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("reuse_output", [False, True])
def test_batch_normalizer_matches_formula(channels_last, reuse_output):
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalize = BatchNormalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, channels_last, reuse_output)

    first = normalize(images).clone()
    smaller = normalize(images[:2])

    assert torch.allclose(first, (images / 255 - mean) / std, atol=1e-5)
    assert torch.allclose(smaller, first[:2])
    assert first.dtype == torch.float32


# Training crops

@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory):
    """A 1024x768 JPEG of a real photo, large enough for DCT-scaled decoding of 64-pixel crops."""
    return write_jpeg(tmp_path_factory.mktemp("train") / "chelsea.jpg", photo("chelsea").resize((1024, 768), Image.Resampling.BICUBIC))


def reference_crop(size: int) -> v2.Compose:
    """The training augmentation of the project's `Preprocessing.train_transform`, before normalization."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])


def test_drafted_crop_shape_and_type(large_jpeg):
    crop = DraftedRandomResizedCrop(64)(str(large_jpeg))

    assert crop.shape == (3, 64, 64)
    assert crop.dtype == torch.uint8


def test_drafted_crop_repeats_with_seed(large_jpeg):
    transform = DraftedRandomResizedCrop(64)

    torch.manual_seed(3)
    first = transform(str(large_jpeg))
    torch.manual_seed(3)
    second = transform(str(large_jpeg))

    assert torch.equal(first, second)


def test_drafted_crop_draws_like_torchvision(large_jpeg):
    # With the same seed both draw the same box and flip, so the crops differ only by the
    # DCT-scaled decoding and the resampling.
    transform, reference = DraftedRandomResizedCrop(64), reference_crop(64)
    differences = []
    for seed in range(40):
        torch.manual_seed(seed)
        ours = transform(str(large_jpeg)).float()
        torch.manual_seed(seed)
        theirs = reference(Image.open(large_jpeg).convert("RGB")).float()
        differences.append((ours - theirs).abs().mean().item())

    assert np.median(differences) < 3.0
    assert max(differences) < 8.0


def test_drafted_crops_keep_channel_statistics(large_jpeg):
    transform, reference = DraftedRandomResizedCrop(64), reference_crop(64)
    torch.manual_seed(0)
    ours = torch.stack([transform(str(large_jpeg)) for _ in range(100)]).float()
    theirs = torch.stack([reference(Image.open(large_jpeg).convert("RGB")) for _ in range(100)]).float()

    assert torch.allclose(ours.mean(dim=(0, 2, 3)), theirs.mean(dim=(0, 2, 3)), atol=6.0)
    assert torch.allclose(ours.std(dim=(0, 2, 3)), theirs.std(dim=(0, 2, 3)), atol=6.0)


def test_drafted_crop_of_grayscale_png(tmp_path):
    path = tmp_path / "gray.png"
    photo("coffee").convert("L").save(path)

    crop = DraftedRandomResizedCrop(32)(str(path))

    assert crop.shape == (3, 32, 32)
    assert torch.equal(crop[0], crop[1])


def test_draft_reduces_for_large_box(large_jpeg):
    with Image.open(large_jpeg) as image:
        reduction = _draft_for_box(image, 800, 600, 64)

        assert reduction == 8
        assert image.size == (128, 96)


def test_draft_keeps_small_box_whole(large_jpeg):
    with Image.open(large_jpeg) as image:
        reduction = _draft_for_box(image, 100, 100, 64)

        assert reduction == 1
        assert image.size == (1024, 768)


class DataDependent(torch.nn.Module):
    """A network with control flow on tensor values, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.norm(self.conv(x))
        return y if y.sum() > 0 else -y


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18"])
def test_folded_batch_norms_same_outputs(name):
    torch.manual_seed(0)
    network = torchvision.models.get_model(name, num_classes=10)
    with torch.no_grad():  # batch-norm statistics that differ from the defaults
        network.train()(torch.randn(16, 3, 96, 96))
    network.eval()
    folded = fold_batch_norms(network)
    batch = torch.randn(4, 3, 96, 96)

    with torch.inference_mode():
        plain, fast = network(batch), folded(batch)

    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(plain, fast, atol=1e-4, rtol=1e-4)
    assert torch.equal(plain.argmax(1), fast.argmax(1))


def test_untraceable_network_left_unchanged():
    network = DataDependent().eval()

    assert fold_batch_norms(network) is network


# JPEG frame headers

@pytest.mark.parametrize("mode, components", [("RGB", 3), ("L", 1), ("CMYK", 4)])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_frame_reads_size_and_components(tmp_path, mode, components, progressive):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo("coffee").resize((301, 203)).convert(mode).save(path, quality=90, progressive=progressive, exif=exif.tobytes())

    frame = jpeg_frame(np.fromfile(path, dtype=np.uint8))

    assert (frame.width, frame.height, frame.precision, frame.components) == (301, 203, 8, components)


def test_jpeg_start_reads_only_start(tmp_path):
    large = tmp_path / "large.jpg"
    photo("rocket").resize((2000, 1500)).save(large, quality=95)
    png = PHOTOS["coffee"][0]

    with open(large, "rb") as stream:
        start, frame = read_jpeg_start(stream)
    with open(png, "rb") as stream:
        png_start, png_frame = read_jpeg_start(stream)

    assert large.stat().st_size > len(start) == JPEG_START_BYTES
    assert start == large.read_bytes()[:JPEG_START_BYTES]
    assert (frame.width, frame.height) == (2000, 1500)
    assert png_frame is None
    assert len(png_start) <= JPEG_START_BYTES


def test_jpeg_start_finds_late_frame_header(tmp_path):
    # An ICC profile of 100 KB puts the frame header beyond the first JPEG_START_BYTES.
    path = tmp_path / "profile.jpg"
    photo("coffee").resize((301, 203)).save(path, quality=90, icc_profile=bytes(100_000))

    with open(path, "rb") as stream:
        start, frame = read_jpeg_start(stream)
    transform = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))
    decoded = transform.decode_plain_jpeg(path)
    reference = T.PILToTensor()(Image.open(path).convert("RGB"))

    assert len(start) == path.stat().st_size
    assert (frame.width, frame.height) == (301, 203)
    assert torch.equal(decoded, reference)


def test_header_read_stops_at_limit(tmp_path):
    # A JPEG start followed by more than JPEG_HEADER_LIMIT bytes without a frame header.
    path = tmp_path / "endless.jpg"
    path.write_bytes(b"\xff\xd8" + bytes(JPEG_HEADER_LIMIT + 4096))

    with open(path, "rb") as stream:
        start, frame = read_jpeg_start(stream)

    assert frame is None
    assert len(start) == JPEG_HEADER_LIMIT


def test_named_pipe_raises_not_blocks(tmp_path):
    # PIL would block forever reopening a pipe whose writer is gone, so each side runs in a thread.
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    data = write_jpeg(tmp_path / "small.jpg", photo("rocket").resize((64, 48))).read_bytes()
    transform = EvalTransform(Preprocessing(64, 56, IMAGENET_MEAN, IMAGENET_STD))
    errors = []

    def write_into_pipe():
        with contextlib.suppress(OSError), open(pipe, "wb") as stream:
            stream.write(data)

    def read_from_pipe():
        try:
            transform(pipe)
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=target, daemon=True) for target in (write_into_pipe, read_from_pipe)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 1
    assert "not a regular file" in str(errors[0])


def test_jpeg_frame_of_real_photo_matches_pil():
    path = PHOTOS["grace_hopper"][0]

    frame = jpeg_frame(np.fromfile(path, dtype=np.uint8))

    assert (frame.width, frame.height) == Image.open(path).size


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\xff\xd8\xff\xda\x00\x08"])
def test_jpeg_frame_rejects_other_bytes(data):
    assert jpeg_frame(np.frombuffer(data, dtype=np.uint8)) is None


@pytest.mark.parametrize("size", [(1200, 700), (700, 1200), (800, 938), (1024, 768), (900, 500)])
def test_draft_decision_ignores_orientation(tmp_path, size):
    # The header path decides on the stored size, and PIL's path on the upright one.
    transform = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo("rocket").resize(size).save(path, quality=90, exif=exif.tobytes())
    upright = size[::-1]

    with Image.open(path) as image:
        request = transform.draft_request(image, *resized_size(*upright, 256), orientation=6)

    assert transform.draft_reduces(*size) == (request is not None)


def test_rotated_jpeg_decodes_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo("rocket").resize((400, 300)).save(path, quality=95, exif=exif.tobytes())
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(open_rgb(path))

    pixels = EvalTransform(Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD))(path)

    assert (pixels.int() - reference.int()).abs().max() <= 1


def test_decompression_bomb_limit_applies_to_header_path(tmp_path, monkeypatch):
    path = write_jpeg(tmp_path / "bomb.jpg", photo("rocket").resize((120, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)

    with pytest.raises(Image.DecompressionBombError):
        EvalTransform(Preprocessing(64, 56, IMAGENET_MEAN, IMAGENET_STD))(path)

"""Decoding images to RGB robustly, and the fast evaluation transform of the validation pass.

The evaluation transform gives the same geometry as torchvision's ``Resize(resize)`` followed by
``CenterCrop(crop)`` on a PIL image. For JPEG files it lets libjpeg decode at a reduced DCT scale
(`Image.draft`) when the reduced image is still at least ``draft_gap`` times the resized size.
With a gap of 1, the DCT scaling alone would do the whole reduction of some images, and it
filters less than the antialiased resize: EfficientNet-Lite0 then changed its top-1 class on
matplotlib's grace_hopper.jpg. With the default gap of 1.5 the resize still does a third of the
reduction. It keeps the top-1 class of the real photos, which are too small to be reduced, and of
98.4 % of 128 generated 1024x768 photos (`python -m bench`); `--no-draft` decodes every pixel.

By default (resampler 'auto') images that torchvision decodes are resized with torch's
antialiased uint8 kernel (bilinear or bicubic), which is vectorized and several times faster than
PIL's resize while giving the same pixels within one grey level. Images that PIL decodes
(DCT-reduced JPEGs and every other format) are resized by PIL, which reads the source box that
survives the crop straight from its own memory. Handing them to torch would first copy the whole
decoded image out of PIL: for 1024x768 JPEGs decoded at 1/2 scale, the whole transform took
3.5 ms per image that way and 3.35 ms with PIL's resize of the box (one process, 2-CPU Xeon).

It returns uint8 tensors, so conversion to float and normalization happen once per batch on the
target device (`BatchNormalizer`). RGB and grayscale JPEGs that need no DCT reduction are decoded
by `torchvision.io.decode_jpeg`, which gives PIL's pixels about 10% faster and without a copy.
Their size is read from the JPEG frame header (`jpeg_frame`), so PIL never opens them; that saved
about 0.1 ms of the 1.5 ms that a 500x375 image takes.
"""

import logging
import os
import stat
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from math import ceil
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Exceptions PIL raises for files it cannot decode: truncated, empty, corrupt or not an image.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
EXIF_ORIENTATION = 0x0112
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}
# Interpolations that torch resizes with antialiasing on uint8 images, matching PIL within one grey level.
TORCH_INTERPOLATIONS = {"bilinear", "bicubic"}
RESAMPLERS = ("auto", "torch", "pil")


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side, center-crop, normalize (RGB order).

    ``resampler`` is 'torch' (the whole image resized by torch's antialiased uint8 kernel, then
    cropped), 'pil' (PIL resizes only the source box that survives the crop) or 'auto' (torch for
    the images that torchvision decodes, PIL for those that PIL decodes). Nearest-neighbour
    interpolation always uses PIL, because torch's 'nearest' picks other pixels than PIL's.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    draft: bool = True
    draft_gap: float = 1.5
    resampler: str = "auto"

    def as_dict(self) -> dict:
        values = asdict(self)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16-bit grayscale is scaled down instead of clipped."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        if image.mode != "I" or values.max(initial=0) > 255:
            values = values >> 8
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def open_rgb(path: Path | str) -> Image.Image:
    """Fully decode an image file as upright 8-bit RGB (EXIF orientation applied)."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Return the (width, height) that torchvision's ``Resize(shorter)`` gives for a PIL image."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_offset(size: int, crop: int) -> int:
    """Return the left or top offset of torchvision's ``CenterCrop`` along one axis."""
    return int(round((size - crop) / 2.0))


class EvalTransform:
    """Decode a file to a ``crop x crop`` uint8 CHW tensor (Resize + CenterCrop geometry)."""

    def __init__(self, preprocessing: Preprocessing):
        if preprocessing.resampler not in RESAMPLERS:
            raise ValueError(f"resampler {preprocessing.resampler!r} is unknown; use one of {', '.join(RESAMPLERS)}")
        self.resize = preprocessing.resize
        self.crop = preprocessing.crop
        self.resample = INTERPOLATIONS[preprocessing.interpolation]
        self.draft = preprocessing.draft
        self.draft_gap = preprocessing.draft_gap
        self.torch_mode = preprocessing.interpolation if preprocessing.interpolation in TORCH_INTERPOLATIONS else None
        # torchvision decodes (and torch resizes) plain JPEGs unless PIL resamples every image.
        self.torchvision_decodes = preprocessing.resampler in ("auto", "torch") and self.torch_mode is not None
        self.torch_resizes_pil_images = preprocessing.resampler == "torch" and self.torch_mode is not None

    def __call__(self, path: Path | str) -> torch.Tensor:
        if self.torchvision_decodes:
            pixels = self.decode_plain_jpeg(path)
            if pixels is not None:
                height, width = pixels.shape[1:]
                return self.resize_then_crop(pixels, *resized_size(width, height, self.resize))
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if image.format in ("JPEG", "MPO", "TIFF", "PNG", "WEBP") else 1
            width, height = image.size
            if orientation in SWAPPING_ORIENTATIONS:
                width, height = height, width
            new_width, new_height = resized_size(width, height, self.resize)
            request = self.draft_request(image, new_width, new_height, orientation)
            if request is not None:
                image.draft("RGB", request)
            image.load()
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
        if self.torch_resizes_pil_images:
            return self.resize_then_crop(pixels_of(image), new_width, new_height)
        return self.crop_resized(image, new_width, new_height)

    def decode_plain_jpeg(self, path: Path | str) -> torch.Tensor | None:
        """Decode an 8-bit RGB or grayscale JPEG that no DCT reduction applies to, without PIL.

        The start of the file is read first, and the rest only when the frame header shows such a
        JPEG. Returns None for every other file, and for data that libjpeg rejects, so that PIL
        decodes it or raises its error.
        """
        with open(path, "rb") as stream:
            start, frame = read_jpeg_start(stream)
            if not self.torchvision_can_decode(frame):
                return None
            data = read_rest(stream, start)
        return decode_jpeg_data(data)

    def torchvision_can_decode(self, frame: "JpegFrame | None") -> bool:
        """Return whether a JPEG with this frame header is decoded by torchvision: 8-bit RGB or grayscale, no DCT reduction."""
        if frame is None or frame.components not in (1, 3) or frame.precision != 8:
            return False
        if Image.MAX_IMAGE_PIXELS is not None and frame.width * frame.height > Image.MAX_IMAGE_PIXELS:
            return False  # PIL warns about or rejects such images as decompression bombs.
        return not (self.draft and self.draft_reduces(frame.width, frame.height))

    def draft_reduces(self, width: int, height: int) -> bool:
        """Return whether a DCT reduction of a JPEG of this stored size keeps ``draft_gap`` times the resized size.

        Resizing keeps the aspect ratio, so the result is the same whether or not EXIF orientation
        swaps the axes.
        """
        new_width, new_height = resized_size(width, height, self.resize)
        request = (ceil(new_width * self.draft_gap), ceil(new_height * self.draft_gap))
        return min(width // request[0], height // request[1]) >= 2

    def draft_request(self, image: Image.Image, new_width: int, new_height: int, orientation: int) -> tuple[int, int] | None:
        """Return the size to pass to `Image.draft`, or None when no DCT reduction keeps ``draft_gap`` times the resized size."""
        if not self.draft or image.format != "JPEG" or not self.draft_reduces(image.width, image.height):
            return None
        # PIL picks the largest reduction of 1/2, 1/4 or 1/8 that keeps the requested size.
        request = (ceil(new_width * self.draft_gap), ceil(new_height * self.draft_gap))
        return request[::-1] if orientation in SWAPPING_ORIENTATIONS else request

    def resize_then_crop(self, pixels: torch.Tensor, new_width: int, new_height: int) -> torch.Tensor:
        """Resize a uint8 CHW image with torch's antialiased kernel, then take the center crop."""
        resized = F.interpolate(pixels.unsqueeze(0), size=(new_height, new_width), mode=self.torch_mode, antialias=True)[0]
        crop_width, crop_height = min(self.crop, new_width), min(self.crop, new_height)
        left = center_crop_offset(new_width, self.crop) if new_width >= self.crop else 0
        top = center_crop_offset(new_height, self.crop) if new_height >= self.crop else 0
        cropped = resized[:, top:top + crop_height, left:left + crop_width]
        if (crop_width, crop_height) == (self.crop, self.crop):
            return cropped.contiguous()
        padded = torch.zeros(3, self.crop, self.crop, dtype=torch.uint8)
        pad_top, pad_left = (self.crop - crop_height) // 2, (self.crop - crop_width) // 2
        padded[:, pad_top:pad_top + crop_height, pad_left:pad_left + crop_width] = cropped
        return padded

    def crop_resized(self, image: Image.Image, new_width: int, new_height: int) -> torch.Tensor:
        """Resize and crop in one step by resampling only the source box that survives the crop."""
        crop_width, crop_height = min(self.crop, new_width), min(self.crop, new_height)
        left = center_crop_offset(new_width, self.crop) if new_width >= self.crop else 0
        top = center_crop_offset(new_height, self.crop) if new_height >= self.crop else 0
        scale_x, scale_y = image.width / new_width, image.height / new_height
        box = (left * scale_x, top * scale_y, (left + crop_width) * scale_x, (top + crop_height) * scale_y)
        resized = image.resize((crop_width, crop_height), self.resample, box=box)
        array = np.asarray(resized, dtype=np.uint8)
        if (crop_width, crop_height) != (self.crop, self.crop):
            array = _pad_center(array, self.crop)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def pixels_of(image: Image.Image) -> torch.Tensor:
    """Return the pixels of an RGB image as a uint8 CHW tensor in channels-last memory.

    Channels-last is the layout that torch's vectorized uint8 resize reads fastest.
    """
    array = np.asarray(image)
    with warnings.catch_warnings():
        # The array is read-only, and torch warns about that; the tensor is only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array).permute(2, 0, 1)


def decode_jpeg_file(path: Path | str) -> torch.Tensor | None:
    """Decode a JPEG file to a uint8 CHW RGB tensor (see `decode_jpeg_data`)."""
    return decode_jpeg_data(torch.from_numpy(np.fromfile(path, dtype=np.uint8)))


def decode_jpeg_data(data: torch.Tensor) -> torch.Tensor | None:
    """Decode the bytes of an RGB or grayscale JPEG to a uint8 CHW RGB tensor with `torchvision.io.decode_jpeg`.

    The pixels are the same as PIL's (both use libjpeg-turbo with its default IDCT and upsampling),
    and EXIF orientation is applied. Returns None when libjpeg rejects the data, so that the
    caller can decode with PIL and raise PIL's error, or recover what PIL can.

    NOTE: torchvision 0.29 deprecates its image decoders in favour of TorchCodec. Where
    `torchvision.io.decode_jpeg` is missing, this returns None and PIL decodes every file.
    """
    if not hasattr(torchvision.io, "decode_jpeg"):
        return None
    try:
        return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return None


@dataclass(frozen=True)
class JpegFrame:
    """The frame header of a JPEG: stored size (before EXIF orientation), sample precision, components."""

    width: int
    height: int
    precision: int
    components: int


# Start-of-frame markers: 0xC0 to 0xCF except DHT (0xC4), JPG (0xC8) and DAC (0xCC).
START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length: TEM and the restart markers RST0 to RST7.
STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])


# Bytes read to find the frame header, which decides how a JPEG is decoded. After a large EXIF
# thumbnail or ICC profile the search goes on up to JPEG_HEADER_LIMIT bytes, and PIL decodes the
# rare file whose header lies even further in.
JPEG_START_BYTES = 64 * 1024
JPEG_HEADER_LIMIT = 1024 * 1024


def read_jpeg_start(stream: BinaryIO) -> tuple[bytes, "JpegFrame | None"]:
    """Read the start of an open file and return it with its JPEG frame header, or with None where none is found.

    Raises OSError for a file that is not a regular file, such as a named pipe, because PIL could
    not open it a second time.
    """
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        raise OSError(f"{stream.name} is not a regular file; replace it with an image file")
    start = stream.read(JPEG_START_BYTES)
    if not start.startswith(b"\xff\xd8"):
        return start, None
    frame = jpeg_frame(start)
    if frame is None and len(start) == JPEG_START_BYTES:
        start += stream.read(JPEG_HEADER_LIMIT - JPEG_START_BYTES)
        frame = jpeg_frame(start)
    return start, frame


def read_rest(stream: BinaryIO, start: bytes) -> torch.Tensor:
    """Return the whole file as a uint8 tensor: ``start``, already read, and the rest of ``stream``."""
    buffer = bytearray(max(os.fstat(stream.fileno()).st_size, len(start)))
    buffer[:len(start)] = start
    view = memoryview(buffer)
    count = len(start)
    while count < len(buffer):
        got = stream.readinto(view[count:])
        if not got:
            break
        count += got
    return torch.frombuffer(buffer, dtype=torch.uint8, count=count)


def jpeg_frame(data) -> JpegFrame | None:
    """Return the frame header of JPEG bytes (any buffer), or None when they are not a JPEG with a readable frame header."""
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    position = 2
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", view, position + 2)
        if marker in START_OF_FRAME:
            if length < 8 or position + 10 > len(view):
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", view, position + 4)
            return JpegFrame(width, height, precision, components) if width and height else None
        position += 2 + length
    return None


def _pad_center(array: np.ndarray, crop: int) -> np.ndarray:
    """Zero-pad an image smaller than the crop, centered, as torchvision's CenterCrop does."""
    height, width = array.shape[:2]
    padded = np.zeros((crop, crop, 3), dtype=np.uint8)
    top, left = (crop - height) // 2, (crop - width) // 2
    padded[top:top + height, left:left + width] = array
    return padded


class BatchNormalizer:
    """Converts uint8 NCHW image batches to normalized float32 on a device: ``(x / 255 - mean) / std``.

    The layout changes on the uint8 batch, a quarter of the bytes of the float one, and the
    arithmetic is one multiply and one add in place. On the CPU, NumPy does the arithmetic in the
    calling thread. Torch would spread it over its thread pool, whose threads spin and take CPU
    time from the DataLoader workers that decode the next batches. On a loaded 2-core machine a
    64-image batch took 24 ms of CPU time that way, against 6.5 ms with NumPy.

    With ``reuse_output`` on a CPU device the output tensor is reused from call to call, because
    allocating a fresh 40 MB tensor per batch costs more in page faults than the arithmetic itself.
    Each call then overwrites the tensor that the previous call returned, so use it only where a
    batch is done with before the next one (inference, or a training step that ends with backward).
    Call it either always inside `torch.inference_mode` or always outside, because inference
    tensors cannot be updated outside it.
    """

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False, reuse_output: bool = False):
        self.device = device
        self.channels_last = channels_last
        self.reuse_output = reuse_output
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(device)
        self.shift = (-mean_t / std_t).to(device)
        self.output: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.device.type != "cpu":
            return images.float().mul_(self.scale).add_(self.shift)
        output = self._cpu_output(images)
        values = output.numpy()
        np.multiply(images.numpy(), self.scale.numpy(), out=values, casting="unsafe")
        np.add(values, self.shift.numpy(), out=values)
        return output

    def _cpu_output(self, images: torch.Tensor) -> torch.Tensor:
        if not self.reuse_output:
            return torch.empty_like(images, dtype=torch.float32)
        if self.output is None or self.output.shape[0] < images.shape[0] or self.output.shape[1:] != images.shape[1:]:
            self.output = torch.empty_like(images, dtype=torch.float32)
        return self.output[:images.shape[0]]


def normalize_batch(images: torch.Tensor, mean, std, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Move a uint8 NCHW batch to ``device`` and normalize it to float32 there (see `BatchNormalizer`)."""
    return BatchNormalizer(mean, std, device, channels_last)(images)


# Niceness of DataLoader workers next to CPU computation: 19 is the lowest priority of a normal process.
CPU_WORKER_NICENESS = 19


def lower_worker_priority(worker_id: int) -> None:
    """Give a DataLoader worker the lowest priority (its ``worker_init_fn`` when the network runs on the CPU).

    The worker then decodes on the CPU time that the network's threads leave idle instead of
    preempting them, because a preempted thread stalls the others at the next synchronization of a
    parallel operation. On a GPU machine the workers keep their priority.
    """
    os.nice(CPU_WORKER_NICENESS)

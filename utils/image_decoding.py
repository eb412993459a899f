"""Decoding images to RGB robustly, and the fast evaluation transform of the validation pass.

The evaluation transform gives the same geometry as torchvision's ``Resize(resize)`` followed by
``CenterCrop(crop)``, but computes only the pixels that survive the crop (`Image.resize` with a
source box) and, for JPEG files, lets libjpeg decode at a reduced DCT scale (`Image.draft`)
whenever the reduced image still has at least the resized size. It returns uint8 tensors, so
conversion to float and normalization happen once per batch on the target device.
"""

import logging
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Exceptions PIL raises for files it cannot decode: truncated, empty, corrupt or not an image.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
EXIF_ORIENTATION = 0x0112
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: resize the shorter side, center-crop, normalize (RGB order)."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    draft: bool = True

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
        self.resize = preprocessing.resize
        self.crop = preprocessing.crop
        self.resample = INTERPOLATIONS[preprocessing.interpolation]
        self.draft = preprocessing.draft

    def __call__(self, path: Path | str) -> torch.Tensor:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1) if image.format in ("JPEG", "MPO", "TIFF", "PNG", "WEBP") else 1
            width, height = image.size
            if orientation in SWAPPING_ORIENTATIONS:
                width, height = height, width
            new_width, new_height = resized_size(width, height, self.resize)
            if self.draft and image.format == "JPEG":
                request = (new_width, new_height) if orientation not in SWAPPING_ORIENTATIONS else (new_height, new_width)
                image.draft("RGB", request)
            image.load()
            image = ImageOps.exif_transpose(image)
            image = to_rgb(image)
        return self.crop_resized(image, new_width, new_height)

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


def _pad_center(array: np.ndarray, crop: int) -> np.ndarray:
    """Zero-pad an image smaller than the crop, centered, as torchvision's CenterCrop does."""
    height, width = array.shape[:2]
    padded = np.zeros((crop, crop, 3), dtype=np.uint8)
    top, left = (crop - height) // 2, (crop - width) // 2
    padded[top:top + height, left:left + width] = array
    return padded


def normalize_batch(images: torch.Tensor, mean, std, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Move a uint8 NCHW batch to ``device`` and normalize it to float32 there."""
    images = images.to(device, non_blocking=True)
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    images = (images.float() - mean_t) / std_t
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images

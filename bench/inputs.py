"""Benchmark inputs made from the real photos bundled with scikit-image and matplotlib.

Each generated image is a random crop of one of four photos, resized to the requested size and
saved at quality 90. Mild Gaussian noise (standard deviation 5 grey levels) brings the JPEG files
closer to the entropy, and so the decoding cost, of camera photos.
"""

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import numpy as np
import skimage
from PIL import Image

log = logging.getLogger(__name__)

PHOTO_FILES = {
    "chelsea": Path(skimage.__file__).parent / "data" / "chelsea.png",
    "coffee": Path(skimage.__file__).parent / "data" / "coffee.png",
    "rocket": Path(skimage.__file__).parent / "data" / "rocket.jpg",
    "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
}
SPEC_FILE = "spec.json"
NOISE_STD = 5.0
QUALITY = 90


def load_photos() -> list[Image.Image]:
    """Return the four real photos as RGB images."""
    return [Image.open(path).convert("RGB") for path in PHOTO_FILES.values()]


def photo_like_image(source: Image.Image, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Return a random crop of ``source`` with the aspect ratio of ``size``, resized to ``size``, plus noise."""
    width, height = source.size
    aspect = size[0] / size[1]
    crop_height = int(height * rng.uniform(0.6, 1.0))
    crop_width = min(width, int(crop_height * aspect))
    crop_height = int(crop_width / aspect)
    left = int(rng.integers(0, width - crop_width + 1))
    top = int(rng.integers(0, height - crop_height + 1))
    image = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_width, top + crop_height))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, NOISE_STD, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def write_class_folder(folder: Path, class_index: int, sizes: list[tuple[int, int]], per_class: int, seed: int) -> None:
    """Write the ``per_class`` JPEGs of one class; the pictures depend only on the arguments."""
    rng = np.random.default_rng([seed, class_index])
    photos = load_photos()
    folder.mkdir(parents=True)
    for image_index in range(per_class):
        count = class_index * per_class + image_index
        image = photo_like_image(photos[count % len(photos)], sizes[count % len(sizes)], rng)
        image.save(folder / f"image{image_index:05d}.jpg", format="JPEG", quality=QUALITY)


def write_jpeg_tree(root: Path, sizes: list[tuple[int, int]], per_class: int, classes: int, seed: int = 0,
                    parallel: bool = False) -> Path:
    """Write ``classes`` class folders of ``per_class`` JPEGs each under ``root``, cycling through ``sizes``.

    A tree written earlier with the same arguments is reused; any other content of ``root`` is
    replaced. ``parallel`` writes the class folders in one process per CPU.
    """
    spec = {"sizes": [list(s) for s in sizes], "per_class": per_class, "classes": classes, "seed": seed,
            "noise_std": NOISE_STD, "quality": QUALITY, "version": 2}
    spec_path = root / SPEC_FILE
    if spec_path.is_file() and json.loads(spec_path.read_text()) == spec:
        return root
    if root.exists():
        shutil.rmtree(root)
    log.info("writing %d JPEGs to %s", per_class * classes, root)
    tasks = [(root / f"class{index:03d}", index, sizes, per_class, seed) for index in range(classes)]
    if parallel:
        with ProcessPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
            list(pool.map(write_class_folder, *zip(*tasks)))
    else:
        for task in tasks:
            write_class_folder(*task)
    spec_path.write_text(json.dumps(spec))
    return root


def mean_file_size(root: Path) -> float:
    """Return the mean size in bytes of the JPEG files below ``root``."""
    sizes = [path.stat().st_size for path in root.rglob("*.jpg")]
    return float(np.mean(sizes)) if sizes else 0.0

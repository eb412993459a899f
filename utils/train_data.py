"""Training data: finding the subsets, decoding and transforming images, sampling and batching.

`make_training_data` is the only entry point of the training loop into the input pipeline: it
returns loaders that yield ``(images, targets)`` batches of normalized float32 images on the
training device. A faster pipeline (GPU decoding, for example) can replace it without changes to
the loop.

The DataLoader workers return uint8 images, and `NormalizedBatches` converts and normalizes each
whole batch on the device, so the workers send a quarter of the bytes and skip a float pass per
image. Training images go through `DraftedRandomResizedCrop`: it draws the crop box on the
original image exactly as torchvision's `RandomResizedCrop` does, lets libjpeg decode JPEGs at
the smallest DCT scale (1/2, 1/4 or 1/8) at which the box still has at least the output size,
and resizes only the box. A 64-pixel crop of a 1024x768 photo then decodes a fraction of the
pixels. The DCT scaling filters the box a little differently from a full-size decode followed by
an antialiased resize: over 40 seeded 64-pixel crops of a 1024x768 photo, the median of the mean
absolute pixel difference stays below 3 grey levels.
"""

import fnmatch
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from math import ceil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets
from torchvision.transforms import RandomResizedCrop, v2

from utils.cli import counted
from utils.distributed import DistributedContext
from utils.errors import UserError
from utils.image_decoding import EXIF_ORIENTATION, BatchNormalizer, lower_worker_priority, to_rgb
from utils.train_images import SkipUnreadable, TrainingImages, natural_key

log = logging.getLogger(__name__)

# Normalization of the ImageNet-trained torchvision networks, used for every dataset here.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSource:
    """One dataset to train on: a subset, or a full dataset for the baseline column of the results table."""

    name: str
    root: Path


@dataclass(frozen=True)
class Preprocessing:
    """Crop sizes in pixels and the normalization of network inputs."""

    image_size: int
    resize_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def train_transform(self) -> v2.Compose:
        """Return the training augmentation on a PIL image: random resized crop and horizontal flip.

        The loaders of `make_training_data` use the faster `fast_train_transform`, which draws the
        same random crops; this one is for single images and for comparisons.
        """
        return v2.Compose([
            v2.ToImage(),
            v2.RandomResizedCrop(self.image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def val_transform(self) -> v2.Compose:
        """Return the validation preprocessing: resize of the shorter edge, then a center crop."""
        return v2.Compose([
            v2.ToImage(),
            v2.Resize(self.resize_size, antialias=True),
            v2.CenterCrop(self.image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def fast_train_transform(self) -> "DraftedRandomResizedCrop":
        """Return the training augmentation of the loaders: a file path to a uint8 CHW crop, normalized later per batch."""
        return DraftedRandomResizedCrop(self.image_size)

    def fast_val_transform(self) -> v2.Compose:
        """Return `val_transform` up to the crop, as uint8; `NormalizedBatches` normalizes whole batches."""
        return v2.Compose([
            v2.ToImage(),
            v2.Resize(self.resize_size, antialias=True),
            v2.CenterCrop(self.image_size),
        ])


RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


class DraftedRandomResizedCrop:
    """Decode an image file to a random resized crop with a random horizontal flip, as a uint8 CHW tensor.

    The random draws are those of torchvision's ``RandomResizedCrop(size)`` followed by
    ``RandomHorizontalFlip()``, from the torch generator in the same order, so a seeded run repeats
    itself. Images are decoded as in the validation pass (`utils.image_decoding.open_rgb`): 16-bit
    images are scaled to 8 bits, and an image with an EXIF orientation is decoded in full and
    turned upright before the crop is drawn.
    """

    def __init__(self, size: int, scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                 flip_probability: float = 0.5):
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip_probability = flip_probability

    def blank(self) -> torch.Tensor:
        """Return a black crop, the placeholder of an unreadable file."""
        return torch.zeros(3, self.size, self.size, dtype=torch.uint8)

    def __call__(self, path: str) -> torch.Tensor:
        with Image.open(path) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image = to_rgb(ImageOps.exif_transpose(image))
                top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
                reduction = 1
            else:
                top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
                reduction = 1
                if image.format == "JPEG":
                    reduction = _draft_for_box(image, width, height, self.size)
                image.load()
                image = to_rgb(image)
        box = (left / reduction, top / reduction, (left + width) / reduction, (top + height) / reduction)
        crop = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if torch.rand(1).item() < self.flip_probability:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _draft_for_box(image: Image.Image, width: int, height: int, size: int) -> int:
    """Let libjpeg decode at the smallest DCT scale at which a ``width`` x ``height`` box keeps ``size`` pixels per side.

    Returns the reduction factor (1, 2, 4 or 8) by which the image's coordinates shrink.
    """
    original_width = image.width
    request = (ceil(image.width * size / width), ceil(image.height * size / height))
    # PIL picks the largest reduction that keeps the requested size. It returns None for an image
    # it cannot draft (several tiles), and reports the reduction in the box it returns otherwise.
    drafted = image.draft("RGB", request)
    if drafted is None:
        return 1
    _, (_, _, reduced_width, _) = drafted
    return round(original_width / reduced_width)


def keep_path(path: str) -> str:
    """Return ``path`` itself: the ImageFolder loader of datasets whose transform opens the file."""
    return path


class NormalizedBatches:
    """Batches of a DataLoader of uint8 images, as normalized float32 images on the device.

    The conversion runs in the training process, per batch, on the device (see `BatchNormalizer`).
    """

    def __init__(self, loader: DataLoader, mean, std, device: torch.device):
        self.loader = loader
        self.normalize = BatchNormalizer(mean, std, device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, targets in self.loader:
            yield self.normalize(images), targets


def has_splits(folder: Path) -> bool:
    """Return whether ``folder`` has both train/ and val/ sub-folders."""
    return (folder / "train").is_dir() and (folder / "val").is_dir()


def find_datasets(data: Path, prefix: str, names: list[str] | None = None) -> list[DatasetSource]:
    """Find the datasets to train on under ``data``, sorted by name.

    A ``data`` folder with train/ and val/ is one dataset named after the folder. Otherwise each
    sub-folder named ``<prefix>*`` with train/ and val/ is a subset; when none matches the prefix,
    every sub-folder with train/ and val/ is. ``names`` selects sub-folders by exact name.
    """
    if not data.is_dir():
        raise UserError(f"--data {data} is not a folder; build the subsets with `python RescaleDataset.py` "
                        "or point --data at a folder of subsets or at a dataset with train/ and val/")
    if has_splits(data):
        found = [DatasetSource(dataset_name(data), data)]
    else:
        candidates = sorted((p for p in data.iterdir() if has_splits(p)), key=lambda p: natural_key(p.name))
        matching = [p for p in candidates if fnmatch.fnmatchcase(p.name, f"{prefix}*")]
        found = [DatasetSource(p.name, p) for p in (matching or candidates)]
    if names:
        found = _select_by_name(found, names, data)
    if not found:
        raise UserError(
            f"no subsets found in {data}: looked for {prefix}*/train and {prefix}*/val (or any */train and */val); "
            "build them with `python RescaleDataset.py`, or point --data at a folder of subsets "
            "or at one dataset with train/ and val/"
        )
    return found


def dataset_name(folder: Path) -> str:
    """Return the last component of ``folder``, read from the resolved path when it is `..`.

    So `TinyA/train/..` is named TinyA, while a symbolic link keeps its own name.
    """
    return folder.resolve().name if folder.name in ("", "..") else folder.name


def _select_by_name(found: list[DatasetSource], names: list[str], data: Path) -> list[DatasetSource]:
    by_name = {source.name: source for source in found}
    missing = [name for name in names if name not in by_name]
    if missing:
        available = ", ".join(by_name) or "none"
        raise UserError(f"--subsets {' '.join(missing)} not found in {data}; available: {available}")
    return [by_name[name] for name in dict.fromkeys(names)]


class ShardSampler(Sampler[int]):
    """Every ``num_replicas``-th index starting at ``rank``, without the padding of DistributedSampler.

    The shards cover each image exactly once, so counts summed over processes are exact.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int, lower_priority: bool = False) -> None:
    """Seed NumPy in a DataLoader worker from the torch seed that PyTorch gives each worker.

    With ``lower_priority`` (training on the CPU) the worker also takes the lowest priority
    (see `lower_worker_priority`).
    """
    np.random.seed(torch.initial_seed() % 2**32)
    if lower_priority:
        lower_worker_priority(worker_id)


def load_split(root: Path, split: str, transform, loader=None) -> TrainingImages:
    """Open ``root/split`` as an ImageFolder tree (see `utils.train_images`), turning a missing or empty folder into a UserError."""
    try:
        return TrainingImages(root / split, transform=transform, loader=loader)
    except (FileNotFoundError, OSError) as error:
        raise UserError(f"{root / split} cannot be read as an ImageFolder tree ({error}); "
                        "it needs one sub-folder of images per class; rebuild it with `python RescaleDataset.py`") from error


def check_same_classes(train: datasets.ImageFolder, val: datasets.ImageFolder, root: Path) -> None:
    """Raise a UserError unless train/ and val/ have the same class folders."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise UserError(f"{root}: train/ and val/ have different class folders (only in train: {only_train}, "
                        f"only in val: {only_val}); rebuild the subset with `python RescaleDataset.py`")


@dataclass
class TrainingData:
    """Loaders of one dataset for one process, and the class names in network output order."""

    class_names: list[str]
    train_loader: NormalizedBatches | None
    val_loader: NormalizedBatches
    train_sampler: DistributedSampler | None

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle order of ``epoch``; the order depends only on the seed and the epoch."""
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, device: torch.device, drop_last: bool) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader whose workers are seeded from the torch RNG of the calling process."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=functools.partial(seed_worker, lower_priority=device.type == "cpu"),
    )


def warn_single_step(name: str, batch_size: int, images: int) -> None:
    """Warn that a batch larger than the training set of ``images`` images makes every epoch one smaller step."""
    log.warning("%s: --batch-size %d is larger than the %s, so each epoch is one step of %s; "
                "lower --batch-size for more steps per epoch", name, batch_size,
                counted(images, "training image"), counted(images, "image"))


def make_training_data(
    source: DatasetSource,
    preprocessing: Preprocessing,
    batch_size: int,
    workers: int,
    context: DistributedContext,
    device: torch.device,
    seed: int,
    train: bool = True,
) -> TrainingData:
    """Build this process's loaders for ``source``; ``batch_size`` is the total over all processes.

    Training batches come from a DistributedSampler (shuffled with ``seed`` and the epoch). The last
    incomplete batch is dropped, because batch norm fails on a batch of one image, unless the split
    has fewer images than one batch. Validation shards cover each image exactly once.
    """
    per_process = max(1, batch_size // context.world_size)
    mean, std = preprocessing.mean, preprocessing.std
    val_set = load_split(source.root, "val", preprocessing.fast_val_transform())
    val_loader = make_loader(val_set, ShardSampler(len(val_set), context.world_size, context.rank),
                             per_process, workers, device, drop_last=False)
    val_batches = NormalizedBatches(SkipUnreadable(val_loader, f"{source.name} val", min_batch=1), mean, std, device)
    if not train:
        return TrainingData(val_set.classes, None, val_batches, None)

    train_set = load_split(source.root, "train", preprocessing.fast_train_transform(), loader=keep_path)
    check_same_classes(train_set, val_set, source.root)
    sampler = DistributedSampler(train_set, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=seed)
    drop_last = len(sampler) >= per_process
    if not drop_last and context.is_main:
        warn_single_step(source.name, batch_size, len(train_set))
    train_loader = SkipUnreadable(make_loader(train_set, sampler, per_process, workers, device, drop_last),
                                  f"{source.name} train", min_batch=2)
    train_loader = NormalizedBatches(train_loader, mean, std, device)
    log.info("%s: %s, %d training and %s", source.name, counted(len(train_set.classes), "class", "classes"), len(train_set),
             counted(len(val_set), "validation image"))
    return TrainingData(train_set.classes, train_loader, val_batches, sampler)

"""Training and validation images of one ImageFolder tree: class order, decoding and unreadable files.

Classes are the sub-folders of the split, hidden ones excluded, indexed in natural order of their
names: digit runs compare as numbers, so folders `0`, `1`, ..., `10` get indices 0 to 10, where
plain string order would put `10` before `2`. Checkpoints store the order as `class_names`. The
images of a class are listed as RescaleDataset.py lists them (`list_class_folder`): symbolic links
are followed, link loops and hidden files are skipped.

Images are decoded as in the validation pass of RescaleDataset.py (`open_rgb`): EXIF orientation
is applied, 16-bit images are scaled to 8 bits and every mode is converted to RGB.

A file that cannot be decoded is skipped, not fatal. The dataset logs its path and returns a
placeholder image with a negative marker instead of the label. `SkipUnreadable` then drops the
marked images from each batch and logs how many a pass skipped.
"""

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets

from utils.errors import UserError
from utils.image_decoding import DECODE_ERRORS, open_rgb
from utils.layouts import list_class_folder

log = logging.getLogger(__name__)


def natural_key(name: str) -> list:
    """Sort key that orders ReIN30 before ReIN100 by comparing digit runs as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def class_order_key(name: str) -> tuple[list, str]:
    """Sort key of class folders: natural order, then the name itself for names such as `1` and `01`."""
    return natural_key(name), name


def class_folders(directory) -> list[str]:
    """Return the class folders of one split (sub-folders, hidden ones excluded) in natural order."""
    with os.scandir(directory) as entries:
        return sorted((e.name for e in entries if e.is_dir() and not e.name.startswith(".")), key=class_order_key)


def unreadable_marker(index: int) -> int:
    """Return the label that marks dataset item ``index`` as unreadable: -1 for item 0, -2 for item 1, ..."""
    return -index - 1


class TrainingImages(datasets.ImageFolder):
    """An ImageFolder tree with natural class order, RGB decoding and unreadable files marked."""

    def __init__(self, root, transform=None, loader=None):
        super().__init__(root, transform=transform, loader=loader or open_rgb)

    def find_classes(self, directory) -> tuple[list[str], dict[str, int]]:
        """Return the class folders in natural order and their indices; raise FileNotFoundError if there are none."""
        classes = class_folders(directory)
        if not classes:
            raise FileNotFoundError(f"no class folder found in {directory}")
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False) -> list[tuple[str, int]]:
        """List (path, class index) pairs class by class; raise FileNotFoundError for a class without images.

        ``extensions`` and ``is_valid_file`` of torchvision's signature are ignored: the image
        extensions are those of `utils.layouts.IMAGE_EXTENSIONS`.
        """
        directory = Path(directory)
        samples, empty = [], []
        for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
            files = list_class_folder(directory / name, directory)
            if not files:
                empty.append(name)
            samples.extend((str(directory / relative), index) for relative in files)
        if empty and not allow_empty:
            raise FileNotFoundError(f"no image files found for the classes {', '.join(empty)}")
        return samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
            if self.transform is not None:
                image = self.transform(image)
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            log.warning("cannot decode %s (%s); skipping it", path, reason)
            return self._placeholder(), unreadable_marker(index)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def _placeholder(self):
        """Return a black image shaped like the split's other images, so that it batches with them."""
        if hasattr(self.transform, "blank"):
            return self.transform.blank()
        image = Image.new("RGB", (8, 8))
        return self.transform(image) if self.transform is not None else image


class SkipUnreadable:
    """Iterate a DataLoader over `TrainingImages`, dropping the images marked unreadable.

    ``min_batch`` is the fewest images a batch may keep: 2 for training, because batch norm fails
    on a single image, and 1 for validation, where an empty batch is simply left out.
    """

    def __init__(self, loader: DataLoader, name: str, min_batch: int):
        self.loader = loader
        self.name = name
        self.min_batch = min_batch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped = 0
        for images, targets in self.loader:
            unreadable = targets < 0
            if unreadable.any():
                skipped += int(unreadable.sum())
                images, targets = images[~unreadable], targets[~unreadable]
                if len(targets) < self.min_batch:
                    self._fewer_than_min(len(targets))
                    continue
            yield images, targets
        if skipped:
            log.warning("%s: skipped %d unreadable images in this pass (their paths are logged above); "
                        "replace or delete them to use every image", self.name, skipped)

    def _fewer_than_min(self, kept: int) -> None:
        """Leave out a validation batch without readable images, or stop training on a batch of unreadable ones."""
        if self.min_batch <= 1:
            return
        # A process that skipped a training step alone would leave the other torchrun processes
        # waiting for it forever. Raising ends this process, and torchrun then stops the others.
        raise UserError(
            f"{self.name}: a training batch has only {kept} readable image(s), too few to train on; "
            "replace or delete the unreadable images logged above, then run again to resume"
        )

"""Reading dataset trees as they were downloaded: which file belongs to which class.

A layout turns a dataset root into `Split` records (relative file paths and class names) for the
training and validation splits. Classes are always identified by name (WordNet id, Places365
category folder name, or folder name), never by position. This module contains the base types,
the ImageFolder layout and `detect_layout`. The ImageNet and Places365 readers are in
`utils/imagenet_layouts.py` and `utils/places365_layouts.py`. Layouts only read the dataset root.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")


def is_image_file(name: str) -> bool:
    """Return whether a file name has one of the image extensions the loaders accept (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class Split:
    """The images of one split: paths relative to the dataset root, with one class name each."""

    root: Path
    files: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def classes(self) -> list[str]:
        """Return the sorted names of the classes that have at least one image in this split."""
        return sorted(set(self.labels))

    def restricted_to(self, classes: set[str]) -> "Split":
        """Return the images of the given classes only, in the same order."""
        kept = [(f, c) for f, c in zip(self.files, self.labels) if c in classes]
        return Split(self.root, [f for f, _ in kept], [c for _, c in kept])


class Layout:
    """Base class: a dataset root in one known layout."""

    name = "layout"
    description = ""

    def __init__(self, root: Path):
        self.root = root

    def classes(self) -> list[str]:
        """Return the sorted class names of the dataset."""
        raise NotImplementedError

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        """List the images of split ``which`` ('train' or 'val'), optionally of some classes only."""
        raise NotImplementedError

    def path_in_class(self, relative: str, label: str) -> str:
        """Return where an image goes inside its class folder of a subset: here its file name."""
        return relative.rsplit("/", 1)[-1]


def list_class_folder(folder: Path, relative_to: Path) -> list[str]:
    """List the image files under one class folder, recursively and sorted, as POSIX relative paths.

    Symbolic links to files and folders are followed. A link to a folder that contains the link (a
    link loop, such as `val/cat/up -> ..`) is skipped with a warning, because following it would
    list other classes' images under this class. A second way into a folder already listed is
    skipped too, so every image is listed once. Raises UserError for a folder that cannot be read.
    """
    if is_link_loop(folder):
        log.warning("skipping %s: it is a symbolic link to %s, which contains the link", folder, os.path.realpath(folder))
        return []
    found = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=raise_unreadable):
        kept = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if is_link_loop(path):
                log.warning("skipping %s: it is a symbolic link to %s, which contains the link", path, real)
            elif real in seen:
                log.warning("skipping %s: it leads to %s, whose images are already listed", path, real)
            else:
                seen.add(real)
                kept.append(name)
        dirnames[:] = kept
        folder_path = Path(dirpath).relative_to(relative_to).as_posix()
        prefix = "" if folder_path == "." else folder_path + "/"
        found.extend(prefix + name for name in sorted(filenames) if is_image_file(name))
    return found


def is_link_loop(path: Path | str) -> bool:
    """Return whether ``path`` is a symbolic link to a folder that contains the link itself."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    parent = os.path.realpath(os.path.dirname(path))
    return parent == target or parent.startswith(target.rstrip(os.sep) + os.sep)


def raise_unreadable(error: OSError) -> None:
    """Raise UserError for a dataset folder that cannot be listed (the `onerror` of `os.walk`)."""
    raise UserError(f"dataset folder {error.filename} cannot be read: {error.strerror}; check its permissions") from error


def scan_folder(folder: Path) -> list[os.DirEntry]:
    """Return the entries of a dataset folder, or raise UserError when it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        raise_unreadable(error)


def class_folders(split_dir: Path) -> list[str]:
    """Return the sorted names of the sub-folders of ``split_dir`` (hidden ones excluded)."""
    return sorted(entry.name for entry in scan_folder(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def split_from_class_folders(root: Path, split_dir: Path, classes: set[str] | None = None) -> Split:
    """List the images of every class folder of ``split_dir`` (or of ``classes`` only), sorted."""
    result = Split(root)
    for name in class_folders(split_dir):
        if classes is not None and name not in classes:
            continue
        files = list_class_folder(split_dir / name, root)
        result.files.extend(files)
        result.labels.extend([name] * len(files))
    return result


def loose_images(folder: Path) -> list[str]:
    """Return the sorted names of the image files directly inside ``folder``, not in sub-folders."""
    return sorted(entry.name for entry in scan_folder(folder) if is_image_file(entry.name) and entry.is_file())


def check_split_name(which: str) -> None:
    """Raise ValueError for a split other than 'train' and 'val' (a programming error)."""
    if which not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {which!r}")


def require_folder(folder: Path, need: str) -> None:
    """Raise UserError unless ``folder`` is a folder, naming whether it is missing or another kind of file.

    ``need`` ends the message and describes what the layout keeps in the folder.
    """
    if folder.is_dir():
        return
    if folder.exists():
        raise UserError(f"{folder} is not a folder; {need}")
    raise UserError(f"{folder} not found; {need}")


class ImageFolderLayout(Layout):
    """`train/<class>/...` and `val/<class>/...`, as read by `torchvision.datasets.ImageFolder`."""

    name = "imagefolder"
    description = "train/<class>/<image> and val/<class>/<image>"

    def classes(self) -> list[str]:
        names = set()
        for which in SPLITS:
            if (self.root / which).is_dir():
                names.update(class_folders(self.root / which))
        return sorted(names)

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        check_split_name(which)
        split_dir = self.root / which
        require_folder(split_dir, f"a dataset in the ImageFolder layout needs {which}/<class>/ folders")
        return split_from_class_folders(self.root, split_dir, classes)

    def path_in_class(self, relative: str, label: str) -> str:
        """Return the image path below `<split>/<class>/`, which keeps nested folders of a class."""
        parts = relative.split("/")
        if len(parts) > 2 and parts[1] == label:
            return "/".join(parts[2:])
        return parts[-1]


def check_dataset_root(root: Path, dataset: str) -> None:
    """Raise a clear error when the dataset root is missing, not a folder or unreadable."""
    if not root.exists():
        raise UserError(f"{dataset} dataset not found at {root}; set the path with --data or in config_rescale.py")
    if not root.is_dir():
        raise UserError(f"{dataset} dataset root {root} is a file, not a folder; point --data at the folder holding train/ and val/")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"{dataset} dataset root {root} is not readable; check its permissions")


def detect_layout(root: Path, dataset: str) -> Layout:
    """Return the layout of the dataset under ``root``, or raise UserError listing the accepted ones.

    ``dataset`` is 'ImageNet', 'Places365', 'ImageFolder' or 'FashionMNIST'; the last two both
    mean the ImageFolder layout. The detected layout is logged.
    """
    # Imported here because both modules build on the base types above.
    from utils.imagenet_layouts import IMAGENET_LAYOUTS, detect_imagenet
    from utils.places365_layouts import PLACES365_LAYOUTS, detect_places365

    detectors = {
        "ImageNet": (detect_imagenet, IMAGENET_LAYOUTS),
        "Places365": (detect_places365, PLACES365_LAYOUTS),
        "ImageFolder": (detect_imagefolder, (ImageFolderLayout.description,)),
        "FashionMNIST": (detect_imagefolder, (ImageFolderLayout.description,)),
    }
    if dataset not in detectors:
        raise UserError(f"dataset {dataset!r} is unknown; choose one of {', '.join(detectors)}")
    check_dataset_root(root, dataset)

    detect, accepted = detectors[dataset]
    layout = detect(root)
    if layout is None:
        raise UserError(
            f"{root} matches no {dataset} layout: it contains {describe_contents(root)}; "
            f"accepted layouts: {'; '.join(accepted)}"
        )
    log.info("%s layout detected at %s: %s", dataset, root, layout.description)
    return layout


def detect_imagefolder(root: Path) -> Layout | None:
    """Return the ImageFolder layout when ``root`` has a train/ or val/ folder, else None."""
    if (root / "train").is_dir() or (root / "val").is_dir():
        return ImageFolderLayout(root)
    return None


def describe_contents(root: Path, limit: int = 10) -> str:
    """Describe the first entries of a folder for an error message, folders marked with a slash."""
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in scan_folder(root))
    if not entries:
        return "nothing"
    shown = ", ".join(entries[:limit])
    return shown if len(entries) <= limit else f"{shown} and {len(entries) - limit} more"

"""Reading Places365-Standard trees as downloaded.

Two layouts are read, and both name classes by the "easy format" folder names (for example
`apartment_building-outdoor`), so a class list written for one works on the other:

- the easy format: `train/<category>/` and `val/<category>/`;
- the original format: `data_256/<letter>/<category>[/<sub>]/` listed in
  `places365_train_standard.txt`, a flat `val_256/` labelled by `places365_val.txt`, and
  `categories_places365.txt` mapping label numbers to categories (`/a/apartment_building/outdoor 8`).
  `data_large/` and `val_large/` (the high-resolution images) are read the same way.
"""

import logging
import re
from pathlib import Path

from utils.class_lists import check_classes
from utils.class_names import places365_categories
from utils.cli import counted
from utils.errors import UserError
from utils.layouts import ImageFolderLayout, Layout, Split, check_split_name, class_folders, loose_images, require_folder
from utils.text_files import decode_utf8, read_utf8

log = logging.getLogger(__name__)

ORIGINAL_CATEGORIES = "categories_places365.txt"
ORIGINAL_TRAIN_LIST = "places365_train_standard.txt"
ORIGINAL_VAL_LIST = "places365_val.txt"
ORIGINAL_FOLDERS = (("data_256", "val_256"), ("data_large", "val_large"))
ORIGINAL_CATEGORY = re.compile(r"/[a-z]/([a-z0-9_]+(?:/[a-z0-9_]+)?)")
MAX_EXAMPLES = 5

PLACES365_LAYOUTS = (
    "Places365-Standard easy format: train/<category>/ and val/<category>/ (such as apartment_building-outdoor)",
    "Places365-Standard original format: data_256/<letter>/<category>[/<sub>]/ with "
    f"{ORIGINAL_TRAIN_LIST}, flat val_256/ with {ORIGINAL_VAL_LIST}, and {ORIGINAL_CATEGORIES} "
    "(or data_large/ and val_large/)",
)


def easy_format_name(original: str) -> str:
    """Convert an original category such as `/a/apartment_building/outdoor` to `apartment_building-outdoor`."""
    match = ORIGINAL_CATEGORY.fullmatch(original)
    if match is None:
        raise ValueError(f"{original!r} is not a Places365 category of the form /<letter>/<name>[/<sub>]")
    return match.group(1).replace("/", "-")


class Places365FolderLayout(ImageFolderLayout):
    """The easy format: `train/<category>/` and `val/<category>/`."""

    name = "places365-easy"
    description = PLACES365_LAYOUTS[0]


class Places365OriginalLayout(Layout):
    """The original format: `data_256/` and `val_256/`, labelled by the list files in the root."""

    name = "places365-original"

    def __init__(self, root: Path, images: str, val_images: str):
        super().__init__(root)
        self.images = images
        self.val_images = val_images
        self.description = (
            f"Places365-Standard original format: {images}/ listed in {ORIGINAL_TRAIN_LIST}, "
            f"flat {val_images}/ labelled by {ORIGINAL_VAL_LIST}, categories from {ORIGINAL_CATEGORIES}"
        )
        self._categories: list[str] | None = None
        self._val: Split | None = None

    def categories(self) -> list[str]:
        """Return the category of each label number, read from the root's `categories_places365.txt`."""
        if self._categories is None:
            self._categories = read_original_categories(self.root / ORIGINAL_CATEGORIES)
        return self._categories

    def classes(self) -> list[str]:
        return sorted(self.categories())

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        check_split_name(which)
        if which == "train":
            return self._train_split(classes)
        if self._val is None:
            self._val = self._label_val_images()
        return self._val if classes is None else self._val.restricted_to(classes)

    def _train_split(self, classes: set[str] | None) -> Split:
        categories = self.categories()
        pairs = []
        for number, path, label in read_list_file(self.root / ORIGINAL_TRAIN_LIST, len(categories)):
            if not path.startswith("/") or ".." in path.split("/"):
                raise UserError(
                    f"{self.root / ORIGINAL_TRAIN_LIST}, line {number}: path {path!r} must start with /<letter>/ "
                    f"and stay inside {self.images}/; download the file list again"
                )
            category = categories[label]
            if classes is None or category in classes:
                pairs.append((self.images + path, category))
        pairs.sort()
        return Split(self.root, [path for path, _ in pairs], [category for _, category in pairs])

    def _label_val_images(self) -> Split:
        list_file = self.root / ORIGINAL_VAL_LIST
        categories = self.categories()
        labels = {}
        for number, name, label in read_list_file(list_file, len(categories)):
            labels[name] = categories[label]

        val_dir = self.root / self.val_images
        require_folder(val_dir, "the original Places365 format keeps the validation images there")
        names = loose_images(val_dir)
        unlabelled = [name for name in names if name not in labels]
        if unlabelled:
            raise UserError(
                f"{list_file} does not list {counted(len(unlabelled), 'image')} of {val_dir}, "
                f"e.g. {', '.join(unlabelled[:MAX_EXAMPLES])}; move them out of {val_dir} or use the matching list file"
            )
        if len(names) < len(labels):
            log.info("%s lists %d validation images, %d of them are in %s", list_file, len(labels), len(names), val_dir)
        return Split(self.root, [f"{self.val_images}/{name}" for name in names], [labels[name] for name in names])


def read_original_categories(path: Path) -> list[str]:
    """Read `categories_places365.txt` into easy-format names indexed by label number."""
    if not path.is_file():
        raise UserError(f"{path} not found; extract it from filelist_places365-standard.tar into {path.parent}")
    by_label = {}
    for number, line in enumerate(read_utf8(path).splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        try:
            if len(words) != 2:
                raise ValueError(line)
            by_label[int(words[1])] = easy_format_name(words[0])
        except ValueError:
            raise UserError(
                f"{path}, line {number}: expected '/<letter>/<category>[/<sub>] <label>', got {line!r}; "
                "download the file list again"
            ) from None
    if sorted(by_label) != list(range(len(by_label))):
        raise UserError(f"{path} does not number its categories 0 to {len(by_label) - 1} without gaps; download it again")
    categories = [by_label[label] for label in range(len(by_label))]
    check_classes(categories, list(places365_categories()), str(path), fix="use the file list of Places365-Standard")
    return categories


def read_list_file(path: Path, count: int):
    """Yield (line number, path, label) from a Places365 list file of '<path> <label>' lines."""
    if not path.is_file():
        raise UserError(f"{path} not found; extract it from filelist_places365-standard.tar into {path.parent}")
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            line = decode_utf8(raw, f"line {number} of {path}")
            words = line.split()
            if not words:
                continue
            if len(words) != 2 or not words[1].isdigit() or int(words[1]) >= count:
                raise UserError(
                    f"{path}, line {number}: expected '<image path> <label 0..{count - 1}>', got {line.strip()!r}; "
                    "download the file list again"
                )
            yield number, words[0], int(words[1])


def detect_places365(root: Path) -> Layout | None:
    """Return the Places365 layout of ``root``, or None if it has none of the known folders.

    Raises UserError for easy-format class folders that are not Places365 categories, and for
    original-format image folders without `categories_places365.txt`.
    """
    for images, val_images in ORIGINAL_FOLDERS:
        if (root / images).is_dir() or (root / val_images).is_dir():
            if not (root / ORIGINAL_CATEGORIES).is_file():
                raise UserError(
                    f"{root} has {images}/ or {val_images}/ of the original Places365 format but no "
                    f"{ORIGINAL_CATEGORIES}; extract filelist_places365-standard.tar into {root}"
                )
            return Places365OriginalLayout(root, images, val_images)

    if not ((root / "train").is_dir() or (root / "val").is_dir()):
        return None
    known = list(places365_categories())
    for which in ("train", "val"):
        if (root / which).is_dir():
            check_classes(
                class_folders(root / which), known, f"class folders of {root / which}",
                fix="rename or move these folders, or use the ImageFolder dataset for other classes",
            )
    return Places365FolderLayout(root)

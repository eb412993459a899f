"""Reliability of reading dataset trees: missing and unreadable roots, empty classes, odd image files,
partial validation splits, integer class names, symbolic links and unusual file names.

Every test hashes the dataset root before and after, since nothing may ever be written there.
"""

import csv
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fashion_trees import CLASS_NAMES, write_dataset
from tests.helpers import REPO, PYTHON, tree_digest
from tests.reliability_helpers import (
    THREADS_ENV,
    assert_clean_failure,
    expected_pixels,
    odd_images,
    rescale,
    rescale_args,
    without_lock,
    write_network,
)
from utils.class_lists import read_class_list
from utils.cli import run_main
from utils.distributed import DistributedContext
from utils.errors import UserError
from utils.image_decoding import EvalTransform, Preprocessing as EvalPreprocessing, open_rgb
from utils.outcomes import load_outcomes
from utils.train_checkpoint import load_run_checkpoint
from utils.train_data import DatasetSource, Preprocessing, load_split, make_training_data
from utils.training import main as train_main

TROUSER, PULLOVER, DRESS, COAT = 1, 2, 3, 4
TRAIN_ARGS = ["--image-size", "28", "--batch-size", "8", "--lr", "0.01", "--workers", "0", "--device", "cpu",
              "--arch", "fashion_mnist_cnn", "--epochs", "1", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def log_capture(monkeypatch, caplog):
    """Keep pytest's log capture, which the scripts' own logging setup would replace."""
    monkeypatch.setattr("utils.rescale.setup_logging", lambda verbose=False: None)
    monkeypatch.setattr("utils.training.setup_logging", lambda verbose=False: None)
    caplog.set_level(logging.INFO)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    return write_network(tmp_path_factory.mktemp("network") / "net.pth")


def labels_by_path(results: Path) -> dict[str, str]:
    """Map each image path of the stored outcomes to the class name of its stored label."""
    outcomes = load_outcomes(results / "outcomes.npz")
    return {path: outcomes.class_names[label] for path, label in zip(outcomes.paths.tolist(), outcomes.true.tolist())}


def folder_label(path: str) -> str:
    """Return the class folder of a path such as `val/<class>/<file>`."""
    return path.split("/")[1]


def errors(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


def warnings(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno == logging.WARNING)


# 1. Dataset path missing, a file instead of a folder, or unreadable

def run_without_permission_override(args: list[str]):
    """Run RescaleDataset.py so that file permissions apply to it even when the tests run as root.

    Root reads any folder through the capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so for
    root the script runs under `setpriv` with both removed from its capability bounding set.
    """
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv, so no folder can be made unreadable")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **THREADS_ENV)
    return subprocess.run([*prefix, PYTHON, "RescaleDataset.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("problem", ["missing", "file", "unreadable root", "unreadable class folder"])
def test_dataset_path_missing_file_or_unreadable(tmp_path, network, caplog, problem):
    results, out = tmp_path / "results", tmp_path / "out"
    if problem == "missing":
        root = tmp_path / "absent"
        assert rescale(*rescale_args(root, results, out, network)) == 1
        assert f"dataset not found at {root}; set the path with --data" in errors(caplog)
        assert not root.exists()
        return
    if problem == "file":
        root = tmp_path / "dataset.tar"
        root.write_bytes(b"not a folder")
        assert rescale(*rescale_args(root, results, out, network)) == 1
        assert f"root {root} is a file, not a folder" in errors(caplog)
        assert root.read_bytes() == b"not a folder"
        return

    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER], train_per_class=2, val_per_class=2)
    before = tree_digest(root)
    blocked = root if problem == "unreadable root" else root / "val" / "trouser"
    os.chmod(blocked, 0)
    try:
        run = run_without_permission_override(rescale_args(root, results, out, network, "--no-materialize"))
    finally:
        os.chmod(blocked, 0o755)
    assert_clean_failure(run)
    if problem == "unreadable root":
        assert f"dataset root {root} is not readable; check its permissions" in run.stderr
    else:
        assert f"dataset folder {blocked} cannot be read: Permission denied; check its permissions" in run.stderr
    assert not (results / "outcomes.npz").exists()
    assert tree_digest(root) == before


# 2. A class folder that is empty, or holds only non-image files

def test_class_folder_empty_or_without_images(tmp_path, network, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS], train_per_class=3, val_per_class=2)
    for split in ("train", "val"):
        (root / split / "coat").mkdir()
        (root / split / "bag").mkdir()
        (root / split / "bag" / "notes.txt").write_text("to do\n")
        (root / split / "bag" / "Thumbs.db").write_bytes(b"\0" * 16)
    before = tree_digest(root)
    results, out = tmp_path / "results", tmp_path / "out"

    assert rescale(*rescale_args(root, results, out, network, "--sizes", "3")) == 0
    labels = labels_by_path(results)
    assert len(labels) == 6
    assert {folder_label(path) for path in labels} == {"trouser", "pullover", "dress"}
    assert sorted(os.listdir(out / "ReFM3" / "train")) == ["dress", "pullover", "trouser"]

    listed = tmp_path / "ReFM2.txt"
    listed.write_text("trouser\ncoat\n")
    assert rescale("--lists", listed, *rescale_args(root, results, out, network)) == 1
    assert "1 class has no images in a split" in errors(caplog)
    assert "coat (train, val)" in errors(caplog)
    assert not (out / "ReFM2").exists()

    # Training reads a subset tree: an empty class folder there is an error that names it.
    with pytest.raises(UserError, match="cannot be read as an ImageFolder tree.*coat"):
        load_split(root, "train", None)
    assert tree_digest(root) == before


# 3. Truncated, empty, mislabelled-format, CMYK, grayscale, 16-bit and EXIF-rotated image files

@pytest.fixture
def odd_tree(tmp_path):
    """An ImageFolder tree whose trouser class contains one file of every awkward kind in both splits."""
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER], train_per_class=8, val_per_class=3)
    for split in ("train", "val"):
        kinds = odd_images(root / split / "trouser")
    return root, kinds


def test_odd_images_in_validation_pass(odd_tree, tmp_path, network, caplog):
    root, kinds = odd_tree
    before = tree_digest(root)
    results = tmp_path / "results"

    assert rescale(*rescale_args(root, results, tmp_path / "out", network, "--sizes", "2", "--no-materialize")) == 0

    outcomes = load_outcomes(results / "outcomes.npz")
    unreadable = sorted(f"val/trouser/{name}" for name, kind in kinds.items() if kind == "unreadable")
    assert sorted(record["path"] for record in outcomes.skipped) == unreadable
    reasons = {record["path"]: record["reason"] for record in outcomes.skipped}
    assert "truncated" in reasons["val/trouser/truncated.JPEG"]
    assert "cannot identify image file" in reasons["val/trouser/empty.JPEG"]
    for path in unreadable:
        assert f"skipped unreadable image {path}" in warnings(caplog)
    readable = {f"val/trouser/{name}" for name, kind in kinds.items() if kind != "unreadable"}
    assert readable <= set(outcomes.paths.tolist())
    assert len(outcomes) == 3 + 3 + len(readable)
    assert all(folder_label(path) == label for path, label in labels_by_path(results).items())
    assert "2 unreadable images skipped" in (results / "summary.md").read_text()
    assert "2 unreadable images skipped" in (results / "reports" / "ReFM2.md").read_text()

    # Readable files decode to upright 8-bit RGB with the original pixels, give or take JPEG loss.
    transform = EvalTransform(EvalPreprocessing(28, 28, (0.5,) * 3, (0.5,) * 3))
    for name, kind in kinds.items():
        if kind == "unreadable":
            continue
        image = open_rgb(root / "val" / "trouser" / name)
        assert image.mode == "RGB", name
        difference = np.abs(np.asarray(image, dtype=float) - expected_pixels(kind))
        assert difference.mean() < 4, name
        assert tuple(transform(root / "val" / "trouser" / name).shape) == (3, 28, 28), name
    assert tree_digest(root) == before


def test_odd_images_in_subset_building(odd_tree, tmp_path, network):
    """Building copies bytes without decoding them, so unreadable images are copied unchanged."""
    root, kinds = odd_tree
    before = tree_digest(root)
    listed = tmp_path / "ReFM2.txt"
    listed.write_text("trouser\npullover\n")

    assert rescale("--lists", listed, *rescale_args(root, tmp_path / "results", tmp_path / "out", network)) == 0

    subset = tmp_path / "out" / "ReFM2"
    for split in ("train", "val"):
        for name in kinds:
            assert (subset / split / "trouser" / name).read_bytes() == (root / split / "trouser" / name).read_bytes()
    assert tree_digest(root) == before


def test_odd_images_in_training(odd_tree, tmp_path, caplog):
    root, kinds = odd_tree
    before = tree_digest(root)
    readable = [name for name, kind in kinds.items() if kind != "unreadable"]

    # Item by item: unreadable files are marked, readable ones keep their label and decode as RGB.
    train = load_split(root, "train", None)
    trouser = train.class_to_idx["trouser"]
    for index, (path, label) in enumerate(train.samples):
        image, target = train[index]
        name = Path(path).name
        if kinds.get(name) == "unreadable":
            assert target < 0, name
        else:
            assert target == label, name
            assert image.mode == "RGB", name
        if name in readable:
            assert label == trouser
            assert np.abs(np.asarray(image, dtype=float) - expected_pixels(kinds[name])).mean() < 4, name

    # A full epoch: 16 + 8 training images in 3 batches of 8, of which 2 cannot be decoded.
    data = tmp_path / "subsets"
    shutil.copytree(root, data / "ReIN2")
    folder = tmp_path / "checkpoints" / "fashion_mnist_cnn_ReIN2"
    args = ["--data", data, "--checkpoints", tmp_path / "checkpoints", "--results", tmp_path / "table", *TRAIN_ARGS]
    assert run_main(train_main, [str(arg) for arg in args]) == 0
    row = next(csv.DictReader((folder / "log.csv").open()))
    assert row["train_images"] == "22"
    assert row["val_images"] == str(3 + 3 + len(readable))
    for split in ("train", "val"):
        assert f"cannot decode {data / 'ReIN2' / split / 'trouser' / 'truncated.JPEG'}" in warnings(caplog)
        assert f"ReIN2 {split}: skipped 2 unreadable images in this pass" in warnings(caplog)
    assert tree_digest(root) == before


# 4. Validation folder with fewer classes than training, or with a class unknown to the network

def test_val_classes_missing_or_unknown(tmp_path, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS, COAT], train_per_class=2, val_per_class=3)
    shutil.rmtree(root / "val" / "pullover")
    write_dataset(tmp_path / "extra", [0], train_per_class=0, val_per_class=2)
    shutil.copytree(tmp_path / "extra" / "val" / "t-shirt", root / "val" / "mystery")
    before = tree_digest(root)
    # The network lists its classes in reverse, so output indices and folder order disagree.
    network = write_network(tmp_path / "net.pth", class_names=tuple(reversed(CLASS_NAMES)))
    results = tmp_path / "results"

    assert rescale(*rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2")) == 1
    assert "the network does not know the dataset class(es) mystery" in errors(caplog)
    assert "--skip-unknown-classes" in errors(caplog)
    assert not (results / "outcomes.npz").exists()

    assert rescale(*rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2",
                                 "--skip-unknown-classes")) == 0
    labels = labels_by_path(results)
    assert len(labels) == 9
    for path, label in labels.items():
        assert label == folder_label(path), path
    assert load_outcomes(results / "outcomes.npz").meta["skipped_classes"] == ["mystery"]

    # Training needs the same classes in both splits, since a missing one would shift the indices.
    source = DatasetSource("fm", root)
    with pytest.raises(UserError, match="train/ and val/ have different class folders"):
        make_training_data(source, Preprocessing(32, 37), 4, 0, DistributedContext(), torch.device("cpu"), seed=0)
    assert tree_digest(root) == before


# 5. Class folders named by integers

def integer_tree(root: Path) -> Path:
    """Write an ImageFolder tree with class folders 0 to 10, two training and one validation image each."""
    write_dataset(root / "source", list(range(10)), train_per_class=2, val_per_class=1)
    names = sorted(os.listdir(root / "source" / "train"))
    for number in range(11):
        for split in ("train", "val"):
            shutil.copytree(root / "source" / split / names[number % len(names)], root / "tree" / split / str(number))
    shutil.rmtree(root / "source")
    return root / "tree"


def test_integer_class_folders_sort_as_numbers(tmp_path, caplog):
    root = integer_tree(tmp_path / "digits")
    before = tree_digest(root)
    numbers = [str(number) for number in range(11)]

    # RescaleDataset.py matches network outputs by name, never by position.
    network = write_network(tmp_path / "net.pth", class_names=numbers)
    results = tmp_path / "results"
    assert rescale(*rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2")) == 0
    labels = labels_by_path(results)
    assert len(labels) == 11
    for path, label in labels.items():
        assert label == folder_label(path), path

    # Imported outcomes: classes.txt maps index i to its line i, so index 2 is class "2", not "10".
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "classes.txt").write_text("".join(f"{name}\n" for name in numbers))
    true = np.repeat(np.arange(11), 10)
    predicted = true.copy()
    predicted[true == 2] = 10  # every image of class 2 is taken for class 10, and the reverse
    predicted[true == 10] = 2
    np.save(imported / "true_labels.npy", true)
    np.save(imported / "predicted_labels.npy", predicted)
    out = tmp_path / "out"
    assert rescale("--outcomes", imported, *rescale_args(root, tmp_path / "results2", out, network, "--sizes", "2")) == 0
    assert read_class_list(tmp_path / "results2" / "ReFM2.txt") == ["10", "2"]
    for split in ("train", "val"):
        assert sorted(os.listdir(out / "ReFM2" / split)) == ["10", "2"]
        for name in ("2", "10"):
            assert sorted(os.listdir(out / "ReFM2" / split / name)) == sorted(os.listdir(root / split / name))

    # Training indexes classes in natural order and stores that order in the checkpoint.
    assert load_split(root, "train", None).classes == numbers
    data = tmp_path / "subsets"
    shutil.copytree(root, data / "ReIN11")
    args = ["--data", data, "--checkpoints", tmp_path / "checkpoints", "--results", tmp_path / "table", *TRAIN_ARGS]
    assert run_main(train_main, [str(arg) for arg in args]) == 0
    checkpoint = load_run_checkpoint(tmp_path / "checkpoints" / "fashion_mnist_cnn_ReIN11" / "last.pth")
    assert checkpoint["class_names"] == numbers
    train = load_split(data / "ReIN11", "train", None)
    for path, label in train.samples:
        assert checkpoint["class_names"][label] == Path(path).parent.name
    assert tree_digest(root) == before


# 6. Symbolic links to files and folders, and link loops

def test_symbolic_links_and_loops(tmp_path, network, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER], train_per_class=3, val_per_class=2)
    elsewhere = write_dataset(tmp_path / "elsewhere", [DRESS, COAT], train_per_class=2, val_per_class=2)
    for split in ("train", "val"):
        first = sorted((elsewhere / split / "coat").iterdir())[0]
        (root / split / "trouser" / "linked.png").symlink_to(first)  # a link to a file
        (root / split / "trouser" / "more").symlink_to(elsewhere / split / "coat")  # a link to a folder
        (root / split / "dress").symlink_to(elsewhere / split / "dress")  # a class folder that is a link
        (root / split / "trouser" / "up").symlink_to("..")  # a loop through the split folder
        (root / split / "pullover" / "self").symlink_to(".")  # a loop to itself
        (root / split / "looping").symlink_to(".")  # a class folder that loops to its split
    before = tree_digest(root)
    results, out = tmp_path / "results", tmp_path / "out"

    assert rescale(*rescale_args(root, results, out, network, "--sizes", "3")) == 0

    labels = labels_by_path(results)
    assert set(labels) == {
        *(f"val/trouser/{name}" for name in os.listdir(root / "val" / "trouser") if name.endswith(".png")),
        *(f"val/trouser/more/{name}" for name in os.listdir(elsewhere / "val" / "coat")),
        *(f"val/pullover/{name}" for name in os.listdir(root / "val" / "pullover") if name.endswith(".png")),
        *(f"val/dress/{name}" for name in os.listdir(elsewhere / "val" / "dress")),
    }
    for path, label in labels.items():
        assert label == folder_label(path), path
    for loop in ("val/trouser/up", "val/pullover/self", "val/looping"):
        assert f"skipping {root / loop}: it is a symbolic link to" in warnings(caplog), loop

    # Links in the dataset are sources: a copied subset contains regular files with their bytes.
    subset = out / "ReFM3"
    assert sorted(os.listdir(subset / "val")) == ["dress", "pullover", "trouser"]
    for dirpath, dirnames, filenames in os.walk(subset):
        for name in dirnames + filenames:
            assert not os.path.islink(os.path.join(dirpath, name)), os.path.join(dirpath, name)
    manifest = json.loads((subset / "subset.json").read_text())
    # trouser: its own images, the linked file and the linked folder; then pullover and dress.
    assert manifest["train_images"] == (3 + 1 + 2) + 3 + 2
    assert manifest["val_images"] == (2 + 1 + 2) + 2 + 2
    assert (subset / "val" / "trouser" / "more" / first.name).read_bytes() == first.read_bytes()

    # Training on a dataset with links, as for the full-dataset column, lists the same images. A class
    # folder that is a loop has no images, which training reports.
    with pytest.raises(UserError, match="no image files found for the classes looping"):
        load_split(root, "val", None)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    (copy / "val" / "looping").unlink()
    val = load_split(copy, "val", None)
    assert val.classes == ["dress", "pullover", "trouser"]
    assert {Path(path).relative_to(copy).as_posix(): val.classes[index] for path, index in val.samples} == labels
    assert tree_digest(root) == before


# 7. File and folder names with spaces and non-ASCII characters

def test_unusual_file_names(tmp_path, caplog):
    source = write_dataset(tmp_path / "source", [TROUSER, PULLOVER, DRESS], train_per_class=2, val_per_class=2)
    root = tmp_path / "fm"
    renames = {"trouser": "trouser", "pullover": "pull over", "dress": "robe d'été"}
    for split in ("train", "val"):
        for old, new in renames.items():
            for index, image in enumerate(sorted((source / split / old).iterdir())):
                name = ["photo 1 ✓.png", "ünïcödé.png"][index]
                target = root / split / new / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, target)
        # A name that is not valid UTF-8 (Latin-1 "café"), as old archives and Windows copies have.
        latin1 = os.fsencode(root / split / "trouser") + b"/caf\xe9 noir.png"
        shutil.copyfile(next((source / split / "trouser").iterdir()), latin1)
    before = tree_digest(root)
    # Every image is predicted as 'bag', so every path lands in sensitive_images.csv.
    network = write_network(tmp_path / "net.pth", class_names=["trouser", "pull over", "robe d'été", "bag"], favour="bag")
    results, out = tmp_path / "results", tmp_path / "out"

    assert rescale(*rescale_args(root, results, out, network, "--sizes", "3")) == 0

    latin1_path = "val/trouser/" + os.fsdecode(b"caf\xe9 noir.png")
    labels = labels_by_path(results)
    assert len(labels) == 7
    assert labels[latin1_path] == "trouser"
    assert labels["val/robe d'été/photo 1 ✓.png"] == "robe d'été"
    with open(results / "statistics" / "sensitive_images.csv", newline="", encoding="utf-8", errors="surrogateescape") as stream:
        listed = {row["path"] for row in csv.DictReader(stream)}
    assert listed == set(labels)
    assert read_class_list(results / "ReFM3.txt") == ["pull over", "robe d'été", "trouser"]
    for split in ("train", "val"):
        for folder in renames.values():
            assert sorted(os.listdir(out / "ReFM3" / split / folder)) == sorted(os.listdir(root / split / folder))
    assert (out / "ReFM3" / "val" / "trouser" / os.fsdecode(b"caf\xe9 noir.png")).is_file()

    # The list written above builds the same subset again.
    assert rescale("--lists", results / "ReFM3.txt", *rescale_args(root, tmp_path / "results2", tmp_path / "out2", network)) == 0
    assert without_lock(tmp_path / "out2") == without_lock(out)
    assert tree_digest(root) == before

"""Building ReIN/RePL subsets: same result from every layout, safe re-runs, and a dataset root left untouched."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import utils.file_placement as file_placement
from tests.dataset_trees import IMAGENET_LAYOUTS, SEA_SNAKE, make_imagenet_tree, make_places365_tree, write_image
from tests.helpers import PYTHON, REPO, SHARED, tree_digest
from utils.class_lists import read_class_list, subset_name_from_list
from utils.errors import UserError
from utils.layouts import detect_layout
from utils.subsets import build_subsets, manifest_text

WNIDS = [SEA_SNAKE, "n01440764", "n02123159", "n04592741"]
SUBSET = [SEA_SNAKE, "n01440764", "n02123159"]
CATEGORIES = ["airfield", "apartment_building-outdoor", "arch", "church-outdoor"]
PUBLISHED = SHARED / "reference" / "published_subsets"


@pytest.fixture
def imagenet(tmp_path):
    """A small ImageNet tree with class folders and its detected layout."""
    root = make_imagenet_tree(tmp_path / "ImageNet", "val-folders", WNIDS)
    return detect_layout(root, "ImageNet")


def digest_without_lock(folder: Path) -> dict[str, str]:
    digest = tree_digest(folder)
    digest.pop(".lock", None)
    return digest


def test_imagenet_layouts_build_same_subset(tmp_path):
    digests = {}
    for name in IMAGENET_LAYOUTS:
        root = make_imagenet_tree(tmp_path / name, name, WNIDS)
        before = tree_digest(root)
        summaries = build_subsets(detect_layout(root, "ImageNet"), {"ReIN3": SUBSET}, tmp_path / f"out-{name}", workers=2)
        assert tree_digest(root) == before, name
        assert (summaries[0].classes, summaries[0].train_images, summaries[0].val_images) == (3, 6, 6)
        digests[name] = tree_digest(tmp_path / f"out-{name}" / "ReIN3")
    for name in IMAGENET_LAYOUTS:
        assert digests[name] == digests["val-folders"], name
    assert "val/n01751748/ILSVRC2012_val_00000001.JPEG" in digests["val-folders"]


def test_places365_formats_build_same_subset(tmp_path):
    digests = {}
    for name in ("easy", "original"):
        root = make_places365_tree(tmp_path / name, name, CATEGORIES)
        before = tree_digest(root)
        build_subsets(detect_layout(root, "Places365"), {"RePL3": CATEGORIES[1:]}, tmp_path / f"out-{name}", workers=2)
        assert tree_digest(root) == before, name
        digests[name] = tree_digest(tmp_path / f"out-{name}" / "RePL3")
    assert digests["easy"] == digests["original"]
    assert "train/apartment_building-outdoor/00000002.jpg" in digests["easy"]
    assert "val/church-outdoor/Places365_val_00000004.jpg" in digests["easy"]


def test_subset_loads_with_imagefolder(imagenet, tmp_path):
    from torchvision.datasets import ImageFolder

    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=2)
    for which in ("train", "val"):
        dataset = ImageFolder(tmp_path / "out" / "ReIN3" / which)
        assert dataset.classes == sorted(SUBSET)
        assert len(dataset) == 6
        image, label = dataset[0]
        assert image.size == (32, 32)


def test_summary_logged_and_manifest_written(imagenet, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="utils.subsets"):
        summary = build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=2)[0]
    assert f"ReIN3: 3 classes, 6 train and 6 val images, {summary.bytes:,} bytes" in caplog.text
    manifest = json.loads((tmp_path / "out" / "ReIN3" / "subset.json").read_text())
    assert manifest["classes"] == sorted(SUBSET)
    assert manifest["mode"] == "copy"
    assert len(manifest["files"]) == 12
    assert sum(manifest["files"].values()) == summary.bytes
    assert "| n01751748 | 2 | 2 |" in (tmp_path / "out" / "ReIN3" / "README.md").read_text()


def test_hardlinks_share_inodes(imagenet, tmp_path):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="hardlink", workers=2)
    subset = tmp_path / "out" / "ReIN3"
    for which in ("train", "val"):
        split = imagenet.split(which, set(SUBSET))
        for relative, label in zip(split.files, split.labels):
            source = os.stat(imagenet.root / relative)
            linked = os.stat(subset / which / label / Path(relative).name)
            assert linked.st_ino == source.st_ino
            assert linked.st_nlink == 2
    assert build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="hardlink", workers=2)[0].skipped


def test_hardlink_falls_back_to_copy(imagenet, tmp_path, monkeypatch, caplog):
    def cross_device_link(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device_link)
    with caplog.at_level(logging.INFO):
        build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="hardlink", workers=2)
    assert caplog.text.count("another file system") == 1
    assert "built by copy, since hard links fail there" in caplog.text
    train_file = tmp_path / "out" / "ReIN3" / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    assert os.stat(train_file).st_nlink == 1
    source = imagenet.root / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    assert train_file.read_bytes() == source.read_bytes()
    assert train_file.stat().st_mtime_ns == source.stat().st_mtime_ns
    readme = (tmp_path / "out" / "ReIN3" / "README.md").read_text()
    assert "placed by hard link, or by copy where hard links failed (the output folder is on another file system" in readme
    assert build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="hardlink", workers=2)[0].skipped


def test_subset_path_that_is_a_file(imagenet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ReIN3").write_text("notes\n")

    with pytest.raises(UserError, match=f"{out / 'ReIN3'} is a file, not a subset folder; move it away or delete it"):
        build_subsets(imagenet, {"ReIN3": SUBSET}, out, mode="copy", workers=1)

    assert (out / "ReIN3").read_text() == "notes\n"


def test_symlinks_point_to_absolute_sources(imagenet, tmp_path):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="symlink", workers=2)
    subset = tmp_path / "out" / "ReIN3"
    links = [path for path in subset.rglob("*") if path.is_symlink()]
    assert len(links) == 12
    for link in links:
        target = Path(os.readlink(link))
        assert target.is_absolute()
        assert target.is_relative_to(imagenet.root.resolve())
        assert link.read_bytes() == target.read_bytes()
    assert build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="symlink", workers=2)[0].skipped


def test_rerun_skips_complete_subset(imagenet, tmp_path):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=2)
    before = tree_digest(tmp_path / "out" / "ReIN3")
    times = {path: path.stat().st_mtime_ns for path in (tmp_path / "out" / "ReIN3").rglob("*")}
    summary = build_subsets(imagenet, {"ReIN3": list(reversed(SUBSET))}, tmp_path / "out", workers=2)[0]
    assert summary.skipped
    assert tree_digest(tmp_path / "out" / "ReIN3") == before
    assert {path: path.stat().st_mtime_ns for path in times} == times


def test_changed_list_rebuilds_subset(imagenet, tmp_path):
    out = tmp_path / "out"
    build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)
    changed = [SEA_SNAKE, "n01440764", "n04592741"]
    summary = build_subsets(imagenet, {"ReIN3": changed}, out, workers=2)[0]
    assert not summary.skipped
    build_subsets(imagenet, {"ReIN3": changed}, tmp_path / "clean", workers=2)
    assert tree_digest(out / "ReIN3") == tree_digest(tmp_path / "clean" / "ReIN3")
    assert sorted(os.listdir(out)) == [".lock", "ReIN3"]


def test_mode_change_rebuilds_subset(imagenet, tmp_path):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=2)
    summary = build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="symlink", workers=2)[0]
    assert not summary.skipped
    assert (tmp_path / "out" / "ReIN3" / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG").is_symlink()


@pytest.mark.parametrize("damage", ["deleted", "truncated", "added"])
def test_damaged_subset_repaired(imagenet, tmp_path, damage):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "clean", workers=2)
    out = tmp_path / "out"
    build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)
    image = out / "ReIN3" / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    if damage == "deleted":
        image.unlink()
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[:100])
    else:
        shutil.copyfile(image, image.with_name("extra.JPEG"))
    summary = build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)[0]
    assert not summary.skipped
    assert tree_digest(out / "ReIN3") == tree_digest(tmp_path / "clean" / "ReIN3")


def flip_first_pixel_byte(path: Path, seconds_later: int) -> None:
    """Change one byte near the end of a file, keeping its size, and move its modification time on."""
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    before = path.stat().st_mtime
    path.write_bytes(bytes(data))
    os.utime(path, (before + seconds_later, before + seconds_later))


@pytest.mark.parametrize("edited", ["copy", "source"])
def test_same_size_edit_rebuilds_copy(imagenet, tmp_path, edited):
    out = tmp_path / "out"
    build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)
    source = imagenet.root / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    copy = out / "ReIN3" / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    flip_first_pixel_byte(copy if edited == "copy" else source, seconds_later=60)
    assert copy.read_bytes() != source.read_bytes()

    summary = build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)[0]

    assert not summary.skipped
    assert copy.read_bytes() == source.read_bytes()
    assert build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)[0].skipped


def test_added_folder_removed_by_rebuild(imagenet, tmp_path, caplog):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "clean", workers=2)
    out = tmp_path / "out"
    build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)
    (out / "ReIN3" / "val" / "newclass").mkdir()

    with caplog.at_level(logging.WARNING):
        summary = build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)[0]

    assert not summary.skipped
    assert "it holds 1 unexpected folder, e.g. val/newclass; rebuilding it" in caplog.text
    assert not (out / "ReIN3" / "val" / "newclass").exists()
    assert tree_digest(out / "ReIN3") == tree_digest(tmp_path / "clean" / "ReIN3")


def test_unwritable_partial_folder_reported(imagenet, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".ReIN3.partial").write_text("a file where the build folder goes\n")

    with pytest.raises(UserError, match=rf"writing subset ReIN3 in {out} failed: .*\.ReIN3\.partial\); fix the permissions"):
        build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)


def test_partial_leftovers_cleaned(imagenet, tmp_path):
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "clean", workers=2)
    partial = tmp_path / "out" / ".ReIN3.partial"
    shutil.copytree(tmp_path / "clean" / "ReIN3", partial)
    (partial / "subset.json").unlink()
    kept = partial / "train" / SEA_SNAKE / f"{SEA_SNAKE}_2.JPEG"
    kept_inode = kept.stat().st_ino
    short = partial / "train" / SEA_SNAKE / f"{SEA_SNAKE}_1.JPEG"
    short.write_bytes(short.read_bytes()[:50])
    (partial / "train" / SEA_SNAKE / f".{SEA_SNAKE}_1.JPEG.part").write_bytes(b"half")
    (partial / "train" / "n09999999").mkdir()
    (partial / "train" / "n09999999" / "old.JPEG").write_bytes(b"stale")

    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=2)
    assert tree_digest(tmp_path / "out" / "ReIN3") == tree_digest(tmp_path / "clean" / "ReIN3")
    assert sorted(os.listdir(tmp_path / "out")) == [".lock", "ReIN3"]
    assert (tmp_path / "out" / "ReIN3" / "train" / SEA_SNAKE / f"{SEA_SNAKE}_2.JPEG").stat().st_ino == kept_inode


KILLED_BUILD = """
import sys
import time
from pathlib import Path

import utils.file_placement as placement
from utils.layouts import detect_layout
from utils.subsets import build_subsets

copy_file = placement.copy_file


def slow_copy(source, target):
    time.sleep(0.02)
    copy_file(source, target)


placement.copy_file = slow_copy
layout = detect_layout(Path(sys.argv[1]), "ImageNet")
build_subsets(layout, {"ReIN8": sys.argv[3].split(",")}, Path(sys.argv[2]), workers=2)
"""


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def test_killed_build_resumes_to_clean_tree(tmp_path):
    wnids = [SEA_SNAKE, "n01440764", "n01443537", "n01484850", "n02123159", "n02123045", "n04592741", "n03000134"]
    root = make_imagenet_tree(tmp_path / "ImageNet", "val-folders", wnids, train_per_class=25)
    before = tree_digest(root)
    out = tmp_path / "out"
    partial = out / ".ReIN8.partial"

    child = subprocess.Popen([PYTHON, "-c", KILLED_BUILD, str(root), str(out), ",".join(wnids)], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None and count_files(partial) < 40:
        time.sleep(0.02)
    assert child.poll() is None, "the build ended before it could be killed; make it slower"
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert not (out / "ReIN8").exists()
    assert count_files(partial) >= 40
    assert not (partial / "subset.json").exists()

    layout = detect_layout(root, "ImageNet")
    summary = build_subsets(layout, {"ReIN8": wnids}, out, workers=2)[0]
    build_subsets(layout, {"ReIN8": wnids}, tmp_path / "clean", workers=2)
    assert summary.train_images == 200
    assert digest_without_lock(out) == digest_without_lock(tmp_path / "clean")
    assert tree_digest(root) == before


def test_failed_write_reported_and_resumable(imagenet, tmp_path, monkeypatch):
    copies = []
    real_copy_contents = file_placement._copy_contents

    def copy_until_full(reader, writer):
        if len(copies) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device", writer.name)
        copies.append(writer.name)
        return real_copy_contents(reader, writer)

    monkeypatch.setattr(file_placement, "_copy_contents", copy_until_full)
    with pytest.raises(UserError) as caught:
        build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=1)
    message = str(caught.value)
    assert "No space left on device" in message
    assert str(tmp_path / "out" / ".ReIN3.partial") in message
    assert not (tmp_path / "out" / "ReIN3").exists()
    assert not (tmp_path / "out" / ".ReIN3.partial" / "subset.json").exists()

    monkeypatch.setattr(file_placement, "_copy_contents", real_copy_contents)
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", workers=1)
    build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "clean", workers=1)
    assert digest_without_lock(tmp_path / "out") == digest_without_lock(tmp_path / "clean")


def test_interrupted_swap_recovered(imagenet, tmp_path):
    out = tmp_path / "out"
    build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)
    os.rename(out / "ReIN3", out / ".ReIN3.old")
    summary = build_subsets(imagenet, {"ReIN3": SUBSET}, out, workers=2)[0]
    assert summary.skipped
    assert sorted(os.listdir(out)) == [".lock", "ReIN3"]


def test_out_dir_inside_root_rejected(imagenet, tmp_path):
    before = tree_digest(imagenet.root)
    (tmp_path / "link").symlink_to(imagenet.root / "train")
    for out in (imagenet.root, imagenet.root / "subsets", tmp_path / "link" / "subsets"):
        with pytest.raises(UserError, match="is inside the dataset root"):
            build_subsets(imagenet, {"ReIN3": SUBSET}, out)
    with pytest.raises(UserError, match="would overlap the dataset root"):
        build_subsets(imagenet, {imagenet.root.name: SUBSET}, imagenet.root.parent)
    assert tree_digest(imagenet.root) == before


def test_unknown_class_rejected(imagenet, tmp_path):
    with pytest.raises(UserError) as caught:
        build_subsets(imagenet, {"ReIN3": [SEA_SNAKE, "n0144O764"]}, tmp_path / "out")
    assert "subset ReIN3: 1 of 2 names are not classes" in str(caught.value)
    assert "'n0144O764' (closest: n01440764" in str(caught.value)
    assert not (tmp_path / "out" / "ReIN3").exists()


@pytest.mark.parametrize("name", ["../ReIN3", ".ReIN3", "Re IN3", ""])
def test_unsafe_subset_name_rejected(imagenet, tmp_path, name):
    with pytest.raises(UserError, match="not a plain folder name"):
        build_subsets(imagenet, {name: SUBSET}, tmp_path / "out")


def test_unknown_mode_rejected(imagenet, tmp_path):
    with pytest.raises(UserError, match="mode 'move' is unknown; choose one of copy, hardlink, symlink"):
        build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out", mode="move")


def test_class_without_val_images_rejected(tmp_path):
    root = make_imagenet_tree(tmp_path / "ImageNet", "val-folders", WNIDS)
    shutil.rmtree(root / "val" / SEA_SNAKE)
    with pytest.raises(UserError, match=r"1 class has no images in a split .*: n01751748 \(val\); leave this class out"):
        build_subsets(detect_layout(root, "ImageNet"), {"ReIN3": SUBSET}, tmp_path / "out")


def test_foreign_folder_not_overwritten(imagenet, tmp_path):
    (tmp_path / "out" / "ReIN3").mkdir(parents=True)
    (tmp_path / "out" / "ReIN3" / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="has no subset.json, so it was not built by this tool"):
        build_subsets(imagenet, {"ReIN3": SUBSET}, tmp_path / "out")
    assert (tmp_path / "out" / "ReIN3" / "notes.txt").read_text() == "mine\n"


def test_imagefolder_nested_files_keep_folders(tmp_path):
    root = tmp_path / "flowers"
    for which in ("train", "val"):
        write_image(root / which / "rose" / "garden" / "1.jpg", 0)
        write_image(root / which / "rose" / "1.jpg", 1)
        write_image(root / which / "tulip" / "1.jpg", 2)
    build_subsets(detect_layout(root, "ImageFolder"), {"Re1": ["rose"]}, tmp_path / "out", workers=2)
    files = sorted(path.relative_to(tmp_path / "out" / "Re1").as_posix() for path in (tmp_path / "out" / "Re1").rglob("*.jpg"))
    assert files == ["train/rose/1.jpg", "train/rose/garden/1.jpg", "val/rose/1.jpg", "val/rose/garden/1.jpg"]


def test_published_imagenet_lists_materialized(tmp_path):
    lists = sorted((PUBLISHED / "ImageNet").glob("ReIN*.txt"))
    subsets = {subset_name_from_list(path): read_class_list(path) for path in lists}
    assert sorted(subsets) == ["ReIN100", "ReIN150", "ReIN200", "ReIN30", "ReIN50"]
    wnids = sorted(set().union(*subsets.values()))
    root = make_imagenet_tree(tmp_path / "ImageNet", "package", wnids, train_per_class=1, val_per_class=1)
    before = tree_digest(root)

    summaries = build_subsets(detect_layout(root, "ImageNet"), subsets, tmp_path / "out", mode="hardlink")
    for summary in summaries:
        classes = subsets[summary.name]
        assert (summary.classes, summary.train_images, summary.val_images) == (len(classes), len(classes), len(classes))
        for which in ("train", "val"):
            assert sorted(os.listdir(tmp_path / "out" / summary.name / which)) == sorted(classes)
    assert tree_digest(root) == before


def test_published_places365_lists_materialized(tmp_path):
    lists = sorted((PUBLISHED / "Places365").glob("RePL*.txt"))
    subsets = {subset_name_from_list(path): read_class_list(path) for path in lists}
    categories = sorted(set().union(*subsets.values()))
    root = make_places365_tree(tmp_path / "Places365", "original", categories, train_per_class=1)
    before = tree_digest(root)

    summaries = build_subsets(detect_layout(root, "Places365"), subsets, tmp_path / "out")
    assert [summary.name for summary in summaries] == ["RePL30", "RePL50"]
    for summary in summaries:
        classes = subsets[summary.name]
        assert (summary.classes, summary.train_images, summary.val_images) == (len(classes), len(classes), len(classes))
        for which in ("train", "val"):
            assert sorted(os.listdir(tmp_path / "out" / summary.name / which)) == sorted(classes)
    assert tree_digest(root) == before


@pytest.mark.parametrize("files", [{}, {"train/b/x.JPEG": 3, "train/a/\u00e9t\u00e9 \"1\".JPEG": 10, "val/a/y.png": 0}])
def test_manifest_text_parses_back(files):
    manifest = {"format": 1, "name": "ReIN3", "mode": "copy", "classes": ["a", "b"], "train_images": 2,
                "val_images": 1, "bytes": 13, "files": files}

    text = manifest_text(manifest)

    assert json.loads(text) == manifest
    lines = text.splitlines()
    for target, size in files.items():
        assert any(line.startswith(f"  {json.dumps(target)}: {size}") for line in lines), target

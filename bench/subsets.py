"""Benchmark 3: building a subset with `build_subsets` against `shutil.copytree` of the same class folders.

The tree is ImageFolder-shaped (train/<class>/, val/<class>/) with files of random bytes of
ImageNet's mean JPEG size, about 110 KB, because the builder never decodes them. Every
measurement starts after `os.sync()` and ends with one, inside the timing, because a copy is
complete only when it is on disk. Without the sync a few thousand files only fill the page cache,
and its later write-back slows whichever measurement comes next. A warm-up round is left out: in
two runs its copytree wrote 1,336 and 4,155 files/s, against about 8,000 in the later rounds.
"""

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import Result, run_side_by_side
from utils.layouts import detect_layout
from utils.subsets import build_subsets

log = logging.getLogger(__name__)

FILE_BYTES = 110_000
SUBSET = "ReBench"


def write_file_tree(root: Path, classes: int, train_per_class: int, val_per_class: int) -> Path:
    """Write an ImageFolder tree of random-byte '.JPEG' files, or reuse one written with the same counts."""
    marker = root / f".spec-{classes}-{train_per_class}-{val_per_class}-{FILE_BYTES}"
    if marker.is_file():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(0)
    for which, count in (("train", train_per_class), ("val", val_per_class)):
        for class_index in range(classes):
            folder = root / which / f"n{class_index:08d}"
            folder.mkdir(parents=True)
            for image_index in range(count):
                (folder / f"n{class_index:08d}_{image_index}.JPEG").write_bytes(rng.bytes(FILE_BYTES))
    marker.touch()
    return root


def synced_files_per_second(build, out: Path, files: int) -> float:
    """Remove ``out``, sync, then time ``build`` and a final sync; return files per second."""
    if out.exists():
        shutil.rmtree(out)
    os.sync()
    start = time.perf_counter()
    build()
    os.sync()
    return files / (time.perf_counter() - start)


def bench_subset_building(work: Path, classes: int, train_per_class: int, val_per_class: int, repeats: int, workers: int) -> list[Result]:
    """Return the results of `--mode hardlink` and `--mode copy` against copytree, in files per second."""
    root = write_file_tree(work / "tree", classes, train_per_class, val_per_class)
    layout = detect_layout(root, "ImageFolder")
    chosen = [f"n{index:08d}" for index in range(0, classes, 2)]
    files = len(chosen) * (train_per_class + val_per_class)

    def copytree() -> None:
        for which in ("train", "val"):
            for name in chosen:
                shutil.copytree(root / which / name, work / "copytree" / SUBSET / which / name)

    def project(mode: str):
        return lambda: build_subsets(layout, {SUBSET: chosen}, work / mode, mode, workers)

    rates = run_side_by_side({
        "copytree": lambda: synced_files_per_second(copytree, work / "copytree", files),
        "hardlink": lambda: synced_files_per_second(project("hardlink"), work / "hardlink", files),
        "copy": lambda: synced_files_per_second(project("copy"), work / "copy", files),
    }, repeats, warmup=1)
    for mode in ("copytree", "hardlink", "copy"):
        shutil.rmtree(work / mode, ignore_errors=True)
    details = {"files": files, "classes": len(chosen), "file_bytes": FILE_BYTES, "workers": workers}
    return [
        Result("subset_hardlink", "3. Building a subset, --mode hardlink", "files/s", rates["hardlink"], rates["copytree"],
               "shutil.copytree of the same class folders", details=details).check_ratio(50.0),
        Result("subset_copy", "3. Building a subset, --mode copy", "files/s", rates["copy"], rates["copytree"],
               "shutil.copytree of the same class folders", details=details).check_ratio(1.0),
    ]

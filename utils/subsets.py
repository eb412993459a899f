"""Building subsets: the images of chosen classes in `<out>/<name>/train/<class>/` and `.../val/<class>/`.

The result is ready for `torchvision.datasets.ImageFolder`. Validation images of a flat layout land
in class folders like the training images.

A subset is built in the sibling folder `<out>/.<name>.partial/`. The manifest `subset.json`
(classes, mode, and the size of every file) is written after every image is in place, and only then
is the folder renamed to `<out>/<name>/`, so a folder under the final name is always complete. A
re-run compares an existing subset with its manifest and the files on disk and skips it when all
match: the same files and folders, each of its source's size and, for copies, with its source's
modification time. Otherwise it resumes the partial folder, keeping files already in place, and swaps the new
subset in. Nothing is written inside the dataset root, and the output folder may not lie inside it.
"""

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from utils.atomic import exclusive_lock, write_text_atomically
from utils.class_lists import check_classes, check_folder_name
from utils.cli import counted
from utils.errors import UserError
from utils.file_placement import FilePlacer, PlannedFile, is_in_place, run_parallel
from utils.layouts import SPLITS, Layout, Split

log = logging.getLogger(__name__)

MODES = ("copy", "hardlink", "symlink")
MANIFEST = "subset.json"
README = "README.md"
MANIFEST_FORMAT = 1
# Files per thread-pool task when placing or checking files.
CHUNK_FILES = 64


@dataclass
class SubsetSummary:
    """The outcome of one subset in a call of `build_subsets`: its counts, size and build time."""

    name: str
    path: Path
    classes: int
    train_images: int
    val_images: int
    bytes: int
    seconds: float
    skipped: bool


def build_subsets(
    layout: Layout,
    subsets: dict[str, list[str]],
    out_dir: Path,
    mode: str = "copy",
    workers: int = 8,
) -> list[SubsetSummary]:
    """Build each subset (name -> class names) of ``layout`` in ``out_dir`` and log one line per subset.

    ``mode`` is 'copy', 'hardlink' (falls back to copying where linking fails, for example across
    file systems) or 'symlink' (absolute targets). Complete subsets are verified and skipped.
    Raises UserError for an unknown mode or class, an unsafe subset name, an output folder inside
    the dataset root, a class without training or validation images, and a failed write.
    """
    if mode not in MODES:
        raise UserError(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)}")
    if workers < 1:
        raise UserError(f"workers = {workers} is below 1; use at least one worker thread")
    for name in subsets:
        check_folder_name(name, "subset name")
    root = layout.root.resolve()
    out_dir = check_out_dir(out_dir, root)
    if not subsets:
        return []

    known = layout.classes()
    subsets = {name: unique_classes(name, classes) for name, classes in subsets.items()}
    for name, classes in subsets.items():
        check_classes(classes, known, f"subset {name}")
    requested = set().union(*subsets.values())
    splits = {which: layout.split(which, requested) for which in SPLITS}

    create_out_dir(out_dir)
    with exclusive_lock(out_dir, "building subsets"):
        sources = stat_sources(root, splits, workers)
        return [
            build_subset(layout, name, classes, splits, sources, out_dir, mode, workers)
            for name, classes in subsets.items()
        ]


def check_out_dir(out_dir: Path, root: Path) -> Path:
    """Return the resolved output folder; raise UserError when it is the dataset root or inside it."""
    resolved = out_dir.expanduser().resolve()
    if resolved == root or root in resolved.parents:
        raise UserError(
            f"output folder {out_dir} is inside the dataset root {root}, where nothing may be written; "
            "choose an output folder outside the dataset"
        )
    return resolved


def create_out_dir(out_dir: Path) -> None:
    """Create the output folder and its parents; raise UserError when that fails."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"output folder {out_dir} is a file; choose a folder for the subsets") from None
    except OSError as error:
        raise UserError(f"output folder {out_dir} could not be created: {error.strerror}; check its parent") from error


def unique_classes(name: str, classes: list[str]) -> list[str]:
    """Return ``classes`` without repeats, in order, and log a warning naming the repeated ones."""
    unique = list(dict.fromkeys(classes))
    if len(unique) < len(classes):
        repeated = sorted({label for label in classes if classes.count(label) > 1})
        log.warning("subset %s lists %s more than once; each class is used once", name, ", ".join(repeated))
    return unique


def stat_sources(root: Path, splits: dict[str, Split], workers: int) -> dict[str, os.stat_result]:
    """Return the `os.stat` of every listed image by relative path; raise UserError for a missing one."""
    paths = sorted({path for split in splits.values() for path in split.files})
    root_text = str(root)

    def stat_one(relative: str) -> tuple[str, os.stat_result]:
        try:
            return relative, os.stat(os.path.join(root_text, relative))
        except OSError as error:
            raise UserError(
                f"image {root / relative} is listed by the dataset layout but cannot be read: {error.strerror}; "
                "restore it, or leave its class out of the subsets"
            ) from error

    with tqdm(total=len(paths), desc="checking images", unit="file", leave=False) as bar:
        return dict(run_parallel(stat_one, paths, workers, bar, CHUNK_FILES))


def build_subset(
    layout: Layout,
    name: str,
    classes: list[str],
    splits: dict[str, Split],
    sources: dict[str, os.stat_result],
    out_dir: Path,
    mode: str,
    workers: int,
) -> SubsetSummary:
    """Build or verify one subset and return its summary."""
    start = time.monotonic()
    root = layout.root.resolve()
    files = plan_files(layout, name, classes, splits, sources, root)
    manifest = make_manifest(name, mode, classes, files)
    final, partial, old = out_dir / name, out_dir / f".{name}.partial", out_dir / f".{name}.old"
    for folder in (final, partial, old):
        check_outside(folder, root)
    if final.is_symlink():
        raise UserError(f"{final} is a symbolic link, not a subset built by this tool; remove the link or choose another output folder")
    recover_interrupted_swap(final, old)

    if final.exists():
        problem = find_problem(final, manifest, files, mode)
        if problem is None:
            return summarize(name, final, manifest, time.monotonic() - start, skipped=True)
        log.warning("%s: %s; rebuilding it, which removes files added by hand", final, problem)

    placer = FilePlacer(partial, mode)
    try:
        prepare_partial(partial, files)
        with tqdm(total=len(files), desc=name, unit="file") as bar:
            run_parallel(placer.place, files, workers, bar, CHUNK_FILES)
        write_text_atomically(partial / README, describe_subset(manifest, placer.fallback_reasons))
        write_text_atomically(partial / MANIFEST, manifest_text(manifest))
        swap_in(partial, final, old)
    except OSError as error:
        raise UserError(
            f"writing subset {name} in {out_dir} failed: {error.strerror or error} ({error.filename}); "
            "fix the permissions of the output folder or free disk space, or choose another folder, then run again to resume"
        ) from error
    return summarize(name, final, manifest, time.monotonic() - start, skipped=False, copied=placer.copied_instead)


def plan_files(
    layout: Layout,
    name: str,
    classes: list[str],
    splits: dict[str, Split],
    sources: dict[str, os.stat_result],
    root: Path,
) -> list[PlannedFile]:
    """List the files of one subset, sorted by target path; raise for empty classes and name clashes."""
    requested = set(classes)
    files = []
    root_text = str(root)
    counts = {(which, label): 0 for which in SPLITS for label in requested}
    for which, split in splits.items():
        for relative, label in zip(split.files, split.labels):
            if label not in requested:
                continue
            counts[which, label] += 1
            status = sources[relative]
            target = f"{which}/{label}/{layout.path_in_class(relative, label)}"
            files.append(PlannedFile(target, os.path.join(root_text, relative), status.st_size, status.st_dev, status.st_ino, status.st_mtime_ns))

    empty: dict[str, list[str]] = {}
    for (which, label), count in sorted(counts.items()):
        if count == 0:
            empty.setdefault(label, []).append(which)
    if empty:
        shown = ", ".join(f"{label} ({', '.join(splits)})" for label, splits in sorted(empty.items())[:10])
        raise UserError(
            f"subset {name}: {counted(len(empty), 'class has', 'classes have')} no images in a split of {layout.root}: {shown}; "
            + ("leave this class out of the list or add its images" if len(empty) == 1 else "leave these classes out of the list or add their images")
        )

    files.sort(key=lambda planned: planned.target)
    for previous, current in zip(files, files[1:]):
        if previous.target == current.target:
            raise UserError(
                f"subset {name}: {previous.source} and {current.source} would both become {current.target}; "
                "rename one of them in the dataset"
            )
    return files


def make_manifest(name: str, mode: str, classes: list[str], files: list[PlannedFile]) -> dict:
    """Return the manifest of a subset: name, mode, sorted classes, counts and every file's size."""
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "mode": mode,
        "classes": sorted(classes),
        "train_images": sum(1 for planned in files if planned.target.startswith("train/")),
        "val_images": sum(1 for planned in files if planned.target.startswith("val/")),
        "bytes": sum(planned.size for planned in files),
        "files": {planned.target: planned.size for planned in files},
    }


def manifest_text(manifest: dict) -> str:
    """Return a manifest as JSON text: the summary keys indented and sorted, then one line per file, last.

    `json.dumps` with ``indent`` uses its pure-Python encoder, which took about 7 microseconds per
    file in a profile, more than a hard link. Each file name here goes through the C encoder instead.
    """
    summary = json.dumps({key: value for key, value in manifest.items() if key != "files"}, indent=1, sort_keys=True)
    files = ",\n".join(f"  {json.dumps(target)}: {size}" for target, size in sorted(manifest["files"].items()))
    return summary.removesuffix("\n}") + ',\n "files": {\n' + files + "\n }\n}\n"


def check_outside(folder: Path, root: Path) -> None:
    """Raise UserError when an output folder is the dataset root, lies inside it or contains it."""
    if folder == root or root in folder.parents or folder in root.parents:
        raise UserError(
            f"subset folder {folder} would overlap the dataset root {root}; choose another output folder or subset name"
        )


def recover_interrupted_swap(final: Path, old: Path) -> None:
    """Finish or undo a swap that a killed run left half done (see `swap_in`)."""
    if not old.exists():
        return
    if final.exists():
        shutil.rmtree(old)
    else:
        os.rename(old, final)


def find_problem(folder: Path, manifest: dict, files: list[PlannedFile], mode: str) -> str | None:
    """Return why an existing subset differs from the expected one, or None when it is complete.

    An empty folder is removed. Raises UserError for a non-empty folder without a manifest, which
    this module did not write.
    """
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder} is a file, not a subset folder; move it away or delete it, or choose another output folder")
    if not manifest_path.is_file():
        if not any(folder.iterdir()):
            folder.rmdir()
            return "the folder is empty"
        raise UserError(
            f"{folder} exists but has no {MANIFEST}, so it was not built by this tool; "
            "move it away or delete it, or choose another output folder"
        )
    try:
        existing = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its {MANIFEST} cannot be read ({error})"
    if not isinstance(existing, dict):
        return f"its {MANIFEST} is not a JSON object"

    if existing.get("classes") != manifest["classes"]:
        return "its class list differs from the requested one"
    if existing.get("mode") != manifest["mode"]:
        return f"it was built by {existing.get('mode')}, not {manifest['mode']}"
    if existing != manifest:
        return "the dataset's images of its classes changed"
    on_disk = files_below(folder) - {MANIFEST, README}
    if on_disk != set(manifest["files"]):
        missing, unexpected = len(set(manifest["files"]) - on_disk), len(on_disk - set(manifest["files"]))
        return f"{counted(missing, 'file is', 'files are')} missing and {counted(unexpected, 'file is', 'files are')} unexpected"
    extra_folders = folders_below(folder) - parent_folders(set(manifest["files"]))
    if extra_folders:
        return f"it holds {counted(len(extra_folders), 'unexpected folder')}, e.g. {min(extra_folders)}"
    wrong = [planned.target for planned in files if not is_in_place(folder / planned.target, planned, mode)]
    if wrong:
        return f"{counted(len(wrong), 'file differs', 'files differ')} from the dataset's in size, modification time or link target, e.g. {wrong[0]}"
    return None


def folders_below(folder: Path) -> set[str]:
    """Return the relative POSIX paths of all folders below ``folder``, not following links."""
    found = set()
    for dirpath, dirnames, _ in os.walk(folder):
        relative = Path(dirpath).relative_to(folder)
        found.update((relative / name).as_posix() for name in dirnames if not os.path.islink(os.path.join(dirpath, name)))
    return found


def files_below(folder: Path) -> set[str]:
    """Return the relative POSIX paths of all files and links below ``folder``, not following links."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        relative = Path(dirpath).relative_to(folder)
        found.update((relative / name).as_posix() for name in filenames)
        found.update((relative / name).as_posix() for name in dirnames if os.path.islink(os.path.join(dirpath, name)))
    return found


def prepare_partial(partial: Path, files: list[PlannedFile]) -> None:
    """Create the partial folder or clean one left by an earlier run, keeping the files of the plan.

    Entries the plan does not contain are removed: leftovers of a changed list, temporary copies
    of a killed run, an old manifest, and links to folders (which could lead out of the folder).
    """
    if partial.is_symlink():
        partial.unlink()
    partial.mkdir(exist_ok=True)
    expected = {planned.target for planned in files}
    folders = parent_folders(expected)

    for dirpath, dirnames, filenames in os.walk(partial, topdown=False):
        relative = Path(dirpath).relative_to(partial)
        for name in filenames:
            if (relative / name).as_posix() not in expected:
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                os.unlink(path)
            elif (relative / name).as_posix() not in folders and not os.listdir(path):
                os.rmdir(path)
    for folder in sorted(folders):
        (partial / folder).mkdir(parents=True, exist_ok=True)


def parent_folders(targets: set[str]) -> set[str]:
    """Return every folder above the relative POSIX paths ``targets``, such as 'train' and 'train/n01'."""
    folders = set()
    for folder in {target.rpartition("/")[0] for target in targets}:
        while folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    return folders


def swap_in(partial: Path, final: Path, old: Path) -> None:
    """Rename the complete partial folder to its final name, replacing an outdated subset.

    An outdated subset is first renamed to `old` and deleted last. A run killed between the steps
    leaves the outdated subset, the new one or nothing under the final name, never a mix of both,
    and `recover_interrupted_swap` finishes or undoes the swap on the next run.
    """
    if final.exists():
        os.rename(final, old)
    os.rename(partial, final)
    if old.exists():
        shutil.rmtree(old)


def describe_subset(manifest: dict, fallback_reasons: list[str] | None = None) -> str:
    """Return a Markdown page with the counts of a subset per class and split.

    ``fallback_reasons`` gives the reasons why hard links failed where a hard-link build copied files instead.
    """
    counts = {label: {"train": 0, "val": 0} for label in manifest["classes"]}
    for target in manifest["files"]:
        which, label, _ = target.split("/", 2)
        counts[label][which] += 1
    lines = [
        f"# {manifest['name']}",
        "",
        f"{len(counts)} classes, {manifest['train_images']:,} training and {manifest['val_images']:,} validation "
        f"images ({manifest['bytes']:,} bytes), {placement_text(manifest['mode'], fallback_reasons)}. "
        f"Load `train/` and `val/` with `torchvision.datasets.ImageFolder`; `{MANIFEST}` lists every file.",
        "",
        "| class | train | val |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {label} | {count['train']} | {count['val']} |" for label, count in counts.items()]
    return "\n".join(lines) + "\n"


def placement_text(mode: str, fallback_reasons: list[str] | None) -> str:
    """Return the phrase that describes how the files of a subset were placed, naming copies made where hard links failed."""
    if not fallback_reasons:
        return f"placed by {mode}"
    return f"placed by hard link, or by copy where hard links failed ({'; '.join(fallback_reasons)})"


def summarize(name: str, path: Path, manifest: dict, seconds: float, skipped: bool, copied: bool = False) -> SubsetSummary:
    """Log the one-line summary of a subset and return it as a record; ``copied`` marks a hard-link build that copied."""
    summary = SubsetSummary(
        name=name,
        path=path,
        classes=len(manifest["classes"]),
        train_images=manifest["train_images"],
        val_images=manifest["val_images"],
        bytes=manifest["bytes"],
        seconds=seconds,
        skipped=skipped,
    )
    action = "complete and verified, skipped" if skipped else f"built by {manifest['mode']}"
    if copied:
        action = "built by copy, since hard links fail there"
    log.info(
        "%s: %d classes, %d train and %d val images, %s bytes, %.1f s, %s in %s",
        name, summary.classes, summary.train_images, summary.val_images, f"{summary.bytes:,}", seconds, action, path,
    )
    return summary

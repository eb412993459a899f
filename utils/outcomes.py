"""Validation outcomes: what a network predicted for each validation image, stored once and reused.

The project's outcomes file is an uncompressed `.npz` archive read with ``allow_pickle=False``:

- ``class_names``: the network's classes in output order (strings),
- ``true``: per image, the index of its true class in ``class_names`` (int32),
- ``topk``: per image, the indices of the k highest-scoring classes, best first (int32, N x k),
- ``probs``: their softmax probabilities (float32, N x k), absent when unknown,
- ``paths``: per image, its path relative to the dataset root, absent when unknown,
- ``meta``: a JSON document with the network's identity, the preprocessing, the fingerprint of
  the validation split, the files that could not be decoded and where the outcomes came from.

The file is written under a temporary name and renamed when complete, so a killed validation
pass never leaves a partial file that a later run could take for a full one.
"""

import csv
import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from utils.atomic import atomic_output
from utils.errors import UserError
from utils.layouts import Split

log = logging.getLogger(__name__)

FORMAT = "rescale-outcomes"
FORMAT_VERSION = 1
OUTCOMES_FILE = "outcomes.npz"


@dataclass
class Outcomes:
    """Top-k predictions of one network for every validation image that could be decoded."""

    class_names: list[str]
    true: np.ndarray
    topk: np.ndarray
    probs: np.ndarray | None = None
    paths: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.true = np.asarray(self.true, dtype=np.int32)
        self.topk = np.asarray(self.topk, dtype=np.int32)
        if self.topk.ndim == 1:
            self.topk = self.topk[:, None]
        if self.probs is not None:
            self.probs = np.asarray(self.probs, dtype=np.float32)
            if self.probs.ndim == 1:
                self.probs = self.probs[:, None]
        self._check()

    def __len__(self) -> int:
        return len(self.true)

    @property
    def k(self) -> int:
        return self.topk.shape[1]

    @property
    def skipped(self) -> list[dict]:
        """Files of the validation split that could not be decoded: ``{'path', 'reason'}`` records."""
        return self.meta.get("skipped", [])

    def _check(self) -> None:
        n, k = len(self.true), self.topk.shape[1]
        problems = []
        if self.topk.shape[0] != n:
            problems.append(f"{self.topk.shape[0]} prediction rows for {n} images")
        if self.probs is not None and self.probs.shape != self.topk.shape:
            problems.append(f"probabilities of shape {self.probs.shape} for predictions of shape {self.topk.shape}")
        if self.paths is not None and len(self.paths) != n:
            problems.append(f"{len(self.paths)} paths for {n} images")
        if n and (self.true.min() < 0 or self.true.max() >= len(self.class_names)):
            problems.append(f"true class indices outside 0..{len(self.class_names) - 1}")
        if n and k and (self.topk.min() < 0 or self.topk.max() >= len(self.class_names)):
            problems.append(f"predicted class indices outside 0..{len(self.class_names) - 1}")
        if problems:
            raise UserError(f"inconsistent outcomes ({'; '.join(problems)}); recompute them or fix the imported files")


def fingerprint_split(split: Split) -> str:
    """Hash the validation split's file list, labels, sizes and modification times.

    Any added, removed, relabelled, resized or rewritten file changes the fingerprint, without
    reading the images themselves.
    """
    digest = hashlib.sha256()
    for path, label in sorted(zip(split.files, split.labels)):
        try:
            stat = os.stat(split.root / path)
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{path}\t{label}\t{signature}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def save_outcomes(outcomes: Outcomes, path: Path) -> None:
    """Write the outcomes archive atomically."""
    meta = dict(outcomes.meta, format=FORMAT, version=FORMAT_VERSION, num_images=len(outcomes), topk=outcomes.k)
    arrays = {
        "class_names": np.asarray(outcomes.class_names, dtype=str),
        "true": outcomes.true,
        "topk": outcomes.topk,
        "meta": np.asarray(json.dumps(meta, sort_keys=True)),
    }
    if outcomes.probs is not None:
        arrays["probs"] = outcomes.probs
    if outcomes.paths is not None:
        arrays["paths"] = np.asarray(outcomes.paths, dtype=str)
    with atomic_output(path, "wb") as stream:
        np.savez(stream, **arrays)
    outcomes.meta = meta
    log.info("wrote outcomes of %d images to %s", len(outcomes), path)


class DamagedOutcomes(UserError):
    """An outcomes archive that is truncated, corrupt or incomplete; callers add the fix."""


ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")


def load_outcomes(path: Path) -> Outcomes:
    """Read an outcomes archive written by `save_outcomes`, or raise a clear error if it is damaged."""
    _check_zip_signature(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise UserError(f"{path} is not an outcomes file of this project (format {found!r})")
            if meta.get("version", 0) > FORMAT_VERSION:
                raise UserError(f"{path} was written by a newer version of this project (format version {meta['version']}); update the project")
            outcomes = Outcomes(
                class_names=archive["class_names"].tolist(),
                true=archive["true"],
                topk=archive["topk"],
                probs=archive["probs"] if "probs" in archive.files else None,
                paths=archive["paths"] if "paths" in archive.files else None,
                meta=meta,
            )
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"outcomes file {path} not found; check the path") from None
    # zipfile raises NotImplementedError for record flags it does not support, which damage can set.
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, NotImplementedError) as error:
        raise DamagedOutcomes(f"outcomes file {path} is truncated or corrupt ({type(error).__name__}: {error})") from error
    if meta.get("num_images") != len(outcomes):
        raise DamagedOutcomes(f"outcomes file {path} is incomplete: {len(outcomes)} of {meta.get('num_images')} images")
    return outcomes


def _check_zip_signature(path: Path) -> None:
    """Raise DamagedOutcomes unless ``path`` starts like a zip archive, as every `.npz` does.

    Without this check `np.load` takes any other file for a pickle and reports pickled data.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except FileNotFoundError:
        raise UserError(f"outcomes file {path} not found; check the path") from None
    except OSError as error:
        raise UserError(f"outcomes file {path} cannot be read: {error.strerror or error}") from None
    if head not in ZIP_SIGNATURES:
        raise DamagedOutcomes(f"outcomes file {path} is truncated or corrupt: it is empty or not an .npz (zip) archive")


def import_outcomes(path: Path) -> Outcomes:
    """Read outcomes computed elsewhere: this project's `.npz`, a CSV file, or a folder of `.npy` arrays."""
    if not path.exists():
        raise UserError(f"--outcomes {path} not found; give an outcomes .npz, a .csv file or a folder with true_labels.npy")
    if path.is_dir():
        outcomes = _import_numpy_folder(path)
    elif path.suffix.lower() == ".csv":
        outcomes = _import_csv(path)
    elif path.suffix.lower() == ".npz":
        try:
            outcomes = load_outcomes(path)
        except DamagedOutcomes as error:
            raise UserError(f"--outcomes: {error}; give an outcomes .npz that RescaleDataset.py wrote, a .csv file "
                            "or a folder with true_labels.npy") from None
    else:
        raise UserError(f"--outcomes {path}: unknown format; give an outcomes .npz, a .csv file or a folder with true_labels.npy")
    outcomes.meta.setdefault("source", f"import:{path}")
    log.info("imported outcomes of %d images over %d classes from %s", len(outcomes), len(outcomes.class_names), path)
    return outcomes


CSV_HEADER_WORDS = {"path", "file", "filename", "image", "file_name"}


def _import_csv(path: Path) -> Outcomes:
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            row = [cell.strip() for cell in row]
            if not row or not any(row):
                continue
            if number == 1 and row[0].lower() in CSV_HEADER_WORDS:
                continue
            if len(row) not in (3, 4):
                raise UserError(f"{path}, line {number}: expected path, true class, predicted class[, probability], got {len(row)} columns")
            rows.append((number, row))
    if not rows:
        raise UserError(f"{path} contains no outcomes; expected rows of path, true class, predicted class[, probability]")
    names = sorted({row[1] for _, row in rows} | {row[2] for _, row in rows})
    index = {name: i for i, name in enumerate(names)}
    has_probs = all(len(row) == 4 for _, row in rows)
    probs = None
    if has_probs:
        try:
            probs = np.array([float(row[3]) for _, row in rows], dtype=np.float32)
        except ValueError:
            bad = next(n for n, row in rows if not _is_float(row[3]))
            raise UserError(f"{path}, line {bad}: the probability column must be a number") from None
    return Outcomes(
        class_names=names,
        true=np.array([index[row[1]] for _, row in rows]),
        topk=np.array([index[row[2]] for _, row in rows]),
        probs=probs,
        paths=np.array([row[0] for _, row in rows], dtype=str),
        meta={"source": f"import:{path}"},
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable .npy array ({error}); write it with numpy.save") from error


def _import_numpy_folder(folder: Path) -> Outcomes:
    true_path, predicted_path = folder / "true_labels.npy", folder / "predicted_labels.npy"
    for required in (true_path, predicted_path):
        if not required.is_file():
            raise UserError(f"--outcomes {folder}: {required.name} not found; the folder needs true_labels.npy and predicted_labels.npy")
    true = _load_npy(true_path).astype(np.int64)
    predicted = _load_npy(predicted_path).astype(np.int64)
    probs = _load_npy(folder / "probabilities.npy") if (folder / "probabilities.npy").is_file() else None
    if true.ndim != 1 or predicted.shape[0] != true.shape[0]:
        raise UserError(f"--outcomes {folder}: true_labels.npy has shape {true.shape} but predicted_labels.npy has shape {predicted.shape}; they need one row per image")
    paths = None
    if (folder / "classes.txt").is_file():
        names = [line.strip() for line in (folder / "classes.txt").read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if (folder / "index_to_filepath.json").is_file():
            paths = _read_filepaths(folder / "index_to_filepath.json", len(true))
    elif (folder / "index_to_filepath.json").is_file():
        paths = _read_filepaths(folder / "index_to_filepath.json", len(true))
        names = _class_names_from_paths(paths, true, folder)
    else:
        raise UserError(f"--outcomes {folder}: class names not found; add classes.txt (one name per line, in index order) or index_to_filepath.json")
    largest = int(max(true.max(initial=0), predicted.max(initial=0)))
    if largest >= len(names):
        raise UserError(f"--outcomes {folder}: class index {largest} has no name; classes.txt lists {len(names)} classes")
    return Outcomes(class_names=names, true=true, topk=predicted, probs=probs, paths=paths, meta={"source": f"import:{folder}"})


def _read_filepaths(path: Path, count: int) -> np.ndarray:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error})") from error
    if isinstance(rows, dict):
        rows = [rows[key] for key in sorted(rows, key=int)]
    if not isinstance(rows, list) or len(rows) != count:
        raise UserError(f"{path} must be a list of {count} file paths, one per image; found {len(rows) if isinstance(rows, list) else type(rows).__name__}")
    return np.asarray(rows, dtype=str)


def _class_names_from_paths(paths: np.ndarray, true: np.ndarray, folder: Path) -> list[str]:
    """Name class indices from rows such as `val/<class>/<file>`: the class folder of each image."""
    names: dict[int, str] = {}
    for label, relative in zip(true.tolist(), paths.tolist()):
        parts = relative.replace("\\", "/").split("/")
        if len(parts) < 2:
            raise UserError(f"{folder}/index_to_filepath.json: {relative!r} has no class folder; expected val/<class>/<file>")
        name = parts[-2]
        if names.setdefault(label, name) != name:
            raise UserError(f"{folder}: class index {label} appears under both {names[label]!r} and {name!r}")
    missing = [i for i in range(max(names) + 1) if i not in names]
    if missing:
        raise UserError(f"{folder}: class indices such as {missing[0]} have no image, so their names are unknown; add classes.txt")
    if len(set(names.values())) != len(names):
        raise UserError(f"{folder}: two class indices share a folder name; add classes.txt")
    return [names[i] for i in range(len(names))]

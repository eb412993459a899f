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
import io
import json
import logging
import os
import reprlib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from utils.atomic import atomic_output
from utils.cli import counted
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
        problems = self._shape_problems()
        if not problems:
            problems = self._value_problems()
        if problems:
            raise InconsistentOutcomes(f"inconsistent outcomes ({'; '.join(problems)}); recompute them or fix the imported files")

    def _shape_problems(self) -> list[str]:
        if self.true.ndim != 1 or self.topk.ndim != 2:
            return [f"true classes of shape {self.true.shape} and predictions of shape {self.topk.shape}, expected N and N x k"]
        n = len(self.true)
        problems = []
        if self.topk.shape[0] != n:
            problems.append(f"{counted(self.topk.shape[0], 'prediction row')} for {counted(n, 'image')}")
        if self.probs is not None and self.probs.shape != self.topk.shape:
            problems.append(f"probabilities of shape {self.probs.shape} for predictions of shape {self.topk.shape}")
        if self.paths is not None and len(self.paths) != n:
            problems.append(f"{counted(len(self.paths), 'path')} for {counted(n, 'image')}")
        return problems

    def _value_problems(self) -> list[str]:
        n, k, count = len(self.true), self.k, len(self.class_names)
        problems = []
        if n and (self.true.min() < 0 or self.true.max() >= count):
            problems.append(f"true class indices outside 0..{count - 1}")
        if n and k and (self.topk.min() < 0 or self.topk.max() >= count):
            problems.append(f"predicted class indices outside 0..{count - 1}")
        repeat = _first_repeat(self.class_names)
        if repeat is not None:
            first, second = repeat
            problems.append(f"class name {self.class_names[second]!r} appears twice in the class list, at indices {first} and {second}")
        return problems


class InconsistentOutcomes(UserError):
    """Outcomes whose arrays disagree with each other or with the class list. Callers add the file name."""


def _first_repeat(values) -> tuple[int, int] | None:
    """Return the positions of the first value that occurs a second time, or None when all values differ."""
    seen: dict = {}
    for position, value in enumerate(values):
        if value in seen:
            return seen[value], position
        seen[value] = position
    return None


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
    log.info("wrote outcomes of %s to %s", counted(len(outcomes), "image"), path)


class DamagedOutcomes(UserError):
    """An outcomes archive that is truncated, corrupt or incomplete. Callers add the fix."""


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
    except InconsistentOutcomes as error:
        raise InconsistentOutcomes(f"outcomes file {path}: {error}") from None
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
        raise UserError(f"outcomes file {path} cannot be read: {error.strerror or error}; check its permissions") from None
    if head not in ZIP_SIGNATURES:
        raise DamagedOutcomes(f"outcomes file {path} is truncated or corrupt: it is empty or not an .npz (zip) archive")


def import_outcomes(path: Path) -> Outcomes:
    """Read outcomes computed elsewhere: this project's `.npz`, a CSV file, or a folder of `.npy` arrays."""
    if not path.exists():
        raise UserError(f"--outcomes {path} not found; give an outcomes .npz, a .csv file or a folder with true_labels.npy")
    if path.is_dir():
        outcomes = _import_checked(_import_numpy_folder, path)
    elif path.suffix.lower() == ".csv":
        outcomes = _import_checked(_import_csv, path)
    elif path.suffix.lower() == ".npz":
        try:
            outcomes = load_outcomes(path)
        except DamagedOutcomes as error:
            raise UserError(f"--outcomes: {error}; give an outcomes .npz that RescaleDataset.py wrote, a .csv file "
                            "or a folder with true_labels.npy") from None
    else:
        raise UserError(f"--outcomes {path}: unknown format; give an outcomes .npz, a .csv file or a folder with true_labels.npy")
    outcomes.meta.setdefault("source", f"import:{path}")
    log.info("imported outcomes of %s over %s from %s", counted(len(outcomes), "image"), counted(len(outcomes.class_names), "class", "classes"), path)
    return outcomes


def _import_checked(importer, path: Path) -> Outcomes:
    """Run ``importer(path)``, adding ``path`` to the message when the outcomes it builds are inconsistent."""
    try:
        return importer(path)
    except InconsistentOutcomes as error:
        raise UserError(f"--outcomes {path}: {error}") from None


def _read_text(path: Path) -> str:
    """Return the text of a UTF-8 file without its byte order mark, or raise UserError naming the invalid byte."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path} cannot be read: {error.strerror or error}; check its permissions") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} is invalid; "
                        "save the file with UTF-8 encoding") from None
    return text.removeprefix("\ufeff")


CSV_HEADER_WORDS = {"path", "file", "filename", "image", "file_name"}
CSV_COLUMNS = ("path", "true class", "predicted class", "probability")

# A float32 softmax can exceed 1 or fall below 0 by a rounding error, which this margin accepts.
PROBABILITY_TOLERANCE = 1e-4


def _import_csv(path: Path) -> Outcomes:
    rows = _read_csv_rows(path)
    repeat = _first_repeat([row[0] for _, row in rows])
    if repeat is not None:
        (first, _), (second, row) = rows[repeat[0]], rows[repeat[1]]
        raise UserError(f"{path}, line {second}: image {row[0]!r} already appears on line {first}; give each image one row")
    names = sorted({row[1] for _, row in rows} | {row[2] for _, row in rows})
    index = {name: i for i, name in enumerate(names)}
    has_probs = len(rows[0][1]) == 4
    mixed = next(((number, row) for number, row in rows if (len(row) == 4) != has_probs), None)
    if mixed is not None:
        number, row = mixed
        raise UserError(f"{path}, line {number}: {len(row)} columns, but line {rows[0][0]} has {len(rows[0][1])}; "
                        "give the probability column on every line or on none")
    return Outcomes(
        class_names=names,
        true=np.array([index[row[1]] for _, row in rows]),
        topk=np.array([index[row[2]] for _, row in rows]),
        probs=_csv_probabilities(path, rows) if has_probs else None,
        paths=np.array([row[0] for _, row in rows], dtype=str),
        meta={"source": f"import:{path}"},
    )


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Return ``(line number, stripped cells)`` for each outcome row, skipping blank lines and a header."""
    rows = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        for row in reader:
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            if reader.line_num == 1 and row[0].lower() in CSV_HEADER_WORDS:
                continue
            _check_csv_row(path, reader.line_num, row)
            rows.append((reader.line_num, row))
    except csv.Error as error:
        raise UserError(f"{path}, line {reader.line_num}: invalid CSV ({error}); check that line for an unclosed quote") from None
    if not rows:
        raise UserError(f"{path} contains no outcomes; expected rows of path, true class, predicted class[, probability]")
    return rows


def _check_csv_row(path: Path, number: int, row: list[str]) -> None:
    if len(row) not in (3, 4):
        raise UserError(f"{path}, line {number}: expected path, true class, predicted class[, probability], got {len(row)} columns")
    for column, cell in zip(CSV_COLUMNS, row):
        if not cell:
            raise UserError(f"{path}, line {number}: the {column} column is empty; fill it in or delete the line")


def _csv_probabilities(path: Path, rows: list[tuple[int, list[str]]]) -> np.ndarray:
    try:
        values = np.array([float(row[3]) for _, row in rows])
    except ValueError:
        number, text = next((n, row[3]) for n, row in rows if not _is_float(row[3]))
        raise UserError(f"{path}, line {number}: probability {text!r} is not a number; give the probability as a decimal number") from None
    bad = _first_invalid_probability(values)
    if bad is not None:
        number, row = rows[bad]
        raise UserError(f"{path}, line {number}: probability {row[3]} is not between 0 and 1; "
                        "give the softmax probability of the predicted class")
    return values.astype(np.float32)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_invalid_probability(values: np.ndarray) -> int | None:
    """Return the flat index of the first NaN or value outside [0, 1] (with rounding tolerance), or None."""
    flat = values.ravel()
    valid = (flat >= -PROBABILITY_TOLERANCE) & (flat <= 1 + PROBABILITY_TOLERANCE)
    invalid = np.flatnonzero(~valid)
    return int(invalid[0]) if len(invalid) else None


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as stream:
            if stream.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise UserError(f"{path} is not a .npy file because it does not start with the NumPy header; write it with numpy.save")
            stream.seek(0)
            return np.load(stream, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable .npy array ({error}); write it with numpy.save") from error


def _load_labels(path: Path) -> np.ndarray:
    """Load class indices. A float array is accepted only when every value is a whole number."""
    labels = _load_npy(path)
    if labels.dtype.kind == "f":
        flat = labels.ravel()
        fractional = np.flatnonzero(~np.isfinite(flat) | (flat != np.trunc(flat)))
        if len(fractional):
            position = int(fractional[0])
            raise UserError(f"{path}: class index {flat[position]} at position {position} is not a whole number; "
                            "save the class indices as integers")
    elif labels.dtype.kind not in "iu":
        example = f" such as {reprlib.repr(labels.flat[0].item())}" if labels.size else ""
        raise UserError(f"{path} contains values of dtype {labels.dtype}{example}, not class indices; "
                        "save the class indices as integers")
    return labels.astype(np.int64)


def _load_probabilities(path: Path) -> np.ndarray:
    values = _load_npy(path)
    if values.dtype.kind not in "iuf":
        raise UserError(f"{path} contains values of dtype {values.dtype}, not probabilities; save the probabilities as floats")
    bad = _first_invalid_probability(values)
    if bad is not None:
        position = ", ".join(str(int(i)) for i in np.unravel_index(bad, values.shape))
        raise UserError(f"{path}: probability {values.flat[bad]} at [{position}] is not between 0 and 1; "
                        "save softmax probabilities, not logits")
    return values


def _import_numpy_folder(folder: Path) -> Outcomes:
    true_path, predicted_path = folder / "true_labels.npy", folder / "predicted_labels.npy"
    for required in (true_path, predicted_path):
        if not required.is_file():
            raise UserError(f"--outcomes {folder}: {required.name} not found; the folder needs true_labels.npy and predicted_labels.npy")
    true, predicted = _load_labels(true_path), _load_labels(predicted_path)
    if true.ndim != 1 or predicted.ndim not in (1, 2) or len(predicted) != len(true):
        raise UserError(f"--outcomes {folder}: true_labels.npy has shape {true.shape} but predicted_labels.npy has shape {predicted.shape}; "
                        "save N true class indices and N predicted class indices (or N x k, best first) for N images")
    if len(true) == 0:
        raise UserError(f"{true_path} contains no images; save one true class index per validation image")
    probs_path = folder / "probabilities.npy"
    probs = _load_probabilities(probs_path) if probs_path.is_file() else None
    names, paths = _class_names_and_paths(folder, true)
    largest = int(max(true.max(), predicted.max(initial=0)))
    if largest >= len(names):
        raise UserError(f"--outcomes {folder}: class index {largest} has no name because only {len(names)} class names are known; "
                        "list every class in classes.txt")
    return Outcomes(class_names=names, true=true, topk=predicted, probs=probs, paths=paths, meta={"source": f"import:{folder}"})


def _class_names_and_paths(folder: Path, true: np.ndarray) -> tuple[list[str], np.ndarray | None]:
    """Read the class names from classes.txt, or else from the class folders in index_to_filepath.json."""
    classes_path, filepaths_path = folder / "classes.txt", folder / "index_to_filepath.json"
    paths = _read_filepaths(filepaths_path, len(true)) if filepaths_path.is_file() else None
    if classes_path.is_file():
        names = [line.strip() for line in _read_text(classes_path).splitlines() if line.strip()]
    elif paths is not None:
        names = _class_names_from_paths(paths, true, folder)
    else:
        raise UserError(f"--outcomes {folder}: class names not found; add classes.txt (one name per line, in index order) or index_to_filepath.json")
    return names, paths


def _read_filepaths(path: Path, count: int) -> np.ndarray:
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error}); save a JSON list with one file path per image") from error
    if isinstance(rows, dict):
        rows = _filepaths_from_mapping(path, rows)
    if not isinstance(rows, list) or len(rows) != count:
        raise UserError(f"{path} must be a list of {count} file paths, one per image; found {len(rows) if isinstance(rows, list) else type(rows).__name__}")
    for position, value in enumerate(rows):
        if not isinstance(value, str) or not value:
            raise UserError(f"{path}: entry {position} is {reprlib.repr(value)}, not a file path; give one path string per image")
    repeat = _first_repeat(rows)
    if repeat is not None:
        first, second = repeat
        raise UserError(f"{path}: file path {rows[second]!r} appears at indices {first} and {second}; list each image once")
    return np.asarray(rows, dtype=str)


def _filepaths_from_mapping(path: Path, mapping: dict) -> list:
    """Order the values of an ``{"index": path}`` object by index, which must run from 0 to N-1."""
    by_index = {}
    for key, value in mapping.items():
        try:
            by_index[int(key)] = value
        except ValueError:
            raise UserError(f"{path}: key {key!r} is not an image index; use the integers 0 to {len(mapping) - 1} as keys") from None
    missing = next((i for i in range(len(mapping)) if i not in by_index), None)
    if missing is not None:
        raise UserError(f"{path}: image index {missing} is missing; use the integers 0 to {len(mapping) - 1} as keys")
    return [by_index[i] for i in range(len(mapping))]


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

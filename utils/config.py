"""Reading and checking `config_rescale.py`, the plain-values configuration of the project.

The module is imported, never exec'd. Every value is type-checked here so that a typo in the file
is reported with the key, the value and the expected type instead of failing later. The scripts
read `config_rescale.py` in the project folder, or the file named by the environment variable
RESCALE_CONFIG; relative paths in it are resolved against the folder of the file read.
"""

import difflib
import importlib.machinery
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from utils.class_lists import check_folder_name
from utils.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = PROJECT_ROOT / "config_rescale.py"
CONFIG_ENV = "RESCALE_CONFIG"

DATASETS = ("ImageNet", "Places365", "FashionMNIST", "ImageFolder")
STRATEGIES = ("sensitive-confused", "lowest-accuracy", "random")
MODES = ("copy", "hardlink", "symlink")

DATASET_KEYS = {
    "root": str,
    "results": str,
    "subsets": str,
    "prefix": str,
    "sizes": list,
    "model": str,
    "weights": (str, type(None)),
}
GLOBAL_KEYS = {
    "DataRescale": str,
    "batch_size": int,
    "workers": int,
    "device": str,
    "topk": int,
    "strategy": str,
    "min_pair_share": float,
    "seed": int,
    "random_baselines": int,
    "mode": str,
}


@dataclass(frozen=True)
class DatasetConfig:
    """The per-dataset group of `config_rescale.py`, with paths resolved against the project folder."""

    name: str
    root: Path
    results: Path
    subsets: Path
    prefix: str
    sizes: tuple[int, ...]
    model: str
    weights: str | None


@dataclass(frozen=True)
class ProjectConfig:
    """All values of `config_rescale.py`, and the folder that relative paths in it are resolved against."""

    folder: Path
    default_dataset: str
    datasets: dict[str, DatasetConfig]
    batch_size: int
    workers: int
    device: str
    topk: int
    strategy: str
    min_pair_share: float
    seed: int
    random_baselines: int
    mode: str


def resolve_path(value: str, base: Path = PROJECT_ROOT) -> Path:
    """Expand ``~`` and make a relative path absolute against ``base``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def config_file() -> Path:
    """Return the configuration file to read: $RESCALE_CONFIG if set, else `config_rescale.py`."""
    value = os.environ.get(CONFIG_ENV)
    return resolve_path(value, Path.cwd()) if value else CONFIG_FILE


def _import_config(path: Path) -> ModuleType:
    if not path.is_file():
        fix = f"fix or unset {CONFIG_ENV}" if path != CONFIG_FILE else "restore it from the repository"
        raise UserError(f"configuration file {path} not found; {fix}")
    # An explicit source loader reads the file whatever its name ends with (.py, .cfg or nothing).
    loader = importlib.machinery.SourceFileLoader("config_rescale", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("config_rescale", loader))
    try:
        loader.exec_module(module)
    except Exception as error:  # a syntax or name error in a file the user edits
        raise UserError(f"{path} could not be read: {type(error).__name__}: {error}; fix the line it names") from error
    return module


def _type_name(expected) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _check_type(source: Path, where: str, value, expected) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise UserError(f"{source}: {where} must be {_type_name(expected)}, got {value!r}; fix the value in the file")


def _closest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_sizes(sizes, where: str) -> tuple[int, ...]:
    """Return the subset sizes as a sorted tuple, or raise for a size that cannot make a subset."""
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise UserError(f"{where} must be a non-empty list of class counts such as [30, 50], got {sizes!r}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int):
            raise UserError(f"{where}: subset size {size!r} is not an integer; use whole numbers of classes such as 30")
        if size < 2:
            raise UserError(f"{where}: subset size {size} is below 2; a subset needs at least 2 classes")
    if len(set(sizes)) != len(sizes):
        raise UserError(f"{where}: subset sizes {list(sizes)} repeat a value; list each size once")
    return tuple(sorted(sizes))


SEED_LIMIT = 2**32
# Setting -> (test, the valid range in words), the same ranges the command-line flags accept.
GLOBAL_RANGES = {
    "batch_size": (lambda v: v >= 1, "1 or more"),
    "workers": (lambda v: v >= 0, "0 or more"),
    "topk": (lambda v: v >= 1, "1 or more"),
    "seed": (lambda v: 0 <= v < SEED_LIMIT, "0 to 2**32 - 1"),
    "random_baselines": (lambda v: v >= 1, "1 or more"),
    "min_pair_share": (lambda v: 0.0 <= v <= 2.0, "0 to 2"),
}


def _check_ranges(path: Path, module: ModuleType) -> None:
    for key, (valid, words) in GLOBAL_RANGES.items():
        value = getattr(module, key)
        if not valid(value):
            raise UserError(f"{path}: {key} = {value!r} is out of range; use {words}")


def _dataset_config(module: ModuleType, name: str, source: Path) -> DatasetConfig:
    values = getattr(module, name, None)
    if not isinstance(values, dict):
        raise UserError(f"{source}: {name} must be a dict with keys {', '.join(DATASET_KEYS)}")
    unknown = sorted(str(key) for key in set(values) - set(DATASET_KEYS))
    if unknown:
        raise UserError(
            f"{source}: unknown key {unknown[0]!r} in {name}{_closest(unknown[0], DATASET_KEYS)}; "
            f"valid keys: {', '.join(DATASET_KEYS)}"
        )
    missing = sorted(set(DATASET_KEYS) - set(values))
    if missing:
        raise UserError(f"{source}: {name} lacks the key {missing[0]!r}")
    for key, expected in DATASET_KEYS.items():
        _check_type(source, f"{name}[{key!r}]", values[key], expected)
    base = source.parent
    return DatasetConfig(
        name=name,
        root=resolve_path(values["root"], base),
        results=resolve_path(values["results"], base),
        subsets=resolve_path(values["subsets"], base),
        prefix=check_folder_name(values["prefix"], f"{source}: {name}['prefix']", example="ReIN"),
        sizes=check_sizes(values["sizes"], f"{source}: {name}['sizes']"),
        model=values["model"],
        weights=values["weights"],
    )


def load_config(path: Path | None = None) -> ProjectConfig:
    """Import and check the configuration file, by default the one `config_file` names."""
    path = path or config_file()
    module = _import_config(path)
    known = set(GLOBAL_KEYS) | set(DATASETS)
    unknown = sorted(k for k in vars(module) if not k.startswith("_") and k not in known and not isinstance(getattr(module, k), ModuleType))
    if unknown:
        raise UserError(
            f"{path}: unknown setting {unknown[0]!r}{_closest(unknown[0], known)}; "
            f"valid settings: {', '.join(sorted(known))}"
        )
    for key, expected in GLOBAL_KEYS.items():
        if not hasattr(module, key):
            raise UserError(f"{path} lacks the setting {key!r}; restore it from the repository")
        _check_type(path, key, getattr(module, key), expected)
    if module.DataRescale not in DATASETS:
        raise UserError(f"{path}: DataRescale = {module.DataRescale!r} is not a dataset; choose one of {', '.join(DATASETS)}")
    if module.strategy not in STRATEGIES:
        raise UserError(f"{path}: strategy = {module.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    if module.mode not in MODES:
        raise UserError(f"{path}: mode = {module.mode!r} is unknown; choose one of {', '.join(MODES)}")
    _check_ranges(path, module)
    return ProjectConfig(
        folder=path.parent,
        default_dataset=module.DataRescale,
        datasets={name: _dataset_config(module, name, path) for name in DATASETS},
        batch_size=module.batch_size,
        workers=module.workers,
        device=module.device,
        topk=module.topk,
        strategy=module.strategy,
        min_pair_share=float(module.min_pair_share),
        seed=module.seed,
        random_baselines=module.random_baselines,
        mode=module.mode,
    )

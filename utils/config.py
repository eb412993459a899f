"""Reading and checking `config_rescale.py`, the plain-values configuration of the project.

The module is imported, never exec'd. Every value is type-checked here so that a typo in the file
is reported with the key, the value and the expected type instead of failing later.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from utils.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = PROJECT_ROOT / "config_rescale.py"

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
    """All values of `config_rescale.py`."""

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


def _import_config(path: Path) -> ModuleType:
    if not path.is_file():
        raise UserError(f"configuration file {path} not found; restore it from the repository")
    spec = importlib.util.spec_from_file_location("config_rescale", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a syntax or name error in a file the user edits
        raise UserError(f"{path} could not be read: {type(error).__name__}: {error}; fix the line it names") from error
    return module


def _type_name(expected) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _check_type(where: str, value, expected) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise UserError(f"{CONFIG_FILE.name}: {where} must be {_type_name(expected)}, got {value!r}")


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


def _dataset_config(module: ModuleType, name: str) -> DatasetConfig:
    values = getattr(module, name, None)
    if not isinstance(values, dict):
        raise UserError(f"{CONFIG_FILE.name}: {name} must be a dict with keys {', '.join(DATASET_KEYS)}")
    unknown = sorted(set(values) - set(DATASET_KEYS))
    if unknown:
        raise UserError(f"{CONFIG_FILE.name}: unknown key {unknown[0]!r} in {name}; valid keys: {', '.join(DATASET_KEYS)}")
    missing = sorted(set(DATASET_KEYS) - set(values))
    if missing:
        raise UserError(f"{CONFIG_FILE.name}: {name} lacks the key {missing[0]!r}")
    for key, expected in DATASET_KEYS.items():
        _check_type(f"{name}[{key!r}]", values[key], expected)
    return DatasetConfig(
        name=name,
        root=resolve_path(values["root"]),
        results=resolve_path(values["results"]),
        subsets=resolve_path(values["subsets"]),
        prefix=values["prefix"],
        sizes=check_sizes(values["sizes"], f"{CONFIG_FILE.name}: {name}['sizes']"),
        model=values["model"],
        weights=values["weights"],
    )


def load_config(path: Path = CONFIG_FILE) -> ProjectConfig:
    """Import and check the configuration file."""
    module = _import_config(path)
    for key, expected in GLOBAL_KEYS.items():
        if not hasattr(module, key):
            raise UserError(f"{path.name} lacks the setting {key!r}; restore it from the repository")
        _check_type(key, getattr(module, key), expected)
    known = set(GLOBAL_KEYS) | set(DATASETS)
    unknown = sorted(k for k in vars(module) if not k.startswith("_") and k not in known and not isinstance(getattr(module, k), ModuleType))
    if unknown:
        raise UserError(f"{path.name}: unknown setting {unknown[0]!r}; valid settings: {', '.join(sorted(known))}")
    if module.DataRescale not in DATASETS:
        raise UserError(f"{path.name}: DataRescale = {module.DataRescale!r} is not a dataset; choose one of {', '.join(DATASETS)}")
    if module.strategy not in STRATEGIES:
        raise UserError(f"{path.name}: strategy = {module.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    if module.mode not in MODES:
        raise UserError(f"{path.name}: mode = {module.mode!r} is unknown; choose one of {', '.join(MODES)}")
    return ProjectConfig(
        default_dataset=module.DataRescale,
        datasets={name: _dataset_config(module, name) for name in DATASETS},
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

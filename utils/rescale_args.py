"""Command line of RescaleDataset.py, built from the values in `config_rescale.py`.

Flags override the configuration; dataset-specific values (root, folders, sizes, network) come
from the group of the dataset chosen with --dataset (DataRescale in the file by default).
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from utils.class_lists import check_folder_name
from utils.config import DATASETS, MODES, SEED_LIMIT, STRATEGIES, DatasetConfig, ProjectConfig, check_sizes, resolve_path
from utils.cli import ArgumentParser
from utils.errors import UserError


@dataclass
class RescaleSettings:
    """Everything one run of RescaleDataset.py needs, after merging the file and the flags."""

    dataset: str
    root: Path
    results: Path
    subsets: Path
    prefix: str
    sizes: tuple[int, ...]
    model: str
    weights: str | None
    class_names: Path | None
    outcomes: Path | None
    lists: list[Path] | None
    compare: list[Path]
    strategy: str
    min_pair_share: float
    seed: int
    random_baselines: int
    device: str
    batch_size: int
    workers: int
    topk: int
    mode: str
    recompute: bool
    materialize: bool
    trust_checkpoint: bool
    skip_unknown_classes: bool
    draft: bool
    verbose: bool
    data_given: bool


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 to 2**32 - 1")
    return value


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"subset size {text!r} is not an integer; give whole numbers of classes such as 30") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"subset size {value} is below 2; a subset needs at least 2 classes")
    return value


def _prefix(text: str) -> str:
    try:
        return check_folder_name(text, "subset name prefix", example="ReIN")
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..2")
    return value


def build_parser(config: ProjectConfig) -> argparse.ArgumentParser:
    """Return the argument parser; help texts show the configured defaults."""
    chosen = config.datasets[config.default_dataset]
    parser = ArgumentParser(
        prog="RescaleDataset.py",
        description="Rescale a large image dataset into small, hard subsets from a pretrained network's validation outcomes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults come from config_rescale.py; dataset-specific ones are shown for "
        f"DataRescale = {config.default_dataset!r}.\nDemo without ImageNet: python RescaleDataset.py --dataset FashionMNIST",
    )
    data = parser.add_argument_group("dataset and folders")
    data.add_argument("--dataset", choices=DATASETS, default=config.default_dataset, help=f"dataset to rescale (default: {config.default_dataset})")
    data.add_argument("--data", type=Path, metavar="DIR", help=f"dataset root folder, read only (default: {chosen.root})")
    data.add_argument("--results", type=Path, metavar="DIR", help=f"folder for outcomes, statistics, lists and reports (default: {chosen.results})")
    data.add_argument("--out", type=Path, metavar="DIR", help=f"folder the subsets are built in (default: {chosen.subsets})")
    data.add_argument("--prefix", type=_prefix, help=f"subset name prefix (default: {chosen.prefix})")
    data.add_argument("--sizes", type=_size, nargs="+", metavar="N", help=f"classes per subset (default: {' '.join(map(str, chosen.sizes))})")

    network = parser.add_argument_group("validation pass")
    network.add_argument("--model", help=f"torchvision model name, 'efficientnet_lite0', or a checkpoint path (default: {chosen.model})")
    network.add_argument("--weights", help=f"torchvision weights name such as IMAGENET1K_V2, or a checkpoint file (default: {chosen.weights})")
    network.add_argument("--class-names", type=Path, metavar="FILE", help="one class name per network output, for checkpoints that store none")
    network.add_argument("--outcomes", type=Path, metavar="PATH", help="import outcomes instead of running the network: an outcomes .npz, a CSV (path, true, predicted[, probability]) or a folder with true_labels.npy and predicted_labels.npy")
    network.add_argument("--recompute", action="store_true", help="run the validation pass even if stored outcomes match")
    network.add_argument("--device", default=config.device, help=f"'auto', 'cpu', 'cuda' or 'cuda:N' (default: {config.device})")
    network.add_argument("--batch-size", type=_positive_int, default=config.batch_size, metavar="N", help=f"images per forward pass and process (default: {config.batch_size})")
    network.add_argument("--workers", type=_non_negative_int, default=config.workers, metavar="N", help=f"DataLoader worker processes per process (default: {config.workers})")
    network.add_argument("--topk", type=_positive_int, default=config.topk, metavar="K", help=f"predictions stored per image (default: {config.topk})")
    network.add_argument("--no-draft", dest="draft", action="store_false", help="decode JPEGs at full resolution instead of at the smallest DCT scale (1/2, 1/4, 1/8) that keeps 1.5 times the resized size")
    network.add_argument("--trust-checkpoint", action="store_true", help="unpickle checkpoints fully (can run code from the file); only for files from a trusted source")
    network.add_argument("--skip-unknown-classes", action="store_true", help="leave out dataset classes the network does not know instead of stopping")

    selection = parser.add_argument_group("selection and reports")
    selection.add_argument("--strategy", choices=STRATEGIES, default=config.strategy, help=f"how classes are chosen (default: {config.strategy})")
    selection.add_argument("--min-pair-share", type=_share, default=config.min_pair_share, metavar="TAU", help=f"a confused class joins when the images confused between the two are at least TAU times the sensitive class's images (default: {config.min_pair_share})")
    selection.add_argument("--seed", type=_seed, default=config.seed, help=f"seed of the random strategy and the random baselines (default: {config.seed})")
    selection.add_argument("--random-baselines", type=_positive_int, default=config.random_baselines, metavar="N", help=f"random subsets per size in each report's baseline (default: {config.random_baselines})")
    selection.add_argument("--compare", type=Path, nargs="+", default=[], metavar="FILE", help="class list files to score beside the selected subsets, such as the published lists")

    build = parser.add_argument_group("building subsets")
    build.add_argument("--lists", type=Path, nargs="+", metavar="FILE", help="build subsets from these class list files without running a network")
    build.add_argument("--mode", choices=MODES, default=config.mode, help=f"how images are placed in the subsets (default: {config.mode})")
    build.add_argument("--no-materialize", dest="materialize", action="store_false", help="write lists and reports only; do not build subset folders")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def parse_settings(config: ProjectConfig, argv: list[str] | None) -> RescaleSettings:
    """Parse the command line and merge it with the configuration."""
    args = build_parser(config).parse_args(argv)
    group = config.datasets[args.dataset]
    if args.lists and args.outcomes:
        raise UserError("--lists builds subsets from existing lists and --outcomes imports outcomes; use one of them")
    sizes = check_sizes(args.sizes, "--sizes") if args.sizes else group.sizes
    return RescaleSettings(
        dataset=args.dataset,
        root=args.data.expanduser().resolve() if args.data else group.root,
        results=args.results.expanduser().resolve() if args.results else group.results,
        subsets=args.out.expanduser().resolve() if args.out else group.subsets,
        prefix=args.prefix if args.prefix is not None else group.prefix,
        sizes=sizes,
        model=_path_or_name(args.model, Path.cwd()) if args.model else _path_or_name(group.model, config.folder),
        weights=_weights(args, group, config.folder),
        class_names=args.class_names,
        outcomes=args.outcomes.expanduser().resolve() if args.outcomes else None,
        # Absolute, not resolved: a list reached through a symbolic link is named after the link.
        lists=[p.expanduser().absolute() for p in args.lists] if args.lists else None,
        compare=[p.expanduser().absolute() for p in args.compare],
        strategy=args.strategy,
        min_pair_share=args.min_pair_share,
        seed=args.seed,
        random_baselines=args.random_baselines,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        topk=args.topk,
        mode=args.mode,
        recompute=args.recompute,
        materialize=args.materialize,
        trust_checkpoint=args.trust_checkpoint,
        skip_unknown_classes=args.skip_unknown_classes,
        draft=args.draft,
        verbose=args.verbose,
        data_given=args.data is not None,
    )


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")


def _path_or_name(value: str | None, base: Path) -> str | None:
    """Resolve a value that names a file against ``base``; leave model and weights names alone."""
    if value is None:
        return None
    if "/" in value or "\\" in value or value.endswith(CHECKPOINT_SUFFIXES):
        return str(resolve_path(value, base))
    return value


def _weights(args: argparse.Namespace, group: DatasetConfig, config_folder: Path) -> str | None:
    """Weights from the flag (relative to the working folder), else from the file unless --model changed."""
    if args.weights is not None:
        return _path_or_name(args.weights, Path.cwd())
    if args.model:
        return None
    return _path_or_name(group.weights, config_folder)

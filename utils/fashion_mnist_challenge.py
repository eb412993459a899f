"""Is ReFM4 really harder? Train reference networks on it and on seeded random 4-class subsets.

Run after `python RescaleDataset.py --dataset FashionMNIST`:

    python -m utils.fashion_mnist_challenge

The module reads ReFM4.txt from the demo's results folder, draws random 4-class lists with the
given seeds, builds all of them as subsets (hard links into the demo's image tree), trains each
network on each subset with Train_ImageNetRescaleSubsets.py's code, and writes `challenge.md`
and `challenge.csv`. It exits with status 1 when, for any network, ReFM4's best top-1 is not
lower than the random subsets' mean by at least --min-gap points.
"""

import argparse
import csv
import logging
from pathlib import Path

import numpy as np

from utils.atomic import write_text_atomically
from utils.class_lists import read_class_list
from utils.class_names import FASHION_MNIST_FOLDERS
from utils.cli import ArgumentParser, counted, exit_with, setup_logging
from utils.config import load_config
from utils.errors import UserError
from utils.layouts import Layout, Split, detect_layout
from utils.reports import markdown_table
from utils.subsets import build_subsets
from utils.train_args import parse_args

log = logging.getLogger(__name__)

HARD_SUBSET = "ReFM4"


class SampledLayout(Layout):
    """A layout that keeps the first ``per_split[split]`` images of every class (all when None)."""

    def __init__(self, inner: Layout, per_split: dict[str, int | None]):
        super().__init__(inner.root)
        self.inner = inner
        self.per_split = per_split
        self.name, self.description = inner.name, inner.description

    def classes(self) -> list[str]:
        return self.inner.classes()

    def path_in_class(self, relative: str, label: str) -> str:
        return self.inner.path_in_class(relative, label)

    def split(self, which: str, classes: set[str] | None = None) -> Split:
        full = self.inner.split(which, classes)
        limit = self.per_split.get(which)
        if limit is None:
            return full
        kept, seen = Split(full.root), {}
        for path, label in zip(full.files, full.labels):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= limit:
                kept.files.append(path)
                kept.labels.append(label)
        return kept


def random_lists(seeds: list[int], size: int) -> dict[str, list[str]]:
    """Draw one sorted list of ``size`` Fashion-MNIST classes per seed."""
    lists = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        lists[f"Random{size}_seed{seed}"] = sorted(rng.choice(FASHION_MNIST_FOLDERS, size=size, replace=False).tolist())
    return lists


def int_at_least(minimum: int):
    """Return an argparse type that accepts integers of ``minimum`` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use {minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; use {minimum} or more")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m utils.fashion_mnist_challenge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["ResNet18", "MobileNetV2"], help="networks to train (default: ResNet18 MobileNetV2)")
    parser.add_argument("--epochs", type=int_at_least(1), default=3, help="training epochs per run (default: 3)")
    parser.add_argument("--seeds", type=int_at_least(0), nargs="+", default=[1, 2, 3],
                        help="seeds of the random 4-class subsets (default: 1 2 3)")
    parser.add_argument("--image-size", type=int_at_least(1), default=32, help="training and validation crop in pixels (default: 32)")
    parser.add_argument("--batch-size", type=int_at_least(2), default=128, help="images per step, at least 2 for batch norm (default: 128)")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (default: 0.05)")
    parser.add_argument("--workers", type=int_at_least(0), default=2, help="DataLoader workers, 0 loads in the main process (default: 2)")
    parser.add_argument("--train-per-class", type=int_at_least(1),
                        help="keep only this many training images per class (default: all 6,000)")
    parser.add_argument("--val-per-class", type=int_at_least(1),
                        help="keep only this many validation images per class (default: all 1,000)")
    parser.add_argument("--min-gap", type=float, default=5.0, help="points by which ReFM4 must trail the random mean (default: 5)")
    parser.add_argument("--data", type=Path, help="Fashion-MNIST image tree (default: FashionMNIST['root'] of config_rescale.py)")
    parser.add_argument("--lists", type=Path, help="folder with ReFM4.txt (default: FashionMNIST['results'] of config_rescale.py)")
    parser.add_argument("--out", type=Path, help="output folder (default: <lists folder>/challenge)")
    return parser


def points(value: float) -> str:
    """Return ``value`` percentage points as text, in the singular for 1 ("1 point", "2.5 points")."""
    return f"{value:g} point" if value == 1 else f"{value:g} points"


def read_table(path: Path, archs: list[str], subsets: list[str]) -> dict[str, dict[str, float]]:
    """Read best top-1 per network and subset from the training results CSV."""
    with open(path, newline="", encoding="utf-8") as stream:
        rows = {row["arch"]: row for row in csv.DictReader(stream)}
    table = {}
    for arch in archs:
        if arch not in rows:
            raise UserError(f"{path} has no row for {arch}; the training runs did not finish")
        table[arch] = {name: float(rows[arch][f"{name}_top1"]) for name in subsets}
    return table


def write_verdict(table: dict[str, dict[str, float]], subsets: dict[str, list[str]], out: Path, min_gap: float, epochs: int) -> list[str]:
    """Write challenge.md and challenge.csv; return the networks whose gap is below ``min_gap``."""
    random_names = [name for name in subsets if name != HARD_SUBSET]
    header = ["network", HARD_SUBSET] + random_names + ["random mean", "gap (points)"]
    rows, failing = [], []
    for arch, cells in table.items():
        mean = float(np.mean([cells[name] for name in random_names]))
        gap = mean - cells[HARD_SUBSET]
        if gap < min_gap:
            failing.append(arch)
        rows.append([arch, f"{cells[HARD_SUBSET]:.2f}"] + [f"{cells[n]:.2f}" for n in random_names] + [f"{mean:.2f}", f"{gap:.2f}"])
    with open(out / "challenge.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    text = (
        f"# ReFM4 against random 4-class subsets\n\nBest validation top-1 (%) after {counted(epochs, 'epoch')} of training "
        f"from scratch; the gap is the random mean minus ReFM4 and must be at least {points(min_gap)}.\n\n"
        + markdown_table(header, rows)
        + "\nClasses of each subset:\n\n"
        + "".join(f"- {name}: {', '.join(classes)}\n" for name, classes in subsets.items())
    )
    write_text_atomically(out / "challenge.md", text)
    return failing


def training_argv(args: argparse.Namespace, out: Path, subset_names: list[str]) -> list[str]:
    """Return the flags of the training run over all subsets, with outputs under ``out``."""
    return [
        "--data", str(out / "subsets"), "--subsets", *subset_names, "--arch", *args.arch, "--epochs", str(args.epochs),
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--lr-step", str(args.epochs), "--workers", str(args.workers), "--seed", "0",
        "--checkpoints", str(out / "checkpoints"), "--results", str(out),
    ]


def main(argv: list[str] | None = None) -> int:
    """Build ReFM4 and the random controls, train the networks on them and compare."""
    setup_logging()
    args = build_parser().parse_args(argv)
    group = load_config().datasets["FashionMNIST"]
    data = args.data or group.root
    lists_folder = args.lists or group.results
    out = args.out or lists_folder / "challenge"
    hard_list = lists_folder / f"{HARD_SUBSET}.txt"
    if not hard_list.is_file():
        raise UserError(f"{hard_list} not found; run `python RescaleDataset.py --dataset FashionMNIST` first")

    subsets = {HARD_SUBSET: read_class_list(hard_list), **random_lists(args.seeds, 4)}
    train_argv = training_argv(args, out, list(subsets))
    parse_args(train_argv, "ImageNet")  # raises the training scripts' UserError for a bad flag before any subset is built
    layout = SampledLayout(detect_layout(data, "FashionMNIST"), {"train": args.train_per_class, "val": args.val_per_class})
    build_subsets(layout, subsets, out / "subsets", mode="hardlink", workers=max(args.workers, 1))

    from utils.training import main as train

    train(train_argv)
    table = read_table(out / "results.csv", args.arch, list(subsets))
    failing = write_verdict(table, subsets, out, args.min_gap, args.epochs)
    log.info("wrote %s", out / "challenge.md")
    if failing:
        raise UserError(f"ReFM4 is not at least {points(args.min_gap)} harder than the random subsets for {', '.join(failing)}; see {out / 'challenge.md'}")
    return 0


if __name__ == "__main__":
    exit_with(main)

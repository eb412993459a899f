"""Stage 3: choosing the classes of each subset from the validation statistics.

The default strategy, 'sensitive-confused', is the rescaling method. With n_c validation images
of class c, e_c its top-1 error rate and m(c, j) = C[c, j] + C[j, c] the images confused
between c and j in either direction (C is the confusion matrix):

1. Rank the classes that have validation images by e_c, highest first. Ties go to the higher
   top-5 error, then to the class name in alphabetical order.
2. Walk the ranking. Each class c joins the subset if it is not in it yet, then brings in its
   partners: every class j with m(c, j) >= tau * n_c, largest m(c, j) first (ties by name).
3. Stop as soon as the subset has N classes; a group of partners that does not fit is cut
   after its most confused members.

tau is `min_pair_share` (0.12 by default). The other strategies are controls: 'lowest-accuracy'
takes the first N classes of the ranking, 'random' draws N classes with a seeded generator.
"""

import logging
from collections.abc import Callable

import numpy as np

from utils.errors import UserError
from utils.statistics import Statistics

log = logging.getLogger(__name__)


def rank_by_error(stats: Statistics) -> np.ndarray:
    """Return the classes with validation images, hardest first (top-1 error, top-5 error, name)."""
    present = stats.present
    top1_error = 1.0 - stats.top1_accuracy[present]
    top5 = stats.top5_accuracy
    top5_error = 1.0 - top5[present] if top5 is not None else np.zeros(len(present))
    order = np.lexsort((stats.name_rank[present], -top5_error, -top1_error))
    return present[order]


def select_sensitive_confused(stats: Statistics, size: int, min_pair_share: float, seed: int = 0) -> list[int]:
    """Select ``size`` classes by the rescaling method described in the module docstring."""
    has_images = stats.images > 0
    chosen: list[int] = []
    member = np.zeros(stats.num_classes, dtype=bool)

    def add(c: int) -> None:
        if not member[c] and len(chosen) < size:
            member[c] = True
            chosen.append(c)

    for c in rank_by_error(stats).tolist():
        if len(chosen) >= size:
            break
        add(c)
        partners, counts = stats.confused_both.row(c)
        threshold = min_pair_share * stats.images[c]
        for j, count in zip(partners.tolist(), counts.tolist()):
            if count < threshold or len(chosen) >= size:
                break
            if has_images[j]:
                add(j)
    return chosen


def select_lowest_accuracy(stats: Statistics, size: int, min_pair_share: float = 0.0, seed: int = 0) -> list[int]:
    """Select the ``size`` classes with the highest validation error (ranking of `rank_by_error`)."""
    return rank_by_error(stats)[:size].tolist()


def select_random(stats: Statistics, size: int, min_pair_share: float = 0.0, seed: int = 0) -> list[int]:
    """Select ``size`` classes uniformly at random with a seeded generator (a control)."""
    rng = np.random.default_rng([seed, size])
    return sorted(rng.choice(stats.present, size=size, replace=False).tolist())


STRATEGIES: dict[str, Callable[..., list[int]]] = {
    "sensitive-confused": select_sensitive_confused,
    "lowest-accuracy": select_lowest_accuracy,
    "random": select_random,
}


def select_subsets(stats: Statistics, sizes: tuple[int, ...], strategy: str, min_pair_share: float, seed: int) -> dict[int, list[int]]:
    """Return, for each size, the class indices chosen by ``strategy``."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    available = len(stats.present)
    if available < 2:
        raise UserError(
            f"only {available} {'class has' if available == 1 else 'classes have'} validation images, "
            "and a subset needs at least 2; "
            "check that the validation split or the imported outcomes cover the dataset's classes"
        )
    for size in sizes:
        if size < 2:
            raise UserError(f"subset size {size} is below 2; a subset needs at least 2 classes")
        if size > available:
            raise UserError(
                f"subset size {size} is larger than the {available} classes with validation images; "
                f"use sizes of at most {available} (--sizes, or 'sizes' in config_rescale.py)"
            )
    selector = STRATEGIES[strategy]
    subsets = {size: selector(stats, size, min_pair_share=min_pair_share, seed=seed) for size in sizes}
    for size, classes in subsets.items():
        log.debug("selected %d classes with strategy %s", len(classes), strategy)
    return subsets

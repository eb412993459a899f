"""Challenge figures of a class subset, measured on the validation outcomes.

- mean class accuracy: the mean of the subset classes' top-1 accuracies;
- within-subset confusion rate: misclassified images of subset classes whose prediction is also
  a subset class, over all images of subset classes;
- restricted top-1: the share of images of subset classes whose highest-ranked stored prediction
  that lies in the subset is the true class, i.e. the accuracy of the network when it may only
  answer with the subset's classes. Images whose stored top-k holds no subset class count as
  errors, so with k = 1 the figure is a lower bound.

Each figure is also given as mean and standard deviation over seeded random subsets of the same
size, the yardstick that shows how much harder than chance a subset is.
"""

from dataclasses import dataclass

import numpy as np

from utils.outcomes import Outcomes
from utils.statistics import Statistics


@dataclass(frozen=True)
class ChallengeFigures:
    """The three challenge figures of one subset."""

    mean_class_accuracy: float
    within_confusion: float
    restricted_top1: float


@dataclass(frozen=True)
class Baseline:
    """Mean and standard deviation of each figure over random subsets of one size."""

    size: int
    draws: int
    mean: ChallengeFigures
    std: ChallengeFigures


def _order_by_class(true: np.ndarray, num_classes: int) -> np.ndarray:
    """Return the image indices sorted by true class, stably.

    NumPy sorts 16-bit keys stably by radix sort, about three times faster than 32-bit keys.
    """
    keys = true.astype(np.uint16) if num_classes <= 1 << 16 else true
    return np.argsort(keys, kind="stable")


class SubsetScorer:
    """Scores class subsets quickly by precomputing the outcome arrays once."""

    def __init__(self, outcomes: Outcomes, stats: Statistics):
        self.stats = stats
        self.accuracy = np.nan_to_num(stats.top1_accuracy)
        self.images = stats.images
        self.order = _order_by_class(outcomes.true, stats.num_classes)
        self.offsets = np.zeros(stats.num_classes + 1, dtype=np.int64)
        np.cumsum(stats.images, out=self.offsets[1:])
        self.true = outcomes.true
        self.topk = outcomes.topk

    def _rows_of(self, classes: np.ndarray) -> np.ndarray:
        starts, stops = self.offsets[classes], self.offsets[classes + 1]
        return np.concatenate([self.order[a:b] for a, b in zip(starts.tolist(), stops.tolist())]) if len(classes) else np.array([], dtype=np.int64)

    def score(self, classes) -> ChallengeFigures:
        """Return the challenge figures of the subset made of ``classes`` (class indices)."""
        classes = np.asarray(sorted(classes), dtype=np.int64)
        member = np.zeros(self.stats.num_classes, dtype=bool)
        member[classes] = True
        total = int(self.images[classes].sum())

        rows = self._rows_of(classes)
        candidates = self.topk[rows]
        predicted = candidates[:, 0]
        within = int(np.count_nonzero((predicted != self.true[rows]) & member[predicted]))

        inside = member[candidates]
        first = inside.argmax(axis=1)
        hit = inside.any(axis=1) & (candidates[np.arange(len(rows)), first] == self.true[rows])

        return ChallengeFigures(
            mean_class_accuracy=float(self.accuracy[classes].mean()),
            within_confusion=within / total if total else 0.0,
            restricted_top1=float(hit.mean()) if len(rows) else 0.0,
        )

    def random_baseline(self, size: int, draws: int, seed: int) -> Baseline:
        """Score ``draws`` random subsets of ``size`` classes drawn with a generator seeded by ``seed`` and ``size``."""
        rng = np.random.default_rng([seed, size, 1])
        present = self.stats.present
        scores = [self.score(rng.choice(present, size=size, replace=False)) for _ in range(draws)]
        values = np.array([[s.mean_class_accuracy, s.within_confusion, s.restricted_top1] for s in scores])
        return Baseline(
            size=size,
            draws=draws,
            mean=ChallengeFigures(*values.mean(axis=0).tolist()),
            std=ChallengeFigures(*values.std(axis=0).tolist()),
        )

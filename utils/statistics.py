"""Per-class statistics of validation outcomes: accuracy and confusions between classes.

Confusions are kept as sparse (true, predicted, count) triples, so 21,841 classes cost memory
in proportion to the confused pairs that occur, not to the square of the class count.
"""

import logging
from dataclasses import dataclass

import numpy as np

from utils.cli import counted
from utils.outcomes import Outcomes

log = logging.getLogger(__name__)


@dataclass
class PairCounts:
    """Sparse counts over class pairs, grouped by the first class (CSR layout).

    For class ``c`` the partners are ``indices[indptr[c]:indptr[c + 1]]`` with ``counts`` alongside,
    sorted by count (largest first), then by partner name.
    """

    indptr: np.ndarray
    indices: np.ndarray
    counts: np.ndarray

    def row(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = self.indptr[c], self.indptr[c + 1]
        return self.indices[start:stop], self.counts[start:stop]


@dataclass
class Statistics:
    """Stage 2: per-class accuracy and confusions of one set of outcomes."""

    class_names: list[str]
    images: np.ndarray
    top1_correct: np.ndarray
    top5_correct: np.ndarray | None
    confusion_true: np.ndarray
    confusion_pred: np.ndarray
    confusion_count: np.ndarray
    confused_out: PairCounts
    confused_in: PairCounts
    confused_both: PairCounts
    name_rank: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def present(self) -> np.ndarray:
        """Indices of the classes with at least one validation image, in index order."""
        return np.flatnonzero(self.images > 0)

    @property
    def top1_accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.images > 0, self.top1_correct / np.maximum(self.images, 1), np.nan)

    @property
    def top5_accuracy(self) -> np.ndarray | None:
        if self.top5_correct is None:
            return None
        return np.where(self.images > 0, self.top5_correct / np.maximum(self.images, 1), np.nan)

    def top_confusions(self, c: int, limit: int = 5) -> list[tuple[int, int, int]]:
        """Return up to ``limit`` (partner, images of c predicted as partner, images of partner predicted as c)."""
        partners, _ = self.confused_both.row(c)
        out_partners, out_counts = self.confused_out.row(c)
        in_partners, in_counts = self.confused_in.row(c)
        outgoing = dict(zip(out_partners.tolist(), out_counts.tolist()))
        incoming = dict(zip(in_partners.tolist(), in_counts.tolist()))
        return [(j, outgoing.get(j, 0), incoming.get(j, 0)) for j in partners[:limit].tolist()]


def name_ranks(class_names: list[str]) -> np.ndarray:
    """Return each class's position in sorted name order, the deterministic tie-breaker."""
    order = np.argsort(np.asarray(class_names, dtype=str), kind="stable")
    ranks = np.empty(len(class_names), dtype=np.int64)
    ranks[order] = np.arange(len(class_names))
    return ranks


def _count_pairs(first: np.ndarray, second: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count each distinct (first, second) pair; return the pairs sorted by (first, second) and their counts."""
    key = first.astype(np.int64) * num_classes + second
    unique, counts = np.unique(key, return_counts=True)
    return unique // num_classes, unique % num_classes, counts.astype(np.int64)


def _sum_pairs(first: np.ndarray, second: np.ndarray, weight: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add up the weights of equal (first, second) pairs; return the pairs sorted by (first, second) and their sums."""
    key = first.astype(np.int64) * num_classes + second
    order = np.argsort(key, kind="stable")
    key = key[order]
    if len(key) == 0:
        return key, key.copy(), key.copy()
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    totals = np.add.reduceat(weight[order], starts)
    unique = key[starts]
    return unique // num_classes, unique % num_classes, totals.astype(np.int64)


def _group_pairs(rows: np.ndarray, cols: np.ndarray, totals: np.ndarray, num_classes: int, rank: np.ndarray) -> PairCounts:
    """Group distinct (row, col) pairs with their totals into CSR rows sorted by total desc, then partner name."""
    order = np.lexsort((rank[cols], -totals, rows))
    rows, cols, totals = rows[order], cols[order], totals[order]
    indptr = np.zeros(num_classes + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_classes), out=indptr[1:])
    return PairCounts(indptr=indptr, indices=cols.astype(np.int32), counts=totals)


def compute_statistics(outcomes: Outcomes) -> Statistics:
    """Count per-class accuracy and the confusions between classes.

    Only the misclassified images are sorted (once, by their (true, predicted) pair). The other
    tables derive from the distinct pairs, far fewer than the images at ImageNet-21k scale.
    """
    num_classes = len(outcomes.class_names)
    true = outcomes.true.astype(np.int64)
    top1 = outcomes.topk[:, 0].astype(np.int64)

    images = np.bincount(true, minlength=num_classes)
    correct = top1 == true
    top1_correct = np.bincount(true[correct], minlength=num_classes).astype(np.int64)
    top5_correct = None
    if outcomes.k >= 5:
        in_top5 = (outcomes.topk[:, :5] == true[:, None]).any(axis=1)
        top5_correct = np.bincount(true[in_top5], minlength=num_classes).astype(np.int64)

    wrong = ~correct
    out_true, out_pred, out_count = _count_pairs(true[wrong], top1[wrong], num_classes)
    diagonal = np.flatnonzero(top1_correct)
    keys = np.concatenate([diagonal * num_classes + diagonal, out_true * num_classes + out_pred])
    key_counts = np.concatenate([top1_correct[diagonal], out_count])
    order = np.argsort(keys, kind="stable")
    keys, key_counts = keys[order], key_counts[order]

    rank = name_ranks(outcomes.class_names)
    confused_out = _group_pairs(out_true, out_pred, out_count, num_classes, rank)
    confused_in = _group_pairs(out_pred, out_true, out_count, num_classes, rank)
    both_first, both_second, both_count = _sum_pairs(
        np.concatenate([out_true, out_pred]), np.concatenate([out_pred, out_true]), np.concatenate([out_count, out_count]), num_classes
    )
    confused_both = _group_pairs(both_first, both_second, both_count, num_classes, rank)
    stats = Statistics(
        class_names=list(outcomes.class_names),
        images=images,
        top1_correct=top1_correct,
        top5_correct=top5_correct,
        confusion_true=(keys // num_classes).astype(np.int32),
        confusion_pred=(keys % num_classes).astype(np.int32),
        confusion_count=key_counts.astype(np.int64),
        confused_out=confused_out,
        confused_in=confused_in,
        confused_both=confused_both,
        name_rank=rank,
    )
    log.info(
        "statistics: %s, %s with images, top-1 accuracy %.2f%%, %s",
        counted(len(true), "image"), counted(len(stats.present), "class", "classes"),
        100 * correct.mean() if len(true) else 0.0, counted(int(wrong.sum()), "misclassified image"),
    )
    return stats


def dense_confusion(stats: Statistics) -> np.ndarray:
    """Return the full confusion matrix (rows: true class, columns: predicted class); for small class counts."""
    matrix = np.zeros((stats.num_classes, stats.num_classes), dtype=np.int64)
    matrix[stats.confusion_true, stats.confusion_pred] = stats.confusion_count
    return matrix

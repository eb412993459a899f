"""Challenge figures of a subset, checked against hand computation."""

import numpy as np

from utils.outcomes import Outcomes
from utils.statistics import compute_statistics
from utils.subset_metrics import SubsetScorer

# Classes a, b, c; top-2 predictions per image.
#   a1: (b, a)  a2: (a, b)  a3: (c, b)      a: 1/3 correct
#   b1: (a, c)  b2: (b, a)                  b: 1/2 correct
#   c1: (c, a)                              c: 1/1 correct
TRUE = [0, 0, 0, 1, 1, 2]
TOPK = [[1, 0], [0, 1], [2, 1], [0, 2], [1, 0], [2, 0]]


def scorer():
    outcomes = Outcomes(class_names=["a", "b", "c"], true=np.array(TRUE), topk=np.array(TOPK))
    return SubsetScorer(outcomes, compute_statistics(outcomes))


def test_mean_class_accuracy():
    figures = scorer().score([0, 1])
    assert np.isclose(figures.mean_class_accuracy, (1 / 3 + 1 / 2) / 2)


def test_within_subset_confusion():
    # Images of a and b: 5. Misclassified with prediction in {a, b}: a1 (b), b1 (a). a3 -> c is outside.
    figures = scorer().score([0, 1])
    assert np.isclose(figures.within_confusion, 2 / 5)


def test_restricted_top1():
    # Restricted to {a, b}: a1 -> b (wrong), a2 -> a, a3 -> b (c is skipped; wrong), b1 -> a (wrong), b2 -> b.
    figures = scorer().score([0, 1])
    assert np.isclose(figures.restricted_top1, 2 / 5)


def test_restricted_top1_counts_uncovered_images_as_errors():
    # Restricted to {b, c}: a has no images here; b1 -> c (wrong), b2 -> b, c1 -> c.
    figures = scorer().score([1, 2])
    assert np.isclose(figures.restricted_top1, 2 / 3)


def test_random_baseline_is_seeded():
    first = scorer().random_baseline(2, draws=20, seed=3)
    second = scorer().random_baseline(2, draws=20, seed=3)
    assert first == second
    assert first.draws == 20
    assert 0.0 <= first.mean.mean_class_accuracy <= 1.0

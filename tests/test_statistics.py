"""Stage 2 on outcomes whose confusion matrix was worked out by hand."""

import numpy as np

from utils.outcomes import Outcomes
from utils.statistics import compute_statistics, dense_confusion


def outcomes_from_pairs(names, pairs, k_extra=None):
    """Build top-1 outcomes from (true, predicted, count) triples."""
    true, predicted = [], []
    for t, p, count in pairs:
        true += [t] * count
        predicted += [p] * count
    topk = np.array(predicted)[:, None]
    if k_extra is not None:
        topk = np.concatenate([topk, k_extra(np.array(true), topk)], axis=1)
    return Outcomes(class_names=names, true=np.array(true), topk=topk)


# Classes a, b, c, d. Rows: true class; columns: predicted class.
#        a  b  c  d
#   a  [ 6, 3, 1, 0 ]   10 images, 60 % correct
#   b  [ 2, 8, 0, 0 ]   10 images, 80 % correct
#   c  [ 0, 0, 5, 0 ]    5 images, 100 % correct
#   d  [ 0, 0, 0, 0 ]    no images
HAND_PAIRS = [(0, 0, 6), (0, 1, 3), (0, 2, 1), (1, 0, 2), (1, 1, 8), (2, 2, 5)]
NAMES = ["a", "b", "c", "d"]


def test_confusion_matrix_matches_hand_count():
    stats = compute_statistics(outcomes_from_pairs(NAMES, HAND_PAIRS))
    expected = np.array([[6, 3, 1, 0], [2, 8, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]])
    assert np.array_equal(dense_confusion(stats), expected)


def test_per_class_accuracy():
    stats = compute_statistics(outcomes_from_pairs(NAMES, HAND_PAIRS))
    assert stats.images.tolist() == [10, 10, 5, 0]
    assert np.allclose(stats.top1_accuracy[:3], [0.6, 0.8, 1.0])
    assert np.isnan(stats.top1_accuracy[3])
    assert stats.present.tolist() == [0, 1, 2]


def test_top5_needs_five_predictions():
    stats = compute_statistics(outcomes_from_pairs(NAMES, HAND_PAIRS))
    assert stats.top5_correct is None


def test_top5_counts_true_class_in_top5():
    def extra(true, top1):
        # Every image lists its true class second, then filler classes.
        return np.stack([true, (true + 1) % 4, (true + 2) % 4, (true + 3) % 4], axis=1)

    stats = compute_statistics(outcomes_from_pairs(NAMES, HAND_PAIRS, extra))
    assert stats.top5_correct.tolist() == [10, 10, 5, 0]


def test_confusions_in_both_directions():
    stats = compute_statistics(outcomes_from_pairs(NAMES, HAND_PAIRS))
    # a -> b 3 times, b -> a 2 times, a -> c once.
    assert stats.top_confusions(0) == [(1, 3, 2), (2, 1, 0)]
    assert stats.top_confusions(1) == [(0, 2, 3)]
    assert stats.top_confusions(2) == [(0, 0, 1)]
    assert stats.top_confusions(3) == []


def test_pair_ties_sorted_by_name():
    # x is confused twice with both z and y: y comes first by name.
    names = ["x", "z", "y"]
    stats = compute_statistics(outcomes_from_pairs(names, [(0, 1, 2), (0, 2, 2), (0, 0, 1)]))
    partners, counts = stats.confused_both.row(0)
    assert partners.tolist() == [2, 1]
    assert counts.tolist() == [2, 2]

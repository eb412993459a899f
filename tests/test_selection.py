"""Stage 3 selection rules on hand-made confusion matrices."""

import numpy as np
import pytest

from tests.test_statistics import outcomes_from_pairs
from utils.errors import UserError
from utils.selection import rank_by_error, select_lowest_accuracy, select_random, select_sensitive_confused, select_subsets
from utils.statistics import compute_statistics


def stats_from(names, pairs):
    return compute_statistics(outcomes_from_pairs(names, pairs))


# Ten images per class.
#   s1: 4 correct, 5 -> p1, 1 -> p2      (error 0.6)
#   s2: 5 correct, 3 -> p3, 2 -> p4      (error 0.5)
#   p1: 8 correct, 2 -> s1               (error 0.2)
#   p2, p3, p4, e: 10 correct            (error 0)
NAMES = ["s1", "s2", "p1", "p2", "p3", "p4", "e"]
PAIRS = [
    (0, 0, 4), (0, 2, 5), (0, 3, 1),
    (1, 1, 5), (1, 4, 3), (1, 5, 2),
    (2, 2, 8), (2, 0, 2),
    (3, 3, 10), (4, 4, 10), (5, 5, 10), (6, 6, 10),
]


def names_of(stats, classes):
    return [stats.class_names[c] for c in classes]


def test_ranking_hardest_first_ties_by_name():
    stats = stats_from(NAMES, PAIRS)
    assert names_of(stats, rank_by_error(stats)) == ["s1", "s2", "p1", "e", "p2", "p3", "p4"]


def test_sensitive_class_brings_its_partners():
    stats = stats_from(NAMES, PAIRS)
    # tau = 0.2: s1 brings p1 (m = 7 >= 2) but not p2 (m = 1); s2 brings p3 (3) and p4 (2).
    chosen = select_sensitive_confused(stats, 5, min_pair_share=0.2)
    assert names_of(stats, chosen) == ["s1", "p1", "s2", "p3", "p4"]


def test_size_cuts_group_after_most_confused():
    stats = stats_from(NAMES, PAIRS)
    chosen = select_sensitive_confused(stats, 4, min_pair_share=0.2)
    assert names_of(stats, chosen) == ["s1", "p1", "s2", "p3"]


def test_threshold_excludes_weak_partners():
    stats = stats_from(NAMES, PAIRS)
    # tau = 0.25: s2's partners need m >= 2.5, so only p3 joins; then the ranking goes on.
    chosen = select_sensitive_confused(stats, 6, min_pair_share=0.25)
    assert names_of(stats, chosen) == ["s1", "p1", "s2", "p3", "e", "p2"]


def test_class_without_errors_joins_last():
    stats = stats_from(NAMES, PAIRS)
    chosen = select_sensitive_confused(stats, 7, min_pair_share=0.2)
    assert names_of(stats, chosen)[-2:] == ["e", "p2"]
    assert sorted(names_of(stats, chosen)) == sorted(NAMES)


def test_lowest_accuracy_takes_ranking_head():
    stats = stats_from(NAMES, PAIRS)
    assert names_of(stats, select_lowest_accuracy(stats, 3)) == ["s1", "s2", "p1"]


def test_random_is_seeded():
    stats = stats_from(NAMES, PAIRS)
    first = select_random(stats, 3, seed=7)
    assert first == select_random(stats, 3, seed=7)
    assert len(set(first)) == 3


def test_class_without_images_never_selected():
    names = ["a", "b", "ghost"]
    # a is confused with ghost predictions, but ghost has no validation images.
    stats = stats_from(names, [(0, 0, 1), (0, 2, 9), (1, 1, 10)])
    chosen = select_sensitive_confused(stats, 2, min_pair_share=0.1)
    assert names_of(stats, chosen) == ["a", "b"]


@pytest.mark.parametrize("size", [1, 8])
def test_invalid_sizes_rejected(size):
    stats = stats_from(NAMES, PAIRS)
    with pytest.raises(UserError, match=str(size)):
        select_subsets(stats, (size,), "sensitive-confused", 0.2, 0)


def test_outcomes_of_one_class_rejected():
    # Outcomes cover only class a, so no subset of 2 classes can be formed.
    stats = stats_from(["a", "b", "c"], [(0, 0, 8), (0, 1, 2)])
    with pytest.raises(UserError, match="only 1 class has validation images, and a subset needs at least 2"):
        select_subsets(stats, (2,), "sensitive-confused", 0.2, 0)


def test_unknown_strategy_lists_valid_ones():
    stats = stats_from(NAMES, PAIRS)
    with pytest.raises(UserError, match="lowest-accuracy"):
        select_subsets(stats, (3,), "hardest", 0.2, 0)


def test_selection_deterministic_under_class_order():
    # The same outcomes with the classes listed in another order select the same names.
    stats = stats_from(NAMES, PAIRS)
    order = np.array([6, 5, 4, 3, 2, 1, 0])
    position = np.argsort(order)
    shuffled_names = [NAMES[i] for i in order]
    shuffled_pairs = [(int(position[t]), int(position[p]), n) for t, p, n in PAIRS]
    shuffled = stats_from(shuffled_names, shuffled_pairs)
    assert names_of(shuffled, select_sensitive_confused(shuffled, 5, 0.2)) == names_of(stats, select_sensitive_confused(stats, 5, 0.2))

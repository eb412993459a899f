"""The default selection on real ImageNet validation outcomes, against the published ReIN lists.

Both are scored on the same outcomes (a ResNet-50-class network, 72.73 % top-1): each computed
ReIN<N> must have a within-subset confusion rate at least that of the published list of the same
size, and a mean class accuracy at most the published list's plus 0.06.
"""

import pytest

from tests.helpers import SHARED
from utils.outcomes import import_outcomes
from utils.selection import select_subsets
from utils.statistics import compute_statistics
from utils.subset_metrics import SubsetScorer

SIZES = (30, 50, 100, 150, 200)


@pytest.fixture(scope="module")
def scored():
    outcomes = import_outcomes(SHARED / "reference" / "imagenet_val_outcomes")
    stats = compute_statistics(outcomes)
    selected = select_subsets(stats, SIZES, "sensitive-confused", min_pair_share=0.12, seed=0)
    index = {name: i for i, name in enumerate(stats.class_names)}
    published = {}
    for size in SIZES:
        path = SHARED / "reference" / "published_subsets" / "ImageNet" / f"ReIN{size}.txt"
        published[size] = [index[line.strip()] for line in path.read_text().splitlines() if line.strip()]
    return SubsetScorer(outcomes, stats), selected, published


@pytest.mark.parametrize("size", SIZES)
def test_selection_at_least_as_hard_as_published(scored, size):
    scorer, selected, published = scored
    ours, theirs = scorer.score(selected[size]), scorer.score(published[size])
    jaccard = len(set(selected[size]) & set(published[size])) / len(set(selected[size]) | set(published[size]))
    print(
        f"\nReIN{size}: computed mean class acc {100 * ours.mean_class_accuracy:.2f}%, within-subset confusion "
        f"{100 * ours.within_confusion:.2f}% | published {100 * theirs.mean_class_accuracy:.2f}%, "
        f"{100 * theirs.within_confusion:.2f}% | Jaccard {jaccard:.2f}"
    )
    assert len(set(selected[size])) == size
    assert len(set(published[size])) == size
    assert ours.within_confusion >= theirs.within_confusion
    assert ours.mean_class_accuracy <= theirs.mean_class_accuracy + 0.06

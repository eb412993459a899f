"""Stage 1 offline on real photos: EfficientNet-Lite0 over a small ImageNet-layout validation tree."""

import shutil

import numpy as np
import pytest

from tests.helpers import PHOTOS, run_script, tree_digest
from utils.class_names import imagenet_wnids
from utils.outcomes import load_outcomes


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    wnids = imagenet_wnids()
    expected = {}
    for name, (path, classes) in PHOTOS.items():
        wnid = wnids[min(classes)]
        target = root / "val" / wnid / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        expected[f"val/{wnid}/{path.name}"] = classes
    (root / "train").mkdir()
    before = tree_digest(root)
    results = tmp_path_factory.mktemp("results")
    run = run_script(
        "RescaleDataset.py", "--dataset", "ImageNet", "--data", str(root), "--model", "efficientnet_lite0",
        "--results", str(results), "--sizes", "2", "3", "--no-materialize", "--workers", "0",
    )
    return root, results, expected, before, run


def test_run_succeeds(photo_run):
    _, _, _, _, run = photo_run
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_expected_class_in_top5(photo_run, photo):
    _, results, expected, _, _ = photo_run
    outcomes = load_outcomes(results / "outcomes.npz")
    row = next(i for i, p in enumerate(outcomes.paths.tolist()) if p.endswith(PHOTOS[photo][0].name))
    top5 = set(outcomes.topk[row, :5].tolist())
    assert top5 & PHOTOS[photo][1], f"{photo}: top-5 {sorted(top5)} holds none of {sorted(PHOTOS[photo][1])}"


def test_true_labels_follow_folder_names(photo_run):
    _, results, expected, _, _ = photo_run
    outcomes = load_outcomes(results / "outcomes.npz")
    wnids = imagenet_wnids()
    for path, true in zip(outcomes.paths.tolist(), outcomes.true.tolist()):
        assert wnids[true] == path.split("/")[1]


def test_probabilities_sorted(photo_run):
    _, results, _, _, _ = photo_run
    outcomes = load_outcomes(results / "outcomes.npz")
    assert outcomes.k == 10
    assert np.all(np.diff(outcomes.probs, axis=1) <= 0)


def test_dataset_root_unchanged(photo_run):
    root, _, _, before, _ = photo_run
    assert tree_digest(root) == before


def test_second_run_reuses_outcomes(photo_run):
    root, results, _, _, _ = photo_run
    run = run_script(
        "RescaleDataset.py", "--dataset", "ImageNet", "--data", str(root), "--model", "efficientnet_lite0",
        "--results", str(results), "--sizes", "2", "--no-materialize", "--workers", "0",
    )
    assert run.returncode == 0, run.stderr
    assert "reusing the validation outcomes" in run.stderr
    assert "validation pass:" not in run.stderr


def test_recompute_forces_new_pass(photo_run):
    root, results, _, _, _ = photo_run
    run = run_script(
        "RescaleDataset.py", "--dataset", "ImageNet", "--data", str(root), "--model", "efficientnet_lite0",
        "--results", str(results), "--sizes", "2", "--no-materialize", "--workers", "0", "--recompute",
    )
    assert run.returncode == 0, run.stderr
    assert "validation pass done" in run.stderr

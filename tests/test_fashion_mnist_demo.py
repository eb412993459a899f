"""The offline demo end to end: `python RescaleDataset.py --dataset FashionMNIST` on real images.

The run writes the 70,000-image tree, trains the demo CNN, runs the three stages and builds ReFM4
and ReFM6, all inside a temporary folder. A reduced version of the training comparison then checks
that ReFM4 is harder than random 4-class subsets.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import run_script, tree_digest
from utils.errors import UserError
from utils.fashion_mnist import DEBIAN_FOLDER, FashionMNISTSplit, check_network_path, write_image_folder

UPPER_BODY = {"T-shirt_top", "Pullover", "Dress", "Coat", "Shirt"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not DEBIAN_FOLDER.is_dir():
        pytest.fail(f"{DEBIAN_FOLDER} is missing; install Debian's dataset-fashion-mnist package (.ci/run does)")
    raw_before = tree_digest(DEBIAN_FOLDER)
    base = tmp_path_factory.mktemp("demo")
    paths = {"data": base / "FashionMNIST", "results": base / "results", "out": base / "subsets", "weights": base / "network" / "cnn.pth"}
    args = ["RescaleDataset.py", "--dataset", "FashionMNIST"] + [f"--{k}={v}" for k, v in paths.items()] + ["--workers", "2"]
    first = run_script(*args, timeout=900)
    second = run_script(*args, timeout=300)
    return paths, first, second, raw_before


def test_first_run_succeeds(demo):
    _, first, _, _ = demo
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training it on the Fashion-MNIST training split" in first.stderr


def test_refm4_is_upper_body_with_shirt_and_tshirt(demo):
    paths, _, _, _ = demo
    classes = set((paths["results"] / "ReFM4.txt").read_text().split())
    assert len(classes) == 4
    assert classes <= UPPER_BODY
    assert {"Shirt", "T-shirt_top"} <= classes


def test_refm6_has_six_classes(demo):
    paths, _, _, _ = demo
    assert len((paths["results"] / "ReFM6.txt").read_text().split()) == 6


def test_demo_network_reaches_88_percent(demo):
    paths, _, _, _ = demo
    checkpoint = torch.load(paths["weights"], map_location="cpu", weights_only=True)
    assert checkpoint["best_top1"] >= 88.0
    assert checkpoint["class_names"][0] == "T-shirt_top"


def test_image_tree_has_every_image(demo):
    paths, _, _, _ = demo
    counts = {split: sum(1 for _ in (paths["data"] / split).rglob("*.png")) for split in ("train", "val")}
    assert counts == {"train": 60000, "val": 10000}


def test_subsets_built_as_image_folders(demo):
    paths, _, _, _ = demo
    for name, size in (("ReFM4", 4), ("ReFM6", 6)):
        manifest = json.loads((paths["out"] / name / "subset.json").read_text())
        assert len(manifest["classes"]) == size
        for split, per_class in (("train", 6000), ("val", 1000)):
            folders = sorted(p.name for p in (paths["out"] / name / split).iterdir())
            assert folders == sorted(manifest["classes"])
            assert all(sum(1 for _ in (paths["out"] / name / split / f).iterdir()) == per_class for f in folders)


def test_reports_written(demo):
    paths, _, _, _ = demo
    for name in ("summary.md", "reports/ReFM4.md", "reports/ReFM6.csv", "List_file_rescale.txt", "statistics/per_class.csv"):
        assert (paths["results"] / name).is_file(), name


def test_second_run_reuses_everything(demo):
    _, _, second, _ = demo
    assert second.returncode == 0, second.stderr[-3000:]
    assert "image tree already at" in second.stderr
    assert "reusing the validation outcomes" in second.stderr
    assert "training it" not in second.stderr
    assert second.stderr.count("complete and verified, skipped") == 2


def test_raw_files_unchanged(demo):
    _, _, _, raw_before = demo
    assert tree_digest(DEBIAN_FOLDER) == raw_before


def test_refm4_harder_than_random_subsets(demo, tmp_path):
    paths, first, _, _ = demo
    assert first.returncode == 0
    run = run_script(
        "-m", "utils.fashion_mnist_challenge", "--data", str(paths["data"]), "--lists", str(paths["results"]),
        "--out", str(tmp_path), "--arch", "ResNet18", "--epochs", "2", "--batch-size", "32", "--lr", "0.02",
        "--train-per-class", "300", "--val-per-class", "100", timeout=900, env={"OMP_NUM_THREADS": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with open(tmp_path / "challenge.csv", newline="") as stream:
        row = next(csv.DictReader(stream))
    assert float(row["gap (points)"]) >= 5.0


def small_splits():
    rng = np.random.default_rng(0)
    return {split: FashionMNISTSplit(rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 3]))
            for split in ("train", "val")}


def test_tree_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")

    with pytest.raises(UserError, match=r"writing the Fashion-MNIST images to .* failed: Not a directory; set --data"):
        write_image_folder(blocker / "FashionMNIST", small_splits())

    assert blocker.read_text() == "not a folder\n"


def test_read_only_empty_root_is_kept(tmp_path, monkeypatch):
    root = tmp_path / "FashionMNIST"
    root.mkdir()
    # Permission bits do not stop root, and the tests may run as root, so os.access reports the folder as read-only.
    monkeypatch.setattr("utils.fashion_mnist.os.access", lambda path, mode: Path(path) != root)

    with pytest.raises(UserError, match=f"{root} is read-only; make it writable or set --data"):
        write_image_folder(root, small_splits())

    assert root.is_dir()
    assert not any(root.iterdir())
    assert not root.with_name("FashionMNIST.partial").exists()


def test_empty_root_receives_the_tree(tmp_path):
    root = tmp_path / "FashionMNIST"
    root.mkdir()

    write_image_folder(root, small_splits())

    assert len(list(root.glob("*/*/*.png"))) == 8


def test_network_path_folder_rejected(tmp_path):
    weights = tmp_path / "network"
    weights.mkdir()
    run = run_script("RescaleDataset.py", "--dataset", "FashionMNIST", f"--data={tmp_path / 'FashionMNIST'}",
                     f"--results={tmp_path / 'results'}", f"--out={tmp_path / 'subsets'}", f"--weights={weights}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert (f"ERROR the demo network path {weights} is a folder, and the network is saved as a file; pass a file path "
            f"such as {weights / 'fashion_mnist_cnn.pth'} with --weights") in run.stderr
    assert "training it" not in run.stderr
    assert not (tmp_path / "FashionMNIST").exists()
    assert not any(weights.iterdir())


def test_network_path_under_file_rejected(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    with pytest.raises(UserError, match=f"writing {blocker} failed: .* is a file where a folder is needed"):
        check_network_path(blocker / "cnn.pth")
    assert blocker.read_text() == "not a folder\n"

"""RescaleDataset.py from the command line: help, defaults, user errors and imported outcomes."""

import os
import stat

import pytest

from tests.dataset_trees import make_places365_tree
from tests.helpers import SHARED, run_script, tree_digest

REFERENCE = SHARED / "reference" / "imagenet_val_outcomes"


def assert_clean_failure(run, status=1):
    assert run.returncode == status, run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_help_lists_every_flag_with_default():
    run = run_script("RescaleDataset.py", "--help")
    assert run.returncode == 0
    for flag in ("--dataset", "--data", "--results", "--sizes", "--model", "--weights", "--outcomes", "--strategy",
                 "--device", "--batch-size", "--workers", "--recompute", "--no-materialize", "--lists", "--out", "--mode", "--topk"):
        assert flag in run.stdout, flag
    assert "default: ImageNet" in run.stdout
    assert "default: 30 50 100 150 200" in run.stdout
    assert "python RescaleDataset.py --dataset FashionMNIST" in run.stdout


@pytest.mark.parametrize("script, flags, message", [
    ("RescaleDataset.py", ["--sizes", "1"], "argument --sizes: subset size 1 is below 2; a subset needs at least 2 classes"),
    ("Train_ImageNetRescaleSubsets.py", ["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
])
def test_flag_mistake_is_one_line(script, flags, message):
    run = run_script(script, *flags)

    assert_clean_failure(run, status=2)
    assert run.stderr.splitlines() == [f"{script}: error: {message}; see {script} --help"]


@pytest.mark.parametrize(
    "flag, value, valid",
    [("--dataset", "CIFAR", "Places365"), ("--strategy", "hardest", "lowest-accuracy"), ("--mode", "move", "hardlink")],
)
def test_unknown_choice_lists_valid_ones(flag, value, valid):
    run = run_script("RescaleDataset.py", flag, value)
    assert_clean_failure(run, status=2)
    assert value in run.stderr
    assert valid in run.stderr


@pytest.mark.parametrize("size, message", [("1", "below 2"), ("0", "below 2"), ("-3", "below 2"), ("2.5", "not an integer"), ("abc", "not an integer")])
def test_invalid_size_rejected(size, message):
    run = run_script("RescaleDataset.py", "--sizes", size, "--outcomes", str(REFERENCE), "--no-materialize")
    assert_clean_failure(run, status=2)
    assert message in run.stderr


def test_wrong_type_rejected():
    run = run_script("RescaleDataset.py", "--batch-size", "many")
    assert_clean_failure(run, status=2)
    assert "--batch-size" in run.stderr


def test_unknown_flag_rejected():
    run = run_script("RescaleDataset.py", "--colour", "red")
    assert_clean_failure(run, status=2)
    assert "--colour" in run.stderr


def test_missing_imagenet_explains_what_to_do(tmp_path):
    run = run_script("RescaleDataset.py", "--results", str(tmp_path / "results"))
    assert_clean_failure(run)
    assert "data/ImageNet" in run.stderr
    assert "config_rescale.py" in run.stderr
    assert "--data" in run.stderr
    assert "python RescaleDataset.py --dataset FashionMNIST" in run.stderr


def test_unknown_model_lists_valid_ones(tmp_path):
    root = tmp_path / "data"
    (root / "val" / "n01440764").mkdir(parents=True)
    (root / "val" / "n01440764" / "a.JPEG").write_bytes(b"")
    run = run_script("RescaleDataset.py", "--data", str(root), "--model", "resnet51", "--results", str(tmp_path / "r"), "--no-materialize")
    assert_clean_failure(run)
    assert "resnet51" in run.stderr
    assert "efficientnet_lite0" in run.stderr


def test_size_above_class_count(tmp_path):
    run = run_script("RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--sizes", "1001", "--results", str(tmp_path))
    assert_clean_failure(run)
    assert "1001" in run.stderr
    assert "1000" in run.stderr


def test_imported_outcomes_checked_against_given_dataset(tmp_path):
    run = run_script(
        "RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path / "results"),
        "--data", str(tmp_path / "absent"),
    )
    assert_clean_failure(run)
    assert f"dataset not found at {tmp_path / 'absent'}" in run.stderr
    assert not (tmp_path / "results" / "ReIN30.txt").exists()


def test_imported_outcomes_need_no_dataset(tmp_path):
    # The configured ImageNet root does not exist here, and without --data it is not opened.
    run = run_script(
        "RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path),
        "--random-baselines", "10",
    )
    assert run.returncode == 0, run.stderr
    lists = (tmp_path / "List_file_rescale.txt").read_text().split()
    assert lists == ["ReIN30.txt", "ReIN50.txt", "ReIN100.txt", "ReIN150.txt", "ReIN200.txt"]
    for name in lists:
        classes = (tmp_path / name).read_text().splitlines()
        assert classes == sorted(classes)
        assert len(classes) == int(name[4:-4])
        assert b"\r" not in (tmp_path / name).read_bytes()
    for name in ("summary.md", "summary.csv", "reports/ReIN30.md", "reports/ReIN30.csv", "statistics/per_class.csv", "statistics/confusions.csv", "statistics/sensitive_images.csv"):
        assert (tmp_path / name).is_file(), name


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        run = run_script("RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path),
                         "--sizes", "30", "--random-baselines", "2")
    finally:
        os.umask(umask)
    assert run.returncode == 0, run.stderr
    for name in ("ReIN30.txt", "summary.md", "reports/ReIN30.csv", "statistics/per_class.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_lowest_accuracy_strategy(tmp_path):
    run = run_script(
        "RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path),
        "--strategy", "lowest-accuracy", "--sizes", "30", "--random-baselines", "5",
    )
    assert run.returncode == 0, run.stderr
    per_class = (tmp_path / "statistics" / "per_class.csv").read_text().splitlines()[1:31]
    hardest = sorted(line.split(",")[0] for line in per_class)
    assert (tmp_path / "ReIN30.txt").read_text().split() == hardest


def test_random_strategy_differs_from_method(tmp_path):
    method = run_script("RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path / "m"), "--sizes", "30", "--random-baselines", "5")
    control = run_script("RescaleDataset.py", "--outcomes", str(REFERENCE), "--no-materialize", "--results", str(tmp_path / "r"), "--sizes", "30", "--random-baselines", "5", "--strategy", "random")
    assert method.returncode == 0, method.stderr
    assert control.returncode == 0, control.stderr
    assert (tmp_path / "m" / "ReIN30.txt").read_text() != (tmp_path / "r" / "ReIN30.txt").read_text()


def test_lists_build_published_subsets_without_network(tmp_path):
    from tests.dataset_trees import make_imagenet_tree

    published = SHARED / "reference" / "published_subsets" / "ImageNet"
    wnids = sorted(set((published / "ReIN30.txt").read_text().split()))
    root = make_imagenet_tree(tmp_path / "imagenet", "devkit-tar", wnids, train_per_class=1, val_per_class=1)
    before = tree_digest(root)
    run = run_script(
        "RescaleDataset.py", "--data", str(root), "--lists", str(published / "ReIN30.txt"),
        "--out", str(tmp_path / "subsets"), "--mode", "hardlink", "--results", str(tmp_path / "results"),
    )
    assert run.returncode == 0, run.stderr
    assert "network:" not in run.stderr
    assert "validation pass" not in run.stderr
    built = tmp_path / "subsets" / "ReIN30"
    assert sorted(p.name for p in (built / "train").iterdir()) == wnids
    assert sorted(p.name for p in (built / "val").iterdir()) == wnids
    assert not (tmp_path / "results" / "outcomes.npz").exists()
    assert tree_digest(root) == before


def test_lists_unknown_entry_names_closest(tmp_path):
    from tests.dataset_trees import make_imagenet_tree

    root = make_imagenet_tree(tmp_path / "imagenet", "val-folders", ["n01440764", "n01443537"], 1, 1)
    listing = tmp_path / "mine.txt"
    listing.write_text("n01440764\nn01443573\n")
    run = run_script("RescaleDataset.py", "--data", str(root), "--lists", str(listing), "--out", str(tmp_path / "subsets"), "--results", str(tmp_path / "r"))
    assert_clean_failure(run)
    assert "n01443573" in run.stderr
    assert "n01443537" in run.stderr
    assert not (tmp_path / "subsets" / "mine").exists()


def test_missing_places365_checkpoint_names_the_download(tmp_path):
    root = make_places365_tree(tmp_path / "Places365", "easy", ["airfield", "arch", "church-outdoor"])

    run = run_script("RescaleDataset.py", "--dataset", "Places365", "--data", str(root), "--results", str(tmp_path / "results"),
                     "--weights", str(tmp_path / "resnet50_places365.pth.tar"), "--no-materialize")

    assert_clean_failure(run)
    assert (f"Places365 checkpoint {tmp_path / 'resnet50_places365.pth.tar'} not found; download resnet50_places365.pth.tar "
            "from http://places2.csail.mit.edu/models_places365/ to that path") in run.stderr


def test_class_names_not_utf8_script(tmp_path):
    from tests.fashion_trees import write_dataset
    from tests.reliability_helpers import write_network

    root = write_dataset(tmp_path / "fm", [0, 1], 2, 2)
    network = write_network(tmp_path / "cnn.pth")
    names = tmp_path / "names.txt"
    names.write_bytes(b"t-shirt\ncaf\xe9\n")
    run = run_script("RescaleDataset.py", "--dataset", "ImageFolder", "--data", str(root), "--model", str(network),
                     "--class-names", str(names), "--no-materialize", "--device", "cpu", "--results", str(tmp_path / "r"))
    assert_clean_failure(run)
    assert f"ERROR --class-names {names} is not UTF-8 text (byte 11); save it as UTF-8\n" in run.stderr

"""Reliability of stored outcomes and checkpoint files: stale, damaged, mismatched and malicious ones."""

import logging
import re
import shutil

import pytest
import torch
import torchvision

from tests.fashion_trees import CLASS_NAMES, write_dataset
from tests.helpers import run_script, tree_digest
from tests.reliability_helpers import THREADS_ENV, assert_clean_failure, rescale, rescale_args, write_network
from utils.class_names import places365_categories
from utils.cli import run_main
from utils.networks import file_digest, load_network
from utils.outcomes import load_outcomes
from utils.training import main as train_main

TROUSER, PULLOVER, DRESS = 1, 2, 3
TRAIN_ARGS = ["--image-size", "28", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--arch", "fashion_mnist_cnn",
              "--epochs", "1", "--seed", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def log_capture(monkeypatch, caplog):
    """Keep pytest's log capture, which the scripts' own logging setup would replace."""
    monkeypatch.setattr("utils.rescale.setup_logging", lambda verbose=False: None)
    monkeypatch.setattr("utils.training.setup_logging", lambda verbose=False: None)
    caplog.set_level(logging.INFO)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A three-class ImageFolder tree, its digest and the tiny network; tests must not change the tree."""
    base = tmp_path_factory.mktemp("outcomes")
    root = write_dataset(base / "fm", [TROUSER, PULLOVER, DRESS], train_per_class=2, val_per_class=3)
    return root, tree_digest(root), write_network(base / "net.pth")


def errors(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


def run_and_log(caplog, *args) -> str:
    """Run RescaleDataset.py in this process, check that it succeeds, and return what it logged."""
    caplog.clear()
    assert rescale(*args) == 0, errors(caplog)
    return caplog.text


def training_run_with(checkpoint_bytes: bytes, tmp_path, dataset_root):
    """Set up a training run whose last.pth contains ``checkpoint_bytes``; return the flags that resume it."""
    data = tmp_path / "subsets"
    shutil.copytree(dataset_root, data / "ReIN3")
    last = tmp_path / "checkpoints" / "fashion_mnist_cnn_ReIN3" / "last.pth"
    last.parent.mkdir(parents=True)
    last.write_bytes(checkpoint_bytes)
    return [str(arg) for arg in ["--data", data, "--checkpoints", tmp_path / "checkpoints", "--results", tmp_path / "table",
                                 *TRAIN_ARGS]], last


# 13. Outcomes of a different network or of a changed validation split

def test_stale_outcomes_recomputed(tmp_path, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS], train_per_class=2, val_per_class=3)
    first, second = write_network(tmp_path / "a.pth", seed=0), write_network(tmp_path / "b.pth", seed=1)
    results = tmp_path / "results"

    def args(network, *extra):
        return rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2", *extra)

    before = tree_digest(root)
    assert "validation pass done: 9 images" in run_and_log(caplog, *args(first))
    assert "reusing the validation outcomes" in run_and_log(caplog, *args(first))

    text = run_and_log(caplog, *args(second))
    assert "not reusing" in text
    assert "a different network" in text
    assert "validation pass done: 9 images" in text
    assert load_outcomes(results / "outcomes.npz").meta["network"]["sha256"] == file_digest(second)
    assert tree_digest(root) == before

    # The network names its outputs differently: the same weights, another --class-names file.
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{name}\n" for name in reversed(CLASS_NAMES)))
    text = run_and_log(caplog, *args(second, "--class-names", names))
    assert "they name the network's outputs differently" in text
    outcomes = load_outcomes(results / "outcomes.npz")
    assert outcomes.class_names == list(reversed(CLASS_NAMES))
    for path, label in zip(outcomes.paths.tolist(), outcomes.true.tolist()):
        assert outcomes.class_names[label] == path.split("/")[1], path

    # The validation split changes: an image is added, then one is rewritten in place.
    shutil.copyfile(root / "val" / "dress" / sorted((root / "val" / "dress").iterdir())[0].name, root / "val" / "dress" / "added.png")
    text = run_and_log(caplog, *args(second))
    assert "a different validation split" in text
    assert len(load_outcomes(results / "outcomes.npz")) == 10
    rewritten = sorted((root / "val" / "trouser").iterdir())[0]
    rewritten.write_bytes((root / "val" / "dress" / "added.png").read_bytes())
    text = run_and_log(caplog, *args(second))
    assert "a different validation split" in text
    assert "validation pass done: 10 images" in text


def write_csv_outcomes(path, root, relabel: dict[str, str] | None = None):
    """Write CSV outcomes of the tree's validation images, with every prediction right, or relabelled."""
    rows = []
    for image in sorted((root / "val").glob("*/*")):
        label = image.parent.name
        rows.append(f"{image.relative_to(root).as_posix()},{(relabel or {}).get(label, label)},{label}\n")
    path.write_text("".join(rows))
    return path


@pytest.mark.parametrize("case", ["classes of another dataset", "labels that contradict the dataset"])
def test_imported_outcomes_that_do_not_fit_the_dataset(dataset, tmp_path, caplog, case):
    root, before, network = dataset
    results = tmp_path / "results"
    args = rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2")
    run_and_log(caplog, *args)
    lists_before = tree_digest(results)
    relabel = {"trouser": "airfield"} if case.startswith("classes") else {"trouser": "pullover"}
    imported = write_csv_outcomes(tmp_path / "imported.csv", root, relabel)

    caplog.clear()
    assert rescale("--outcomes", imported, *args) == 1

    if case.startswith("classes"):
        assert f"--outcomes {imported}: 1 of 3 names are not classes of the dataset: 'airfield'" in errors(caplog)
    else:
        assert f"--outcomes {imported}: 3 of 9 images have another true class than in {root}" in errors(caplog)
        assert "is 'pullover' in the outcomes and 'trouser' in the dataset" in errors(caplog)
    assert "import outcomes of this dataset, or set --data" in errors(caplog)
    assert {k: v for k, v in tree_digest(results).items() if k != ".lock"} == {k: v for k, v in lists_before.items() if k != ".lock"}
    assert tree_digest(root) == before


def test_imported_outcomes_that_fit_the_dataset(dataset, tmp_path, caplog):
    root, before, network = dataset
    imported = write_csv_outcomes(tmp_path / "imported.csv", root)

    text = run_and_log(caplog, "--outcomes", imported, *rescale_args(root, tmp_path / "results", tmp_path / "out", network,
                                                                      "--no-materialize", "--sizes", "2"))

    assert "imported outcomes of 9 images" in text
    assert "were not compared with the dataset" not in text
    assert tree_digest(root) == before


# 14. A truncated or corrupted outcomes file or checkpoint

def damaged(data: bytes, damage: str) -> bytes:
    if damage == "truncated":
        return data[: len(data) // 2]
    if damage == "flipped byte":
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        return bytes(flipped)
    if damage == "empty":
        return b""
    return bytes(range(256)) * 8  # bytes of no known format


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "empty", "garbage"])
def test_damaged_outcomes_or_checkpoint(dataset, tmp_path, caplog, damage):
    root, before, network = dataset
    results = tmp_path / "results"
    args = rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2")
    run_and_log(caplog, *args)
    stored = results / "outcomes.npz"
    stored.write_bytes(damaged(stored.read_bytes(), damage))

    # A damaged stored file is reported and computed again.
    text = run_and_log(caplog, *args)
    assert f"outcomes file {stored} is truncated or corrupt" in text
    assert "running the validation pass again" in text
    assert "--recompute" not in text
    assert len(load_outcomes(stored)) == 9

    # A damaged file given to --outcomes is an error.
    imported = tmp_path / "imported.npz"
    imported.write_bytes(damaged(stored.read_bytes(), damage))
    assert rescale("--outcomes", imported, *args) == 1
    assert f"--outcomes: outcomes file {imported} is truncated or corrupt" in errors(caplog)
    assert "give an outcomes .npz that RescaleDataset.py wrote" in errors(caplog)

    # A damaged network checkpoint is an error.
    broken = tmp_path / "broken.pth"
    broken.write_bytes(damaged(network.read_bytes(), damage))
    caplog.clear()
    assert rescale(*rescale_args(root, results, tmp_path / "out", broken, "--no-materialize")) == 1
    assert f"checkpoint {broken} is " in errors(caplog)
    assert "corrupt" in errors(caplog)

    # A damaged last.pth of a training run is an error that explains how to start the run again.
    train_args, last = training_run_with(damaged(network.read_bytes(), damage), tmp_path, root)
    caplog.clear()
    assert run_main(train_main, train_args) == 1
    assert f"checkpoint {last} is " in errors(caplog)
    assert "delete it or pass --restart to train the run again" in errors(caplog)
    assert tree_digest(root) == before


def test_corrupt_checkpoint_exits_cleanly(dataset, tmp_path):
    root, before, _ = dataset
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(damaged(b"", "garbage"))

    run = run_script("RescaleDataset.py", *rescale_args(root, tmp_path / "results", tmp_path / "out", garbage,
                                                         "--no-materialize"), env=THREADS_ENV)

    assert_clean_failure(run)
    assert f"checkpoint {garbage} is truncated, corrupt or not a PyTorch file (it is neither a zip archive nor a pickle)" in run.stderr
    assert tree_digest(root) == before


# 15. A checkpoint whose keys or shapes do not match the network

def old_densenet_key(key: str) -> str:
    """Return the key name of older DenseNet checkpoints: `norm.1` where torchvision now has `norm1`."""
    return re.sub(r"\.(norm|relu|conv)([12])\.", r".\1.\2.", key)


def csail_checkpoint(path, arch: str, rename=lambda key: key, change=None):
    """Save a checkpoint laid out like CSAIL's Places365 ones: `module.` keys, no batch-norm counters."""
    state = torchvision.models.get_model(arch, weights=None, num_classes=365).state_dict()
    state = {rename(key): value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    if change:
        change(state)
    torch.save({"epoch": 90, "arch": arch, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.mark.parametrize("mismatch", ["old densenet-161 key names", "shape", "extra key", "missing key"])
def test_checkpoint_keys_or_shapes_mismatch(dataset, tmp_path, caplog, mismatch):
    root, before, _ = dataset
    path = tmp_path / "places365.pth.tar"
    arch = "densenet161" if mismatch.startswith("old") else "resnet18"
    if mismatch.startswith("old"):
        csail_checkpoint(path, arch, rename=old_densenet_key)
    elif mismatch == "shape":
        csail_checkpoint(path, arch, change=lambda state: state.update({"conv1.weight": torch.zeros(64, 3, 5, 5)}))
    elif mismatch == "extra key":
        csail_checkpoint(path, arch, change=lambda state: state.update({"fc2.weight": torch.zeros(2, 2)}))
    else:
        csail_checkpoint(path, arch, change=lambda state: state.pop("layer4.1.bn2.weight"))

    args = ["--dataset", "ImageFolder", "--data", root, "--model", arch, "--weights", path,
            "--results", tmp_path / "results", "--no-materialize", "--device", "cpu", "--skip-unknown-classes"]
    assert rescale(*args) == 1

    message = errors(caplog)
    assert f"weights in {path} do not match the network" in message
    expected = {
        # 78 dense layers with 10 renamed keys each; the message lists the first 8 of each kind.
        "old densenet-161 key names": ["780 missing keys: features.denseblock1.denselayer1.norm1.weight",
                                       "780 unexpected keys: features.denseblock1.denselayer1.norm.1.weight",
                                       "and 772 more", "old DenseNet key names"],
        "shape": ["1 shape mismatches: conv1.weight: checkpoint (64, 3, 5, 5), network (64, 3, 7, 7)"],
        "extra key": ["1 unexpected keys: fc2.weight"],
        "missing key": ["1 missing keys: layer4.1.bn2.weight"],
    }[mismatch]
    for fragment in expected:
        assert fragment in message
    assert "num_batches_tracked" not in message
    assert not (tmp_path / "results" / "outcomes.npz").exists()
    assert tree_digest(root) == before


def test_checkpoint_without_batch_norm_counters_loads(tmp_path):
    path = csail_checkpoint(tmp_path / "resnet18_places365.pth.tar", "resnet18")

    network = load_network("resnet18", str(path))

    assert network.class_names == places365_categories()
    assert int(network.module.bn1.num_batches_tracked) == 0


# 16. A checkpoint that executes code when unpickled

class Exploit:
    """Unpickling this object runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("entry", ["torchvision weights", "project checkpoint", "legacy format", "training resume"])
def test_code_executing_checkpoint_rejected(dataset, tmp_path, caplog, entry):
    root, before, network = dataset
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    payload = {"state_dict": torch.load(network, weights_only=True)["model"], "payload": Exploit(marker)}
    torch.save(payload, evil, _use_new_zipfile_serialization=entry != "legacy format")
    common = ["--dataset", "ImageFolder", "--data", root, "--results", tmp_path / "results", "--no-materialize", "--device", "cpu"]

    if entry == "torchvision weights":
        assert rescale(*common, "--model", "resnet18", "--weights", evil) == 1
    elif entry in ("project checkpoint", "legacy format"):
        assert rescale(*common, "--model", evil) == 1
    else:
        train_args, last = training_run_with(evil.read_bytes(), tmp_path, root)
        assert run_main(train_main, train_args) == 1

    message = errors(caplog)
    assert "contains objects that weights_only loading rejects" in message
    if entry == "training resume":
        assert "delete it or pass --restart" in message
    else:
        assert "pass --trust-checkpoint" in message
    assert not marker.exists()
    assert tree_digest(root) == before

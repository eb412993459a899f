"""Reliability under interruptions and faults: SIGKILL, full disks, concurrent runs and NaN losses.

Kills and exit statuses need real processes. They run `utils.rescale.main` or the training
script with a small test hook that slows down, blocks or breaks one step, so that the test can
interrupt that step at a known point. The re-runs happen in this process.
"""

import csv
import errno
import logging
import os
import resource
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fashion_trees import write_dataset
from tests.helpers import PYTHON, REPO, run_script, tree_digest
from tests.reliability_helpers import (
    THREADS_ENV,
    assert_clean_failure,
    count_files,
    kill,
    rescale,
    rescale_args,
    start,
    wait_for,
    without_lock,
    write_network,
)
from utils.checkpoints import load_checkpoint
from utils.cli import run_main
from utils.networks import file_digest
from utils.outcomes import Outcomes, load_outcomes, save_outcomes
from utils.train_log import TIMING_COLUMNS
from utils.training import main as train_main

TROUSER, PULLOVER, DRESS, COAT = 1, 2, 3, 4
SCRIPT = "Train_ImageNetRescaleSubsets.py"
TRAIN_ARGS = ["--image-size", "28", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--arch", "fashion_mnist_cnn",
              "--subsets", "ReIN3"]

# utils.rescale.main run as RescaleDataset.py runs it, with every file copy of subset building
# delayed by argv[1] seconds, so that a test can interrupt a build part-way.
SLOW_BUILD = """
import sys
import time

import torch

import utils.file_placement as placement
from utils.cli import run_main
from utils.rescale import main

torch.set_num_threads(1)
copy_file = placement.copy_file


def slow_copy(source, target):
    time.sleep(float(sys.argv[1]))
    copy_file(source, target)


placement.copy_file = slow_copy
sys.exit(run_main(main, sys.argv[2:]))
"""

# As SLOW_BUILD, but every file copy waits until the file argv[1] exists, so the run holds its
# locks for as long as the test needs.
GATED_BUILD = SLOW_BUILD.replace(
    "    time.sleep(float(sys.argv[1]))\n",
    "    while not os.path.exists(sys.argv[1]):\n        time.sleep(0.02)\n",
).replace("import sys\n", "import os\nimport sys\n", 1)

# utils.rescale.main with each image of the validation pass delayed by argv[1] seconds.
SLOW_PASS = """
import sys
import time

import torch

import utils.image_decoding as decoding
from utils.cli import run_main
from utils.rescale import main

torch.set_num_threads(1)
decode = decoding.EvalTransform.__call__


def slow_decode(self, path):
    time.sleep(float(sys.argv[1]))
    return decode(self, path)


decoding.EvalTransform.__call__ = slow_decode
sys.exit(run_main(main, sys.argv[2:]))
"""

# The ImageNet training script, SIGKILLed half-way through writing last.pth of epoch argv[1]: the
# first half of the checkpoint is in the temporary file, and it is flushed to disk.
KILLED_CHECKPOINT_WRITE = """
import io
import os
import signal
import sys

import torch

import utils.train_runs as train_runs
from utils.atomic import atomic_output
from utils.cli import run_main
from utils.training import main

torch.set_num_threads(1)
save_run_checkpoint = train_runs.save_run_checkpoint


def save_and_die(checkpoint, path):
    if path.name == "last.pth" and checkpoint["epoch"] == int(sys.argv[1]):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_output(path, "wb") as stream:
            stream.write(buffer.getvalue()[: buffer.tell() // 2])
            stream.flush()
            os.fsync(stream.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    save_run_checkpoint(checkpoint, path)


train_runs.save_run_checkpoint = save_and_die
sys.exit(run_main(lambda argv: main(argv, "ImageNet"), sys.argv[2:]))
"""


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


@pytest.fixture
def subsets(tmp_path):
    """A folder with the subset ReIN3: 3 classes, 12 training and 5 validation images each (4 steps of 8)."""
    write_dataset(tmp_path / "subsets" / "ReIN3", [0, 1, 2], train_per_class=12, val_per_class=5)
    return tmp_path / "subsets"


def errors(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


def train_args(data, folder, *extra) -> list[str]:
    return [str(arg) for arg in ["--data", data, "--checkpoints", folder / "checkpoints", "--results", folder / "table",
                                 *TRAIN_ARGS, *extra]]


def log_rows(path) -> list[dict]:
    """Read a run's log.csv without the columns that measure wall time."""
    with path.open(newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(stream)]


def temporaries(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def check_checkpoints(folder) -> dict[str, int]:
    """Load every checkpoint of a run folder, which fails on a damaged one; return the epoch of each."""
    return {path.name: load_checkpoint(path)["epoch"] for path in sorted(folder.glob("*.pth"))}


# 17. RescaleDataset.py killed with SIGKILL while building a subset, then run again

def test_killed_build_rerun_identical(tmp_path, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS, COAT], train_per_class=30, val_per_class=5)
    network = write_network(tmp_path / "net.pth")
    before = tree_digest(root)
    results, out = tmp_path / "results", tmp_path / "out"
    args = rescale_args(root, results, out, network, "--sizes", "2", "3")

    child = start(SLOW_BUILD, 0.02, *args)
    wait_for(lambda: count_files(out / ".ReFM3.partial") >= 20, child, what="20 files of ReFM3")
    kill(child)
    assert (out / "ReFM2" / "subset.json").is_file()
    assert not (out / "ReFM3").exists()
    assert not (out / ".ReFM3.partial" / "subset.json").exists()
    finished = tree_digest(out / "ReFM2")

    assert rescale(*args) == 0
    assert "reusing the validation outcomes" in caplog.text
    assert "ReFM2: 2 classes, 60 train and 10 val images" in caplog.text
    assert "complete and verified, skipped" in caplog.text
    assert rescale(*rescale_args(root, tmp_path / "clean-results", tmp_path / "clean", network, "--sizes", "2", "3")) == 0

    assert without_lock(out) == without_lock(tmp_path / "clean")
    assert tree_digest(out / "ReFM2") == finished
    reports = without_lock(results)
    reports.pop("outcomes.npz")  # records when and how long the pass ran
    clean_reports = without_lock(tmp_path / "clean-results")
    clean_reports.pop("outcomes.npz")
    assert reports == clean_reports
    assert tree_digest(root) == before


# 18. Training killed with SIGKILL mid-epoch, and again while writing a checkpoint, then run again

def test_killed_training_resumes(subsets, tmp_path, caplog):
    before = tree_digest(subsets)
    # The memory format is given, because the uninterrupted run would otherwise time both formats itself.
    common = ["--epochs", "2", "--lr", "0.05", "--lr-step", "1", "--lr-gamma", "0.5", "--seed", "5", "--channels-last"]
    args = train_args(subsets, tmp_path / "killed", *common)
    folder = tmp_path / "killed" / "checkpoints" / "fashion_mnist_cnn_ReIN3"

    # Killed at the second of the four steps of epoch 2.
    killed = run_script(SCRIPT, *args, "--debug-kill-at-step", "6", env=THREADS_ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert check_checkpoints(folder)["last.pth"] == 1

    # Killed again half-way through writing last.pth after epoch 2.
    killed = subprocess.run([PYTHON, "-c", KILLED_CHECKPOINT_WRITE, "2", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, **THREADS_ENV))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "resuming after epoch 1 of 2" in killed.stderr
    assert check_checkpoints(folder)["last.pth"] == 1
    assert len(temporaries(folder)) == 1

    assert run_main(train_main, args) == 0
    assert "removed 1 temporary files that an interrupted run left" in caplog.text
    assert "resuming after epoch 1 of 2" in caplog.text
    assert "epoch 1/2 started" not in caplog.text
    assert "epoch 2/2 started, learning rate 0.025" in caplog.text
    checkpoints = check_checkpoints(folder)
    assert sorted(checkpoints) == ["best.pth", "last.pth"]
    assert checkpoints["last.pth"] == 2
    assert temporaries(folder) == []

    assert run_main(train_main, train_args(subsets, tmp_path / "uninterrupted", *common)) == 0
    reference = log_rows(tmp_path / "uninterrupted" / "checkpoints" / "fashion_mnist_cnn_ReIN3" / "log.csv")
    assert [(row["epoch"], row["lr"]) for row in reference] == [("1", "0.05"), ("2", "0.025")]
    assert log_rows(folder / "log.csv") == reference
    assert tree_digest(subsets) == before


def test_killed_training_with_workers_reruns_at_once(subsets, tmp_path, caplog):
    # A DataLoader worker outlives its killed parent by up to 5 seconds; it must not hold the run's lock.
    args = train_args(subsets, tmp_path, "--epochs", "1", "--seed", "5", "--workers", "2")
    # Output goes to a file: waiting for a pipe's end would also wait for the orphaned workers.
    with (tmp_path / "killed.log").open("w") as output:
        killed = subprocess.Popen([PYTHON, SCRIPT, *args, "--debug-kill-at-step", "2"], cwd=REPO, stdout=output,
                                  stderr=subprocess.STDOUT, env=dict(os.environ, **THREADS_ENV))
        assert killed.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()

    assert run_main(train_main, args) == 0
    assert "resuming" not in caplog.text
    assert "epoch 1/1 started" in caplog.text
    assert check_checkpoints(tmp_path / "checkpoints" / "fashion_mnist_cnn_ReIN3")["last.pth"] == 1


# 19. The disk fills up while building a subset or writing a checkpoint

def limit_file_size(limit: int):
    """Return a preexec_fn that caps the size of files the child may write; writes beyond fail with EFBIG."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_build(tmp_path, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS], train_per_class=4, val_per_class=2)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "train" / "dress" / "large.png")  # about 270 kB, above the limit below
    network = write_network(tmp_path / "net.pth")
    before = tree_digest(root)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ReFM2.txt").write_text("trouser\npullover\n")
    (lists / "ReFM3.txt").write_text("trouser\npullover\ndress\n")
    out = tmp_path / "out"
    args = rescale_args(root, tmp_path / "results", out, network)
    assert rescale("--lists", lists / "ReFM2.txt", *args) == 0
    finished = tree_digest(out / "ReFM2")

    env = dict(os.environ, PYTHONUNBUFFERED="1", **THREADS_ENV)
    full = subprocess.run([PYTHON, "RescaleDataset.py", "--lists", lists / "ReFM2.txt", lists / "ReFM3.txt", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size(64 * 1024))

    assert_clean_failure(full)
    assert f"placing {root / 'train' / 'dress' / 'large.png'} at {out / '.ReFM3.partial' / 'train' / 'dress' / 'large.png'} failed: File too large" in full.stderr
    assert "free disk space" in full.stderr
    assert "run again to resume" in full.stderr
    assert not (out / "ReFM3").exists()
    assert not (out / ".ReFM3.partial" / "subset.json").exists()
    assert tree_digest(out / "ReFM2") == finished

    assert rescale("--lists", lists / "ReFM2.txt", lists / "ReFM3.txt", *args) == 0
    assert rescale("--lists", lists / "ReFM2.txt", lists / "ReFM3.txt",
                   *rescale_args(root, tmp_path / "clean-results", tmp_path / "clean", network)) == 0
    assert without_lock(out) == without_lock(tmp_path / "clean")
    assert tree_digest(root) == before


def test_disk_full_during_checkpoint(subsets, tmp_path, caplog, monkeypatch):
    before = tree_digest(subsets)
    args = train_args(subsets, tmp_path, "--epochs", "2", "--seed", "0")
    folder = tmp_path / "checkpoints" / "fashion_mnist_cnn_ReIN3"
    save = torch.save

    def save_until_disk_full(obj, stream, *rest, **options):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            stream.write(b"PK\x03\x04 partial checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, stream, *rest, **options)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    assert run_main(train_main, args) == 1
    message = errors(caplog)
    assert f"writing {folder}" in message
    assert "failed: No space left on device; free disk space" in message
    assert "(the previous" in message
    assert "if any, is unchanged)" in message
    assert check_checkpoints(folder) == {"best.pth": 1, "last.pth": 1}
    assert temporaries(folder) == []
    assert len(log_rows(folder / "log.csv")) == 1

    monkeypatch.setattr(torch, "save", save)
    caplog.clear()
    assert run_main(train_main, args) == 0
    assert "resuming after epoch 1 of 2" in caplog.text
    assert check_checkpoints(folder)["last.pth"] == 2
    assert tree_digest(subsets) == before


# 20. The validation pass killed part-way

def test_killed_validation_pass_recomputed(tmp_path, caplog):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER, DRESS, COAT], train_per_class=2, val_per_class=10)
    first, second = write_network(tmp_path / "a.pth", seed=0), write_network(tmp_path / "b.pth", seed=1)
    before = tree_digest(root)
    results = tmp_path / "results"
    stored = results / "outcomes.npz"

    def args(network):
        return rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2", "--batch-size", "1")

    assert rescale(*args(first)) == 0
    previous = stored.read_bytes()

    child_log = tmp_path / "child.log"
    with child_log.open("w") as stream:
        child = start(SLOW_PASS, 0.05, *args(second), stderr=stream)
        wait_for(lambda: "validation pass: 40 images" in child_log.read_text(), child, what="the validation pass")
        time.sleep(0.5)
        kill(child)
    assert "validation pass done" not in child_log.read_text()
    assert stored.read_bytes() == previous
    assert temporaries(results) == []

    caplog.clear()
    assert rescale(*args(second)) == 0
    assert "a different network" in caplog.text
    assert "validation pass done: 40 images" in caplog.text
    complete = load_outcomes(stored)
    assert len(complete) == 40
    assert complete.meta["network"]["sha256"] == file_digest(second)

    # A consistent file of half the images, as a writer without the rename could leave, is not reused.
    half = Outcomes(class_names=complete.class_names, true=complete.true[:20], topk=complete.topk[:20],
                    probs=complete.probs[:20], paths=complete.paths[:20], meta=dict(complete.meta))
    save_outcomes(half, stored)
    caplog.clear()
    assert rescale(*args(second)) == 0
    assert "they cover 20 of the 40 validation images" in caplog.text
    assert len(load_outcomes(stored)) == 40
    assert tree_digest(root) == before


# 21. Two RescaleDataset.py runs on the same output folder at once

def test_concurrent_runs_same_folder(tmp_path):
    root = write_dataset(tmp_path / "fm", [TROUSER, PULLOVER], train_per_class=3, val_per_class=2)
    network = write_network(tmp_path / "net.pth")
    before = tree_digest(root)
    listed = tmp_path / "lists" / "ReFM2.txt"
    listed.parent.mkdir()
    listed.write_text("trouser\npullover\n")
    out, gate = tmp_path / "out", tmp_path / "release"

    holder = start(GATED_BUILD, gate, "--lists", listed, *rescale_args(root, tmp_path / "results", out, network))
    try:
        wait_for(lambda: (out / ".ReFM2.partial").is_dir(), holder, what="the first run to start building")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **THREADS_ENV)
        contenders = {
            "same results folder": tmp_path / "results",
            "other results folder": tmp_path / "results2",
        }
        runs = {
            name: subprocess.Popen([PYTHON, "RescaleDataset.py", "--lists", listed, *rescale_args(root, results, out, network)],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, results in contenders.items()
        }
        finished = {name: (run.wait(timeout=300), run.stderr.read()) for name, run in runs.items()}
        assert holder.poll() is None, "the first run ended before the others tried the folder"
    finally:
        gate.touch()
    assert holder.wait(timeout=300) == 0

    for name, (status, stderr) in finished.items():
        assert status == 1, (name, stderr)
        assert "Traceback" not in stderr
    assert f"{tmp_path / 'results'} is in use by RescaleDataset.py (pid {holder.pid})" in finished["same results folder"][1]
    assert f"{out} is in use by building subsets (pid {holder.pid})" in finished["other results folder"][1]

    assert rescale("--lists", listed, *rescale_args(root, tmp_path / "clean-results", tmp_path / "clean", network)) == 0
    assert without_lock(out) == without_lock(tmp_path / "clean")
    assert sorted(os.listdir(out)) == [".lock", "ReFM2"]
    assert tree_digest(root) == before


# 22. A training loss that becomes NaN

def test_nan_loss_stops_run(subsets, tmp_path, caplog):
    before = tree_digest(subsets)
    folder = tmp_path / "late" / "checkpoints" / "fashion_mnist_cnn_ReIN3"

    assert run_main(train_main, train_args(subsets, tmp_path / "late", "--epochs", "2", "--seed", "0",
                                           "--debug-nan-at-step", "6")) == 1
    message = errors(caplog)
    assert "the training loss became NaN or infinite at epoch 2, step 2; the checkpoint of epoch 1 is kept" in message
    assert "1 run stopped on a NaN or infinite loss: fashion_mnist_cnn_ReIN3" in message
    assert check_checkpoints(folder) == {"best.pth": 1, "last.pth": 1}
    assert len(log_rows(folder / "log.csv")) == 1
    assert temporaries(folder) == []

    caplog.clear()
    assert run_main(train_main, train_args(subsets, tmp_path / "early", "--epochs", "2", "--seed", "0",
                                           "--debug-nan-at-step", "1")) == 1
    assert "at epoch 1, step 1; no epoch was completed, so no checkpoint was written" in errors(caplog)
    assert not (tmp_path / "early" / "checkpoints" / "fashion_mnist_cnn_ReIN3" / "last.pth").exists()
    assert tree_digest(subsets) == before

"""Training harness: dataset discovery, flags, checkpoints, resume, torchrun, NaN guard and results table.

The training runs use tiny ImageFolder trees of real Fashion-MNIST images (28x28 grayscale PNGs,
read as RGB and cropped to 32x32) and small networks on the CPU. Two hidden flags inject faults:
`--debug-kill-at-step N` sends SIGKILL to the training process at global step N, and
`--debug-nan-at-step N` multiplies the loss of global step N by NaN (step 1 is the first step of
epoch 1). With 36 training images and batches of 8, an epoch has 4 steps, so step 6 is the second
step of epoch 2.
"""

import csv
import json
import logging
import random
import signal
import socket

import numpy as np
import pytest
import torch

from tests.fashion_trees import write_dataset
from tests.helpers import run_script
from utils import memory_format
from utils.atomic import exclusive_lock
from utils.checkpoints import load_checkpoint
from utils.cli import counted, run_main
from utils.distributed import DistributedContext
from utils.errors import UserError
from utils.fashion_mnist_challenge import main as challenge_main, write_verdict
from utils.memory_format import prefers_channels_last, time_memory_formats
from utils.results_table import write_results_table
from utils.train_args import build_parser, parse_args
from utils.train_checkpoint import capture_rng_state, load_trained_network, restore_rng_state
from utils.train_data import DatasetSource, Preprocessing, ShardSampler, find_datasets, load_split
from utils.train_log import LOG_COLUMNS, TIMING_COLUMNS, write_epoch_log
from utils.train_loop import MetricSums
from utils.training import check_batch_size, main

SCRIPT = "Train_ImageNetRescaleSubsets.py"
SMALL_RUN = ["--image-size", "32", "--batch-size", "8", "--lr", "0.01", "--workers", "0", "--device", "cpu"]
CHECKPOINT_KEYS = {"version", "model", "arch", "num_classes", "class_names", "image_size", "resize_size", "mean", "std",
                   "optimizer", "lr_scheduler", "scaler", "epoch", "best_top1", "history", "config", "rng"}


# One thread per process: on a small machine shared with other jobs, two threads per process
# wait on each other and make these tests tens of times slower.
THREADS_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def subsets(tmp_path_factory):
    """ReIN3: 3 classes, 12 training and 5 validation images each; ReIN4: 4 classes, 6 and 2 each."""
    root = tmp_path_factory.mktemp("subsets")
    write_dataset(root / "ReIN3", [0, 1, 2], train_per_class=12, val_per_class=5)
    write_dataset(root / "ReIN4", [5, 7, 8, 9], train_per_class=6, val_per_class=2)
    (root / "notes").mkdir()
    return root


@pytest.fixture
def log_capture(monkeypatch, caplog):
    """Keep pytest's log capture, which the script's own logging setup would replace."""
    monkeypatch.setattr("utils.training.setup_logging", lambda verbose=False: None)
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture
def keep_logging():
    """Restore the root logger after an in-process `main`, which configures logging for a script."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def run_args(data, folder, *extra) -> list[str]:
    return ["--data", str(data), "--checkpoints", str(folder / "checkpoints"), "--results", str(folder / "results"), *SMALL_RUN, *extra]


def read_rows(path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def make_splits(folder, *names):
    for name in names:
        (folder / name / "train").mkdir(parents=True)
        (folder / name / "val").mkdir(parents=True)


# Dataset discovery

def test_find_datasets_matches_prefix(tmp_path):
    make_splits(tmp_path, "ReIN100", "ReIN30", "other")
    (tmp_path / "ReIN50").mkdir()  # no train/ and val/: not a subset

    found = find_datasets(tmp_path, "ReIN")

    assert [s.name for s in found] == ["ReIN30", "ReIN100"]


def test_find_datasets_single_dataset(tmp_path):
    make_splits(tmp_path, "ImageNet")

    found = find_datasets(tmp_path / "ImageNet", "ReIN")

    assert found == [DatasetSource("ImageNet", tmp_path / "ImageNet")]


def test_find_datasets_names_parent_reference(tmp_path):
    make_splits(tmp_path, "TinyA")

    found = find_datasets(tmp_path / "TinyA" / "train" / "..", "ReIN")

    assert [s.name for s in found] == ["TinyA"]


def test_find_datasets_without_prefix_match_takes_all(tmp_path):
    make_splits(tmp_path, "small", "large")

    assert [s.name for s in find_datasets(tmp_path, "ReIN")] == ["large", "small"]


def test_find_datasets_selects_exact_names(tmp_path):
    make_splits(tmp_path, "ReIN30", "ReIN50", "ReIN100")

    assert [s.name for s in find_datasets(tmp_path, "ReIN", ["ReIN100", "ReIN30"])] == ["ReIN100", "ReIN30"]


def test_find_datasets_reports_unknown_name(tmp_path):
    make_splits(tmp_path, "ReIN30")

    with pytest.raises(UserError, match="ReIN3 not found.*available: ReIN30"):
        find_datasets(tmp_path, "ReIN", ["ReIN3"])


def test_find_datasets_empty_folder_explains_fix(tmp_path):
    with pytest.raises(UserError) as error:
        find_datasets(tmp_path, "ReIN")

    assert str(tmp_path) in str(error.value)
    assert "python RescaleDataset.py" in str(error.value)


# Flags

def test_seed_help_names_conditions(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag, so that no flag name is broken at its hyphen
    text = " ".join(build_parser("ImageNet").format_help().split())
    assert ("On the CPU, runs with the same seed, --workers, number of processes and memory format (set it with "
            "--channels-last or --no-channels-last) give the same log.csv apart from the timing columns") in text
    assert "repeats a CPU run exactly" not in text


def test_defaults_follow_training_protocol(tmp_path):
    args = parse_args(["--data", str(tmp_path)], "ImageNet")

    assert (args.lr, args.momentum, args.weight_decay, args.batch_size, args.epochs) == (0.1, 0.9, 1e-4, 256, 100)
    assert (args.lr_step, args.lr_gamma, args.image_size, args.resize_size) == (30, 0.1, 224, 256)
    assert args.prefix == "ReIN"
    assert len(args.arch) == 10


def test_default_networks_leave_out_too_large_minimum(tmp_path):
    args = parse_args(["--data", str(tmp_path), "--image-size", "32"], "ImageNet")

    assert "InceptionV4" not in args.arch
    assert len(args.arch) == 9


def test_places365_uses_its_prefix(tmp_path):
    assert parse_args(["--data", str(tmp_path)], "Places365").prefix == "RePL"


def test_resize_size_scales_with_image_size(tmp_path):
    assert parse_args(["--data", str(tmp_path), "--image-size", "32"], "ImageNet").resize_size == 37


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "1"], "--batch-size 1 is invalid; batch norm needs at least 2 images per step"),
    (["--lr", "0"], "--lr 0"),
    (["--lr", "inf"], "--lr inf is invalid; the learning rate must be a positive number"),
    (["--lr", "nan"], "--lr nan is invalid"),
    (["--weight-decay", "inf"], "--weight-decay inf is invalid"),
    (["--epochs", "0"], "--epochs 0"),
    (["--momentum", "1.5"], "--momentum 1.5"),
    (["--lr-gamma", "0"], "--lr-gamma 0"),
    (["--image-size", "32", "--resize-size", "30"], "--resize-size 30"),
    (["--image-size", "64", "--arch", "InceptionV4"], "at least 75"),
    (["--arch", "ResNet19"], "unknown architecture 'ResNet19'"),
    (["--restart", "--evaluate"], "exclude each other"),
    (["--image-size", "16"], "below the minimum input size of every network"),
])
def test_invalid_flags_raise_user_error(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        parse_args(["--data", str(tmp_path), *flags], "ImageNet")


@pytest.mark.parametrize("flag, value", [("--lr", "1e308"), ("--weight-decay", "1e39")])
def test_optimizer_values_must_fit_float32(tmp_path, flag, value):
    with pytest.raises(UserError) as error:
        parse_args(["--data", str(tmp_path), flag, value], "ImageNet")

    assert str(error.value).startswith(f"{flag} {float(value)} is invalid;")
    assert "below 3.4e38 (the float32 maximum)" in str(error.value)
    assert parse_args(["--data", str(tmp_path), flag, "3e38"], "ImageNet") is not None


@pytest.mark.parametrize("seed", ["99999999999999999999", str(2**32)])
def test_seed_must_be_below_2_to_32(tmp_path, seed):
    with pytest.raises(UserError) as error:
        parse_args(["--data", str(tmp_path), "--seed", seed], "ImageNet")

    assert str(error.value) == f"--seed {seed} is invalid; use an integer from 0 to 4294967295 (below 2**32)"
    assert parse_args(["--data", str(tmp_path), "--seed", "4294967295"], "ImageNet").seed == 2**32 - 1


def test_repeated_arch_trained_once(tmp_path):
    args = parse_args(["--data", str(tmp_path), "--arch", "ResNet18", "MobileNetV2", "ResNet18"], "ImageNet")

    assert args.arch == ["ResNet18", "MobileNetV2"]


@pytest.mark.parametrize("batch_size, processes, message", [
    (6, 4, "--batch-size 6 is not divisible by the 4 processes; use a multiple of 4"),
    (4, 4, "--batch-size 4 gives each of the 4 processes 1 image per step, and batch norm needs at least 2; use at least 8"),
])
def test_batch_must_give_each_process_two_images(tmp_path, batch_size, processes, message):
    args = parse_args(["--data", str(tmp_path), "--batch-size", str(batch_size)], "ImageNet")

    with pytest.raises(UserError) as error:
        check_batch_size(args, DistributedContext(world_size=processes))

    assert str(error.value) == message
    check_batch_size(args, DistributedContext(world_size=2))


def test_log_counts_in_singular_and_plural():
    assert counted(1, "run") == "1 run"
    assert counted(0, "epoch") == "0 epochs"
    assert counted(3, "run") == "3 runs"
    assert counted(1, "process", "processes") == "1 process"
    assert counted(2, "process", "processes") == "2 processes"


def failing_main(error: BaseException):
    """Return a script main function that raises ``error``."""
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, reason", [
    (MemoryError("Caught MemoryError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):"),
     "MemoryError: Caught MemoryError in DataLoader worker process 0."),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 400000000000 bytes."),
     "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 400000000000 bytes."),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB."),
     "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB."),
])
def test_out_of_memory_logs_one_line(caplog, error, reason):
    assert run_main(failing_main(error), []) == 1

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [f"the run ran out of memory ({reason}); lower --batch-size or --workers, "
                      "or --image-size when training, then run again"]


def test_other_runtime_error_keeps_traceback():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_main(failing_main(RuntimeError("shape mismatch")), [])


def test_challenge_text_counts_in_singular(tmp_path):
    table = {"ResNet18": {"ReFM4": 50.0, "Random4_seed1": 60.0}}
    subsets = {"ReFM4": ["a", "b", "c", "d"], "Random4_seed1": ["a", "b", "e", "f"]}

    write_verdict(table, subsets, tmp_path, min_gap=1.0, epochs=1)

    text = (tmp_path / "challenge.md").read_text()
    assert "after 1 epoch of training" in text
    assert "must be at least 1 point." in text


def challenge_folders(tmp_path) -> list[str]:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ReFM4.txt").write_text("Shirt\nT-shirt_top\nPullover\nCoat\n")
    return ["--lists", str(lists), "--data", str(tmp_path / "FashionMNIST"), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("flag, value, message", [
    ("--train-per-class", "0", "argument --train-per-class: 0 is too small; use 1 or more"),
    ("--epochs", "0", "argument --epochs: 0 is too small; use 1 or more"),
    ("--workers", "-3", "argument --workers: -3 is too small; use 0 or more"),
    ("--seeds", "-1", "argument --seeds: -1 is too small; use 0 or more"),
])
def test_challenge_flag_rejected_by_name(tmp_path, capsys, keep_logging, flag, value, message):
    with pytest.raises(SystemExit) as exited:
        challenge_main(challenge_folders(tmp_path) + [flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_challenge_training_flags_checked_first(tmp_path, keep_logging):
    with pytest.raises(UserError, match="^--lr 0.0 is invalid; the learning rate must be a positive number"):
        challenge_main(challenge_folders(tmp_path) + ["--lr", "0"])
    assert not (tmp_path / "out").exists()


# Pieces of the loop and the outputs

def test_metric_sums_count_top1_and_top5():
    # Two images of class 0: the first is ranked first, the second ranked sixth of six classes.
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6]])
    sums = MetricSums(torch.device("cpu"))

    sums.add(logits, torch.tensor([0, 0]), torch.tensor(3.0))
    metrics = sums.result(DistributedContext())

    assert (metrics.loss, metrics.top1, metrics.top5, metrics.images) == (1.5, 50.0, 50.0, 2)


def test_shard_sampler_covers_each_image_once():
    shards = [list(ShardSampler(5, num_replicas=2, rank=rank)) for rank in (0, 1)]

    assert shards == [[0, 2, 4], [1, 3]]


def test_rng_state_round_trips_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = tmp_path / "rng.pth"
    torch.save({"rng": capture_rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())

    restore_rng_state(load_checkpoint(path)["rng"])

    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def log_rows(arch, dataset, top1s):
    rows = []
    for epoch, top1 in enumerate(top1s, start=1):
        row = dict.fromkeys(LOG_COLUMNS, "0")
        row.update(arch=arch, dataset=dataset, epoch=epoch, val_top1=f"{top1:.4f}")
        rows.append(row)
    return rows


def test_results_table_from_logs(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_epoch_log(log_rows("ResNet18", "ReIN100", [10, 30, 20]), checkpoints / "ResNet18_ReIN100" / "log.csv")
    write_epoch_log(log_rows("ResNet18", "ReIN30", [40]), checkpoints / "ResNet18_ReIN30" / "log.csv")
    write_epoch_log(log_rows("MAFNet", "ImageNet", [55.5, 50]), checkpoints / "MAFNet_ImageNet" / "log.csv")

    write_results_table(checkpoints, tmp_path / "results")

    markdown = (tmp_path / "results" / "results.md").read_text().splitlines()
    assert "| network | ImageNet | ReIN30 | ReIN100 |" in markdown
    assert "| MAFNet | 55.50 (2 ep) | - | - |" in markdown
    assert "| ResNet18 | - | 40.00 (1 ep) | 30.00 (3 ep) |" in markdown
    table = read_rows(tmp_path / "results" / "results.csv")
    assert table[0] == {"arch": "MAFNet", "ImageNet_top1": "55.5000", "ImageNet_epochs": "2",
                        "ReIN30_top1": "", "ReIN30_epochs": "", "ReIN100_top1": "", "ReIN100_epochs": ""}
    assert table[1]["ReIN100_top1"] == "30.0000"
    assert table[1]["ReIN100_epochs"] == "3"


def test_results_table_without_logs(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "ResNet18_ReIN30").mkdir(parents=True)
    (checkpoints / "ResNet18_ReIN30" / "last.pth").write_bytes(b"checkpoint")
    caplog.set_level(logging.WARNING)

    assert write_results_table(checkpoints, tmp_path / "results") == []

    markdown = (tmp_path / "results" / "results.md").read_text()
    assert "|" not in markdown
    assert markdown.endswith("No run has a `log.csv` with a finished epoch yet, so the table is empty.\n")
    assert (tmp_path / "results" / "results.csv").read_text() == "arch\n"
    assert ("ResNet18_ReIN30 is left out of the results table: it has last.pth but no log.csv; run the training "
            "script on it again, which rewrites log.csv from last.pth") in caplog.text


# Training runs

def test_one_epoch_two_networks(subsets, tmp_path, keep_logging):
    args = run_args(subsets, tmp_path, "--arch", "ShuffleNetV1", "MobileNetV2", "--epochs", "1", "--seed", "0")

    assert main(args) == 0

    for arch in ("ShuffleNetV1", "MobileNetV2"):
        for subset, classes, val_images in (("ReIN3", 3, 15), ("ReIN4", 4, 8)):
            folder = tmp_path / "checkpoints" / f"{arch}_{subset}"
            assert {p.name for p in folder.iterdir()} == {".lock", "last.pth", "best.pth", "log.csv", "curves.png"}
            assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            rows = read_rows(folder / "log.csv")
            assert [(r["arch"], r["dataset"], r["epoch"], r["lr"]) for r in rows] == [(arch, subset, "1", "0.01")]
            assert int(rows[0]["val_images"]) == val_images
            checkpoint = load_checkpoint(folder / "last.pth")
            assert set(checkpoint) == CHECKPOINT_KEYS
            assert (checkpoint["arch"], checkpoint["num_classes"], checkpoint["epoch"]) == (arch, classes, 1)
            assert checkpoint["class_names"] == sorted(p.name for p in (subsets / subset / "train").iterdir())
            assert (checkpoint["image_size"], checkpoint["resize_size"]) == (32, 37)
            assert checkpoint["config"]["seed"] == 0
            assert not any(k.startswith(("module.", "_orig_mod.")) for k in checkpoint["model"])
    markdown = (tmp_path / "results" / "results.md").read_text()
    assert "| network | ReIN3 | ReIN4 |" in markdown
    assert "| ShuffleNetV1 |" in markdown
    assert "| MobileNetV2 |" in markdown
    assert markdown.count("(1 ep)") == 4


def test_finished_run_is_skipped_and_restart_retrains(subsets, tmp_path, keep_logging):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "1", "--seed", "0")
    main(args)
    last = tmp_path / "checkpoints" / "MobileNetV1_ReIN4" / "last.pth"
    written = last.stat().st_mtime_ns

    main(args)
    assert last.stat().st_mtime_ns == written

    main(args + ["--restart"])
    assert last.stat().st_mtime_ns != written


def test_deleted_log_restored_on_skip(subsets, tmp_path, log_capture):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "1", "--seed", "0")
    main(args)
    log_path = tmp_path / "checkpoints" / "MobileNetV1_ReIN4" / "log.csv"
    written = log_path.read_text()
    log_path.unlink()

    main(args)

    assert log_path.read_text() == written
    assert "MobileNetV1_ReIN4: log.csv was missing; rewrote it from the 1 epoch in last.pth" in log_capture.text
    assert "| MobileNetV1 | " in (tmp_path / "results" / "results.md").read_text()


def test_finished_run_rejects_changed_flags(subsets, tmp_path, keep_logging):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--seed", "0")
    main(args + ["--epochs", "1"])
    last = tmp_path / "checkpoints" / "MobileNetV1_ReIN4" / "last.pth"
    written = last.stat().st_mtime_ns

    with pytest.raises(UserError) as error:
        main(args + ["--epochs", "1", "--image-size", "64", "--batch-size", "12", "--lr", "0.5"])

    message = str(error.value)
    assert message.startswith("MobileNetV1_ReIN4 finished 1 epoch with other settings (")
    assert "--batch-size 8 -> 12; --lr 0.01 -> 0.5; --image-size 32 -> 64; --resize-size 37 -> 73" in message
    assert "pass --restart to train it again with them, or another --checkpoints folder to keep it" in message
    assert last.stat().st_mtime_ns == written
    assert main(args + ["--epochs", "2"]) == 0
    assert load_checkpoint(last)["epoch"] == 2


def test_finished_run_rejects_changed_classes(tmp_path, keep_logging):
    first, second = tmp_path / "first", tmp_path / "second"
    write_dataset(first / "ReX3", [0, 1, 2], train_per_class=4, val_per_class=2)
    write_dataset(second / "ReX3", [0, 1], train_per_class=4, val_per_class=2)
    checkpoints = ["--checkpoints", str(tmp_path / "checkpoints"), "--results", str(tmp_path / "results")]
    common = [*SMALL_RUN, *checkpoints, "--arch", "MobileNetV1", "--seed", "0", "--epochs", "1"]
    assert main(["--data", str(first), *common]) == 0
    last = tmp_path / "checkpoints" / "MobileNetV1_ReX3" / "last.pth"
    written = last.stat().st_mtime_ns

    with pytest.raises(UserError) as error:
        main(["--data", str(second), *common])

    assert str(error.value) == (
        f"MobileNetV1_ReX3 finished with other classes than the train/ and val/ folders of {second / 'ReX3'} now have; "
        "pass --restart to train it on the current classes, or another --checkpoints folder to keep it"
    )
    assert last.stat().st_mtime_ns == written
    assert main(["--data", str(first), *common]) == 0


def test_unwritable_results_stop_before_training(subsets, tmp_path, keep_logging):
    (tmp_path / "file").write_text("not a folder")
    results = tmp_path / "file" / "results"
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "1")

    with pytest.raises(UserError) as error:
        main(args + ["--results", str(results)])

    assert str(error.value) == (f"--results {results} cannot be created, because {tmp_path / 'file'} is a file, "
                                "not a folder; pass a folder elsewhere with --results, or move that file away")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("evaluate", [[], ["--evaluate"]])
def test_checkpoints_file_stops_training(subsets, tmp_path, keep_logging, evaluate):
    checkpoints = tmp_path / "file"
    checkpoints.write_text("not a folder")
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "1")

    with pytest.raises(UserError) as error:
        main(args + ["--checkpoints", str(checkpoints), *evaluate])

    assert str(error.value) == f"--checkpoints {checkpoints} is a file, not a folder; pass a folder with --checkpoints"
    assert checkpoints.read_text() == "not a folder"
    assert not (tmp_path / "results").exists()


def test_lock_below_file_names_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError) as error:
        with exclusive_lock(tmp_path / "file" / "run", "a test"):
            pass
    assert str(error.value) == (f"{tmp_path / 'file' / 'run'} cannot be created, because {tmp_path / 'file'} is a file, "
                                "not a folder; choose a folder for the outputs elsewhere, or move that file away")


def test_oversized_batch_warns_once(subsets, tmp_path, log_capture):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "2", "--seed", "0")

    main(args + ["--batch-size", "32"])

    warning = ("ReIN4: --batch-size 32 is larger than the 24 training images, so each epoch is one step of 24 images; "
               "lower --batch-size for more steps per epoch")
    assert [record.getMessage() for record in log_capture.records].count(warning) == 1
    rows = read_rows(tmp_path / "checkpoints" / "MobileNetV1_ReIN4" / "log.csv")
    assert [row["train_images"] for row in rows] == ["24", "24"]


def test_locked_run_folder_is_rejected(subsets, tmp_path, keep_logging):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "1")

    with exclusive_lock(tmp_path / "checkpoints" / "MobileNetV1_ReIN4", "another training job"):
        with pytest.raises(UserError, match="in use by another training job"):
            main(args)


def test_resume_rejects_changed_learning_rate(subsets, tmp_path, keep_logging):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--seed", "0")
    main(args + ["--epochs", "1"])

    with pytest.raises(UserError, match="--lr 0.01 -> 0.02"):
        main(args + ["--epochs", "2", "--lr", "0.02"])


def test_same_seed_gives_same_log(subsets, tmp_path, keep_logging):
    logs = []
    for name in ("first", "second"):
        main(run_args(subsets, tmp_path / name, "--arch", "MobileNetV1", "--subsets", "ReIN4", "--epochs", "2", "--seed", "7"))
        logs.append(read_rows(tmp_path / name / "checkpoints" / "MobileNetV1_ReIN4" / "log.csv"))

    assert len(logs[0]) == 2
    assert without_timing(logs[0]) == without_timing(logs[1])


@pytest.mark.parametrize("channels_last, contiguous, expected", [(1.0, 1.0, True), (1.0, 0.96, True), (1.0, 0.9, False), (0.8, 1.0, True)])
def test_memory_format_choice_needs_margin(channels_last, contiguous, expected):
    assert prefers_channels_last({True: channels_last, False: contiguous}) is expected


def test_memory_format_timing_runs_both_formats():
    seconds = time_memory_formats("fashion_mnist_cnn", num_classes=3, image_size=28, batch_size=8)

    assert set(seconds) == {True, False}
    assert all(value > 0 for value in seconds.values())


def test_cpu_training_times_memory_format_once(subsets, tmp_path, log_capture, monkeypatch):
    monkeypatch.setattr(memory_format, "_choices", {})
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "ReIN4", "--epochs", "1", "--seed", "0")

    assert main(args) == 0

    assert log_capture.text.count("MobileNetV1 at 32x32 on the CPU: ") == 1
    chosen = load_checkpoint(tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "last.pth")["config"]["trained_channels_last"]
    assert chosen in (True, False)
    assert f"training in {'channels-last' if chosen else 'contiguous'} memory" in log_capture.text
    assert load_checkpoint(tmp_path / "checkpoints" / "MobileNetV1_ReIN4" / "last.pth")["config"]["trained_channels_last"] is chosen


def test_resumed_run_keeps_memory_format(subsets, tmp_path, keep_logging, monkeypatch):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "--seed", "0")
    monkeypatch.setattr(memory_format, "time_memory_formats", lambda *_: {True: 2.0, False: 1.0})
    monkeypatch.setattr(memory_format, "_choices", {})
    assert main(args + ["--epochs", "1"]) == 0

    def no_timing(*_):
        raise AssertionError("a resumed run timed the memory formats again")

    monkeypatch.setattr(memory_format, "time_memory_formats", no_timing)
    monkeypatch.setattr(memory_format, "_choices", {})
    assert main(args + ["--epochs", "2"]) == 0

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "last.pth")
    assert checkpoint["epoch"] == 2
    assert checkpoint["config"]["trained_channels_last"] is False


def test_old_checkpoint_resumes_in_channels_last(subsets, tmp_path, keep_logging, monkeypatch):
    # Checkpoints written before the memory format was timed have no trained_channels_last key.
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "--seed", "0")
    monkeypatch.setattr(memory_format, "time_memory_formats", lambda *_: {True: 2.0, False: 1.0})
    monkeypatch.setattr(memory_format, "_choices", {})
    assert main(args + ["--epochs", "1", "--channels-last"]) == 0
    last = tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "last.pth"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]["trained_channels_last"]
    checkpoint["config"]["channels_last"] = None
    torch.save(checkpoint, last)

    assert main(args + ["--epochs", "2"]) == 0

    assert load_checkpoint(last)["config"]["trained_channels_last"] is True


def test_memory_format_flag_skips_timing(subsets, tmp_path, keep_logging, monkeypatch):
    def no_timing(*_):
        raise AssertionError("the memory formats were timed although --no-channels-last was given")

    monkeypatch.setattr(memory_format, "time_memory_formats", no_timing)
    monkeypatch.setattr(memory_format, "_choices", {})

    assert main(run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "--epochs", "1", "--no-channels-last")) == 0

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "last.pth")
    assert checkpoint["config"]["trained_channels_last"] is False


def test_trained_network_loads_for_inference(subsets, tmp_path, keep_logging):
    main(run_args(subsets, tmp_path, "--arch", "ShuffleNetV2", "--subsets", "ReIN3", "--epochs", "1", "--seed", "0"))

    network = load_trained_network(tmp_path / "checkpoints" / "ShuffleNetV2_ReIN3" / "best.pth")

    assert network.class_names == ["pullover", "t-shirt", "trouser"]
    assert network.preprocessing == Preprocessing(32, 37)
    assert network.model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_kill_mid_epoch_resumes_where_it_stopped(subsets, tmp_path, keep_logging):
    # The memory format is given, because the uninterrupted run would otherwise time both formats itself.
    common = ["--arch", "MobileNetV1", "--subsets", "ReIN3", "--epochs", "3", "--lr", "0.05",
              "--lr-step", "1", "--lr-gamma", "0.5", "--seed", "5", "--channels-last"]
    args = run_args(subsets, tmp_path / "killed", *common)
    folder = tmp_path / "killed" / "checkpoints" / "MobileNetV1_ReIN3"

    killed = run_script(SCRIPT, *args, "--debug-kill-at-step", "6", env=THREADS_ENV)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "epoch 2/3 started" in killed.stderr
    assert load_checkpoint(folder / "last.pth")["epoch"] == 1
    assert len(read_rows(folder / "log.csv")) == 1

    resumed = run_script(SCRIPT, *args, env=THREADS_ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 of 3" in resumed.stderr
    assert "epoch 1/3 started" not in resumed.stderr
    assert "epoch 2/3 started, learning rate 0.025" in resumed.stderr

    main(run_args(subsets, tmp_path / "uninterrupted", *common))
    rows = read_rows(folder / "log.csv")
    reference = read_rows(tmp_path / "uninterrupted" / "checkpoints" / "MobileNetV1_ReIN3" / "log.csv")
    assert [(r["epoch"], r["lr"]) for r in rows] == [("1", "0.05"), ("2", "0.025"), ("3", "0.0125")]
    assert without_timing(rows) == without_timing(reference)


def test_nan_loss_stops_run_and_keeps_checkpoint(subsets, tmp_path):
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "--epochs", "2", "--seed", "0")
    folder = tmp_path / "checkpoints" / "MobileNetV1_ReIN3"

    result = run_script(SCRIPT, *args, "--debug-nan-at-step", "6", env=THREADS_ENV)

    assert result.returncode == 1
    assert "NaN or infinite at epoch 2, step 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert load_checkpoint(folder / "last.pth")["epoch"] == 1
    assert (folder / "best.pth").is_file()
    assert len(read_rows(folder / "log.csv")) == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def count_correct(checkpoint_path, val_folder) -> tuple[int, int]:
    """Count top-1 hits of a checkpoint on a folder of validation images, one image at a time."""
    network = load_trained_network(checkpoint_path)
    images = load_split(val_folder.parent, val_folder.name, network.preprocessing.val_transform())
    with torch.inference_mode():
        hits = sum(int(network.model(image[None]).argmax() == label) for image, label in images)
    return hits, len(images)


def test_torchrun_matches_single_process_bookkeeping(subsets, tmp_path, keep_logging):
    # The memory format is given, because in contiguous memory the batches of 8 of --evaluate and the
    # batches of 4 of each process give losses about 1e-4 apart.
    args = run_args(subsets, tmp_path, "--arch", "MobileNetV1", "--subsets", "ReIN3", "--epochs", "1", "--seed", "0", "--channels-last")
    command = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), SCRIPT, *args]

    result = run_script(*command, env=THREADS_ENV)

    assert result.returncode == 0, result.stderr
    assert "gloo process group of 2 processes" in result.stderr
    row = read_rows(tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "log.csv")[0]
    # 36 training images: 18 per process, 4 full batches of 4 each; the 15 validation images are
    # split 8 + 7 without padding.
    assert (row["train_images"], row["val_images"]) == ("32", "15")
    best = tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "best.pth"
    hits, total = count_correct(best, subsets / "ReIN3" / "val")
    assert float(row["val_top1"]) == pytest.approx(100 * hits / total, abs=1e-4)

    main(args + ["--evaluate"])
    evaluation = json.loads((tmp_path / "checkpoints" / "MobileNetV1_ReIN3" / "evaluation.json").read_text())
    assert evaluation["val_images"] == 15
    assert evaluation["val_top1"] == pytest.approx(float(row["val_top1"]), abs=1e-4)
    assert evaluation["val_loss"] == pytest.approx(float(row["val_loss"]), rel=1e-4)

"""Reliability of class list files, subset sizes, output folders and configuration values.

Each bad value must give an error that names it and the fix, with exit status 1 (2 for argparse's
own checks), and must leave the dataset root, and every folder but the output folders, unchanged.
"""

import logging
import os

import pytest
import torch

from tests.fashion_trees import write_dataset
from tests.helpers import run_script, tree_digest
from tests.reliability_helpers import THREADS_ENV, assert_clean_failure, rescale, rescale_args, without_lock, write_network
from utils.cli import run_main
from utils.config import CONFIG_FILE, load_config
from utils.training import main as train_main

TROUSER, PULLOVER, DRESS, COAT = 1, 2, 3, 4


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
    """A four-class ImageFolder tree, its digest, and the tiny network; tests must not change the tree."""
    base = tmp_path_factory.mktemp("lists")
    root = write_dataset(base / "fm", [TROUSER, PULLOVER, DRESS, COAT], train_per_class=2, val_per_class=2)
    return root, tree_digest(root), write_network(base / "net.pth")


def errors(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


def write_list(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# 8. A list with CRLF endings, a UTF-8 BOM, trailing spaces, blank lines, comments and duplicates

def test_messy_list_file_accepted(dataset, tmp_path, caplog):
    root, before, network = dataset
    messy = write_list(tmp_path / "messy" / "ReFM2.txt",
                       b"\xef\xbb\xbf# two classes\r\n\r\n  trouser  \r\npullover\t# knitted\r\n   \r\ntrouser\r\n")
    clean = write_list(tmp_path / "clean" / "ReFM2.txt", b"pullover\ntrouser\n")

    assert rescale("--lists", messy, *rescale_args(root, tmp_path / "r1", tmp_path / "out1", network)) == 0
    assert rescale("--lists", clean, *rescale_args(root, tmp_path / "r2", tmp_path / "out2", network)) == 0

    assert without_lock(tmp_path / "out1") == without_lock(tmp_path / "out2")
    assert sorted(os.listdir(tmp_path / "out1" / "ReFM2" / "val")) == ["pullover", "trouser"]
    assert "line 6: trouser repeats line 3; the repeat is ignored" in caplog.text
    assert tree_digest(root) == before


# 9. A list entry that is not a class, or that contains '/', '\' or '..'

@pytest.mark.parametrize("entry, message", [
    ("trousers", "'trousers' (closest: trouser"),
    ("Pullover", "'Pullover' (closest: pullover"),
    ("../trouser", "entry '../trouser' contains a path separator or '..'"),
    ("train/trouser", "entry 'train/trouser' contains a path separator or '..'"),
    ("..\\..\\trouser", "contains a path separator or '..'"),
    ("trouser/../../../escape", "contains a path separator or '..'"),
    ("..", "entry '..' contains a path separator or '..'"),
])
def test_list_entry_unknown_or_path_like(dataset, tmp_path, caplog, entry, message):
    root, before, network = dataset
    work = tmp_path / "work"
    listed = write_list(work / "lists" / "ReFM2.txt", f"dress\n{entry}\n".encode())
    outside = tree_digest(tmp_path)

    assert rescale("--lists", listed, *rescale_args(root, work / "results", work / "out", network)) == 1

    assert message in errors(caplog)
    assert str(listed) in errors(caplog)
    assert not (work / "out" / "ReFM2").exists()
    written = set(tree_digest(tmp_path)) - set(outside)
    assert written <= {"work/results", "work/results/.lock"}, written
    assert tree_digest(root) == before


@pytest.mark.parametrize("flag", ["--lists", "--compare"])
@pytest.mark.parametrize("case", ["same name in two folders", "same file twice", "same file through a link", "one class",
                                  "two names on one line", "missing file"])
def test_list_files_that_cannot_make_distinct_subsets(dataset, tmp_path, caplog, flag, case):
    root, before, network = dataset
    first = write_list(tmp_path / "mine" / "ReFM2.txt", b"trouser\npullover\n")
    second = write_list(tmp_path / "theirs" / "ReFM2.txt", b"dress\ncoat\n")
    single = write_list(tmp_path / "mine" / "ReFM1.txt", b"trouser\n")
    joined = write_list(tmp_path / "mine" / "ReFM9.txt", b"trouser\tpullover\n")
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    lists, message = {
        "same name in two folders": ([first, second], f"list files {first} and {second} both give the name 'ReFM2.txt'"
                                     if flag == "--compare" else f"list files {first} and {second} both give the name 'ReFM2'"),
        "same file twice": ([first, first], f"list file {first} is given twice to {flag}; give each file once"),
        "same file through a link": ([first, tmp_path / "link" / "ReFM2.txt"],
                                     f"list file {tmp_path / 'link' / 'ReFM2.txt'} is given twice to {flag}"),
        "one class": ([first, single], f"list file {single} names only 1 class; a subset needs at least 2, so add another class"),
        "two names on one line": ([joined], "'trouser\\tpullover'"),
        "missing file": ([first, tmp_path / "nope.txt"], f"class list {tmp_path / 'nope.txt'} not found; check the path given to {flag}"),
    }[case]
    run = [flag, *lists, *rescale_args(root, tmp_path / "results", tmp_path / "out", network)]
    if flag == "--compare":
        run += ["--no-materialize", "--sizes", "2"]

    assert rescale(*run) == 1

    assert message in errors(caplog)
    assert not (tmp_path / "out").exists()
    written = {path.name for path in (tmp_path / "results").iterdir()} if (tmp_path / "results").exists() else set()
    # Stored outcomes are kept for the next run. A missing file stops the run before the validation pass.
    assert written <= ({".lock"} if case == "missing file" else {".lock", "outcomes.npz"}), written
    assert tree_digest(root) == before


def test_linked_list_named_after_link(dataset, tmp_path):
    root, before, network = dataset
    target = write_list(tmp_path / "a" / "L1.txt", b"trouser\npullover\n")
    (tmp_path / "MyLink.txt").symlink_to(target)

    assert rescale("--lists", tmp_path / "MyLink.txt", *rescale_args(root, tmp_path / "results", tmp_path / "out", network)) == 0

    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.name != ".lock") == ["MyLink"]
    assert tree_digest(root) == before


def test_lists_without_materialize_check_only(dataset, tmp_path, caplog):
    root, before, network = dataset
    listed = write_list(tmp_path / "ReFM2.txt", b"trouser\npullover\n")

    args = rescale_args(root, tmp_path / "results", tmp_path / "out", network, "--no-materialize")
    assert rescale("--lists", listed, *args) == 0

    assert "--no-materialize: the 1 list files name classes of" in caplog.text
    assert not (tmp_path / "out" / "ReFM2").exists()
    assert tree_digest(root) == before


# 10. A subset size of 0, 1, negative, larger than the number of classes, or not an integer

@pytest.mark.parametrize("size, message", [
    ("0", "subset size 0 is below 2; a subset needs at least 2 classes"),
    ("1", "subset size 1 is below 2"),
    ("-3", "subset size -3 is below 2"),
    ("2.5", "subset size '2.5' is not an integer"),
    ("thirty", "subset size 'thirty' is not an integer"),
])
def test_subset_size_invalid_on_command_line(dataset, tmp_path, capsys, size, message):
    root, before, network = dataset

    with pytest.raises(SystemExit) as exit_status:
        rescale(*rescale_args(root, tmp_path / "results", tmp_path / "out", network, "--sizes", size))

    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    assert tree_digest(root) == before


@pytest.mark.parametrize("sizes, message", [
    (["5"], "subset size 5 is larger than the 4 classes with validation images; use sizes of at most 4"),
    (["3", "3"], "subset sizes [3, 3] repeat a value"),
])
def test_subset_size_too_large_or_repeated(dataset, tmp_path, caplog, sizes, message):
    root, before, network = dataset

    assert rescale(*rescale_args(root, tmp_path / "results", tmp_path / "out", network, "--sizes", *sizes)) == 1

    assert message in errors(caplog)
    assert not list(tmp_path.glob("results/ReFM*.txt"))
    assert not (tmp_path / "out").exists()
    assert tree_digest(root) == before


def edited_config(tmp_path, old: str, new: str):
    """Write a copy of config_rescale.py with ``old`` replaced by ``new``; the real file is never edited."""
    text = CONFIG_FILE.read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "config" / "config_rescale.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize("sizes, message", [
    ("[1, 30]", "ImageNet['sizes']: subset size 1 is below 2"),
    ("[30, 50.5]", "ImageNet['sizes']: subset size 50.5 is not an integer"),
    ("[-30]", "ImageNet['sizes']: subset size -30 is below 2"),
    ("[]", "ImageNet['sizes'] must be a non-empty list"),
])
def test_subset_size_invalid_in_config_file(dataset, tmp_path, monkeypatch, caplog, sizes, message):
    root, before, network = dataset
    config = edited_config(tmp_path, "sizes=[30, 50, 100, 150, 200],", f"sizes={sizes},")
    monkeypatch.setenv("RESCALE_CONFIG", str(config))

    assert rescale(*rescale_args(root, tmp_path / "results", tmp_path / "out", network)) == 1

    assert f"{config}: {message}" in errors(caplog)
    assert not (tmp_path / "results").exists()
    assert tree_digest(root) == before


# 11. An output folder inside the dataset root, or equal to it

@pytest.mark.parametrize("where", [
    "subsets folder is the root", "subsets folder inside the root", "subsets folder through a link into the root",
    "results folder is the root", "results folder inside the root", "subsets folder inside the root, full run",
])
def test_output_folder_inside_dataset_root(dataset, tmp_path, caplog, where):
    root, before, network = dataset
    (tmp_path / "link").symlink_to(root / "train")
    folders = {
        "subsets folder is the root": ("results", root),
        "subsets folder inside the root": ("results", root / "subsets"),
        "subsets folder through a link into the root": ("results", tmp_path / "link" / "subsets"),
        "results folder is the root": (root, "out"),
        "results folder inside the root": (root / "val" / "results", "out"),
        "subsets folder inside the root, full run": ("results", root / "val" / "subsets"),
    }
    results, out = (tmp_path / folder if isinstance(folder, str) else folder for folder in folders[where])
    lists = [] if where.endswith("full run") else ["--lists", write_list(tmp_path / "ReFM2.txt", b"trouser\npullover\n")]

    assert rescale(*lists, *rescale_args(root, results, out, network)) == 1

    what = "results folder" if where.startswith("results") else "subsets folder"
    assert f"the {what} " in errors(caplog)
    assert f"is inside the dataset root {root}, where nothing may be written" in errors(caplog)
    assert "validation pass" not in caplog.text
    assert tree_digest(root) == before


@pytest.mark.parametrize("lists", [False, True])
def test_results_folder_inside_subsets_folder(dataset, tmp_path, caplog, lists):
    root, before, network = dataset
    out = tmp_path / "out"
    listed = ["--lists", write_list(tmp_path / "ReFM2.txt", b"trouser\npullover\n")] if lists else []

    assert rescale(*listed, *rescale_args(root, out / "ReFM2", out, network)) == 1

    assert f"the results folder {out / 'ReFM2'} lies inside the subsets folder {out}" in errors(caplog)
    assert not out.exists()
    assert tree_digest(root) == before


def test_results_folder_that_is_a_file(dataset, tmp_path, caplog):
    root, before, network = dataset
    results_file = tmp_path / "results.txt"
    results_file.write_text("notes\n")

    assert rescale(*rescale_args(root, results_file, tmp_path / "out", network, "--no-materialize")) == 1

    assert f"{results_file} is a file, not a folder; choose a folder for the outputs instead" in errors(caplog)
    assert results_file.read_text() == "notes\n"


@pytest.mark.parametrize("blocker, message", [
    ("statistics", "statistics failed: {path} is a file where a folder is needed; move that file away"),
    ("ReFM2.txt", "ReFM2.txt failed: a folder has that name; move the folder away"),
])
def test_output_name_taken_by_the_wrong_kind(dataset, tmp_path, caplog, blocker, message):
    root, before, network = dataset
    results = tmp_path / "results"
    results.mkdir()
    path = results / blocker
    if blocker.endswith(".txt"):
        path.mkdir()
    else:
        path.write_text("notes\n")

    assert rescale(*rescale_args(root, results, tmp_path / "out", network, "--no-materialize", "--sizes", "2")) == 1

    assert f"writing {path} failed" in errors(caplog)
    assert message.format(path=path) in errors(caplog)
    assert tree_digest(root) == before


def test_demo_network_inside_dataset_root(tmp_path, caplog):
    root = tmp_path / "fm"
    weights = root / "net.pth"

    assert rescale("--dataset", "FashionMNIST", "--data", root, "--results", tmp_path / "results", "--weights", weights) == 1

    assert f"the demo network file {weights} is inside the dataset root {root}" in errors(caplog)
    assert not root.exists()


@pytest.mark.parametrize("lists", [False, True])
def test_results_folder_equal_to_subsets_folder(dataset, tmp_path, caplog, lists):
    root, before, network = dataset
    both = tmp_path / "both"
    listed = ["--lists", write_list(tmp_path / "ReFM2.txt", b"trouser\npullover\n")] if lists else []

    assert rescale(*listed, *rescale_args(root, both, both, network)) == 1

    assert f"the results folder and the subsets folder are both {both}" in errors(caplog)
    assert "choose another folder with --out or --results" in errors(caplog)
    assert not both.exists()
    assert tree_digest(root) == before


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "sub/ReFM", "", ".hidden", "..", "a\\b"])
def test_prefix_that_is_not_a_plain_name(dataset, tmp_path, capsys, prefix):
    root, before, network = dataset
    outside = tree_digest(tmp_path)

    with pytest.raises(SystemExit) as exit_status:
        rescale(*rescale_args(root, tmp_path / "results", tmp_path / "out", network, "--prefix", prefix))

    assert exit_status.value.code == 2
    assert f"argument --prefix: subset name prefix {prefix!r} is not a plain folder name" in capsys.readouterr().err
    assert tree_digest(tmp_path) == outside
    assert tree_digest(root) == before


def test_config_prefix_not_plain_name(dataset, tmp_path, monkeypatch, caplog):
    root, before, network = dataset
    config = edited_config(tmp_path, "    prefix='ReIN',", "    prefix='../ReIN',")
    monkeypatch.setenv("RESCALE_CONFIG", str(config))

    assert rescale() == 1

    assert f"{config}: ImageNet['prefix'] '../ReIN' is not a plain folder name" in errors(caplog)
    assert tree_digest(root) == before


# 12. Unknown configuration key, or a value of the wrong type, in the file or on the command line

@pytest.mark.parametrize("old, new, message", [
    ("batch_size = 64 ", "batchsize = 64 ", "unknown setting 'batchsize' (did you mean 'batch_size'?)"),
    ("    root='data/ImageNet',", "    rot='data/ImageNet',", "unknown key 'rot' in ImageNet (did you mean 'root'?)"),
    ("batch_size = 64 ", "batch_size = '64' ", "batch_size must be int, got '64'; fix the value in the file"),
    ("workers = 4 ", "workers = 4.0 ", "workers must be int, got 4.0"),
    ("seed = 0 ", "seed = True ", "seed must be int, got True"),
    ("    prefix='ReIN',", "    prefix=None,", "ImageNet['prefix'] must be str, got None"),
    ("strategy = 'sensitive-confused'", "strategy = 'hardest'", "strategy = 'hardest' is unknown; choose one of"),
    ("DataRescale = 'ImageNet'", "DataRescale = 'CIFAR'", "DataRescale = 'CIFAR' is not a dataset; choose one of"),
    ("random_baselines = 100 ", "random_baselines = 0 ", "random_baselines = 0 is out of range; use 1 or more"),
    ("seed = 0 ", "seed = -1 ", "seed = -1 is out of range; use 0 to 2**32 - 1"),
    ("topk = 10 ", "topk = 0 ", "topk = 0 is out of range; use 1 or more"),
    ("batch_size = 64 ", "batch_size = 0 ", "batch_size = 0 is out of range; use 1 or more"),
    ("workers = 4 ", "workers = -1 ", "workers = -1 is out of range; use 0 or more"),
    ("min_pair_share = 0.12 ", "min_pair_share = 3.0 ", "min_pair_share = 3.0 is out of range; use 0 to 2"),
])
def test_config_unknown_key_or_wrong_type(tmp_path, monkeypatch, caplog, old, new, message):
    config = edited_config(tmp_path, old, new)
    monkeypatch.setenv("RESCALE_CONFIG", str(config))

    assert rescale() == 1
    assert f"{config}: {message}" in errors(caplog)

    # The training scripts read the same file and report the same error.
    caplog.clear()
    assert run_main(train_main, ["--data", str(tmp_path)]) == 1
    assert f"{config}: {message}" in errors(caplog)


def test_config_error_exits_cleanly(tmp_path):
    config = edited_config(tmp_path, "batch_size = 64 ", "batch_size = = 64 ")

    run = run_script("RescaleDataset.py", env={"RESCALE_CONFIG": str(config), **THREADS_ENV})

    assert_clean_failure(run)
    assert f"{config} could not be read: SyntaxError" in run.stderr


@pytest.mark.parametrize("name", ["my_config", "rescale.cfg"])
def test_config_copy_without_py_suffix_is_read(tmp_path, monkeypatch, caplog, name):
    config = edited_config(tmp_path, "batch_size = 64 ", "batch_size = 0 ")
    renamed = config.rename(config.with_name(name))
    monkeypatch.setenv("RESCALE_CONFIG", str(renamed))

    assert rescale() == 1
    assert f"{renamed}: batch_size = 0 is out of range" in errors(caplog)


def test_config_copy_resolves_relative_paths(tmp_path):
    config = edited_config(tmp_path, "    root='data/ImageNet',", "    root='images/ImageNet',")

    loaded = load_config(config)

    assert loaded.folder == config.parent
    assert loaded.datasets["ImageNet"].root == config.parent / "images" / "ImageNet"
    assert loaded.datasets["Places365"].weights == "data/resnet50_places365.pth.tar"


def rescale_main(argv):
    from utils.rescale import main

    return main(argv)


@pytest.mark.parametrize("script, args, fragments", [
    ("rescale", ["--colour", "red"], ["unrecognized arguments: --colour red"]),
    ("rescale", ["--batch-size", "many"], ["--batch-size", "invalid integer 'many'"]),
    ("rescale", ["--workers", "-1"], ["--workers", "-1 is negative"]),
    ("rescale", ["--seed", "x"], ["--seed", "invalid integer 'x'"]),
    ("rescale", ["--seed", "-1"], ["--seed", "-1 is outside 0 to 2**32 - 1"]),
    ("rescale", ["--min-pair-share", "high"], ["--min-pair-share", "invalid number 'high'"]),
    ("rescale", ["--mode", "move"], ["--mode", "invalid choice: 'move'", "hardlink"]),
    ("train", ["--epochs", "ten"], ["--epochs", "invalid int value: 'ten'"]),
    ("train", ["--lr", "fast"], ["--lr", "invalid float value: 'fast'"]),
    ("train", ["--colour", "red"], ["unrecognized arguments: --colour red"]),
])
def test_command_line_flag_errors(tmp_path, capsys, script, args, fragments):
    main = rescale_main if script == "rescale" else train_main

    with pytest.raises(SystemExit) as exit_status:
        run_main(main, ["--data", str(tmp_path), *args])

    assert exit_status.value.code == 2
    stderr = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in stderr

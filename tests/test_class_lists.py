"""Reading hand-edited class list files and checking their entries against a dataset."""

import logging

import pytest

from tests.helpers import SHARED
from utils.class_lists import check_classes, check_folder_name, read_class_list, reads_back, subset_name_from_list
from utils.errors import UserError
from utils.reports import write_class_lists

KNOWN = ["n01440764", "n01443537", "n01751748", "n02123159"]


def write_list(tmp_path, data: bytes, name: str = "ReIN4.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_plain_list_in_file_order(tmp_path):
    path = write_list(tmp_path, b"n02123159\nn01440764\n")
    assert read_class_list(path) == ["n02123159", "n01440764"]


def test_bom_crlf_and_spaces_stripped(tmp_path):
    path = write_list(tmp_path, b"\xef\xbb\xbf n01440764 \r\nn01751748\t\r\n  n02123159\r\n")
    assert read_class_list(path) == ["n01440764", "n01751748", "n02123159"]


def test_blank_lines_and_comments_ignored(tmp_path):
    text = b"# ReIN subset\n\nn01440764  # tench\n   \n#n01751748\nn02123159\n"
    path = write_list(tmp_path, text)
    assert read_class_list(path) == ["n01440764", "n02123159"]


def test_hash_inside_a_name_is_not_a_comment(tmp_path):
    path = write_list(tmp_path, b"C#\nF# # F sharp\n\tG#\t#G sharp\n#D#\n")
    assert read_class_list(path) == ["C#", "F#", "G#"]


@pytest.mark.parametrize("name, readable", [("C#", True), ("n01440764", True), ("#x", False), ("a #b", False),
                                            (" a", False), ("a\nb", False), ("", False)])
def test_names_that_read_back_from_a_list(name, readable):
    assert reads_back(name) is readable


def test_duplicates_dropped_and_logged(tmp_path, caplog):
    path = write_list(tmp_path, b"n01440764\nn02123159\nn01440764 \n")
    with caplog.at_level(logging.WARNING, logger="utils.class_lists"):
        entries = read_class_list(path)
    assert entries == ["n01440764", "n02123159"]
    assert "line 3: n01440764 repeats line 1" in caplog.text


@pytest.mark.parametrize("entry", ["train/n01440764", "n01440764\\x", "..", "a..b", "/etc"])
def test_path_like_entry_rejected(tmp_path, entry):
    path = write_list(tmp_path, f"n01443537\n{entry}\n".encode())
    with pytest.raises(UserError) as caught:
        read_class_list(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line 2" in message
    assert repr(entry) in message


def test_empty_list_rejected(tmp_path):
    path = write_list(tmp_path, b"# nothing yet\n\n")
    with pytest.raises(UserError, match="lists no class names"):
        read_class_list(path)


def test_missing_list_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_class_list(tmp_path / "ReIN30.txt")


def test_non_utf8_list_rejected(tmp_path):
    path = write_list(tmp_path, b"caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_class_list(path)


def test_known_entries_accepted():
    check_classes(["n01751748", "n01440764"], KNOWN, "ReIN2.txt")


def test_unknown_entry_names_closest():
    with pytest.raises(UserError) as caught:
        check_classes(["n01440764", "n0144O764", "zebra"], KNOWN, "ReIN3.txt")
    message = str(caught.value)
    assert message.startswith("ReIN3.txt: 2 of 3 names are not classes")
    assert "'n0144O764' (closest: n01440764" in message
    assert "'zebra' (no similar class name)" in message


def test_subset_name_is_file_stem(tmp_path):
    assert subset_name_from_list(tmp_path / "ReIN30.txt") == "ReIN30"
    assert subset_name_from_list(tmp_path / "RePL50.list") == "RePL50"


@pytest.mark.parametrize("file_name", [".hidden.txt", "my list.txt", "-x.txt", "a..b.txt"])
def test_unsafe_subset_name_rejected(tmp_path, file_name):
    with pytest.raises(UserError, match="not a plain folder name"):
        subset_name_from_list(tmp_path / file_name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", ".ReIN30", "Re IN", "R" * 101])
def test_folder_name_check(name):
    with pytest.raises(UserError, match="subset name"):
        check_folder_name(name, "subset name")


def test_folder_name_of_100_characters_accepted():
    assert check_folder_name("R" * 100, "subset name") == "R" * 100


def test_published_lists_read_cleanly():
    folder = SHARED / "reference" / "published_subsets"
    for dataset, size in [("ImageNet", 30), ("ImageNet", 50), ("ImageNet", 100), ("ImageNet", 150),
                          ("ImageNet", 200), ("Places365", 30), ("Places365", 50)]:
        prefix = "ReIN" if dataset == "ImageNet" else "RePL"
        path = folder / dataset / f"{prefix}{size}.txt"
        entries = read_class_list(path)
        assert len(entries) == size, path
        assert subset_name_from_list(path) == f"{prefix}{size}"


def test_written_lists_read_back_or_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="utils.reports"):
        paths = write_class_lists({"Re2": ["F#", "C#"], "Re3": ["C#", "#x", "F#"]}, tmp_path)

    assert read_class_list(paths[0]) == ["C#", "F#"]
    assert "Re2" not in caplog.text
    assert "Re3: class '#x' cannot be read back from a list file" in caplog.text


def test_earlier_lists_kept_with_warning(tmp_path, caplog):
    write_class_lists({"Re2": ["a", "b"], "Re3": ["a", "b", "c"]}, tmp_path)
    (tmp_path / "Re3.txt").unlink()

    with caplog.at_level(logging.WARNING, logger="utils.reports"):
        write_class_lists({"Re4": ["a", "b", "c", "d"]}, tmp_path)

    assert (tmp_path / "List_file_rescale.txt").read_text() == "Re4.txt\n"
    assert read_class_list(tmp_path / "Re2.txt") == ["a", "b"]
    assert f"{tmp_path} also contains Re2.txt from an earlier run, which are kept" in caplog.text
    assert "Re3.txt" not in caplog.text

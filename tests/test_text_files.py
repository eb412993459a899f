"""Reading the text files that the user supplies: byte order marks and encodings other than UTF-8."""

import pytest

from utils.errors import UserError
from utils.text_files import read_utf8


def test_byte_order_mark_removed(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"\xef\xbb\xbfcat\r\ndog\n")
    assert read_utf8(path) == "cat\r\ndog\n"


def test_latin1_offset_from_file_start(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes(b"\xef\xbb\xbfcaf\xe9\n")
    with pytest.raises(UserError) as caught:
        read_utf8(path, f"--class-names {path}")
    assert str(caught.value) == f"--class-names {path} is not UTF-8 text (byte 6); save it as UTF-8"


def test_missing_file_not_found(tmp_path):
    path = tmp_path / "absent.txt"
    with pytest.raises(UserError) as caught:
        read_utf8(path)
    assert str(caught.value) == f"{path} not found; check the path"

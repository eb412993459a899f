"""Reading text files that the user supplies: class lists, class names, label files and file lists.

These files are UTF-8, optionally with a byte order mark. A file in another encoding, such as a
Latin-1 `café`, stops the script with one error line that names the file and the first bad byte.
"""

from pathlib import Path

from utils.errors import UserError


def decode_utf8(data: bytes, source: str) -> str:
    """Return ``data`` decoded as UTF-8 without a byte order mark, or raise UserError naming ``source``."""
    try:
        text = data.decode("utf-8")  # not "utf-8-sig", which counts error offsets from after the byte order mark
    except UnicodeDecodeError as error:
        raise UserError(f"{source} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    return text.removeprefix("\ufeff")


def read_utf8(path: Path, source: str | None = None) -> str:
    """Return the text of the UTF-8 file ``path``, or raise UserError naming ``source`` (default: the path).

    Callers that know where a missing file comes from check that it exists first, to name that fix.
    """
    source = source or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{source} not found; check the path") from None
    except OSError as error:
        raise UserError(f"{source} could not be read: {error.strerror or error}; check its permissions") from None
    return decode_utf8(data, source)

"""Reading class list files (one class name per line) and checking them against a dataset.

A class list names the classes of one subset: WordNet ids for ImageNet, Places365-Standard folder
names such as `apartment_building-outdoor`, or folder names of an ImageFolder dataset. The files are
edited by hand, so reading tolerates a UTF-8 byte order mark, CRLF line ends, surrounding
whitespace, blank lines and `#` comments, and rejects anything that could escape a folder.
"""

import difflib
import logging
import re
from pathlib import Path

from utils.errors import UserError
from utils.text_files import decode_utf8

log = logging.getLogger(__name__)

MAX_LISTED_UNKNOWN = 10
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")  # at most 100 characters
COMMENT = re.compile(r"(?:^|(?<=\s))#")


def reads_back(name: str) -> bool:
    """True when a list file line holding ``name`` reads back as ``name`` (no comment, no stripped spaces)."""
    return bool(name) and name == name.strip() and not COMMENT.search(name) and "\n" not in name and "\r" not in name


def read_class_list(path: Path, flag: str = "--lists") -> list[str]:
    """Read the class names of a list file in file order, without comments and duplicates.

    A `#` at the start of a line or after a space or tab starts a comment, so class names such
    as `C#` stay whole. A repeated entry is logged as a warning and only its first line
    is kept. Raises UserError for a missing or non-UTF-8 file, a file without entries, and an
    entry containing `/`, `\\` or `..`, naming the file and line number.
    """
    text = _read_text(path, flag)
    entries = []
    first_line = {}
    for number, line in enumerate(text.splitlines(), start=1):
        entry = COMMENT.split(line, maxsplit=1)[0].strip()
        if not entry:
            continue
        if "/" in entry or "\\" in entry or ".." in entry:
            raise UserError(
                f"{path}, line {number}: entry {entry!r} contains a path separator or '..'; "
                "a class list holds bare class names such as n01440764 or apartment_building-outdoor"
            )
        if entry in first_line:
            log.warning("%s, line %d: %s repeats line %d; the repeat is ignored", path, number, entry, first_line[entry])
            continue
        first_line[entry] = number
        entries.append(entry)
    if not entries:
        raise UserError(f"{path} lists no class names; write one class name per line")
    return entries


def _read_text(path: Path, flag: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"class list {path} not found; check the path given to {flag}") from None
    except IsADirectoryError:
        raise UserError(f"class list {path} is a folder; pass the list files themselves") from None
    except OSError as error:
        raise UserError(f"class list {path} could not be read: {error.strerror}; check its permissions") from error
    return decode_utf8(data, f"class list {path}")


def check_classes(
    entries: list[str],
    known: list[str],
    source: str,
    fix: str = "correct these entries or use the dataset they belong to",
) -> None:
    """Raise UserError naming each entry that is not in ``known``, with the closest known names.

    The message names ``source`` (the file or subset the entries come from) and ends with the
    advice ``fix``.
    """
    known_set = set(known)
    unknown = [entry for entry in entries if entry not in known_set]
    if not unknown:
        return

    descriptions = []
    for entry in unknown[:MAX_LISTED_UNKNOWN]:
        close = difflib.get_close_matches(entry, known, n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "no similar class name"
        descriptions.append(f"{entry!r} ({hint})")
    if len(unknown) > MAX_LISTED_UNKNOWN:
        descriptions.append(f"and {len(unknown) - MAX_LISTED_UNKNOWN} more")
    raise UserError(
        f"{source}: {len(unknown)} of {len(entries)} names are not classes of the dataset: "
        f"{'; '.join(descriptions)}; {fix}"
    )


def check_folder_name(name: str, what: str, example: str = "ReIN30") -> str:
    """Return ``name`` if it is safe as a single folder name, or raise UserError naming ``what``.

    Safe names start with a letter or digit and contain only letters, digits and `_ . + -`, so
    they cannot be hidden, escape their parent folder, or need quoting in a shell.
    """
    if not FOLDER_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"{what} {name!r} is not a plain folder name; use up to 100 letters, digits and _ . + - only, "
            f"starting with a letter or digit, such as {example}"
        )
    return name


def subset_name_from_list(path: Path) -> str:
    """Return the subset name of a list file: its stem, such as ReIN30 for ReIN30.txt."""
    name = path.stem
    if not FOLDER_NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"list file {path} gives the subset name {name!r}, which is not a plain folder name; "
            "rename the file to up to 100 letters, digits and _ . + - only, such as ReIN30.txt"
        )
    return name

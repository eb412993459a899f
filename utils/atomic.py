"""Writing output files so that a killed run never leaves a half-written file under the final name."""

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError


@contextmanager
def atomic_output(path: Path, mode: str = "w", **open_kwargs):
    """Open a temporary file beside ``path`` for writing, and rename it to ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write UTF-8 text with LF line endings to ``path`` atomically."""
    with atomic_output(path, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(text)


@contextmanager
def exclusive_lock(folder: Path, purpose: str):
    """Hold an exclusive lock on ``folder`` for the duration of the block, or fail at once.

    The lock is an advisory `flock` on `<folder>/.lock`; the kernel releases it when the process
    ends, so a killed run never leaves a stale lock behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    stream = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            owner = stream.read().strip() or "another process"
            raise UserError(
                f"{folder} is in use by {owner}; wait for that run to finish or choose another folder"
            ) from None
        stream.seek(0)
        stream.truncate()
        stream.write(f"{purpose} (pid {os.getpid()})")
        stream.flush()
        yield
    finally:
        stream.close()

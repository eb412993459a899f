"""Writing output files so that a killed run never leaves a half-written file under the final name."""

import fcntl
import logging
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError

log = logging.getLogger(__name__)

# Names that `tempfile.mkstemp` gives the temporary files below: `.<name>.<8 random characters>.tmp`.
TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _file_mode() -> int:
    """Return the permissions `open` gives a new file under the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path: Path, mode: str = "w", **open_kwargs):
    """Open a temporary file beside ``path`` for writing, and rename it to ``path`` on success.

    Text is written with ``errors="surrogateescape"`` unless the caller sets ``errors``, so a file
    name that is not valid UTF-8 is written as its original bytes instead of failing the write.
    Raises UserError naming ``path`` when the write fails, for example on a full disk. The previous
    file under ``path``, if any, is then left as it was.
    """
    if "b" not in mode:
        open_kwargs.setdefault("errors", "surrogateescape")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            # `mkstemp` creates the file readable by its owner only; outputs get the usual permissions.
            os.fchmod(stream.fileno(), _file_mode())
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise write_error(path, error) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_error(path: Path, error: OSError) -> UserError:
    """Return the UserError for a failed write of ``path``."""
    if isinstance(error, IsADirectoryError):
        return UserError(f"writing {path} failed: a folder has that name; move the folder away, then run again")
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return UserError(
            f"writing {path} failed: {error.filename or path.parent} is a file where a folder is needed; "
            "move that file away, then run again"
        )
    return UserError(
        f"writing {path} failed: {error.strerror or error}; free disk space or fix the permissions of "
        f"{path.parent}, then run again (the previous {path.name}, if any, is unchanged)"
    )


def make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents if missing, or raise UserError saying why it cannot be created."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(folder, error) from error


def probe_writable(folder: Path) -> None:
    """Create ``folder`` if missing, then create and delete a temporary file in it; raise OSError when that fails."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
        pass


def write_text_atomically(path: Path, text: str) -> None:
    """Write UTF-8 text with LF line endings to ``path`` atomically."""
    with atomic_output(path, "w", encoding="utf-8", newline="\n") as stream:
        stream.write(text)


def remove_stale_temporaries(*folders: Path) -> None:
    """Delete the temporary files that a killed `atomic_output` left directly inside ``folders``.

    Call it only while holding the folder's `exclusive_lock`, so that no running writer owns them.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        stale = [path for path in folder.iterdir() if TEMPORARY_NAME.fullmatch(path.name) and path.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary files that an interrupted run left in %s", len(stale), folder)


# Descriptors of the lock files this process holds, released in forked children (below).
_held_lock_descriptors: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child, point each inherited lock descriptor at /dev/null.

    A `flock` lock lasts while any descriptor of its open file exists, and a forked child, such
    as a DataLoader worker, inherits them all. Without this, a worker orphaned by a killed run
    would keep the run's folder locked until it noticed and exited. The descriptor numbers stay
    valid, so the child's copy of the lock's file object still closes cleanly.
    """
    if not _held_lock_descriptors:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for descriptor in _held_lock_descriptors:
        os.dup2(null, descriptor)
    os.close(null)
    _held_lock_descriptors.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def file_in_the_way(folder: Path) -> Path | None:
    """Return ``folder`` or its nearest existing parent if that path is not a folder, else None."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


@contextmanager
def exclusive_lock(folder: Path, purpose: str):
    """Hold an exclusive lock on ``folder`` for the duration of the block, or fail at once.

    The lock is an advisory `flock` on `<folder>/.lock`; the kernel releases it when the process
    ends, so a killed run never leaves a stale lock behind. Forked children do not hold it.
    """
    lock_path = folder / ".lock"
    blocker = file_in_the_way(folder)
    if blocker == folder:
        raise UserError(f"{folder} is a file, not a folder; choose a folder for the outputs instead")
    if blocker is not None:
        raise UserError(f"{folder} cannot be created, because {blocker} is a file, not a folder; "
                        "choose a folder for the outputs elsewhere, or move that file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stream = open(lock_path, "a+")
    except OSError as error:
        raise UserError(
            f"cannot create the lock file {lock_path}: {error.strerror or error}; "
            f"choose a folder you can write to instead of {folder}"
        ) from error
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
        _held_lock_descriptors.add(stream.fileno())
        yield
    finally:
        _held_lock_descriptors.discard(stream.fileno())
        stream.close()

"""Placing the images of a subset by copy, hard link or symbolic link, in parallel threads."""

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from utils.errors import UserError

log = logging.getLogger(__name__)

# Errors of os.link after which a copy is made instead: another file system, too many links,
# a file system without hard links, or a kernel that forbids linking files of other users
# (fs.protected_hardlinks).
LINK_FALLBACK_ERRORS = {
    errno.EXDEV: "the output folder is on another file system than the dataset",
    errno.EMLINK: "an image has the maximum number of hard links",
    errno.EOPNOTSUPP: "the file system does not support hard links",
    errno.EPERM: "the system does not allow hard links to these images",
}
# Largest difference between the modification times of a copy and its source that still counts as
# equal: FAT file systems store times in steps of 2 seconds.
MTIME_TOLERANCE_NS = 2_000_000_000


@dataclass(frozen=True)
class PlannedFile:
    """One image of a subset: its path inside the subset and the absolute path of its source in the dataset."""

    target: str
    source: str
    size: int
    device: int
    inode: int
    mtime_ns: int = 0


def is_in_place(path: Path | str, planned: PlannedFile, mode: str) -> bool:
    """Return whether ``path`` already is ``planned`` as ``mode`` would place it.

    A copy is a regular file of the source's size and modification time (`place` gives copies
    their source's) that is not the source itself. The times may differ by up to
    ``MTIME_TOLERANCE_NS``, because some file systems store them coarsely. A hard link shares the
    source's inode, or is such a copy, made where linking failed. A symbolic link points to the
    absolute source path.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    if mode == "symlink":
        return stat.S_ISLNK(status.st_mode) and os.readlink(path) == str(planned.source)
    if not stat.S_ISREG(status.st_mode) or status.st_size != planned.size:
        return False
    same_file = (status.st_dev, status.st_ino) == (planned.device, planned.inode)
    same_time = abs(status.st_mtime_ns - planned.mtime_ns) <= MTIME_TOLERANCE_NS
    if mode == "hardlink":
        return same_file or same_time
    return not same_file and same_time


class FilePlacer:
    """Places planned files below one folder by copy, hard link or symbolic link."""

    def __init__(self, folder: Path, mode: str):
        self.folder = folder
        self._folder_text = str(folder)
        self.mode = mode
        self._lock = threading.Lock()
        self._fallbacks_logged: set[int] = set()

    @property
    def copied_instead(self) -> bool:
        """True when some hard links failed and the files were copied instead."""
        return bool(self._fallbacks_logged)

    @property
    def fallback_reasons(self) -> list[str]:
        """Why hard links failed, one text per kind of failure, in a fixed order."""
        return [LINK_FALLBACK_ERRORS[number] for number in sorted(self._fallbacks_logged)]

    def place(self, planned: PlannedFile) -> None:
        """Place one file unless it is already in place; raise UserError when writing fails."""
        # String paths: pathlib objects cost more per file than the link itself.
        target = os.path.join(self._folder_text, planned.target)
        try:
            # Creating the entry is tried first: in a new folder it succeeds at once, and only an
            # existing entry (a resumed build) needs the checks below.
            if self._try_create(planned, target):
                return
            if is_in_place(target, planned, self.mode):
                return
            os.unlink(target)
            self._try_create(planned, target)
        except OSError as error:
            raise UserError(
                f"placing {planned.source} at {target} failed: {error.strerror or error}; free disk space or fix "
                "the permissions of the output folder, or choose another one, then run again to resume"
            ) from error

    def _try_create(self, planned: PlannedFile, target: str) -> bool:
        """Create the copy or link at a new name; return False when an entry of that name exists already."""
        try:
            if self.mode == "symlink":
                os.symlink(planned.source, target)
            elif self.mode == "hardlink":
                self._link_or_copy(planned, target)
            else:
                copy_with_time(planned, target)
        except FileExistsError:
            return False
        return True

    def place_all(self, files: list[PlannedFile]) -> None:
        """Place several files one after the other (one task of `run_parallel`)."""
        for planned in files:
            self.place(planned)

    def _link_or_copy(self, planned: PlannedFile, target: str) -> None:
        try:
            os.link(planned.source, target)
            return
        except OSError as error:
            if error.errno not in LINK_FALLBACK_ERRORS:
                raise
            self._log_fallback_once(error.errno)
        copy_with_time(planned, target)

    def _log_fallback_once(self, number: int) -> None:
        with self._lock:
            if number in self._fallbacks_logged:
                return
            self._fallbacks_logged.add(number)
        log.warning("hard links into %s fail because %s; copying the images instead", self.folder, LINK_FALLBACK_ERRORS[number])


def copy_with_time(planned: PlannedFile, target: str) -> None:
    """Copy a planned file to ``target`` (see `copy_file`) and give the copy its source's modification time.

    A re-run then recognizes a copy whose source changed at the same size, and a copy edited in
    place, by the time. A run killed before the time is set leaves a copy that a re-run replaces.
    """
    copy_file(planned.source, target)
    os.utime(target, ns=(time.time_ns(), planned.mtime_ns))


def copy_file(source: Path | str, target: Path | str) -> None:
    """Copy ``source`` to ``target``, which must not exist yet (FileExistsError otherwise).

    The bytes move with `os.sendfile` inside the kernel, without the extra `stat` calls of
    `shutil.copyfile`. A copy cut short by an error is deleted. A copy cut short by a killed
    process is shorter than its source, and `is_in_place` then rejects it, so a re-run copies it
    again; subsets are built in a temporary folder, so no short file appears under a final name.

    NOTE: the copy is not fsynced. After a power loss, a file of the right size may still hold
    bytes that never reached the disk, and a re-run does not notice that.
    """
    with open(source, "rb") as reader, open(target, "xb") as writer:
        try:
            _copy_contents(reader, writer)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            raise


def _copy_contents(reader, writer) -> None:
    """Copy an open file to the end into another with `os.sendfile`, or in Python where the kernel cannot."""
    offset = 0
    block = max(os.fstat(reader.fileno()).st_size, 1 << 20)
    try:
        while True:
            sent = os.sendfile(writer.fileno(), reader.fileno(), offset, block)
            if sent == 0:
                return
            offset += sent
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSOCK, errno.ENOSYS) or offset:
            raise
    shutil.copyfileobj(reader, writer)


def batches(items: Iterable, size: int) -> Iterator[list]:
    """Yield lists of ``size`` consecutive items (the last one may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_parallel(function: Callable, items: Iterable, workers: int, bar: tqdm, chunk_size: int = 1) -> list:
    """Call ``function`` on every item in ``workers`` threads; return the results in completion order.

    With ``chunk_size`` above 1 each task calls ``function`` on that many items, because a thread
    pool task costs tens of microseconds, more than a hard link. At most four tasks per worker wait
    in the queue, so millions of items need little memory. The first exception cancels the waiting
    tasks and is raised once the running ones end.
    """
    results = []
    pending = set()

    def run_chunk(chunk: list) -> list:
        return [function(item) for item in chunk]

    def collect(done) -> None:
        for future in done:
            chunk_results = future.result()
            results.extend(chunk_results)
            bar.update(len(chunk_results))

    with ThreadPoolExecutor(max_workers=workers) as executor:
        try:
            for chunk in batches(items, chunk_size):
                if len(pending) >= 4 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
                pending.add(executor.submit(run_chunk, chunk))
            done, pending = wait(pending)
            collect(done)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return results

"""Entry-point plumbing shared by the scripts: logging setup and error reporting."""

import argparse
import logging
import os
import sys
from collections.abc import Callable

from utils.errors import UserError

log = logging.getLogger(__name__)

# Texts of the RuntimeErrors in which torch reports a failed allocation, such as
# "DefaultCPUAllocator: can't allocate memory" and "CUDA error: out of memory".
OUT_OF_MEMORY_TEXTS = ("can't allocate memory", "out of memory")


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``number`` with ``noun`` in the singular or the plural ("1 run", "2 runs")."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the mistake and where the flags are explained.

    argparse's own error output starts with the usage line, which lists every flag of the scripts
    (about 17 lines). The exit status stays argparse's 2.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; ranks other than 0 of a torchrun job only log warnings."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    prefix = f"[rank {rank}] " if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether ``error`` reports exhausted host or GPU memory.

    torch is checked only when the script has imported it, so this module stays light.
    """
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OUT_OF_MEMORY_TEXTS)


def out_of_memory_message(error: BaseException) -> str:
    """Return a one-line error message for ``error`` that names the flags which lower memory use."""
    details = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {details[0]}" if details else type(error).__name__
    return (f"the run ran out of memory ({reason}); lower --batch-size or --workers, "
            "or --image-size when training, then run again")


def log_error(message: str) -> None:
    """Log ``message`` as an error, setting up logging first if the script has not."""
    if not logging.getLogger().handlers:
        setup_logging()
    log.error("%s", message)


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a script's main function and turn user errors and exhausted memory into a message and exit status 1."""
    try:
        status = main(argv)
    except UserError as error:
        log_error(str(error))
        return 1
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        log_error(out_of_memory_message(error))
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; outputs written so far are complete or will be redone on the next run")
        return 130
    return int(status or 0)


def exit_with(main: Callable[[list[str] | None], int | None]) -> None:
    """Run ``main`` with the process arguments and exit with its status."""
    sys.exit(run_main(main, sys.argv[1:]))

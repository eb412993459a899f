"""Entry-point plumbing shared by the scripts: logging setup and error reporting."""

import logging
import os
import sys
from collections.abc import Callable

from utils.errors import UserError

log = logging.getLogger(__name__)


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``number`` with ``noun`` in the singular or the plural ("1 run", "2 runs")."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; ranks other than 0 of a torchrun job only log warnings."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    prefix = f"[rank {rank}] " if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {prefix}%(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a script's main function and turn user errors into a message and exit status 1."""
    try:
        status = main(argv)
    except UserError as error:
        if not logging.getLogger().handlers:
            setup_logging()
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; outputs written so far are complete or will be redone on the next run")
        return 130
    return int(status or 0)


def exit_with(main: Callable[[list[str] | None], int | None]) -> None:
    """Run ``main`` with the process arguments and exit with its status."""
    sys.exit(run_main(main, sys.argv[1:]))

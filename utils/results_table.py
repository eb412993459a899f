"""The results table: best validation top-1 accuracy of every network on every dataset.

`write_results_table` rebuilds `results.md` and `results.csv` from the `log.csv` files of the run
folders alone, so the table is the same whichever process or run writes it. Rows are networks
(reference networks in registry order, then any others by name) and columns are datasets in
natural order (ReIN30 before ReIN100). Each cell also records the epochs trained so far.
"""

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from models import REFERENCE_ARCHITECTURES
from utils.atomic import write_text_atomically
from utils.cli import counted
from utils.train_checkpoint import LAST_CHECKPOINT
from utils.train_data import natural_key
from utils.train_log import LOG_FILE, read_epoch_log

log = logging.getLogger(__name__)

RESULTS_MARKDOWN = "results.md"
RESULTS_CSV = "results.csv"
NO_RUNS = "No run has a `log.csv` with a finished epoch yet, so the table is empty."


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run so far, read from its log."""

    arch: str
    dataset: str
    best_top1: float
    best_epoch: int
    epochs_trained: int


def read_run_result(log_path: Path) -> RunResult | None:
    """Summarize one run log; return None for a log without epochs."""
    rows = read_epoch_log(log_path)
    if not rows:
        return None
    best = max(rows, key=lambda row: float(row["val_top1"]))
    return RunResult(
        arch=rows[-1]["arch"],
        dataset=rows[-1]["dataset"],
        best_top1=float(best["val_top1"]),
        best_epoch=int(best["epoch"]),
        epochs_trained=int(rows[-1]["epoch"]),
    )


def collect_results(checkpoints: Path) -> list[RunResult]:
    """Read every `<checkpoints>/*/log.csv`, logging and skipping unreadable and missing logs."""
    warn_missing_logs(checkpoints)
    results = []
    for log_path in sorted(checkpoints.glob(f"*/{LOG_FILE}")):
        try:
            result = read_run_result(log_path)
        except (OSError, ValueError, KeyError) as error:
            log.warning("skipping %s in the results table: %s", log_path, error)
            continue
        if result is not None:
            results.append(result)
    return results


def warn_missing_logs(checkpoints: Path) -> None:
    """Log a warning for every run folder that has a `last.pth` but no `log.csv`."""
    for last in sorted(checkpoints.glob(f"*/{LAST_CHECKPOINT}")):
        if not last.with_name(LOG_FILE).exists():
            log.warning("%s is left out of the results table: it has %s but no %s; run the training script on it "
                        "again, which rewrites %s from %s", last.parent.name, LAST_CHECKPOINT, LOG_FILE, LOG_FILE,
                        LAST_CHECKPOINT)


def _row_order(arch: str) -> tuple:
    if arch in REFERENCE_ARCHITECTURES:
        return (0, REFERENCE_ARCHITECTURES.index(arch), "")
    return (1, 0, arch)


def results_grid(results: list[RunResult]) -> tuple[list[str], list[str], dict[tuple[str, str], RunResult]]:
    """Return the row names, column names and cells (by (arch, dataset)) of the table."""
    cells = {(result.arch, result.dataset): result for result in results}
    archs = sorted({result.arch for result in results}, key=_row_order)
    datasets = sorted({result.dataset for result in results}, key=natural_key)
    return archs, datasets, cells


def render_markdown(results: list[RunResult]) -> str:
    """Render the table as Markdown; a cell reads 'top-1 (epochs)', and '-' marks a missing run."""
    archs, datasets, cells = results_grid(results)
    lines = [
        "# Training results",
        "",
        "Best validation top-1 accuracy (%) of networks trained from scratch, with the number of epochs",
        "trained so far in brackets. Regenerated from the `log.csv` of every run folder.",
        "",
    ]
    if not results:
        return "\n".join(lines + [NO_RUNS]) + "\n"
    lines += [
        "| network | " + " | ".join(datasets) + " |",
        "| --- |" + " ---: |" * len(datasets),
    ]
    for arch in archs:
        values = []
        for dataset in datasets:
            result = cells.get((arch, dataset))
            values.append(f"{result.best_top1:.2f} ({result.epochs_trained} ep)" if result else "-")
        lines.append(f"| {arch} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def render_csv(results: list[RunResult]) -> str:
    """Render the table as CSV: per dataset a '<dataset>_top1' and a '<dataset>_epochs' column, empty when missing."""
    archs, datasets, cells = results_grid(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arch"] + [f"{dataset}_{suffix}" for dataset in datasets for suffix in ("top1", "epochs")])
    for arch in archs:
        row = [arch]
        for dataset in datasets:
            result = cells.get((arch, dataset))
            row += [f"{result.best_top1:.4f}", result.epochs_trained] if result else ["", ""]
        writer.writerow(row)
    return buffer.getvalue()


def write_results_table(checkpoints: Path, results_folder: Path) -> list[RunResult]:
    """Rebuild results.md and results.csv in ``results_folder`` from the run logs under ``checkpoints``."""
    results = collect_results(checkpoints)
    write_text_atomically(results_folder / RESULTS_MARKDOWN, render_markdown(results))
    write_text_atomically(results_folder / RESULTS_CSV, render_csv(results))
    log.debug("results table of %s written to %s", counted(len(results), "run"), results_folder / RESULTS_MARKDOWN)
    return results

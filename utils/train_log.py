"""The per-epoch CSV log of a training run (`<run folder>/log.csv`), one row per completed epoch.

The log is rewritten in full after every epoch from the history stored in `last.pth`, so it never
has more rows than the checkpoint has epochs.
"""

import csv
import io
from pathlib import Path

from utils.atomic import write_text_atomically
from utils.train_loop import Metrics

LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "arch", "dataset", "epoch", "lr",
    "train_loss", "train_top1", "train_top5", "train_images",
    "val_loss", "val_top1", "val_top5", "val_images",
    "epoch_seconds", "train_images_per_second",
)
# Columns that measure wall time and so differ between two runs with the same seed.
TIMING_COLUMNS = ("epoch_seconds", "train_images_per_second")


def epoch_row(arch: str, dataset: str, epoch: int, lr: float, train: Metrics, val: Metrics, seconds: float) -> dict:
    """Return the log row of one epoch; accuracies are in percent, ``epoch`` counts from 1."""
    return {
        "arch": arch,
        "dataset": dataset,
        "epoch": epoch,
        "lr": f"{lr:.6g}",
        "train_loss": f"{train.loss:.6f}",
        "train_top1": f"{train.top1:.4f}",
        "train_top5": f"{train.top5:.4f}",
        "train_images": train.images,
        "val_loss": f"{val.loss:.6f}",
        "val_top1": f"{val.top1:.4f}",
        "val_top5": f"{val.top5:.4f}",
        "val_images": val.images,
        "epoch_seconds": f"{seconds:.2f}",
        "train_images_per_second": f"{train.images_per_second:.1f}",
    }


def write_epoch_log(rows: list[dict], path: Path) -> None:
    """Write all rows to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(path, buffer.getvalue())


def read_epoch_log(path: Path) -> list[dict[str, str]]:
    """Read the rows of a run log as strings; raise ValueError if a column is missing."""
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in LOG_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"columns {', '.join(missing)} missing")
        return list(reader)

"""Writing Stage 2 and Stage 3 results: statistics tables, class lists and per-subset reports.

Every table is written twice, as Markdown for people and as CSV for programs. Files are written
atomically, so an interrupted run leaves either the previous file or the new one.
"""

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.atomic import atomic_output, make_folder, write_text_atomically
from utils.class_lists import reads_back
from utils.class_names import readable_name
from utils.cli import counted
from utils.outcomes import Outcomes
from utils.statistics import Statistics
from utils.subset_metrics import Baseline, ChallengeFigures

log = logging.getLogger(__name__)

LIST_INDEX_FILE = "List_file_rescale.txt"
CSV_CHUNK_ROWS = 200_000


@dataclass
class SubsetResult:
    """One selected or compared subset with its figures."""

    name: str
    classes: list[int]
    figures: ChallengeFigures
    baseline: Baseline
    source: str = "selected"
    overlap: float | None = None


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_output(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Render a Markdown table; pipes inside cells are escaped."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows]) + "\n"


def _confusion_text(stats: Statistics, c: int, limit: int = 3) -> str:
    parts = [f"{stats.class_names[j]} ({readable_name(stats.class_names[j])}) {out}>/{inc}<" for j, out, inc in stats.top_confusions(c, limit)]
    return "; ".join(parts)


def _class_rows(stats: Statistics, classes) -> list[list[str]]:
    top1, top5 = stats.top1_accuracy, stats.top5_accuracy
    rows = []
    for c in classes:
        rows.append([
            stats.class_names[c],
            readable_name(stats.class_names[c]),
            str(int(stats.images[c])),
            percent(top1[c]),
            percent(top5[c]) if top5 is not None else "",
            str(int(stats.images[c] - stats.top1_correct[c])),
            _confusion_text(stats, c),
        ])
    return rows


CLASS_HEADER = ["class", "name", "images", "top1_%", "top5_%", "errors", "most confused with (images out>/in<)"]


def write_statistics(stats: Statistics, outcomes: Outcomes, folder: Path) -> None:
    """Write per-class accuracy, the sparse confusion counts and the sensitive images."""
    make_folder(folder)
    present = stats.present
    order = present[np.lexsort((stats.name_rank[present], stats.top1_accuracy[present]))]
    rows = _class_rows(stats, order.tolist())
    _write_csv(folder / "per_class.csv", CLASS_HEADER, rows)
    write_text_atomically(folder / "per_class.md", "# Per-class validation accuracy, hardest first\n\n" + markdown_table(CLASS_HEADER, rows))

    cells = csv_cells(stats.class_names)
    _write_csv_blocks(folder / "confusions.csv", ["true_class", "predicted_class", "images"], _confusion_blocks(stats, cells))
    _write_csv_blocks(folder / "sensitive_images.csv", *_sensitive_images(outcomes, cells))
    log.info("wrote per-class statistics, confusions and sensitive images to %s", folder)


# Characters that make csv.writer quote a cell (minimal quoting, "\n" line ends).
CSV_SPECIAL = (",", '"', "\r", "\n")


def csv_cells(values: list[str]) -> list[str]:
    """Return text values as csv.writer writes them as cells, quoting only those that need it."""
    if not any(character in "".join(values) for character in CSV_SPECIAL):
        return values
    return ['"' + value.replace('"', '""') + '"' if any(c in value for c in CSV_SPECIAL) else value for value in values]


def _write_csv_blocks(path: Path, header: list[str], blocks) -> None:
    """Write a header and blocks of CSV text, the fast path for tables of millions of rows.

    Formatting rows with f-strings from pre-quoted class names takes about a third less time than
    csv.writer, with the same bytes.
    """
    with atomic_output(path, "w", encoding="utf-8", newline="") as stream:
        stream.write(",".join(csv_cells(header)) + "\n")
        for block in blocks:
            stream.write(block)


def _chunks(total: int):
    """Yield (start, stop) bounds of CSV_CHUNK_ROWS rows, so millions of rows never sit in memory as lists."""
    for start in range(0, total, CSV_CHUNK_ROWS):
        yield start, min(start + CSV_CHUNK_ROWS, total)


def _confusion_blocks(stats: Statistics, cells: list[str]):
    for start, stop in _chunks(len(stats.confusion_count)):
        rows = zip(stats.confusion_true[start:stop].tolist(), stats.confusion_pred[start:stop].tolist(), stats.confusion_count[start:stop].tolist())
        yield "".join([f"{cells[true]},{cells[predicted]},{count}\n" for true, predicted, count in rows])


def _sensitive_images(outcomes: Outcomes, cells: list[str]) -> tuple[list[str], object]:
    """Return the header and the CSV text blocks of the misclassified images."""
    wrong = np.flatnonzero(outcomes.topk[:, 0] != outcomes.true)
    header = ["path" if outcomes.paths is not None else "index", "true_class", "predicted_class"]
    if outcomes.probs is not None:
        header.append("confidence")

    def blocks():
        for start, stop in _chunks(len(wrong)):
            rows = wrong[start:stop]
            first = csv_cells(outcomes.paths[rows].tolist()) if outcomes.paths is not None else rows.tolist()
            true = [cells[c] for c in outcomes.true[rows].tolist()]
            predicted = [cells[c] for c in outcomes.topk[rows, 0].tolist()]
            if outcomes.probs is None:
                yield "".join([f"{a},{b},{c}\n" for a, b, c in zip(first, true, predicted)])
            else:
                confidence = np.round(outcomes.probs[rows, 0], 4).tolist()
                yield "".join([f"{a},{b},{c},{d}\n" for a, b, c, d in zip(first, true, predicted, confidence)])

    return header, blocks()


def write_class_lists(results: dict[str, list[str]], folder: Path) -> list[Path]:
    """Write `<name>.txt` (sorted class names, LF endings) per subset and the index file naming them."""
    written = []
    for name, classes in results.items():
        for unreadable in (c for c in classes if not reads_back(c)):
            log.warning("%s: class %r cannot be read back from a list file (a '#' after a space starts a comment, "
                        "and spaces at the ends are stripped); rename its folder before using the list with --lists",
                        name, unreadable)
        path = folder / f"{name}.txt"
        write_text_atomically(path, "".join(f"{c}\n" for c in sorted(classes)))
        written.append(path)
    earlier = earlier_list_names(folder) - {p.name for p in written}
    write_text_atomically(folder / LIST_INDEX_FILE, "".join(f"{p.name}\n" for p in written))
    log.info("wrote %s and %s to %s", ", ".join(p.name for p in written), LIST_INDEX_FILE, folder)
    if earlier:
        log.warning("%s also contains %s from an earlier run, which are kept. %s names the lists of this run",
                    folder, ", ".join(sorted(earlier)), LIST_INDEX_FILE)
    return written


def earlier_list_names(folder: Path) -> set[str]:
    """Return the list files that the index file of an earlier run names and that still exist."""
    try:
        names = (folder / LIST_INDEX_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    return {name for name in names if "/" not in name and (folder / name).is_file()}


def _figure_cells(result: SubsetResult) -> list[str]:
    f, m, s = result.figures, result.baseline.mean, result.baseline.std
    return [
        percent(f.mean_class_accuracy), f"{percent(m.mean_class_accuracy)} ± {percent(s.mean_class_accuracy)}",
        percent(f.within_confusion), f"{percent(m.within_confusion)} ± {percent(s.within_confusion)}",
        percent(f.restricted_top1), f"{percent(m.restricted_top1)} ± {percent(s.restricted_top1)}",
    ]


FIGURE_HEADER = [
    "mean class acc %", "random mean ± std",
    "within-subset confusion %", "random mean ± std",
    "restricted top-1 %", "random mean ± std",
]


def write_subset_report(result: SubsetResult, stats: Statistics, folder: Path, context: str) -> None:
    """Write `<name>.md` and `<name>.csv` with each class and the subset's challenge figures."""
    make_folder(folder)
    order = sorted(result.classes, key=lambda c: (stats.top1_accuracy[c], stats.name_rank[c]))
    rows = _class_rows(stats, order)
    _write_csv(folder / f"{result.name}.csv", CLASS_HEADER, rows)
    text = io.StringIO()
    text.write(f"# {result.name}: {len(result.classes)} classes ({result.source})\n\n{context}\n\n")
    text.write(f"Random baseline: {counted(result.baseline.draws, 'seeded random subset')} of {result.baseline.size} classes.\n\n")
    text.write(markdown_table(FIGURE_HEADER, [_figure_cells(result)]))
    text.write("\n## Classes, hardest first\n\n")
    text.write(markdown_table(CLASS_HEADER, rows))
    write_text_atomically(folder / f"{result.name}.md", text.getvalue())


SUMMARY_HEADER = ["subset", "classes", "source", "jaccard_with_selected"] + FIGURE_HEADER
FIGURE_NAMES = ("mean_class_accuracy", "within_confusion", "restricted_top1")
SUMMARY_CSV_HEADER = ["subset", "classes", "source", "jaccard_with_selected"] + [
    f"{prefix}{name}" for name in FIGURE_NAMES for prefix in ("", "random_mean_", "random_std_")
]


def _figure_numbers(result: SubsetResult) -> list[str]:
    values = []
    for name in FIGURE_NAMES:
        for figures in (result.figures, result.baseline.mean, result.baseline.std):
            values.append(f"{getattr(figures, name):.6f}")
    return values


def write_summary(results: list[SubsetResult], folder: Path, context: str) -> None:
    """Write `summary.md` (percentages) and `summary.csv` (fractions): every subset's challenge figures."""
    rows, numbers = [], []
    for result in results:
        overlap = "" if result.overlap is None else f"{result.overlap:.2f}"
        rows.append([result.name, str(len(result.classes)), result.source, overlap] + _figure_cells(result))
        numbers.append([result.name, str(len(result.classes)), result.source, overlap] + _figure_numbers(result))
    _write_csv(folder / "summary.csv", SUMMARY_CSV_HEADER, numbers)
    write_text_atomically(folder / "summary.md", f"# Rescaled subsets\n\n{context}\n\n" + markdown_table(SUMMARY_HEADER, rows))
    for row in rows:
        log.info("%s: %s classes, mean class accuracy %s%% (random %s), within-subset confusion %s%% (random %s)", row[0], row[1], row[4], row[5], row[6], row[7])

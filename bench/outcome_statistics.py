"""Benchmark 5: statistics, selection and reports from imported outcomes, at ImageNet-21k and ImageNet-1k scale.

The outcomes are synthetic but shaped like a real network's. Per-class accuracies are drawn
from Beta(6, 4), about 60% top-1 overall. 70% of the errors go to one of four fixed "sibling"
classes of each class and the rest to random classes, and images come in random class order.
They are written as a `--outcomes` folder (true_labels.npy, predicted_labels.npy, classes.txt)
and run through `RescaleDataset.py --outcomes DIR --no-materialize` in a child process. The time
is that of `utils.rescale.main` inside the child, without the interpreter start and the imports,
which are reported beside it. The memory is the child's peak resident memory.
"""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import Result

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SIBLINGS = 4
SIBLING_SHARE = 0.7

CHILD = """
import json, sys, time
started = time.perf_counter()
from utils.rescale import main
imported = time.perf_counter()
status = main(sys.argv[1:])
done = time.perf_counter()
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"status": status, "import_seconds": imported - started, "run_seconds": done - imported, "peak_kib": peak_kib}))
"""


def write_outcomes(folder: Path, images: int, classes: int, seed: int = 0) -> Path:
    """Write synthetic top-1 outcomes as a `--outcomes` folder, or reuse one written with the same arguments."""
    marker = folder / f".spec-{images}-{classes}-{seed}"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, size=images, dtype=np.int32)
    accuracy = rng.beta(6, 4, size=classes)
    siblings = (np.arange(classes)[:, None] + rng.integers(1, 40, size=(classes, SIBLINGS))) % classes
    predicted = true.copy()
    wrong = rng.random(images, dtype=np.float32) >= accuracy[true]
    wrong_true = true[wrong]
    to_sibling = rng.random(len(wrong_true), dtype=np.float32) < SIBLING_SHARE
    sibling = siblings[wrong_true, rng.integers(0, SIBLINGS, size=len(wrong_true))]
    other = rng.integers(0, classes - 1, size=len(wrong_true), dtype=np.int32)
    other = np.where(other >= wrong_true, other + 1, other)
    predicted[wrong] = np.where(to_sibling, sibling, other)
    np.save(folder / "true_labels.npy", true)
    np.save(folder / "predicted_labels.npy", predicted)
    (folder / "classes.txt").write_text("".join(f"n{10_000_000 + index:08d}\n" for index in range(classes)))
    marker.touch()
    return folder


def run_rescale(outcomes: Path, results: Path) -> dict:
    """Run RescaleDataset.py's main on imported outcomes in a child process; return its timings and peak memory.

    The child reads its own peak resident memory (VmHWM in /proc/self/status). The rusage of the
    child is no good here: Linux carries the parent's peak into it when the child execs.
    """
    arguments = ["--dataset", "ImageNet", "--outcomes", str(outcomes), "--results", str(results), "--no-materialize"]
    output = results.parent / f"{results.name}.child.json"
    started = time.perf_counter()
    with open(output, "w") as stdout, open(output.with_suffix(".log"), "w") as stderr:
        child = subprocess.run([sys.executable, "-c", CHILD, *arguments], cwd=REPO, stdout=stdout, stderr=stderr)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"RescaleDataset.py on {outcomes} failed with status {child.returncode}; see {output.with_suffix('.log')}")
    figures = json.loads(output.read_text().strip().splitlines()[-1])
    figures["process_seconds"] = wall
    figures["peak_rss_gib"] = figures["peak_kib"] * 1024 / 2**30
    return figures


def expected_outputs(results: Path, sizes: list[int]) -> list[Path]:
    """Return the files that a complete run writes: the five lists, their reports, the summary and the statistics."""
    files = [results / f"ReIN{size}.txt" for size in sizes]
    files += [results / "reports" / f"ReIN{size}.{suffix}" for size in sizes for suffix in ("md", "csv")]
    files += [results / "summary.md", results / "summary.csv", results / "List_file_rescale.txt"]
    files += [results / "statistics" / name for name in ("per_class.csv", "per_class.md", "confusions.csv", "sensitive_images.csv")]
    return files


def bench_statistics(work: Path, label: str, images: int, classes: int, repeats: int, seconds_limit: float, memory_limit_gib: float) -> Result:
    """Benchmark 5 at one scale: seconds and peak memory from `--outcomes` to the written lists and reports."""
    outcomes = write_outcomes(work / f"outcomes-{images}x{classes}", images, classes)
    runs = []
    for index in range(repeats):
        results = work / f"results-{images}x{classes}"
        figures = run_rescale(outcomes, results)
        missing = [str(path) for path in expected_outputs(results, [30, 50, 100, 150, 200]) if not path.is_file()]
        if missing:
            raise RuntimeError(f"the run on {outcomes} did not write {', '.join(missing)}")
        log.info("  %s, run %d of %d: %.2f s, %.2f GiB", label, index + 1, repeats, figures["run_seconds"], figures["peak_rss_gib"])
        runs.append(figures)
    seconds = [run["run_seconds"] for run in runs]
    peak = max(run["peak_rss_gib"] for run in runs)
    result = Result(
        key=f"statistics_{label}",
        title=f"5. Statistics, selection and reports, {images:,} outcomes over {classes:,} classes",
        unit="s",
        project=seconds,
        higher_is_better=False,
        target=f"<= {seconds_limit:g} s and <= {memory_limit_gib:g} GiB peak",
        details={
            "images": images,
            "classes": classes,
            "peak_rss_gib": round(peak, 3),
            "import_seconds": [round(run["import_seconds"], 2) for run in runs],
            "process_seconds": [round(run["process_seconds"], 2) for run in runs],
        },
    )
    result.passed = result.project_median <= seconds_limit and peak <= memory_limit_gib
    return result

"""Run the benchmarks side by side with their baselines, print a table, write results.json and the Markdown page.

`python -m bench` runs every benchmark at full size and writes bench/results.json and
docs/benchmarks.md. `--quick` uses smaller inputs and fewer repetitions, a few minutes on 2 CPU
cores, and writes to bench/quick/ so that the committed results stay. `python -m bench --only gpu
--out DIR` runs the GPU benchmark alone and writes to DIR. The benchmarks need the test
requirements too (`pip install -r requirements.txt -r requirements-test.txt`): their inputs are
made from photos that scikit-image ships.

The exit status is 1 when any benchmark misses its target, so a regression never hides in the table.
"""

import argparse
import importlib.util
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    # Started as `python bench/run.py`: import from the repository root, not from bench/.
    sys.path[0] = str(Path(__file__).resolve().parents[1])


from bench import report  # noqa: E402
from bench.common import Result, machine_description  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ("pipeline", "validation", "subsets", "training", "statistics", "gpu")


@dataclass(frozen=True)
class Sizes:
    """Input sizes and repetitions of one mode."""

    # JPEGs per size in benchmark 1. A full run reads 4,096, because the project's loader spent
    # about 0.1 s per pass on its buffers and on starting and stopping its workers. That is a
    # tenth of a 1,024-image pass, and nothing next to a pass over 50,000 images.
    pipeline_images: int
    outcome_images: int       # generated JPEGs per size in the outcome check
    validation_images: int    # JPEGs in benchmark 2
    pipeline_repeats: int
    validation_repeats: int
    subset_classes: int       # class folders in benchmark 3's tree (half of them form the subset)
    subset_repeats: int
    training_images: int      # JPEGs in benchmark 4's training split
    training_repeats: int
    statistics_21k_images: int
    statistics_repeats: int
    gpu_images: int
    gpu_train_images: int
    gpu_repeats: int


FULL = Sizes(4096, 128, 1024, 5, 3, 100, 9, 512, 3, 14_200_000, 2, 20_000, 10_000, 3)
QUICK = Sizes(512, 32, 256, 3, 3, 40, 3, 256, 2, 1_420_000, 1, 2_000, 2_000, 1)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller inputs and fewer repetitions; benchmark 5 then runs ImageNet-21k's 21,841 classes "
                             "with 1,420,000 outcomes instead of 14,200,000 (default: full size)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these benchmarks: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write results.json and benchmarks.md to DIR (default: bench/results.json and docs/benchmarks.md, "
                             "or bench/quick/ with --quick)")
    parser.add_argument("--work", type=Path, metavar="DIR",
                        help="folder for the generated inputs, reused by later runs (default: rescale-bench in the temporary folder)")
    parser.add_argument("--workers", type=int, default=min(4, len(os.sched_getaffinity(0))),
                        help="DataLoader worker processes, the same for the project and the baselines "
                             "(default: the usable CPUs, at most 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch in benchmarks 1, 2 and 4 (default 64)")
    return parser


def run_benchmarks(names: list[str], sizes: Sizes, work: Path, workers: int, batch_size: int) -> tuple[list[Result], list[str]]:
    """Run the chosen benchmarks; return their results and the notes for the Markdown page."""
    from bench.inputs import mean_file_size, write_jpeg_tree

    results: list[Result] = []
    notes: list[str] = []
    per_class = sizes.pipeline_images // 8
    jpegs = {
        "500x375": write_jpeg_tree(work / "jpeg-500x375" / "val", [(500, 375)], per_class, 8),
        "1024x768": write_jpeg_tree(work / "jpeg-1024x768" / "val", [(1024, 768)], per_class, 8),
    } if {"pipeline", "validation"} & set(names) else {}

    if "pipeline" in names:
        from bench.pipeline import bench_input_pipeline, check_outcomes

        log.info("benchmark 1: validation input pipeline")
        results.append(bench_input_pipeline(jpegs["500x375"], "500x375", 2.0, batch_size, workers, sizes.pipeline_repeats))
        results.append(bench_input_pipeline(jpegs["1024x768"], "1024x768", 2.5, batch_size, workers, sizes.pipeline_repeats))
        results.append(check_outcomes(jpegs, sizes.outcome_images))
        sizes_kb = ", ".join(f"{label} {mean_file_size(folder) / 1000:.0f} KB" for label, folder in jpegs.items())
        notes.append(f"Benchmark 1 reads {sizes.pipeline_images} generated JPEGs per size (quality 90, mean file size {sizes_kb}).")

    if "validation" in names:
        from bench.pipeline import bench_validation_pass

        log.info("benchmark 2: validation pass")
        folder = work / f"jpeg-500x375-{sizes.validation_images}" / "val"
        write_jpeg_tree(folder, [(500, 375)], sizes.validation_images // 8, 8)
        results.append(bench_validation_pass(folder, "500x375", batch_size, workers, sizes.validation_repeats))

    if "subsets" in names:
        from bench.subsets import bench_subset_building

        log.info("benchmark 3: building subsets")
        results.extend(bench_subset_building(work / "subsets", sizes.subset_classes, 40, 10, sizes.subset_repeats, workers))

    if "training" in names:
        from bench.training import bench_training

        log.info("benchmark 4: training epoch")
        root = work / f"train-{sizes.training_images}"
        write_jpeg_tree(root / "train", [(500, 375), (1024, 768), (375, 500)], sizes.training_images // 8, 8)
        write_jpeg_tree(root / "val", [(500, 375)], 2, 8)
        results.extend(bench_training(root, batch_size, workers, sizes.training_repeats))

    if "statistics" in names:
        from bench.outcome_statistics import bench_statistics

        log.info("benchmark 5: statistics and selection")
        results.append(bench_statistics(work / "statistics", "imagenet1k", 50_000, 1_000, 3, 2.0, 4.0))
        label = "imagenet21k" if sizes.statistics_21k_images == FULL.statistics_21k_images else "imagenet21k_scaled"
        results.append(bench_statistics(work / "statistics", label, sizes.statistics_21k_images, 21_841,
                                        sizes.statistics_repeats, 60.0, 4.0))

    if "gpu" in names:
        from bench.gpu import bench_gpu

        log.info("benchmark 6: GPU")
        gpu_workers = min(16, len(os.sched_getaffinity(0)))
        results.extend(bench_gpu(work / "gpu", sizes.gpu_images, sizes.gpu_train_images, 256, gpu_workers, sizes.gpu_repeats))
    return results, notes


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if importlib.util.find_spec("skimage") is None:
        print("python -m bench: error: scikit-image is not installed; install the test requirements with "
              "pip install -r requirements-test.txt", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("utils", "bench.outcome_statistics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    silence_progress_bars()

    names = list(args.only or BENCHMARKS)
    sizes = QUICK if args.quick else FULL
    work = args.work or Path(tempfile.gettempdir()) / "rescale-bench"
    work.mkdir(parents=True, exist_ok=True)
    arguments = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "bench", *arguments])
    run = {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_description(),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "load_average_start": [round(value, 2) for value in os.getloadavg()],
    }
    log.info("running %s (%s mode) in %s", ", ".join(names), run["mode"], work)

    results, notes = run_benchmarks(names, sizes, work, args.workers, args.batch_size)

    run["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
    run["notes"] = notes
    report.print_table(results)
    # A quick run writes beside the committed full results instead of over them.
    out = args.out or (REPO / "bench" / "quick" if args.quick else None)
    json_path = out / "results.json" if out else REPO / "bench" / "results.json"
    markdown_path = out / "benchmarks.md" if out else REPO / "docs" / "benchmarks.md"
    report.write_json(json_path, run, results)
    report.write_markdown(markdown_path, run, results, notes)
    log.info("wrote %s and %s", json_path, markdown_path)

    failed = [result.title for result in results if result.passed is False]
    if failed:
        log.error("%d target(s) missed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


def silence_progress_bars() -> None:
    """Turn off the progress bars that the project's code shows, so the benchmark output stays a log."""
    import functools

    import tqdm

    import utils.validation_pass

    @functools.wraps(tqdm.tqdm)
    def quiet(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm.tqdm(*args, **kwargs)

    utils.validation_pass.tqdm = quiet


if __name__ == "__main__":
    sys.exit(main())

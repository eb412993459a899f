"""Printing the results table and writing `results.json` and the Markdown page of the benchmarks."""

import json
import logging
from pathlib import Path

from bench.common import Result

log = logging.getLogger(__name__)

TABLE_HEADER = ["benchmark", "unit", "baseline", "project", "ratio", "target", "result"]


def format_value(value: float | None) -> str:
    """Format a median for the table: three significant digits, thousands separated."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def status_text(result: Result) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[result.passed]


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        ratio = f"{result.ratio:.2f}x" if result.ratio is not None else "-"
        project = format_value(result.project_median) if result.project else "-"
        rows.append([result.title, result.unit, format_value(result.baseline_median), project, ratio, result.target or "-", status_text(result)])
    return rows


def print_table(results: list[Result]) -> None:
    """Print the results as an aligned text table."""
    rows = [TABLE_HEADER] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_json(path: Path, run: dict, results: list[Result]) -> None:
    """Write the run description and every result, with all repeated measurements."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = dict(run, results=[result.as_dict() for result in results])
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def by_key(results: list[Result]) -> dict[str, Result]:
    return {result.key: result for result in results}


def outcome_section(result: Result | None) -> list[str]:
    if result is None:
        return []
    photos = result.details["photos"]
    lines = [
        "## Outcomes of the fast preprocessing",
        "",
        "EfficientNet-Lite0 (bundled ImageNet weights) on the four real photos, with the project's",
        "preprocessing (`EvalTransform` and `BatchNormalizer`) against the ImageNet example's",
        "(`Resize(256)`, `CenterCrop(224)`, `ToTensor`, `Normalize`):",
        "",
        "| photo | top-1, project | top-1, baseline |",
        "| --- | ---: | ---: |",
    ]
    for name, ours, theirs in zip(photos["photos"], photos["top1_project"], photos["top1_baseline"]):
        lines.append(f"| {name} | {ours} | {theirs} |")
    lines += [
        "",
        f"Top-1 agreement {photos['top1_agreement']:.0%}, smallest top-5 overlap {photos['min_top5_overlap']} of 5, "
        f"largest difference of any class probability {photos['max_probability_difference']:.2e}.",
        "",
        "On the generated JPEGs of benchmark 1 (top-1 agreement between the two preprocessings, and the",
        "largest probability difference):",
        "",
        "| JPEGs | images | EfficientNet-Lite0 top-1 agreement | max probability difference | random-weights mobilenet_v3_small top-1 agreement | max probability difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, figures in result.details["generated"].items():
        lines.append(
            f"| {label} | {figures['images']} | {figures['efficientnet_lite0_top1_agreement']:.1%} | "
            f"{figures['efficientnet_lite0_max_probability_difference']:.2e} | "
            f"{figures['random_mobilenet_v3_small_top1_agreement']:.1%} | "
            f"{figures['random_mobilenet_v3_small_max_probability_difference']:.2e} |"
        )
    lines += [
        "",
        "The random-weights network spreads its probability almost evenly over the 1,000 outputs, so",
        "the top two classes of an image can differ by less than the preprocessings' difference.",
        "",
    ]
    return lines


def statistics_section(results: list[Result]) -> list[str]:
    chosen = [result for result in results if result.key.startswith("statistics_")]
    if not chosen:
        return []
    lines = [
        "## Statistics and selection",
        "",
        "| outcomes | classes | median seconds (main) | runs | peak memory GiB | interpreter start and imports, s |",
        "| ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for result in chosen:
        details = result.details
        runs = ", ".join(f"{value:.2f}" for value in result.project)
        imports = ", ".join(f"{value:.2f}" for value in details["import_seconds"])
        lines.append(f"| {details['images']:,} | {details['classes']:,} | {result.project_median:.2f} | {runs} | "
                     f"{details['peak_rss_gib']:.2f} | {imports} |")
    lines.append("")
    return lines


def gpu_section(results: list[Result]) -> list[str]:
    chosen = [result for result in results if result.key.startswith("gpu")]
    if not chosen:
        return []
    lines = ["## GPU", ""]
    if chosen[0].details.get("gpu") is None:
        lines += [
            "No CUDA GPU was available for this run, so benchmark 6 has no figures. On a machine with one,",
            "`python -m bench --only gpu --out DIR` runs it alone and writes `DIR/results.json` and",
            "`DIR/benchmarks.md`. It measures a ResNet-50 validation pass over 20,000 generated JPEGs with",
            "CPU and with GPU decoding, and a ResNet18 training epoch at 224x224 in fp32 and in bf16",
            "autocast with channels-last memory.",
            "",
        ]
    else:
        lines += [f"Card: {chosen[0].details['gpu']}.", ""]
    return lines


EXPLANATION = """## What each row measures

1. **Validation input pipeline**: decode, resize, center-crop and normalize generated JPEGs, no
   network. Baseline: the PyTorch ImageNet example's loader (ImageFolder, PIL, `Resize(256)`,
   `CenterCrop(224)`, `ToTensor`, `Normalize` per image). Project: `make_validation_loader`
   (`ValidationImages` with `EvalTransform`, writing into shared batch buffers) and
   `BatchNormalizer` per batch. Same batch size and DataLoader workers on both sides.
2. **Validation pass**: the same with `mobilenet_v3_small` (random weights, 1,000 outputs) on the
   CPU. Baseline: the ImageNet example's validate loop (forward, loss, top-1 and top-5 hits) over
   the loader of benchmark 1. Project: `run_validation_pass`.
3. **Building a subset**: `build_subsets` of half the classes of a generated ImageFolder tree (files
   of 110 KB random bytes), against `shutil.copytree` of the same class folders. Each run is timed
   up to the end of an `os.sync()`.
4. **Training epoch**: one epoch of torchvision's ResNet18 at 64x64 on the CPU over generated JPEGs
   of 500x375, 1024x768 and 375x500 pixels. Baselines: a loop written like the research code
   (`nn.DataParallel`, `torch.autograd.set_detect_anomaly(True)`, per-image PIL transforms) and a
   clean loop in the ImageNet example's style. Project: `make_training_data` and `train_one_epoch`
   with the training scripts' defaults.
5. **Statistics and selection**: `RescaleDataset.py --outcomes DIR --no-materialize` on synthetic
   top-1 outcomes, in a child process: the time of `utils.rescale.main` and the peak resident
   memory of the process.
6. **GPU**: see the GPU section.

## Fast paths that are defaults

- `EvalTransform` decodes RGB and grayscale JPEGs that need no DCT reduction with
  `torchvision.io.decode_jpeg`, which gives PIL's pixels faster, and resizes them with torch's
  antialiased uint8 kernel (the whole image, then the center crop). That kernel matches PIL's
  resize within one grey level and is several times faster. Their size comes from the JPEG frame
  header in the first 64 KB of the file (up to 1 MiB after a large EXIF or ICC block), so PIL does
  not open them. Images that PIL
  decodes are resized by PIL, from the source box that survives the crop: copying a whole decoded
  image out of PIL for torch cost more than PIL's resize of the box. JPEGs decode at a reduced DCT
  scale only when the reduced image keeps 1.5 times the resized size: drafting down to the
  resized size itself changed EfficientNet-Lite0's top-1 class on
  matplotlib's grace_hopper.jpg. With the gap of 1.5 the real photos keep their top-1 class (they
  are too small to be reduced); the generated 1024x768 photos are reduced to 1/2, and the table
  below gives how many keep their top-1 class.
- The validation loader's workers decode each batch straight into one of a ring of shared-memory
  buffers allocated once, instead of a new shared-memory segment per batch whose every page
  faults in the worker and again in the main process.
- `BatchNormalizer` turns uint8 batches into normalized floats once per batch; on the CPU with
  NumPy in the calling thread and a reused output buffer.
- The training loaders crop with `DraftedRandomResizedCrop` (the crop box drawn as torchvision's
  `RandomResizedCrop` draws it, the JPEG decoded at the smallest DCT scale at which the box still
  covers the output size) and return uint8 images, normalized per batch.
- Channels-last memory for the validation pass, on the CPU too, and for training on CUDA. Training
  on the CPU first times two steps of each network in both formats. It keeps channels-last unless
  contiguous memory is more than 5 % faster.
- The validation pass folds each batch norm into the preceding convolution (`torch.fx`), which
  computes the same function up to float rounding with one layer less.
- Next to CPU computation (the validation pass and training on the CPU), the DataLoader workers
  run at the lowest priority, so decoding takes the CPU time the network's threads leave idle.
- Statistics sort only the misclassified images, once; subset scoring sorts images by class
  with a 16-bit radix sort; subset building hands files to its threads in chunks of 64 and
  creates each copy or link before checking for an existing entry.
"""


# Explanations of missed targets, shown for those only and filled in with the run's figures.
MISSED_TARGET_NOTES = {
    "input_pipeline_500x375": (
        "500x375: a DCT reduction of these JPEGs would leave less than 1.5 times the resized size, so "
        "the project decodes every pixel, as the baseline does. Its gain comes from torch's uint8 resize, "
        "from normalizing whole batches, from reused shared batch buffers and from reading JPEG sizes from "
        "their headers. Repeated runs gave the project "
        "{project_min:,.0f} to {project_max:,.0f} images/s, baseline {baseline_min:,.0f} to {baseline_max:,.0f}."
    ),
    "input_pipeline_1024x768": (
        "1024x768: the project decodes these JPEGs at 1/2 scale (512x384), which saves only part of the "
        "entropy decoding that takes most of the time per image; 1/4 scale would leave less than 1.5 times "
        "the resized size. libjpeg-turbo can also decode at 3/8 scale (384x288), which Pillow's `draft` "
        "does not offer. Forced through Pillow's private decoder settings on a 2-CPU Xeon, 3/8 saved "
        "about 0.2 ms of the 3.3 ms per image. It also lowered the PSNR of the 224x224 crop against the "
        "baseline's from 46.7 to 40.0 dB on scikit-image's retina.jpg, so the project does not use it. "
        "Repeated runs gave the project {project_min:,.0f} "
        "to {project_max:,.0f} images/s, baseline {baseline_min:,.0f} to {baseline_max:,.0f}."
    ),
    "subset_hardlink": (
        "Hard links: the project placed {project:,.0f} files per second, one `os.link` each plus the "
        "listing, checks and manifest of a subset. Against `copytree`, 50x needs a copy of at most "
        "{needed:,.0f} files per second, a disk writing about {needed_mb:,.0f} MB/s of these files; here "
        "`copytree` wrote {baseline_mb:,.0f} MB/s, sync included."
    ),
    "validation_pass": (
        "Validation pass: the network's forward pass takes most of the CPU time of both loops, so the "
        "input pipeline's savings show only in part. Repeated runs gave the "
        "project {project_min:,.0f} to {project_max:,.0f} images/s, baseline {baseline_min:,.0f} "
        "to {baseline_max:,.0f}."
    ),
    "subset_copy": (
        "Copy: both sides write the same bytes and the final sync takes most of the time. "
        "Repeated runs gave the project {project_min:,.0f} to {project_max:,.0f} files/s, copytree {baseline_min:,.0f} to {baseline_max:,.0f}."
    ),
    "training_vs_research": (
        "Research-code loop: on the CPU, anomaly detection and DataParallel cost the research-code loop "
        "only a few percent against the clean loop, and ResNet18's forward and backward passes take "
        "most of the CPU time of every loop, so the input pipeline's savings show only in part."
    ),
}


def missed_target_note(result: Result) -> str:
    """Return the explanation of a missed target, filled in with the figures of ``result``."""
    file_bytes = result.details.get("file_bytes", 0)
    needed = result.project_median / 50
    baseline = result.baseline or [0.0]
    return MISSED_TARGET_NOTES[result.key].format(
        project=result.project_median,
        project_min=min(result.project),
        project_max=max(result.project),
        baseline_min=min(baseline),
        baseline_max=max(baseline),
        needed=needed,
        needed_mb=needed * file_bytes / 1e6,
        baseline_mb=(result.baseline_median or 0) * file_bytes / 1e6,
    )


def missed_target_section(results: list[Result]) -> list[str]:
    notes = [missed_target_note(result) for result in results if result.passed is False and result.key in MISSED_TARGET_NOTES]
    if not notes:
        return []
    return ["## Missed targets", ""] + [f"- {note}" for note in notes] + [""]


def training_section(results: list[Result]) -> list[str]:
    result = by_key(results).get("training_vs_example")
    if result is None:
        return []
    other = result.details["project_other_format_images_per_second"]
    median = sorted(other)[len(other) // 2]
    chosen, rejected = ("channels-last", "contiguous") if result.details["channels_last"] else ("contiguous", "channels-last")
    return [
        "## Training",
        "",
        f"Timing two training steps of ResNet18 in each memory format chose {chosen} memory on this machine, "
        f"as the training scripts do on the CPU. The project's loop ran {result.project_median:.1f} images/s "
        f"(median) in it and {median:.1f} in {rejected} memory; the rest of the gain over the ImageNet-example "
        f"loop ({result.baseline_median:.1f}) comes from the input pipeline.",
        "",
    ]


def write_markdown(path: Path, run: dict, results: list[Result], notes: list[str]) -> None:
    """Write the benchmark page: how it was run, the table, and the details behind some rows."""
    machine = run["machine"]
    header = [
        "# Benchmarks",
        "",
        f"Written by `{run['command']}` on {run['date']}, on this machine: {machine['cpu']}, "
        f"{machine['cpus_usable']} CPUs usable, {machine['memory_gib']} GiB memory, {machine['system']}; "
        f"GPU: {machine['cuda'] or 'none'}.",
        f"Versions: Python {machine['python']}, torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"Pillow {machine['pillow']}, NumPy {machine['numpy']}"
        + (f", libjpeg-turbo {machine['libjpeg_turbo']}" if machine.get("libjpeg_turbo") else "") + ".",
        "",
        f"Load average (1, 5, 15 minutes) at the start {run['load_average_start']}, at the end {run['load_average_end']}, "
        f"for {machine['cpus_usable']} CPUs. The benchmark itself keeps up to {run['workers'] + 1} processes busy, so "
        "values well above that mean that other jobs shared the machine.",
        "",
        "Each row gives the median of repeated runs; baseline and project runs alternate (the order",
        "reverses every round), so a change of load during the run affects both alike. Ratios above 1",
        "mean the project is faster. Every repeated value is in the run's `results.json`",
        "(`bench/results.json` for the committed run).",
        "",
        markdown_table(results),
    ]

    lines = header + notes
    lines += [""]
    lines += missed_target_section(results)
    lines += [EXPLANATION]
    lines += outcome_section(by_key(results).get("outcomes"))
    lines += training_section(results)
    lines += statistics_section(results)
    lines += gpu_section(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")

"""RescaleDataset.py's three stages: validation outcomes, statistics, selection, then subset building."""

import logging
import os
from pathlib import Path

from utils.atomic import exclusive_lock, remove_stale_temporaries
from utils.class_lists import check_classes, read_class_list, subset_name_from_list
from utils.cli import setup_logging
from utils.config import load_config
from utils.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from utils.errors import UserError
from utils.layouts import Layout, detect_layout
from utils.networks import load_network
from utils.outcomes import OUTCOMES_FILE, Outcomes, fingerprint_split, import_outcomes, load_outcomes, now_iso, save_outcomes
from utils.reports import SubsetResult, write_class_lists, write_statistics, write_subset_report, write_summary
from utils.rescale_args import CHECKPOINT_SUFFIXES, RescaleSettings, parse_settings
from utils.selection import select_subsets
from utils.statistics import Statistics, compute_statistics
from utils.subset_metrics import SubsetScorer
from utils.subsets import build_subsets
from utils.validation_pass import label_indices, run_validation_pass

log = logging.getLogger(__name__)

DEMO_COMMAND = "python RescaleDataset.py --dataset FashionMNIST"


def main(argv: list[str] | None = None) -> int:
    """Run RescaleDataset.py with the given command-line arguments."""
    config = load_config()
    settings = parse_settings(config, argv)
    setup_logging(settings.verbose)
    check_outputs_outside_root(settings)
    device = resolve_device(settings.device, _local_context())
    context = init_distributed(device)
    try:
        if context.is_main:
            with exclusive_lock(settings.results, "RescaleDataset.py"):
                remove_stale_temporaries(settings.results, settings.results / "statistics", settings.results / "reports")
                rescale(settings, context, device)
        else:
            rescale(settings, context, device)
        barrier()
    finally:
        shutdown_distributed()
    return 0


def check_outputs_outside_root(settings: RescaleSettings) -> None:
    """Raise UserError when an output (results folder, subsets folder, demo network) lies in the dataset root,
    or when the results folder is the subsets folder or lies inside it.

    Runs before anything is written, because even the results folder's lock file would change the
    dataset root. Symbolic links are resolved first.
    """
    root = settings.root.expanduser().resolve()
    folders = [("results folder", settings.results, "--results")]
    if settings.materialize or settings.lists:
        folders.append(("subsets folder", settings.subsets, "--out"))
    if demo_network_to_train(settings):
        folders.append(("demo network file", Path(settings.weights), "--weights"))
    for what, folder, flag in folders:
        resolved = folder.expanduser().resolve()
        if resolved == root or root in resolved.parents:
            raise UserError(
                f"the {what} {folder} is inside the dataset root {root}, where nothing may be written; "
                f"choose a location outside the dataset with {flag} or in the configuration file"
            )
    if settings.materialize or settings.lists:
        check_results_beside_subsets(settings)


def demo_network_to_train(settings: RescaleSettings) -> bool:
    """True when the Fashion-MNIST demo will train its network and write it to ``settings.weights``."""
    return (settings.dataset == "FashionMNIST" and settings.model == "fashion_mnist_cnn" and bool(settings.weights)
            and not Path(settings.weights).is_file())


def check_results_beside_subsets(settings: RescaleSettings) -> None:
    """Raise UserError when the results folder is the subsets folder or lies inside it.

    Each run locks both folders, and every folder inside the subsets folder is taken for a subset.
    """
    results, subsets = settings.results.expanduser().resolve(), settings.subsets.expanduser().resolve()
    if subsets in results.parents:
        raise UserError(
            f"the results folder {settings.results} lies inside the subsets folder {settings.subsets}, where every "
            "folder is taken for a subset; choose folders side by side with --results or --out"
        )
    if results == subsets:
        raise UserError(
            f"the results folder and the subsets folder are both {settings.subsets}; each run locks both, "
            "so they must differ: choose another folder with --out or --results"
        )


def _local_context() -> DistributedContext:
    return DistributedContext(local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def rescale(settings: RescaleSettings, context: DistributedContext, device) -> None:
    """Run the stages that the settings ask for."""
    if settings.lists:
        if context.is_main:
            build_from_list_files(settings)
        return
    if settings.dataset == "FashionMNIST" and settings.outcomes is None:
        from utils.fashion_mnist import prepare_fashion_mnist

        if context.is_main:
            prepare_fashion_mnist(settings)
        barrier()
    layout = None
    if settings.outcomes is None or ((settings.materialize or settings.data_given) and context.is_main):
        layout = open_layout(settings)
    # The --compare files are read before the validation pass, so that a wrong path stops the run at once.
    compare = {path: read_class_list(path, "--compare") for path in settings.compare or []} if context.is_main else {}

    outcomes = obtain_outcomes(settings, layout, context, device)
    if not context.is_main:
        return
    if settings.outcomes is not None and layout is not None:
        check_imported_outcomes(settings.outcomes, outcomes, layout)
    stats = compute_statistics(outcomes)
    selected = select_subsets(stats, settings.sizes, settings.strategy, settings.min_pair_share, settings.seed)
    compared = check_compared_lists(settings.compare or [], compare, stats)
    write_statistics(stats, outcomes, settings.results / "statistics")
    subsets = select_and_report(settings, outcomes, stats, selected, compared)
    if settings.materialize:
        build_subsets(layout, subsets, settings.subsets, settings.mode, max(settings.workers, 1))
    else:
        log.info("--no-materialize: lists and reports are in %s; no subset folders were built", settings.results)


def open_layout(settings: RescaleSettings) -> Layout:
    """Detect the dataset layout, with a helpful error when the configured dataset is absent."""
    if not settings.root.exists() and not settings.data_given and settings.dataset in ("ImageNet", "Places365"):
        raise UserError(
            f"{settings.dataset} not found at {settings.root} (the 'root' of {settings.dataset} in config_rescale.py). "
            f"Put the dataset there, set {settings.dataset}['root'] in config_rescale.py, or pass --data DIR. "
            f"To try the method without {settings.dataset}, run: {DEMO_COMMAND}"
        )
    return detect_layout(settings.root, settings.dataset)


def expected_meta(settings: RescaleSettings, network, fingerprint: str, layout: Layout, unknown: list[str]) -> dict:
    """Describe what stored outcomes must match to be reused."""
    return {
        "dataset": settings.dataset,
        "root": str(settings.root),
        "layout": layout.name,
        "network": network.identity,
        "preprocessing": network.preprocessing.as_dict(),
        "fingerprint": fingerprint,
        "skipped_classes": unknown,
    }


def reuse_reason(stored: dict, expected: dict, topk: int) -> str | None:
    """Return why stored outcomes cannot be reused, or None when they can."""
    checks = [
        ("network", "a different network"),
        ("preprocessing", "different preprocessing"),
        ("fingerprint", "a different validation split (files added, removed, relabelled or changed)"),
        ("skipped_classes", "a different set of skipped classes"),
    ]
    for key, text in checks:
        if stored.get(key) != expected[key]:
            return f"they were computed with {text}"
    if stored.get("topk", 0) < topk:
        return f"they keep top-{stored.get('topk')} predictions and top-{topk} were requested"
    return None


def find_reusable(path: Path, expected: dict, topk: int, class_names: list[str], images: int) -> Outcomes | None:
    """Load stored outcomes that match ``expected``, name the outputs ``class_names`` and cover ``images`` images.

    Logs why stored outcomes are not reused, and returns None then.
    """
    if not path.is_file():
        return None
    try:
        stored = load_outcomes(path)
    except UserError as error:
        log.warning("%s; running the validation pass again", error)
        return None
    reason = reuse_reason(stored.meta, expected, topk)
    if reason is None and stored.class_names != list(class_names):
        reason = "they name the network's outputs differently (another --class-names file)"
    covered = len(stored) + len(stored.skipped)
    if reason is None and covered != images:
        reason = f"they cover {covered} of the {images} validation images"
    if reason:
        log.info("not reusing %s: %s; running the validation pass again", path, reason)
        return None
    if stored.k > topk:
        stored.topk = stored.topk[:, :topk]
        if stored.probs is not None:
            stored.probs = stored.probs[:, :topk]
    log.info("reusing the validation outcomes in %s (same network, unchanged validation split); pass --recompute to run the network again", path)
    return stored


def obtain_outcomes(settings: RescaleSettings, layout: Layout | None, context: DistributedContext, device) -> Outcomes | None:
    """Stage 1: import outcomes, reuse stored ones, or run the validation pass."""
    if settings.outcomes is not None:
        return import_outcomes(settings.outcomes) if context.is_main else None

    split = layout.split("val")
    if len(split) == 0:
        raise UserError(f"no validation images found under {settings.root} ({layout.description}); check the dataset root")
    check_places365_weights(settings)
    network = load_network(settings.model, settings.weights, settings.class_names, settings.trust_checkpoint, settings.draft)
    labels, unknown = label_indices(split, network.class_names, settings.skip_unknown_classes)

    path = settings.results / OUTCOMES_FILE
    stored = None
    expected = None
    if context.is_main:
        expected = expected_meta(settings, network, fingerprint_split(split), layout, unknown)
        stored = None if settings.recompute else find_reusable(path, expected, settings.topk, network.class_names, int((labels >= 0).sum()))
    if broadcast_from_main(stored is not None, context):
        return stored

    outcomes = run_validation_pass(network, split, labels, device, context, settings.batch_size, settings.workers, settings.topk)
    if context.is_main:
        outcomes.meta.update(expected, created=now_iso(), source="validation-pass")
        save_outcomes(outcomes, path)
    return outcomes


def check_imported_outcomes(source: Path, outcomes: Outcomes, layout: Layout) -> None:
    """Raise UserError, before anything is written, when imported outcomes do not fit the dataset.

    Every class with images in the outcomes must be a class of the dataset. An image whose path is
    a validation file of the dataset (relative to its root) must have that file's class. Other
    paths are only counted in a warning, because imports may name their files another way.
    """
    fix = "import outcomes of this dataset, or set --data to the dataset they come from"
    present = sorted({outcomes.class_names[index] for index in set(outcomes.true.tolist())})
    check_classes(present, layout.classes(), f"--outcomes {source}", fix)
    if outcomes.paths is None:
        return
    split = layout.split("val")
    truth = dict(zip(split.files, split.labels))
    matched, wrong = 0, []
    for path, label in zip(outcomes.paths.tolist(), outcomes.true.tolist()):
        expected = truth.get(path)
        if expected is None:
            continue
        matched += 1
        if expected != outcomes.class_names[label]:
            wrong.append((path, outcomes.class_names[label], expected))
    if wrong:
        path, imported, expected = wrong[0]
        raise UserError(
            f"--outcomes {source}: {len(wrong)} of {matched} images have another true class than in {layout.root}, "
            f"for example {path} is {imported!r} in the outcomes and {expected!r} in the dataset; {fix}"
        )
    if matched < len(outcomes):
        log.warning("%d of %d imported images are not validation files of %s (paths relative to the dataset root), "
                    "so their true classes were not compared with the dataset", len(outcomes) - matched, len(outcomes), layout.root)


PLACES365_MODELS = "http://places2.csail.mit.edu/models_places365/"


def check_places365_weights(settings: RescaleSettings) -> None:
    """Raise UserError with the download address when a Places365 checkpoint file is missing."""
    weights = settings.weights
    if settings.dataset != "Places365" or not weights or Path(weights).exists():
        return
    if "/" in weights or weights.endswith(CHECKPOINT_SUFFIXES):
        raise UserError(
            f"Places365 checkpoint {weights} not found; download {Path(weights).name} from {PLACES365_MODELS} "
            "to that path, or pass --weights with the path of another Places365 checkpoint"
        )


def describe(settings: RescaleSettings, outcomes: Outcomes, stats: Statistics) -> str:
    """Return one paragraph that states where the figures of a report come from."""
    network = outcomes.meta.get("network") or {}
    source = ", ".join(f"{k} {v}" for k, v in network.items() if k in ("model", "weights"))
    if not source:
        origin = outcomes.meta.get("source", "")
        source = f"imported from {Path(origin.removeprefix('import:')).name}" if origin else "imported outcomes"
    accuracy = stats.top1_correct.sum() / max(stats.images.sum(), 1)
    skipped = len(outcomes.skipped)
    return (
        f"Outcomes: {len(outcomes)} validation images of {len(stats.present)} classes ({source}); top-1 accuracy "
        f"{100 * accuracy:.2f}%{f'; {skipped} unreadable images skipped' if skipped else ''}. "
        f"Strategy: {settings.strategy} (min_pair_share {settings.min_pair_share}, seed {settings.seed}). "
        f"Restricted top-1 uses the stored top-{outcomes.k} predictions"
        + (", so with top-1 outcomes it is a lower bound." if outcomes.k == 1 else ".")
    )


def _names(stats: Statistics, classes: list[int]) -> list[str]:
    return [stats.class_names[c] for c in classes]


def select_and_report(
    settings: RescaleSettings,
    outcomes: Outcomes,
    stats: Statistics,
    selected: dict[int, list[int]],
    compared: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Stage 3: write the lists, reports and summary of the selected subsets and the compared lists, and return name -> classes."""
    subsets = {f"{settings.prefix}{size}": _names(stats, classes) for size, classes in selected.items()}
    write_class_lists(subsets, settings.results)

    scorer = SubsetScorer(outcomes, stats)
    context = describe(settings, outcomes, stats)
    results = []
    for size, classes in selected.items():
        baseline = scorer.random_baseline(size, settings.random_baselines, settings.seed)
        result = SubsetResult(f"{settings.prefix}{size}", classes, scorer.score(classes), baseline, source=settings.strategy)
        write_subset_report(result, stats, settings.results / "reports", context)
        results.append(result)
    results.extend(compared_lists(settings, compared, stats, scorer, selected))
    write_summary(results, settings.results, context)
    return subsets


def check_compared_lists(paths: list[Path], contents: dict[Path, list[str]], stats: Statistics) -> dict[str, list[str]]:
    """Check the --compare lists, already read, against the classes with outcomes, and return file name -> class names."""
    if not paths:
        return {}
    known = [stats.class_names[c] for c in stats.present]
    lists = read_list_files(paths, known, "--compare", lambda path: path.name, contents)
    return {label: names for label, (names, _) in lists.items()}


def compared_lists(settings: RescaleSettings, compared: dict[str, list[str]], stats: Statistics, scorer: SubsetScorer, selected: dict[int, list[int]]) -> list[SubsetResult]:
    """Score the --compare list files on the same outcomes, with their overlap with the selection."""
    index = {name: i for i, name in enumerate(stats.class_names)}
    results = []
    for label, names in compared.items():
        classes = [index[n] for n in names]
        size = len(classes)
        overlap = None
        if size in selected:
            ours = set(selected[size])
            overlap = len(ours & set(classes)) / len(ours | set(classes))
        baseline = scorer.random_baseline(size, settings.random_baselines, settings.seed)
        results.append(SubsetResult(label, classes, scorer.score(classes), baseline, source="list", overlap=overlap))
    return sorted(results, key=lambda r: (len(r.classes), r.name))


def read_list_files(paths: list[Path], known: list[str], flag: str, label, contents: dict[Path, list[str]] | None = None) -> dict[str, tuple[list[str], Path]]:
    """Read and check class list files; return label -> (class names, path), where ``label(path)`` names a list.

    ``contents`` holds the class names of files read earlier, by path.

    Raises UserError for a file given twice, two files with the same label, a list that names a
    class the dataset lacks, and a list of fewer than 2 classes.
    """
    lists = {}
    for path in paths:
        name = label(path)
        if name in lists:
            earlier = lists[name][1]
            if earlier.resolve() == path.resolve():
                raise UserError(f"list file {path} is given twice to {flag}; give each file once")
            raise UserError(
                f"list files {earlier} and {path} both give the name {name!r}; rename one of them, "
                f"since {flag} names each list after its file"
            )
        names = contents[path] if contents and path in contents else read_class_list(path, flag)
        check_classes(names, known, str(path))
        if len(names) < 2:
            raise UserError(f"list file {path} names only 1 class; a subset needs at least 2, so add another class")
        lists[name] = (names, path)
    return lists


def build_from_list_files(settings: RescaleSettings) -> None:
    """--lists: build subsets named after the list files, without running a network."""
    layout = open_layout(settings)
    lists = read_list_files(settings.lists, layout.classes(), "--lists", subset_name_from_list)
    if not settings.materialize:
        log.info("--no-materialize: the %d list files name classes of %s; no subset folders were built", len(lists), layout.root)
        return
    subsets = {name: names for name, (names, _) in lists.items()}
    build_subsets(layout, subsets, settings.subsets, settings.mode, max(settings.workers, 1))


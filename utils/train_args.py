"""Command-line flags of the training scripts, with defaults from `config_rescale.py` and value checks.

Both training scripts share this parser. Each passes its dataset name ('ImageNet' or 'Places365'),
which selects the default subsets folder and subset name prefix from the configuration.
"""

import argparse
import logging
from pathlib import Path

from models import REFERENCE_ARCHITECTURES, check_architecture, min_input_size
from utils.cli import ArgumentParser
from utils.config import PROJECT_ROOT, SEED_LIMIT, load_config, resolve_path
from utils.errors import UserError

log = logging.getLogger(__name__)

TRAINING_DATASETS = ("ImageNet", "Places365")
AMP_CHOICES = ("bf16", "fp16", "none")

# Defaults of the training protocol: SGD with momentum, learning rate divided by 10 every 30 epochs.
DEFAULT_EPOCHS = 100
DEFAULT_BATCH_SIZE = 256
DEFAULT_LR = 0.1
DEFAULT_MOMENTUM = 0.9
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_LR_STEP = 30
DEFAULT_LR_GAMMA = 0.1
DEFAULT_IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224  # validation resize side over crop side, as in Resize(256) + CenterCrop(224)
DEFAULT_WORKERS = 8
# Largest finite float32. SGD passes the learning rate and weight decay to float32 kernels, which
# reject larger values.
FLOAT32_MAX = 3.4028234663852886e38


def default_resize_size(image_size: int) -> int:
    """Return the validation resize side that keeps the 256/224 ratio for a crop of ``image_size`` pixels."""
    return round(image_size * RESIZE_RATIO)


def build_parser(dataset: str) -> argparse.ArgumentParser:
    """Build the parser of a training script for ``dataset`` ('ImageNet' or 'Places365')."""
    config = load_config()
    subsets = config.datasets[dataset]
    script = f"Train_{dataset}RescaleSubsets.py"
    parser = ArgumentParser(
        prog=script,
        description=(
            f"Train reference networks from scratch on the {dataset} subsets ({subsets.prefix}<N>) and "
            "write a results table of best validation top-1 accuracy. Runs already finished are skipped, "
            "interrupted ones resume."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=subsets.subsets,
                      help=f"folder of subsets (<name>/train, <name>/val), or one dataset with train/ and val/ "
                           f"(default: {subsets.subsets}, from config_rescale.py {dataset}['subsets'])")
    data.add_argument("--subsets", nargs="+", metavar="NAME",
                      help=f"train only on these subsets, by folder name, e.g. {subsets.prefix}30 "
                           f"(default: every {subsets.prefix}* folder under --data)")
    data.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                      help=f"side in pixels of the random training crop and the validation center crop (default {DEFAULT_IMAGE_SIZE})")
    data.add_argument("--resize-size", type=int,
                      help="side in pixels of the shorter edge after the validation resize "
                           "(default: image size x 256/224, i.e. 256 for 224)")
    data.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                      help=f"DataLoader worker processes per training process, 0 loads in the main process (default {DEFAULT_WORKERS})")

    nets = parser.add_argument_group("networks")
    nets.add_argument("--arch", nargs="+", metavar="NAME",
                      help="networks to train (default: all of --list-archs that accept --image-size)")
    nets.add_argument("--list-archs", action="store_true",
                      help="print the reference networks and their parameter counts for 1,000 classes, then exit")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"number of training epochs (default {DEFAULT_EPOCHS})")
    optim.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                       help=f"images per optimizer step summed over all processes; each of N torchrun processes "
                            f"loads batch-size/N (default {DEFAULT_BATCH_SIZE})")
    optim.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"initial SGD learning rate (default {DEFAULT_LR})")
    optim.add_argument("--momentum", type=float, default=DEFAULT_MOMENTUM, help=f"SGD momentum (default {DEFAULT_MOMENTUM})")
    optim.add_argument("--weight-decay", type=float, default=DEFAULT_WEIGHT_DECAY,
                       help=f"SGD L2 weight decay on all parameters (default {DEFAULT_WEIGHT_DECAY:g})")
    optim.add_argument("--lr-step", type=int, default=DEFAULT_LR_STEP,
                       help=f"epochs between learning-rate drops (StepLR step size, default {DEFAULT_LR_STEP})")
    optim.add_argument("--lr-gamma", type=float, default=DEFAULT_LR_GAMMA,
                       help=f"factor applied to the learning rate at each drop (default {DEFAULT_LR_GAMMA})")
    optim.add_argument("--seed", type=int,
                       help="seed of weight initialization, data order and augmentation, from 0 to 2**32 - 1. On the CPU, "
                            "runs with the same seed, --workers, number of processes and memory format (set it with "
                            "--channels-last or --no-channels-last) give the same log.csv apart from the timing "
                            "columns (default: a random seed, logged and stored in the checkpoint)")

    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--device", default=config.device,
                          help=f"'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'; under torchrun 'cuda' means "
                               f"the process's local GPU (default {config.device!r}, from config_rescale.py)")
    hardware.add_argument("--amp", choices=AMP_CHOICES, default="bf16",
                          help="mixed precision on CUDA: bf16 autocast, fp16 autocast with a gradient scaler, or none "
                               "(default bf16; the CPU always trains in fp32)")
    hardware.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                          help="store images and weights in channels-last memory format (default: on for CUDA; CPU training times both formats per network)")
    hardware.add_argument("--compile", action="store_true", help="compile the network with torch.compile (default off)")

    runs = parser.add_argument_group("runs and outputs")
    runs.add_argument("--restart", action="store_true", help="delete the selected runs' checkpoints and logs and train from scratch")
    runs.add_argument("--evaluate", action="store_true", help="only evaluate each selected run's best.pth on the validation split")
    runs.add_argument("--checkpoints", type=Path, default=PROJECT_ROOT / "checkpoints",
                      help="folder of the run folders <arch>_<subset>/ (default: checkpoints/ in the project folder)")
    runs.add_argument("--results", type=Path, default=PROJECT_ROOT / "Result_Training",
                      help="folder of results.md and results.csv (default: Result_Training/ in the project folder)")
    runs.add_argument("--verbose", action="store_true", help="log debug messages")

    # Fault injection for the tests: plant a NaN loss or kill the process at a global training step
    # (1 is the first step of the first epoch). Hidden from --help.
    parser.add_argument("--debug-nan-at-step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--debug-kill-at-step", type=int, help=argparse.SUPPRESS)

    parser.set_defaults(dataset=dataset, prefix=subsets.prefix)
    return parser


def parse_args(argv: list[str] | None, dataset: str) -> argparse.Namespace:
    """Parse and check the flags of a training script for ``dataset``."""
    if dataset not in TRAINING_DATASETS:
        raise ValueError(f"training dataset must be one of {TRAINING_DATASETS}, got {dataset!r}")
    args = build_parser(dataset).parse_args(argv)
    args.data = resolve_path(str(args.data), Path.cwd())
    args.checkpoints = resolve_path(str(args.checkpoints), Path.cwd())
    args.results = resolve_path(str(args.results), Path.cwd())
    if args.resize_size is None:
        args.resize_size = default_resize_size(args.image_size)
    if args.arch is None:
        args.arch = default_architectures(args.image_size)
    args.arch = list(dict.fromkeys(args.arch))
    check_args(args)
    return args


def default_architectures(image_size: int) -> list[str]:
    """Return the reference networks that accept ``image_size``, logging those left out."""
    too_small = [arch for arch in REFERENCE_ARCHITECTURES if image_size < min_input_size(arch)]
    if too_small:
        log.warning("leaving out %s: --image-size %d is below their minimum input size",
                    ", ".join(too_small), image_size)
    return [arch for arch in REFERENCE_ARCHITECTURES if arch not in too_small]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_args(args: argparse.Namespace) -> None:
    """Raise a UserError naming the flag and a valid value for the first invalid value."""
    _require(args.epochs >= 1, f"--epochs {args.epochs} is invalid; train for at least 1 epoch")
    _require(args.batch_size >= 2, f"--batch-size {args.batch_size} is invalid; batch norm needs at least 2 images per step")
    _require(0 < args.lr <= FLOAT32_MAX,
             f"--lr {args.lr} is invalid; the learning rate must be a positive number below 3.4e38 (the float32 maximum), e.g. 0.1")
    _require(0 <= args.momentum < 1, f"--momentum {args.momentum} is invalid; use a value in [0, 1), e.g. 0.9")
    _require(0 <= args.weight_decay <= FLOAT32_MAX,
             f"--weight-decay {args.weight_decay} is invalid; use 0 or a positive value below 3.4e38 (the float32 maximum), e.g. 1e-4")
    _require(args.lr_step >= 1, f"--lr-step {args.lr_step} is invalid; drop the learning rate every 1 or more epochs")
    _require(0 < args.lr_gamma <= 1, f"--lr-gamma {args.lr_gamma} is invalid; use a factor in (0, 1], e.g. 0.1")
    _require(args.workers >= 0, f"--workers {args.workers} is invalid; use 0 or more worker processes")
    _require(args.seed is None or 0 <= args.seed < SEED_LIMIT,
             f"--seed {args.seed} is invalid; use an integer from 0 to {SEED_LIMIT - 1} (below 2**32)")
    _require(args.image_size >= 1, f"--image-size {args.image_size} is invalid; use a positive number of pixels")
    _require(args.resize_size >= args.image_size,
             f"--resize-size {args.resize_size} is smaller than --image-size {args.image_size}; "
             "the validation center crop must fit in the resized image")
    _require(not (args.restart and args.evaluate), "--restart and --evaluate exclude each other; pass one of them")
    _require(bool(args.arch), f"--image-size {args.image_size} is below the minimum input size of every network; use 32 or more")
    for arch in args.arch:
        check_architecture(arch)
        smallest = min_input_size(arch)
        _require(args.image_size >= smallest,
                 f"--image-size {args.image_size} is too small for {arch}; it needs at least {smallest} pixels")


def args_to_config(args: argparse.Namespace) -> dict:
    """Return every flag as plain Python values (paths as strings), as stored in checkpoints."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}

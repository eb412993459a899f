"""The command behind Train_ImageNetRescaleSubsets.py and Train_Places365RescaleSubsets.py."""

import argparse
import logging
import os
from pathlib import Path

import torch

from models import REFERENCE_ARCHITECTURES, count_parameters
from utils.atomic import file_in_the_way, probe_writable
from utils.cli import counted, setup_logging
from utils.distributed import DistributedContext, broadcast_from_main, init_distributed, resolve_device, shutdown_distributed
from utils.errors import UserError
from utils.results_table import write_results_table
from utils.train_args import parse_args
from utils.train_data import find_datasets
from utils.train_loop import NonFiniteLossError, Precision
from utils.train_runs import Run, evaluate_run, plan_runs, train_run

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def print_architectures() -> None:
    """Print the reference networks with their parameter counts for 1,000 classes."""
    for arch in REFERENCE_ARCHITECTURES:
        count = count_parameters(arch, 1000)
        print(f"{arch:<14} {count / 1e6:7.2f}M parameters ({count:,})")


def choose_precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """Return autocast and memory-format settings: mixed precision only on CUDA, channels-last by default.

    Channels-last memory is the default on the CPU as well. In one training step of each reference
    network at 64x64 on a 2-core AMD EPYC shared with other jobs (torch 2.14, oneDNN), five of nine
    networks ran 1.3 to 2.1 times as fast in it. The other four stayed within 3%, the noise of
    that measurement. On the same machine unloaded, a ResNet18 epoch ran 4% faster. The
    arithmetic is the same, in another order. Training on the CPU without either flag then times
    both formats per network (`utils.memory_format`).
    """
    channels_last = args.channels_last if args.channels_last is not None else True
    # NOTE: the CUDA paths (bf16 and fp16 autocast, the gradient scaler, channels-last, NCCL) have not
    # been run. Compare a short run with --amp none before a long one.
    if device.type != "cuda":
        if args.amp != "none":
            log.info("training in fp32: --amp %s applies to CUDA devices only", args.amp)
        return Precision(device.type, None, channels_last)
    if args.amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{torch.cuda.get_device_name(device)} does not support bf16; pass --amp fp16 or --amp none")
    torch.backends.cudnn.benchmark = True
    return Precision(device.type, AMP_DTYPES[args.amp], channels_last)


def start_processes(args: argparse.Namespace) -> tuple[torch.device, DistributedContext]:
    """Pick this process's device and join torchrun's process group, if any."""
    local = DistributedContext(local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(args.device, local)
    return device, init_distributed(device)


def check_batch_size(args: argparse.Namespace, context: DistributedContext) -> None:
    """Raise a UserError unless the batch splits evenly over the processes, at least 2 images each."""
    if args.batch_size % context.world_size:
        raise UserError(f"--batch-size {args.batch_size} is not divisible by the {context.world_size} processes; "
                        f"use a multiple of {context.world_size}")
    if args.batch_size // context.world_size < 2:
        raise UserError(f"--batch-size {args.batch_size} gives each of the {context.world_size} processes "
                        f"{args.batch_size // context.world_size} image per step, and batch norm needs at least 2; "
                        f"use at least {2 * context.world_size}")


def output_folder_problem(folder: Path, flag: str, create: bool) -> str | None:
    """Return why the folder given to ``flag`` cannot hold outputs, or None.

    A file at the path or at one of its parents is a problem. With ``create``, the folder is then
    created, and a temporary file is written in it and deleted.
    """
    blocker = file_in_the_way(folder)
    if blocker == folder:
        return f"{flag} {folder} is a file, not a folder; pass a folder with {flag}"
    if blocker is not None:
        return (f"{flag} {folder} cannot be created, because {blocker} is a file, not a folder; "
                f"pass a folder elsewhere with {flag}, or move that file away")
    if not create:
        return None
    try:
        probe_writable(folder)
    except OSError as error:
        return (f"{flag} {folder} cannot be created or written to ({error.strerror or error}); "
                f"pass a writable folder with {flag}, or make this one writable")
    return None


def check_output_folder(folder: Path, flag: str, context: DistributedContext, create: bool) -> None:
    """Raise a UserError on every process, before any training, when process 0 finds a problem with ``folder``."""
    problem = output_folder_problem(folder, flag, create) if context.is_main else None
    problem = broadcast_from_main(problem, context)
    if problem:
        raise UserError(problem)


def run_all(runs: list[Run], args: argparse.Namespace, context: DistributedContext, device: torch.device,
            precision: Precision) -> list[str]:
    """Train or evaluate every run; return the names of runs stopped by a NaN or infinite loss."""
    failed = []
    evaluated = 0
    for index, run in enumerate(runs, start=1):
        log.info("run %d of %d: %s on %s", index, len(runs), run.arch, run.source.root)
        if args.evaluate:
            if evaluate_run(run, args, context, device, precision) is not None:
                evaluated += 1
            continue
        try:
            train_run(run, args, context, device, precision)
        except NonFiniteLossError as error:
            log.error("%s stopped: %s", run.name, error)
            failed.append(run.name)
    if args.evaluate and not evaluated:
        raise UserError(f"no best.pth found for the selected runs in {args.checkpoints}; train them first, "
                        "or point --checkpoints at the folder they were trained in")
    if context.is_main and not args.evaluate:
        results = write_results_table(args.checkpoints, args.results)
        log.info("results table of %s written to %s", counted(len(results), "run"), args.results)
    return failed


def main(argv: list[str] | None = None, dataset: str = "ImageNet") -> int:
    """Train (or with --evaluate, evaluate) every selected network on every selected dataset."""
    setup_logging()
    args = parse_args(argv, dataset)
    if args.verbose:
        setup_logging(verbose=True)
    if args.list_archs:
        print_architectures()
        return 0

    sources = find_datasets(args.data, args.prefix, args.subsets)
    runs = plan_runs(args.arch, sources, args.checkpoints)
    device, context = start_processes(args)
    try:
        check_batch_size(args, context)
        check_output_folder(args.checkpoints, "--checkpoints", context, create=False)
        if not args.evaluate:
            check_output_folder(args.results, "--results", context, create=True)
        precision = choose_precision(args, device)
        log.info("%s: %s on %s; device %s, %s", counted(len(runs), "run"), ", ".join(args.arch),
                 ", ".join(source.name for source in sources), device, counted(context.world_size, "process", "processes"))
        failed = run_all(runs, args, context, device, precision)
    finally:
        shutdown_distributed()
    if failed:
        raise UserError(f"{counted(len(failed), 'run')} stopped on a NaN or infinite loss: {', '.join(failed)}; see the errors above")
    return 0

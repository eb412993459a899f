"""Training and evaluating one run: one network on one dataset, in `<checkpoints>/<arch>_<dataset>/`.

A run whose `last.pth` has all requested epochs is skipped if it was trained with the same
run-defining flags, and stops the script with an error otherwise. A run with fewer epochs resumes
from `last.pth` at the next epoch, with the restored optimizer, learning-rate scheduler and
gradient scaler. Every epoch reseeds the RNGs from (seed, epoch, rank), so a resumed run repeats
exactly what the interrupted run would have done. With several processes, every process reads the
run folder, so on several machines `--checkpoints` must be on a shared file system.
"""

import argparse
import json
import logging
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from models import build_model
from utils.atomic import exclusive_lock, remove_stale_temporaries, write_text_atomically
from utils.checkpoints import load_state_dict_strictly
from utils.cli import counted
from utils.curves import plot_curves
from utils.distributed import DistributedContext, barrier, broadcast_from_main, gather_to_main
from utils.errors import UserError
from utils.memory_format import choose_training_memory_format, format_name
from utils.results_table import write_results_table
from utils.train_args import args_to_config
from utils.train_checkpoint import (
    CHECKPOINT_VERSION,
    LAST_CHECKPOINT,
    capture_rng_state,
    derive_seed,
    load_run_checkpoint,
    network_from_checkpoint,
    model_state_dict,
    restore_rng_state,
    save_run_checkpoint,
    seed_everything,
)
from utils.train_data import DatasetSource, Preprocessing, TrainingData, make_training_data
from utils.train_images import class_folders
from utils.train_log import LOG_FILE, epoch_row, write_epoch_log
from utils.train_loop import FaultInjection, Metrics, Precision, evaluate, train_one_epoch

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pth"
CURVES_FILE = "curves.png"
EVALUATION_FILE = "evaluation.json"
RUN_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, LOG_FILE, CURVES_FILE, EVALUATION_FILE)

# Flags that define what a run computes; resuming with other values would mix two protocols.
# Key of the checkpoint's config: whether the run trains in channels-last memory, as chosen or given.
TRAINED_CHANNELS_LAST = "trained_channels_last"
RUN_DEFINING_FLAGS = ("batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "image_size", "resize_size", "seed")


@dataclass(frozen=True)
class Run:
    """One network trained on one dataset, with its folder of checkpoints and logs."""

    arch: str
    source: DatasetSource
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    def path(self, file_name: str) -> Path:
        """Return the path of one of the run's files."""
        return self.folder / file_name


def plan_runs(archs: list[str], sources: list[DatasetSource], checkpoints: Path) -> list[Run]:
    """List the runs dataset by dataset, so that the smallest subsets finish first."""
    return [Run(arch, source, checkpoints / f"{arch}_{source.name}") for source in sources for arch in archs]


@dataclass
class RunState:
    """Everything that changes while a run trains, and that `last.pth` stores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    seed: int
    epoch: int = 0
    best_top1: float = -1.0
    history: list[dict] = field(default_factory=list)


def clear_run(run: Run) -> None:
    """Delete the files of a run (for --restart); other files in the folder are kept."""
    for file_name in RUN_FILES:
        run.path(file_name).unlink(missing_ok=True)
    log.info("%s: deleted checkpoints and logs (--restart)", run.name)


def lock_run_folder(run: Run, context: DistributedContext, stack: ExitStack) -> None:
    """Hold the run folder's lock on process 0 until ``stack`` closes, so two jobs cannot train one run.

    Process 0 sends the outcome to the others, so that every process raises if the lock is taken.
    """
    error = None
    if context.is_main:
        try:
            stack.enter_context(exclusive_lock(run.folder, f"training of {run.name}"))
        except UserError as locked:
            error = str(locked)
    error = broadcast_from_main(error, context)
    if error:
        raise UserError(error)


def read_last_checkpoint(run: Run, context: DistributedContext) -> dict | None:
    """Load `last.pth` on every process, checking that all processes found the same number of epochs."""
    last = run.path(LAST_CHECKPOINT)
    checkpoint = load_run_checkpoint(last) if last.is_file() else None
    epochs = gather_to_main(checkpoint["epoch"] if checkpoint else 0, context)
    consistent = broadcast_from_main(len(set(epochs)) == 1 if context.is_main else None, context)
    if not consistent:
        raise UserError(f"the processes found different checkpoints in {run.folder}; on several machines "
                        "--checkpoints must be a folder on a shared file system")
    return checkpoint


def changed_flags(checkpoint: dict, args: argparse.Namespace) -> list[str]:
    """Return the run-defining flags that differ from those in ``checkpoint``, each as "--flag old -> new".

    The seed is compared only when --seed is given.
    """
    stored = checkpoint["config"]
    flags = [flag for flag in RUN_DEFINING_FLAGS if flag != "seed" or args.seed is not None]
    return [f"--{flag.replace('_', '-')} {stored.get(flag)} -> {getattr(args, flag)}"
            for flag in flags if stored.get(flag) != getattr(args, flag)]


def check_finished_run_flags(run: Run, checkpoint: dict, args: argparse.Namespace) -> None:
    """Raise a UserError if a finished run would be skipped although it was trained with other flags."""
    changed = changed_flags(checkpoint, args)
    if changed:
        raise UserError(f"{run.name} finished {counted(checkpoint['epoch'], 'epoch')} with other settings "
                        f"({'; '.join(changed)}), so its results do not match these flags; pass --restart to train "
                        "it again with them, or another --checkpoints folder to keep it")


def check_finished_run_classes(run: Run, checkpoint: dict) -> None:
    """Raise a UserError if a finished run would be skipped although its dataset's class folders changed."""
    try:
        current = {split: class_folders(run.source.root / split) for split in ("train", "val")}
    except OSError as error:
        raise UserError(f"{run.source.root} cannot be read ({error.strerror or error}); check the --data folder") from None
    stored = list(checkpoint["class_names"])
    if current["train"] != stored or current["val"] != stored:
        raise UserError(f"{run.name} finished with other classes than the train/ and val/ folders of {run.source.root} "
                        "now have; pass --restart to train it on the current classes, or another --checkpoints folder to keep it")


def check_resumable(run: Run, checkpoint: dict, args: argparse.Namespace, class_names: list[str]) -> None:
    """Raise a UserError if the flags or the classes differ from those the run started with."""
    changed = changed_flags(checkpoint, args)
    if changed:
        raise UserError(f"{run.name} was started with other settings ({'; '.join(changed)}); "
                        "pass the original values to resume it, or --restart to train it again")
    if list(checkpoint["class_names"]) != class_names:
        raise UserError(f"{run.name}: the classes of {run.source.root} differ from those in {run.path(LAST_CHECKPOINT)}; "
                        "pass --restart to train on the current classes")


def resumed_memory_format(checkpoint: dict) -> bool:
    """Return whether the run of ``checkpoint`` trained in channels-last memory.

    Checkpoints written before the memory format was timed lack the key. Those runs trained in
    the format of their --channels-last flag, and in channels-last memory without it.
    """
    stored = checkpoint["config"].get(TRAINED_CHANNELS_LAST)
    if stored is None:
        stored = checkpoint["config"].get("channels_last")
    return True if stored is None else bool(stored)


def choose_seed(args: argparse.Namespace, checkpoint: dict | None, context: DistributedContext) -> int:
    """Return --seed, else the seed a resumed run started with, else a random seed chosen by process 0."""
    if args.seed is not None:
        return args.seed
    if checkpoint is not None:
        return int(checkpoint["config"]["seed"])
    seed = broadcast_from_main(secrets.randbelow(2**31), context)
    log.info("no --seed given, using seed %d (stored in the checkpoint)", seed)
    return seed


def build_run_state(run: Run, args: argparse.Namespace, num_classes: int, seed: int, device: torch.device,
                    precision: Precision, checkpoint: dict | None) -> RunState:
    """Build the network, SGD, StepLR and gradient scaler, restoring them from ``checkpoint`` if given."""
    seed_everything(derive_seed(seed))
    model = build_model(run.arch, num_classes)
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.dtype == torch.float16)
    state = RunState(model, optimizer, scheduler, scaler, seed)
    if checkpoint is None:
        return state

    load_state_dict_strictly(model, checkpoint["model"], str(run.path(LAST_CHECKPOINT)))
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler.is_enabled() and checkpoint["scaler"]:
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])
    state.epoch = int(checkpoint["epoch"])
    state.best_top1 = float(checkpoint["best_top1"])
    state.history = list(checkpoint["history"])
    return state


def training_wrappers(model: nn.Module, args: argparse.Namespace, context: DistributedContext,
                      device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Return the modules for training steps (DDP and/or compiled) and for evaluation (never DDP)."""
    eval_model = torch.compile(model) if args.compile else model
    if not context.enabled:
        return eval_model, eval_model
    # NOTE: --compile has been run on one CPU process only, not with DistributedDataParallel.
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return (torch.compile(ddp) if args.compile else ddp), eval_model


def make_checkpoint(run: Run, state: RunState, data: TrainingData, preprocessing: Preprocessing, config: dict) -> dict:
    """Assemble the checkpoint dict described in `utils.train_checkpoint`."""
    return {
        "version": CHECKPOINT_VERSION,
        "model": model_state_dict(state.model),
        "arch": run.arch,
        "num_classes": len(data.class_names),
        "class_names": list(data.class_names),
        "image_size": preprocessing.image_size,
        "resize_size": preprocessing.resize_size,
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "optimizer": state.optimizer.state_dict(),
        "lr_scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": state.epoch,
        "best_top1": state.best_top1,
        "history": list(state.history),
        "config": config,
        "rng": capture_rng_state(),
    }


def write_epoch_outputs(run: Run, checkpoint: dict, improved: bool, args: argparse.Namespace) -> None:
    """Write best.pth (if improved) before last.pth, then the log, the curves and the results table."""
    if improved:
        save_run_checkpoint(checkpoint, run.path(BEST_CHECKPOINT))
    save_run_checkpoint(checkpoint, run.path(LAST_CHECKPOINT))
    write_epoch_log(checkpoint["history"], run.path(LOG_FILE))
    plot_curves(checkpoint["history"], run.path(CURVES_FILE), f"{run.arch} on {run.source.name}")
    write_results_table(args.checkpoints, args.results)


def train_epoch(run: Run, state: RunState, data: TrainingData, models: tuple[nn.Module, nn.Module],
                args: argparse.Namespace, context: DistributedContext, device: torch.device,
                precision: Precision) -> tuple[dict, bool]:
    """Train and validate epoch ``state.epoch + 1``, step the scheduler and return the log row and whether top-1 improved."""
    train_model, eval_model = models
    epoch = state.epoch + 1
    seed_everything(derive_seed(state.seed, epoch, context.rank))
    data.set_epoch(epoch)
    lr = state.scheduler.get_last_lr()[0]
    log.info("%s: epoch %d/%d started, learning rate %g", run.name, epoch, args.epochs, lr)

    start = time.perf_counter()
    faults = FaultInjection(args.debug_nan_at_step, args.debug_kill_at_step)
    train = train_one_epoch(train_model, data.train_loader, state.optimizer, state.scaler, precision, device, epoch, context, faults)
    val = evaluate(eval_model, data.val_loader, precision, device, context)
    state.scheduler.step()

    row = epoch_row(run.arch, run.source.name, epoch, lr, train, val, time.perf_counter() - start)
    improved = val.top1 > state.best_top1
    state.epoch = epoch
    state.best_top1 = max(state.best_top1, val.top1)
    state.history.append(row)
    log.info("%s: epoch %d/%d: train loss %.4f top-1 %.2f%%, val loss %.4f top-1 %.2f%% top-5 %.2f%%, %.0f images/s",
             run.name, epoch, args.epochs, train.loss, train.top1, val.loss, val.top1, val.top5, train.images_per_second)
    return row, improved


def restore_missing_log(run: Run, checkpoint: dict) -> None:
    """Rewrite a finished run's missing log.csv from the epoch history in its last.pth."""
    path = run.path(LOG_FILE)
    if path.exists():
        return
    write_epoch_log(checkpoint["history"], path)
    log.warning("%s: %s was missing; rewrote it from the %s in %s", run.name, LOG_FILE,
                counted(len(checkpoint["history"]), "epoch"), LAST_CHECKPOINT)


def train_run(run: Run, args: argparse.Namespace, context: DistributedContext, device: torch.device, precision: Precision) -> None:
    """Train one run to ``args.epochs`` epochs, resuming or skipping it by the epoch count in its last.pth."""
    with ExitStack() as stack:
        lock_run_folder(run, context, stack)
        train_locked_run(run, args, context, device, precision)


def train_locked_run(run: Run, args: argparse.Namespace, context: DistributedContext, device: torch.device,
                     precision: Precision) -> None:
    """Restart, skip, resume or start a run whose folder this job has locked."""
    if context.is_main:
        if args.restart:
            clear_run(run)
        remove_stale_temporaries(run.folder)
    barrier()
    checkpoint = read_last_checkpoint(run, context)
    if checkpoint is not None and checkpoint["epoch"] >= args.epochs:
        check_finished_run_flags(run, checkpoint, args)
        check_finished_run_classes(run, checkpoint)
        log.info("%s: already trained for %s, skipping (pass --restart to train it again)", run.name,
                 counted(checkpoint["epoch"], "epoch"))
        if context.is_main:
            restore_missing_log(run, checkpoint)
        return

    seed = choose_seed(args, checkpoint, context)
    preprocessing = Preprocessing(args.image_size, args.resize_size)
    data = make_training_data(run.source, preprocessing, args.batch_size, args.workers, context, device, seed)
    if checkpoint is not None:
        check_resumable(run, checkpoint, args, data.class_names)
    resumed = resumed_memory_format(checkpoint) if checkpoint is not None else None
    precision = choose_training_memory_format(precision, args.channels_last, resumed, run.arch, len(data.class_names),
                                              args.image_size, args.batch_size // context.world_size, context)
    state = build_run_state(run, args, len(data.class_names), seed, device, precision, checkpoint)
    del checkpoint
    if state.epoch:
        log.info("%s: resuming after epoch %d of %d", run.name, state.epoch, args.epochs)
        if context.is_main:
            write_epoch_log(state.history, run.path(LOG_FILE))
    config = dict(args_to_config(args), seed=seed, **{TRAINED_CHANNELS_LAST: precision.channels_last})
    models = training_wrappers(state.model, args, context, device)

    while state.epoch < args.epochs:
        _, improved = train_epoch(run, state, data, models, args, context, device, precision)
        if context.is_main:
            write_epoch_outputs(run, make_checkpoint(run, state, data, preprocessing, config), improved, args)
    barrier()


def evaluate_run(run: Run, args: argparse.Namespace, context: DistributedContext, device: torch.device,
                 precision: Precision) -> Metrics | None:
    """Evaluate a run's best.pth on the validation split with the checkpoint's preprocessing; None if it has none."""
    best = run.path(BEST_CHECKPOINT)
    if not best.is_file():
        log.warning("%s: %s not found, nothing to evaluate; train the run first", run.name, best)
        return None
    checkpoint = load_run_checkpoint(best, training=False)
    network = network_from_checkpoint(checkpoint, str(best))
    if args.channels_last is None and isinstance(checkpoint.get("config"), dict):
        # In the format the run trained in, the figures match log.csv up to the rounding of other batch sizes.
        precision = replace(precision, channels_last=resumed_memory_format(checkpoint))
    del checkpoint
    log.info("%s: evaluating in %s memory", run.name, format_name(precision.channels_last))
    data = make_training_data(run.source, network.preprocessing, args.batch_size, args.workers, context, device, seed=0, train=False)
    if data.class_names != network.class_names:
        raise UserError(f"{run.name}: the classes of {run.source.root / 'val'} differ from those in {best}; "
                        "evaluate on the dataset the run was trained on")
    model = network.model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    metrics = evaluate(model, data.val_loader, precision, device, context)
    log.info("%s: best.pth on %d validation images: loss %.4f, top-1 %.2f%%, top-5 %.2f%%",
             run.name, metrics.images, metrics.loss, metrics.top1, metrics.top5)
    if context.is_main:
        report = {"arch": run.arch, "dataset": run.source.name, "checkpoint": str(best), "val_loss": metrics.loss,
                  "val_top1": metrics.top1, "val_top5": metrics.top5, "val_images": metrics.images}
        write_text_atomically(run.path(EVALUATION_FILE), json.dumps(report, indent=2) + "\n")
    return metrics

"""One training epoch and one validation pass, with accuracy bookkeeping exact across processes.

Each process sums loss, top-1 hits, top-5 hits and image counts over its batches. The sums are
then added over all processes, so every process reports the same metrics.
"""

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from utils.distributed import DistributedContext, all_reduce_sum
from utils.errors import UserError

log = logging.getLogger(__name__)

TOP_K = (1, 5)


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Metrics:
    """Mean loss, top-1 and top-5 accuracy in percent, image count and wall time of one pass."""

    loss: float
    top1: float
    top5: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Precision:
    """The autocast data type on CUDA (None for fp32) and the memory format of inputs."""

    device_type: str
    dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self):
        """Return the autocast context for the forward pass, or a no-op context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def move(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Copy a batch of images to ``device`` in the chosen memory format."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.to(device, non_blocking=True, memory_format=memory_format)


@dataclass(frozen=True)
class FaultInjection:
    """Test hooks: plant a NaN loss, or SIGKILL the process, at a global step (1 = first step of training)."""

    nan_at_step: int | None = None
    kill_at_step: int | None = None


class MetricSums:
    """Running sums of loss, top-k hits and images on the device, added over processes by `result`."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(TOP_K) + 2, dtype=torch.float64, device=device)
        self.start = time.perf_counter()

    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """Add one batch: ``loss_sum`` is the loss summed (not averaged) over its images."""
        k = min(max(TOP_K), logits.shape[1])
        predictions = logits.topk(k, dim=1).indices
        hits = predictions == targets[:, None]
        values = [loss_sum.detach().double()]
        values += [hits[:, :min(top, k)].any(dim=1).sum().double() for top in TOP_K]
        values.append(torch.tensor(float(len(targets)), dtype=torch.float64, device=self.sums.device))
        self.sums += torch.stack(values)

    def result(self, context: DistributedContext) -> Metrics:
        """Add the sums over all processes and return the metrics of the whole pass."""
        totals = all_reduce_sum(self.sums.clone(), context).tolist()
        loss, top1, top5, images = totals
        count = max(images, 1.0)
        seconds = time.perf_counter() - self.start
        return Metrics(loss / count, 100.0 * top1 / count, 100.0 * top5 / count, int(images), seconds)


def check_finite(loss: torch.Tensor, epoch: int, step: int, context: DistributedContext) -> None:
    """Raise NonFiniteLossError on every process when the loss of any process is NaN or infinite."""
    flag = (~torch.isfinite(loss.detach())).float().reshape(1)
    if all_reduce_sum(flag, context).item() > 0:
        if epoch > 1:
            kept = f"the checkpoint of epoch {epoch - 1} is kept"
            again = "run again to resume from that checkpoint (or pass --restart)"
        else:
            kept = "no epoch was completed, so no checkpoint was written"
            again = "run again"
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite at epoch {epoch}, step {step}; {kept}. "
            f"Lower --lr, try --amp none, or check the images of this dataset, then {again}"
        )


def _inject_faults(loss: torch.Tensor, global_step: int, faults: FaultInjection) -> torch.Tensor:
    if faults.kill_at_step == global_step:
        log.warning("test hook: killing this process at global step %d", global_step)
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.nan_at_step == global_step:
        log.warning("test hook: planting a NaN loss at global step %d", global_step)
        return loss * float("nan")
    return loss


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    epoch: int,
    context: DistributedContext,
    faults: FaultInjection = FaultInjection(),
) -> Metrics:
    """Train ``model`` for one pass over ``loader``; ``epoch`` counts from 1 and only labels messages."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    sums = MetricSums(device)
    steps = len(loader)
    progress = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=None if context.is_main else True)
    for step, (images, targets) in enumerate(progress, start=1):
        images = precision.move(images, device)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
            loss = criterion(logits, targets)
        loss = _inject_faults(loss, (epoch - 1) * steps + step, faults)
        check_finite(loss, epoch, step, context)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sums.add(logits.detach(), targets, loss.detach() * len(targets))
    return sums.result(context)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, precision: Precision, device: torch.device, context: DistributedContext) -> Metrics:
    """Evaluate ``model`` on every image of ``loader``'s shards and return metrics summed over processes.

    Pass the network without its DistributedDataParallel wrapper: shards may differ in batch count,
    and the wrapper would wait for the other processes at every forward pass.
    """
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = MetricSums(device)
    for images, targets in tqdm(loader, desc="validation", leave=False, disable=None if context.is_main else True):
        images = precision.move(images, device)
        targets = targets.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(images)
        sums.add(logits.float(), targets, criterion(logits.float(), targets))
    return sums.result(context)

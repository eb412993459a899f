"""Choosing the memory format of training on the CPU by timing a few steps of the run's network.

Channels-last memory is the faster one on CUDA and for inference on the CPU. On a 2-core Intel
Xeon it ran mobilenet_v3_small about twice and resnet50 1.5 times as fast, and on a 2-core AMD
EPYC both about 1.5 times. For training on the CPU it depends on the processor and on the image
size. ResNet18 at 64x64 trained 13 % faster in it on the AMD EPYC and 10 to 13 % slower on the
Intel Xeon, where at 128x128 and 224x224 it was about 15 % and 30 % faster.

So, unless --channels-last or --no-channels-last is given, CPU training times two steps in each
format, after one untimed step, on random images of the run's size. It keeps channels-last unless
contiguous memory is more than 5 % faster. Rank 0 times and decides for every process, and the
choice is reused for runs of the same network, image size and batch size in the same command. The
checkpoint records it, and a resumed run keeps it.

NOTE: under torchrun, rank 0 times alone while the other processes wait, with at most 32 images
per step. Training then shares the cores between all processes at the full batch size. Whether
the faster format stays the faster there has not been measured.

Both formats compute the same arithmetic in another order, so their float results differ in the
last bits and two trainings with the same seed repeat each other only in the same format. The
timing can choose differently from one command to the next when both formats are about as fast,
so runs that must repeat bit for bit need one of the two flags.
"""

import logging
import time
from dataclasses import replace

import torch
from torch import nn

from models import build_model
from utils.distributed import DistributedContext, broadcast_from_main
from utils.train_loop import Precision

log = logging.getLogger(__name__)

TIMED_STEPS = 2
# At most this many random images per timed step, to bound the time the choice takes.
TIMING_BATCH = 32
# Contiguous memory replaces channels-last only when it is faster by more than this factor.
CONTIGUOUS_MARGIN = 1.05

_choices: dict[tuple[str, int, int], bool] = {}


def seconds_per_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Return the mean time of ``steps`` forward and backward passes, after one untimed pass."""
    model.train()
    loss_function = nn.CrossEntropyLoss()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss_function(model(images), labels).backward()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def time_memory_formats(arch: str, num_classes: int, image_size: int, batch_size: int) -> dict[bool, float]:
    """Return the seconds per training step of ``arch`` in channels-last (True) and contiguous (False) memory."""
    batch = max(2, min(batch_size, TIMING_BATCH))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    seconds = {}
    for channels_last in (True, False):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(arch, num_classes).to(memory_format=memory_format)
        seconds[channels_last] = seconds_per_step(model, images.contiguous(memory_format=memory_format), labels, TIMED_STEPS)
    return seconds


def prefers_channels_last(seconds: dict[bool, float]) -> bool:
    """Return whether to train in channels-last memory, given the seconds per step of both formats."""
    return seconds[False] * CONTIGUOUS_MARGIN >= seconds[True]


def format_name(channels_last: bool) -> str:
    """Return the name of a memory format as the log writes it."""
    return "channels-last" if channels_last else "contiguous"


def choose_training_memory_format(precision: Precision, explicit: bool | None, resumed: bool | None, arch: str,
                                  num_classes: int, image_size: int, batch_size: int, context: DistributedContext) -> Precision:
    """Return ``precision`` with the memory format for training ``arch`` (see the module documentation).

    ``explicit`` is the value of --channels-last (None without the flag), and ``resumed`` the
    format that the checkpoint of a resumed run was trained in (None for a new run). A resumed
    run keeps its format, so that it continues as it would have without the interruption.
    """
    if explicit is not None and resumed is not None and explicit != resumed:
        log.warning("%s: trained in %s memory before the interruption and continues in %s memory, as the flag sets; "
                    "its log will differ from an uninterrupted run's in the last digits", arch, format_name(resumed), format_name(explicit))
    if explicit is not None or precision.device_type != "cpu":
        return precision
    if resumed is not None:
        log.info("%s: training in %s memory, as before the interruption", arch, format_name(resumed))
        return replace(precision, channels_last=resumed)
    key = (arch, image_size, batch_size)
    if key not in _choices:
        channels_last = None
        if context.is_main:
            seconds = time_memory_formats(arch, num_classes, image_size, batch_size)
            channels_last = prefers_channels_last(seconds)
            log.info("%s at %dx%d on the CPU: %.1f ms per training step in channels-last memory, %.1f ms in contiguous "
                     "memory (%.2fx); training in %s memory (--channels-last or --no-channels-last sets it)", arch, image_size,
                     image_size, 1000 * seconds[True], 1000 * seconds[False], seconds[True] / seconds[False], format_name(channels_last))
        _choices[key] = broadcast_from_main(channels_last, context)
    return replace(precision, channels_last=_choices[key])

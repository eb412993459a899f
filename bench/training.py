"""Benchmark 4: one training epoch of ResNet18 at 64x64 on the CPU, images per second.

Three loops train the same network (torchvision's ResNet18, seeded initialization) on the same
generated JPEG tree with the same batch size and DataLoader workers:

- the research-code style loop (DataParallel, autograd anomaly detection on, per-sample PIL transforms),
- a clean loop in the style of the PyTorch ImageNet example (per-sample PIL transforms),
- the project: `make_training_data` (drafted random resized crops, uint8 batches normalized per
  batch) and `train_one_epoch` with the training scripts' default settings. Its memory format is
  the one that `choose_training_memory_format` picks by timing ResNet18 on this machine before the
  timed rounds. The project's loop in the other memory format is measured too, to tell the memory
  format's share of the gain from the input pipeline's.
"""

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torchvision

from bench import baselines
from bench.common import Result, run_side_by_side
from utils.distributed import DistributedContext
from utils.memory_format import choose_training_memory_format
from utils.train_data import DatasetSource, Preprocessing, make_training_data
from utils.train_args import parse_args
from utils.train_loop import Precision, train_one_epoch
from utils.training import choose_precision

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
IMAGE_SIZE = 64


def fresh_resnet18(classes: int, seed: int = 0) -> torch.nn.Module:
    """Return torchvision's ResNet18 with seeded random weights."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=classes)


def default_precision(root: Path, classes: int, batch_size: int) -> Precision:
    """Return the precision settings that the training scripts choose for ResNet18 on the CPU by default."""
    args = parse_args(["--data", str(root)], "ImageNet")
    return choose_training_memory_format(choose_precision(args, CPU), args.channels_last, None, "ResNet18", classes,
                                         IMAGE_SIZE, batch_size, DistributedContext())


def project_train_rate(root: Path, classes: int, batch_size: int, workers: int, precision: Precision) -> float:
    """Return the images per second of one epoch of the project's training loop."""
    model = fresh_resnet18(classes)
    model.to(CPU, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    context = DistributedContext()
    start = time.perf_counter()
    data = make_training_data(DatasetSource(root.name, root), Preprocessing(IMAGE_SIZE, round(IMAGE_SIZE * 256 / 224)),
                              batch_size, workers, context, CPU, seed=0)
    data.set_epoch(1)
    metrics = train_one_epoch(model, data.train_loader, optimizer, scaler, precision, CPU, 1, context)
    return metrics.images / (time.perf_counter() - start)



def bench_training(root: Path, batch_size: int, workers: int, repeats: int) -> list[Result]:
    """Return the project's epoch rate against the research-code loop and against the ImageNet-example loop."""
    classes = sum(1 for p in (root / "train").iterdir() if p.is_dir())
    train = root / "train"
    precision = default_precision(root, classes, batch_size)
    other = replace(precision, channels_last=not precision.channels_last)
    rates = run_side_by_side({
        "research": lambda: baselines.research_train_rate(fresh_resnet18(classes), train, IMAGE_SIZE, batch_size, workers),
        "example": lambda: baselines.example_train_rate(fresh_resnet18(classes), train, IMAGE_SIZE, batch_size, workers),
        "project": lambda: project_train_rate(root, classes, batch_size, workers, precision),
        "project_other_format": lambda: project_train_rate(root, classes, batch_size, workers, other),
    }, repeats)
    images = sum(1 for _ in train.rglob("*.jpg"))
    details = {"images": images, "classes": classes, "batch_size": batch_size, "workers": workers,
               "image_size": IMAGE_SIZE, "torch_threads": torch.get_num_threads(), "channels_last": precision.channels_last,
               "project_other_format_images_per_second": rates["project_other_format"]}
    return [
        Result("training_vs_research", "4. Training epoch, ResNet18 at 64x64, CPU, against the research-code loop", "images/s",
               rates["project"], rates["research"],
               "DataParallel, anomaly detection on, per-sample PIL transforms", details=details).check_ratio(1.25),
        Result("training_vs_example", "4. Training epoch, ResNet18 at 64x64, CPU, against the ImageNet-example loop", "images/s",
               rates["project"], rates["example"],
               "clean loop, per-sample PIL transforms", details=details).check_ratio(1.0),
    ]

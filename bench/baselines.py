"""The loops a user would write without this project, the yardsticks of the benchmarks.

Two styles are written out here from their descriptions:

- the PyTorch ImageNet example's: an ImageFolder dataset whose images PIL decodes and
  `torchvision.transforms` turns into normalized float tensors one at a time, a DataLoader, and
  a plain loop. Evaluation uses `Resize(256)`, `CenterCrop(224)`, `ToTensor` and `Normalize`,
  training `RandomResizedCrop`, `RandomHorizontalFlip`, `ToTensor` and `Normalize`;
- the research code this project grew out of: the same per-sample transforms, the network wrapped
  in `nn.DataParallel`, and autograd anomaly detection left on for the whole run.
"""

import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int = 256, crop: int = 224) -> T.Compose:
    """Return the evaluation preprocessing of the ImageNet example, one PIL image at a time."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def train_transform(crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """Return the training augmentation of the ImageNet example, one PIL image at a time."""
    return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def eval_loader(folder: Path, batch_size: int, workers: int, transform: T.Compose | None = None) -> DataLoader:
    """Return the ImageNet example's validation loader over an ImageFolder tree."""
    dataset = datasets.ImageFolder(folder, transform or eval_transform())
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def input_pipeline_rate(folder: Path, batch_size: int, workers: int) -> float:
    """Return the images per second of one pass of the example's validation loader, without a network."""
    start = time.perf_counter()
    count = 0
    for images, _ in eval_loader(folder, batch_size, workers):
        count += len(images)
    return count / (time.perf_counter() - start)


def topk_hits(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[int]:
    """Count the images whose true class is among the ``k`` highest outputs, for each ``k``."""
    largest = min(max(topk), output.shape[1])
    predicted = output.topk(largest, dim=1).indices
    hits = predicted == target[:, None]
    return [int(hits[:, :min(k, largest)].any(dim=1).sum()) for k in topk]


def validate_rate(model: nn.Module, folder: Path, batch_size: int, workers: int) -> float:
    """Return the images per second of the example's validation loop: forward pass, loss and top-k hits."""
    criterion = nn.CrossEntropyLoss()
    model.eval()
    start = time.perf_counter()
    count = 0
    with torch.no_grad():
        for images, target in eval_loader(folder, batch_size, workers):
            output = model(images)
            criterion(output, target)
            topk_hits(output, target)
            count += len(images)
    return count / (time.perf_counter() - start)


def train_loader(folder: Path, crop: int, batch_size: int, workers: int) -> DataLoader:
    """Return the example's training loader: shuffled, per-sample PIL augmentation."""
    dataset = datasets.ImageFolder(folder, train_transform(crop))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)


def example_train_rate(model: nn.Module, folder: Path, crop: int, batch_size: int, workers: int, lr: float = 0.1) -> float:
    """Return the images per second of one training epoch written like the ImageNet example."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    return timed_epoch(model, criterion, optimizer, folder, crop, batch_size, workers)


def timed_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, folder: Path, crop: int,
                batch_size: int, workers: int) -> float:
    """Train one epoch the way the ImageNet example does, reading the loss and top-k each step; return images per second.

    The clock starts before the loader is built, so listing the images counts as part of the epoch.
    """
    start = time.perf_counter()
    count = 0
    for images, target in train_loader(folder, crop, batch_size, workers):
        output = model(images)
        loss = criterion(output, target)
        topk_hits(output, target)
        loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        count += len(images)
    return count / (time.perf_counter() - start)


def research_train_rate(model: nn.Module, folder: Path, crop: int, batch_size: int, workers: int, lr: float = 0.1) -> float:
    """Return the images per second of one epoch written like the research code: DataParallel, anomaly detection on."""
    wrapped = nn.DataParallel(model)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    wrapped.train()
    previous = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(True)
    try:
        return timed_epoch(wrapped, criterion, optimizer, folder, crop, batch_size, workers)
    finally:
        torch.autograd.set_detect_anomaly(previous)

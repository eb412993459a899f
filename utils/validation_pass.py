"""Stage 1: running a pretrained network over the validation split.

Each torchrun process takes every world_size-th image, so the shards are disjoint and together
cover the split; rank 0 gathers the shards and orders them by image index.
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.fx.experimental.optimization import fuse
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from utils.cli import counted
from utils.distributed import DistributedContext, gather_to_main
from utils.errors import UserError
from utils.image_decoding import lower_worker_priority, DECODE_ERRORS, BatchNormalizer, EvalTransform, Preprocessing
from utils.layouts import Split
from utils.networks import PretrainedNetwork
from utils.outcomes import Outcomes
from utils.shared_batches import PREFETCH_FACTOR, BatchPlan, SharedBatchBuffers, buffer_slots

log = logging.getLogger(__name__)


class ValidationImages(Dataset):
    """Batches of one shard of the split as uint8 images, decoded into shared buffers. Undecodable files are flagged, not raised.

    An item is a whole batch of `BatchPlan`. It returns the batch number, the image indices, a
    decode flag per image and the reasons of failures. The pixels stay in ``buffers``.
    """

    def __init__(self, split: Split, indices: list[int], transform: EvalTransform, buffers: SharedBatchBuffers):
        self.split = split
        self.indices = indices
        self.transform = transform
        self.buffers = buffers

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[int, list[int], list[bool], list[str]]:
        number, start, stop = item
        samples = self.buffers.slot_of(number)
        indices, ok, reasons = self.indices[start:stop], [], []
        for sample, index in zip(samples, indices):
            try:
                sample.copy_(self.transform(self.split.root / self.split.files[index]))
                ok.append(True)
                reasons.append("")
            except DECODE_ERRORS as error:
                sample.zero_()
                ok.append(False)
                reasons.append(f"{type(error).__name__}: {error}".splitlines()[0])
        self.buffers.mark_written(number)
        return number, indices, ok, reasons


class ValidationLoader:
    """Iterates over (uint8 NCHW images, image indices, decode flags, failure reasons) batches of one shard.

    DataLoader workers decode into shared buffers that are reused from batch to batch (see
    `utils.shared_batches`), so each batch of images is valid only until the next one is asked for.

    NOTE: the buffers are not pinned, so on CUDA each batch is copied to the GPU from pageable
    memory, which is slower than from pinned memory. This has not been measured on a GPU.
    """

    def __init__(self, preprocessing: Preprocessing, split: Split, indices: list[int], device: torch.device, batch_size: int, workers: int):
        # A shard smaller than one batch needs buffers of its own size only.
        buffer_batch = max(1, min(batch_size, len(indices)))
        self.buffers = SharedBatchBuffers(buffer_slots(workers), buffer_batch, (3, preprocessing.crop, preprocessing.crop))
        self.loader = DataLoader(
            ValidationImages(split, indices, EvalTransform(preprocessing), self.buffers),
            batch_size=None,
            sampler=BatchPlan(len(indices), batch_size),
            num_workers=workers,
            prefetch_factor=PREFETCH_FACTOR if workers else None,
            persistent_workers=False,
            worker_init_fn=lower_worker_priority if device.type == "cpu" else None,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]]:
        for number, indices, ok, reasons in self.loader:
            images = self.buffers.batch(number, len(indices))
            yield images, torch.tensor(indices, dtype=torch.int64), torch.tensor(ok, dtype=torch.bool), reasons


@dataclass
class ShardResult:
    """Outcomes of one process's shard, in global image indices."""

    indices: np.ndarray
    topk: np.ndarray
    probs: np.ndarray
    skipped: list[tuple[int, str]]


def label_indices(split: Split, class_names: list[str], skip_unknown: bool) -> tuple[np.ndarray, list[str]]:
    """Map each image's class name to the network's output index, by name.

    Returns the indices (-1 for images of skipped classes) and the names of the skipped classes.
    """
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(split.labels) - set(index))
    if unknown and not skip_unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UserError(
            f"the network does not know the dataset class(es) {shown}; use a network trained on these classes, "
            "give its class names with --class-names, or leave these classes out with --skip-unknown-classes"
        )
    if unknown:
        log.warning("leaving out %d class(es) the network does not know: %s", len(unknown), ", ".join(unknown[:10]))
    labels = np.array([index.get(name, -1) for name in split.labels], dtype=np.int64)
    return labels, unknown


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_validation_loader(preprocessing: Preprocessing, split: Split, indices: list[int], device: torch.device, batch_size: int, workers: int) -> ValidationLoader:
    """Return the loader of the validation pass: uint8 image batches, their indices and decode flags."""
    return ValidationLoader(preprocessing, split, indices, device, batch_size, workers)


# Errors of torch.fx tracing, raised for networks with data-dependent control flow.
TRACING_ERRORS = (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError)


def fold_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Return a copy of an evaluation-mode network whose batch norms are folded into the preceding convolutions.

    The folded network computes the same function up to float rounding with one layer less per
    convolution, which made mobilenet_v3_small about 1.5 times and resnet50 about 1.1 times as fast
    on a 2-core CPU. A network that torch.fx cannot trace is returned unchanged, with a log line.
    """
    try:
        return fuse(module)
    except TRACING_ERRORS as error:
        log.info("running %s without folding its batch norms: torch.fx could not trace it (%s)", type(module).__name__, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return module


def _run_shard(network: PretrainedNetwork, split: Split, indices: list[int], device: torch.device, batch_size: int, workers: int, topk: int, show_progress: bool) -> ShardResult:
    loader = make_validation_loader(network.preprocessing, split, indices, device, batch_size, workers)
    # Channels-last memory is faster on CUDA and also on the CPU, where oneDNN's convolutions ran
    # resnet50 and mobilenet_v3_small about 1.5 times as fast in it (2-core AMD EPYC, torch 2.14).
    model = fold_batch_norms(network.module.eval()).to(device).to(memory_format=torch.channels_last)
    k = min(topk, len(network.class_names))
    kept_indices, kept_topk, kept_probs, skipped = [], [], [], []
    normalize = BatchNormalizer(network.preprocessing.mean, network.preprocessing.std, device, channels_last=True, reuse_output=True)

    progress = tqdm(total=len(indices), unit="img", desc="validation pass", disable=not show_progress, dynamic_ncols=True)
    with torch.inference_mode(), progress:
        for images, image_indices, ok, reasons in loader:
            skipped.extend((int(i), r) for i, r, good in zip(image_indices, reasons, ok) if not good)
            if ok.any():
                batch = normalize(images if ok.all() else images[ok])
                with _autocast(device):
                    logits = model(batch)
                probs, predicted = logits.float().softmax(dim=1).topk(k, dim=1)
                kept_indices.append(image_indices[ok].numpy())
                kept_topk.append(predicted.cpu().numpy().astype(np.int32))
                kept_probs.append(probs.cpu().numpy().astype(np.float32))
            progress.update(len(image_indices))
    empty = np.zeros((0, k))
    return ShardResult(
        indices=np.concatenate(kept_indices) if kept_indices else np.zeros(0, dtype=np.int64),
        topk=np.concatenate(kept_topk) if kept_topk else empty.astype(np.int32),
        probs=np.concatenate(kept_probs) if kept_probs else empty.astype(np.float32),
        skipped=skipped,
    )


def run_validation_pass(
    network: PretrainedNetwork,
    split: Split,
    labels: np.ndarray,
    device: torch.device,
    context: DistributedContext,
    batch_size: int,
    workers: int,
    topk: int,
) -> Outcomes | None:
    """Run the network over the images whose label is known; return the outcomes on rank 0, None elsewhere.

    DataLoader workers are capped at the CPUs this process may use, because more only add overhead.
    """
    workers = min(workers, len(os.sched_getaffinity(0)))
    candidates = np.flatnonzero(labels >= 0)
    shard = candidates[context.rank::context.world_size].tolist()
    log.info("validation pass: %s on %s in %s, batch %d, %s", counted(len(candidates), "image"), device,
             counted(context.world_size, "process", "processes"), batch_size, counted(workers, "worker"))
    started = time.perf_counter()
    result = _run_shard(network, split, shard, device, batch_size, workers, topk, show_progress=context.is_main)
    gathered = gather_to_main(result, context)
    if not context.is_main:
        return None

    indices = np.concatenate([r.indices for r in gathered])
    order = np.argsort(indices, kind="stable")
    indices = indices[order]
    if len(np.unique(indices)) != len(indices):
        raise RuntimeError("the validation shards overlap; an image was processed twice")
    skipped = sorted(s for r in gathered for s in r.skipped)
    if len(indices) + len(skipped) != len(candidates):
        raise RuntimeError(f"the validation shards cover {len(indices) + len(skipped)} of {len(candidates)} images")
    seconds = time.perf_counter() - started
    log.info("validation pass done: %s in %.1f s (%.1f images/s), %d unreadable", counted(len(candidates), "image"), seconds,
             len(candidates) / max(seconds, 1e-9), len(skipped))
    for index, reason in skipped:
        log.warning("skipped unreadable image %s (%s)", split.files[index], reason)
    return Outcomes(
        class_names=network.class_names,
        true=labels[indices],
        topk=np.concatenate([r.topk for r in gathered])[order],
        probs=np.concatenate([r.probs for r in gathered])[order],
        paths=np.asarray(split.files, dtype=str)[indices],
        meta={
            "skipped": [{"path": split.files[i], "reason": r} for i, r in skipped],
            "seconds": round(seconds, 2),
            "processes": context.world_size,
        },
    )

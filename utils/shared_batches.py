"""Batches that DataLoader workers write into reusable shared-memory buffers.

With default collation every batch gets a new shared-memory segment: the worker stacks its
samples into it, the main process maps it, and on both sides every 4 KiB page faults on first
touch (37 pages per 224x224 RGB image). Here the main process allocates a ring of batch buffers
once, before the workers start. Each item of `BatchPlan` is one whole batch: its number and its
positions. The worker decodes the samples straight into buffer ``number % slots`` and sends back
only small Python values.

The DataLoader sends the work for batch ``n + workers * prefetch_factor`` when it hands batch ``n``
to the loop, and none further until the loop requests batch ``n + 1``. With
``workers * prefetch_factor + 1`` buffers, no worker therefore writes into the buffer of the batch
that the loop uses, as long as the loop is done with a batch when it requests the next one. Each
buffer records the number of the batch it contains, and `SharedBatchBuffers.batch` raises if that
rule was broken.
"""

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

# Batches each DataLoader worker prepares ahead, the DataLoader's default.
PREFETCH_FACTOR = 2


class BatchPlan(Sampler):
    """Consecutive batches over ``count`` positions, as (batch number, first position, end position)."""

    def __init__(self, count: int, batch_size: int):
        self.count = count
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for number, start in enumerate(range(0, self.count, self.batch_size)):
            yield number, start, min(start + self.batch_size, self.count)


def buffer_slots(workers: int) -> int:
    """Return the number of batch buffers that a loader with ``workers`` worker processes needs."""
    return workers * PREFETCH_FACTOR + 1


class SharedBatchBuffers:
    """A ring of ``slots`` batch buffers of ``batch_size`` samples each, in shared memory."""

    def __init__(self, slots: int, batch_size: int, sample_shape: tuple[int, ...], dtype: torch.dtype = torch.uint8):
        self.slots = slots
        self.samples = torch.empty(slots, batch_size, *sample_shape, dtype=dtype).share_memory_()
        self.numbers = torch.full((slots,), -1, dtype=torch.int64).share_memory_()

    def slot_of(self, number: int) -> torch.Tensor:
        """Return the buffer that batch ``number`` is written into (in a worker)."""
        return self.samples[number % self.slots]

    def mark_written(self, number: int) -> None:
        """Record that the buffer of batch ``number`` now contains that batch (in a worker, after writing)."""
        self.numbers[number % self.slots] = number

    def batch(self, number: int, count: int) -> torch.Tensor:
        """Return the first ``count`` samples of batch ``number`` (in the main process)."""
        written = int(self.numbers[number % self.slots])
        if written != number:
            raise RuntimeError(f"the shared buffer of batch {number} contains batch {written}: a worker overwrote it before the loop was done with it")
        return self.samples[number % self.slots, :count]

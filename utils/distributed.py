"""Process-group plumbing for torchrun, so the same code runs with one process or many."""

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.cli import counted
from utils.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """The rank, world size and local rank of this process in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, context: DistributedContext | None = None) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into a device; under torchrun 'cuda' means this process's GPU."""
    context = context or DistributedContext()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu or --device auto")
        if name == "cuda":
            return torch.device("cuda", context.local_rank % torch.cuda.device_count())
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise UserError(f"device {name!r} is not valid; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK, if any.

    NCCL is used on CUDA devices and gloo on the CPU.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("joined a %s process group of %s", backend, counted(context.world_size, "process", "processes"))
    return context


def shutdown_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all processes; a no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_to_main(obj, context: DistributedContext) -> list | None:
    """Collect one picklable object per process on rank 0 (rank order); other ranks get None."""
    if not context.enabled:
        return [obj]
    gathered = [None] * context.world_size if context.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj, context: DistributedContext):
    """Send a picklable object from rank 0 to every process and return it."""
    if not context.enabled:
        return obj
    box = [obj if context.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum a tensor over all processes (in place) and return it."""
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values

"""Multi-process helpers: the engine runs unchanged under ``torchrun`` (DDP, gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "is_main_process", "barrier", "all_reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE``/``RANK`` in the environment (a plain run) this
    returns rank 0 of 1 and starts nothing. Backend: NCCL when CUDA is used,
    gloo otherwise. Device: ``device`` if given, else ``cuda:LOCAL_RANK`` when
    CUDA is available, else CPU.

    Examples:
        >>> info = init_distributed("cpu")
        >>> info.rank, info.world_size, info.is_main
        (0, 1, True)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and world > 1:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev)


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single-process run)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (returns them unchanged in a single-process run)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

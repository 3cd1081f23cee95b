"""torch.distributed for the training loops: one process per device, launched by ``torchrun``.

Without a process group (``WORLD_SIZE`` unset and none initialised by the caller) every helper here
is a no-op, so the single-process path runs exactly as before. Under ``torchrun`` the group is made
from the environment (``env://``): NCCL when the ranks train on CUDA, gloo otherwise. A caller that
already made a group (tests with ``init_method=file://``, notebooks) keeps it: the loops use it
and leave it standing.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False    # a process group is in use
    owned: bool = False     # this module made it (and destroys it in close())

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder: config, events, checkpoints, samples, releases."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Average scalar metrics over ranks (every rank must pass the same keys in the same order)."""
        if not self.active or not values:
            return values
        # NCCL reduces CUDA tensors only; gloo takes CPU ones
        t = torch.tensor(list(values.values()), dtype=torch.float64,
                         device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(values, t.tolist())}

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over ranks (a new tensor; gradients for the adaptive GAN weight)."""
        if not self.active:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out)
        return out / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (a time budget must stop all ranks at the same step)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around ``module`` (gradients averaged over ranks), or ``module`` itself."""
        if not self.active:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def no_sync(module: nn.Module, skip: bool):
    """DDP's ``no_sync()`` when ``skip`` (micro-batches before the last one of an accumulated step)."""
    if skip and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """The process group (from ``torchrun``'s environment, or the caller's) and this rank's device."""
    adopted = dist.is_available() and dist.is_initialized()
    if not adopted and "WORLD_SIZE" not in os.environ:
        return Dist(), resolve_device(device_name)
    device = resolve_device(device_name)
    if not adopted:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))  # a caller-made group: one machine assumed
    if device.type == "cuda" and device.index is None:  # auto / cuda: one GPU per process on each node
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, dist.get_world_size(), local_rank, True, not adopted), device

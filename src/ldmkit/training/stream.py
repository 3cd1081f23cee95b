"""A resumable stream of training batches with a deterministic order.

Epoch e visits the data set in ``randperm(n, seed + e)`` order, so the position
(epoch, index) is all a checkpoint needs to continue exactly where it stopped. With
``world_size`` ranks, each global batch of ``batch_size x world_size`` consecutive items of that
order is cut in rank order: rank r gets the r-th slice, so the union over ranks is what one process
with the global batch would see, and the position is the same on every rank.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import collate


class BatchStream:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.epoch, self.index = 0, 0
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size * world_size:
            raise ValueError(f"data set has {n} images, fewer than one global batch ({batch_size * world_size})")
        # In-memory data sets hand over whole tensors of every field: no per-item Python work in the hot loop.
        self._tensors = dataset.tensors() if hasattr(dataset, "tensors") else None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=g)  # type: ignore[arg-type]

    def _batches(self, order: torch.Tensor) -> list[list[int]]:
        gb, lo, hi = self.batch_size * self.world_size, self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return [order[i:i + gb][lo:hi].tolist() for i in range(self.index, len(order) - gb + 1, gb)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        gb = self.batch_size * self.world_size
        while True:
            batches = self._batches(self._order())
            if self._tensors is not None:
                it = ({k: v[idx] for k, v in self._tensors.items()} for idx in map(torch.tensor, batches))
            else:  # one loader per epoch keeps its workers alive across batches
                # its own generator: a DataLoader otherwise draws its worker base seed from the global RNG,
                # once per iterator, so a resumed run (a new iterator mid-epoch) would drift from a straight one
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                it = iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                     collate_fn=collate, generator=g))
            for idx, batch in zip(batches, it):
                self.index += gb
                yield batch | {"index": torch.tensor(idx)}  # lets callers look items up in caches
            self.epoch, self.index = self.epoch + 1, 0


def split_batch(batch: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """``n`` equal micro-batches (gradient accumulation), in order; tensors and lists are sliced alike."""
    if n == 1:
        return [batch]
    size = len(batch["index"])
    if size % n:
        raise ValueError(f"a batch of {size} does not split into {n} micro-batches")
    m = size // n
    return [{k: v[i * m:(i + 1) * m] for k, v in batch.items()} for i in range(n)]


def make_stream(dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0, rank: int = 0,
                world_size: int = 1):
    """The training stream of ``dataset``: a ShardStream for tar shards (streamed), else a BatchStream.

    Both have the same surface: iteration (batches with ``index``), ``state_dict`` / ``load_state_dict``.
    """
    if getattr(dataset, "streamed", False):
        from .shard_stream import ShardStream

        return ShardStream(dataset, batch_size, seed, num_workers, rank, world_size)  # type: ignore[arg-type]
    return BatchStream(dataset, batch_size, seed, num_workers, rank, world_size)

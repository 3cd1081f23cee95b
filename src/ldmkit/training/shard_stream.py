"""The training stream of tar shards (``data.name: webdataset``): BatchStream for a data set without an index.

Epoch e takes the shard list in ``randperm(n_shards, seed + e)`` order and rank r reads every world_size-th
shard of it from position r: the ranks' shards are disjoint and together cover the list. Each rank streams
its shards through a buffer of ``data.shuffle_buffer`` samples seeded by (seed, epoch, rank), which also
draws each sample's flip; batches run on across epoch ends (no sample is dropped).

The position is per rank, since ranks read different shards and reach their epoch ends at different
steps: (epoch, samples consumed in it, that epoch's shards). The checkpoint gathers every rank's
(``per_rank``, see checkpoint.py). A resumed stream re-reads its epoch's shards up to the position without
decoding an image (the raw bytes have to pass through the shuffle buffer again) and then yields exactly
the sample an uninterrupted run would have yielded next.
"""
from __future__ import annotations

import itertools
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import torch

from ..data import collate
from ..data.config import DataError
from ..data.webdataset import RawSample, WebDataset, shard_ids

log = logging.getLogger("ldmkit.training")


class ShardStream:
    per_rank = True  # each rank's own position goes into the checkpoint

    def __init__(self, source: WebDataset, batch_size: int, seed: int, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1):
        n = len(source.shards)
        if n < world_size:
            raise DataError(f"data.shards: {n} shard(s) for {world_size} processes; every process reads shards of "
                            "its own, so write at least one per process (ldmkit make-shards --per-shard N)")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.num_workers = num_workers  # threads decoding a batch's images (PIL releases the GIL)
        self.rank, self.world_size = rank, world_size
        self.ids = shard_ids(source.shards)
        self.epoch, self.consumed = 0, 0

    def shard_order(self, epoch: int) -> list[int]:
        """This rank's shards of ``epoch``, as indices into ``source.shards``, in reading order."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.ids), generator=g).tolist()[self.rank::self.world_size]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed,
                "shards": [self.ids[i] for i in self.shard_order(self.epoch)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """This rank's position from a checkpoint: ``{"ranks": [one state per rank]}`` (or one bare state)."""
        ranks = state.get("ranks", [state])
        if len(ranks) != self.world_size:
            # other processes read other shards: no exact continuation exists, start the next fresh epoch
            self.epoch, self.consumed = max(int(r["epoch"]) for r in ranks) + 1, 0
            log.warning("the checkpoint's shard positions are for %d process(es), this run has %d: "
                        "continuing at the start of epoch %d", len(ranks), self.world_size, self.epoch)
            return
        mine = ranks[self.rank]
        epoch = int(mine["epoch"])
        expected = [self.ids[i] for i in self.shard_order(epoch)]
        if list(mine["shards"]) != expected:
            raise DataError(f"data.shards: not the shards of the checkpoint (epoch {epoch}, process {self.rank} "
                            f"read {list(mine['shards'])[:3]}..., the config gives {expected[:3]}...); resume "
                            "with the same shards, or start over with --no-resume")
        self.epoch, self.consumed = epoch, int(mine["consumed"])

    def epoch_samples(self, epoch: int) -> Iterator[tuple[RawSample, bool]]:
        """(raw sample, flip) of this rank's ``epoch``, in shuffled order."""
        rng = random.Random(f"ldmkit-shards/{self.seed}/{epoch}/{self.rank}")
        flip = self.source.flip
        buffer: list[RawSample] = []
        for raw in self.source.raw_samples([self.source.shards[i] for i in self.shard_order(epoch)]):
            if len(buffer) < self.source.shuffle_buffer:
                buffer.append(raw)
                continue
            k = rng.randrange(len(buffer))
            out, buffer[k] = buffer[k], raw
            yield out, flip and rng.random() < 0.5
        rng.shuffle(buffer)
        for raw in buffer:
            yield raw, flip and rng.random() < 0.5

    def _samples(self) -> Iterator[tuple[int, int, RawSample, bool]]:
        """(epoch, samples consumed once this one is, raw, flip) from the current position on."""
        epoch, skip = self.epoch, self.consumed
        while True:
            n = 0
            for raw, flip in self.epoch_samples(epoch):
                n += 1
                if n > skip:  # before the position: read (the buffer needs it), not decoded
                    yield epoch, n, raw, flip
            if n < skip:
                raise DataError(f"data.shards: epoch {epoch} of process {self.rank} holds {n} samples, fewer than "
                                f"the {skip} the checkpoint had consumed: the shards changed since")
            if n == 0:
                raise DataError(f"data.shards: the shards of process {self.rank} hold no samples")
            epoch, skip = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pool = ThreadPoolExecutor(self.num_workers) if self.num_workers else None
        samples = self._samples()

        def decode(s: tuple[int, int, RawSample, bool]) -> dict:
            return self.source.decode(s[2], s[3])

        try:
            while True:
                chunk = list(itertools.islice(samples, self.batch_size))
                items = list(pool.map(decode, chunk)) if pool else [decode(s) for s in chunk]
                self.epoch, self.consumed = chunk[-1][0], chunk[-1][1]  # the position counts what was handed out
                # index: position in the rank's epoch (batches of indexed sets carry their item indices)
                yield collate(items) | {"index": torch.tensor([s[1] - 1 for s in chunk])}
        finally:
            if pool is not None:
                pool.shutdown()

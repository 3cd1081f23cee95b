"""The latent cache: a data set's posterior moments under one autoencoder, in sharded safetensors files.

Layout: ``<first stage's folder>/latent_cache/<data>-train-<key>/shard-NNNNN.safetensors`` (``mean``,
``std`` and, when the data set flips, ``mean_flip`` / ``std_flip`` of the mirrored images) plus
``index.json``, written last, that marks the cache complete. The key hashes the autoencoder's weights,
the data config and the encode precision, so a changed autoencoder or data set never meets a stale
cache. Shards already on disk are kept, so an interrupted ``ldmkit cache-latents`` picks up where it
stopped. Moments (not samples) are stored: training still draws a fresh posterior sample every step.
"""
from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Subset

from ..data import DataConfig, collate
from ..data.config import data_identity
from ..diffusion import noise as noise_lib
from ..weights import atomic_write, file_digest, load_release, save_release
from .config import autocast

INDEX = "index.json"
FLIPPABLE = ("fashion_mnist", "image_folder", "photos")  # data sets that honour data.flip (the others ignore it)


def uses_flips(data: DataConfig) -> bool:
    return data.flip and data.name in FLIPPABLE


def weights_digest(path: Path) -> str:
    """sha256 of a weights file, or of every file of a (diffusers) folder."""
    if path.is_file():
        return file_digest(path)
    return hashlib.sha256("".join(file_digest(f) for f in sorted(path.rglob("*")) if f.is_file()).encode()).hexdigest()


def cache_key(first_stage: Path, data: DataConfig, encode_precision: str) -> str:
    blob = json.dumps([data_identity(data), encode_precision], sort_keys=True).encode()
    return hashlib.sha256(weights_digest(first_stage).encode() + blob).hexdigest()[:16]


def cache_dir(first_stage: Path, data: DataConfig, encode_precision: str) -> Path:
    """Where the cache for this (autoencoder weights, data config, precision) lives."""
    key = cache_key(first_stage, data, encode_precision)
    return Path(first_stage).parent / "latent_cache" / f"{data.name}-train-{key}"


@dataclass
class LatentCache:
    """Moments (N, c, h, w) on the CPU; ``mean_flip`` / ``std_flip`` are those of the mirrored images."""

    mean: torch.Tensor
    std: torch.Tensor
    mean_flip: torch.Tensor | None = None
    std_flip: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def flips(self) -> bool:
        return self.mean_flip is not None

    @classmethod
    def load(cls, path: Path, max_bytes: int = 2 << 30) -> LatentCache | ShardedLatentCache | None:
        """The cache at ``path``, or None when it is absent or incomplete (no index yet).

        Up to ``max_bytes`` of shards are read into memory; a larger cache (ImageNet at kl-f8 is tens of
        GB, per process) is read row by row from the memory-mapped shards instead.
        """
        path = Path(path)
        if not (path / INDEX).is_file():
            return None
        index = json.loads((path / INDEX).read_text())
        if sum((path / name).stat().st_size for name in index["shards"]) > max_bytes:
            return ShardedLatentCache(path, index)
        parts = [load_release(path / name)[0] for name in index["shards"]]
        cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        cache = cls(cat["mean"], cat["std"], cat.get("mean_flip"), cat.get("std_flip"))
        if len(cache) != index["n"]:
            raise ValueError(f"{path}: the shards hold {len(cache)} items, the index says {index['n']}")
        return cache

    def moments(self, index: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of items ``index`` (B,), the mirrored ones where ``flip`` (B,) bool is set."""
        mean, std = self.mean[index], self.std[index]
        if flip is not None and self.flips:
            sel = flip.view(-1, 1, 1, 1)
            mean = torch.where(sel, self.mean_flip[index], mean)
            std = torch.where(sel, self.std_flip[index], std)
        return mean, std


class ShardRows:
    """Rows of one tensor split over safetensors shards, read one at a time from the memory-mapped files."""

    def __init__(self, path: Path, names: list[str], key: str):
        self.files = [safe_open(str(Path(path) / name), framework="pt") for name in names]
        counts = [f.get_slice(key).get_shape()[0] for f in self.files]
        self.starts = [sum(counts[:k]) for k in range(len(counts))]
        self.n = sum(counts)

    def row(self, key: str, i: int) -> torch.Tensor:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.files[k].get_slice(key)[i - self.starts[k]]


class ShardedLatentCache:
    """The same lookups as :class:`LatentCache`, reading only the rows a batch needs from the shards."""

    def __init__(self, path: Path, index: dict):
        self.rows = ShardRows(path, index["shards"], "mean")
        self.n = self.rows.n
        if self.n != index["n"]:
            raise ValueError(f"{path}: the shards hold {self.n} items, the index says {index['n']}")
        self.flips = "mean_flip" in self.rows.files[0].keys()

    def __len__(self) -> int:
        return self.n

    def moments(self, index: torch.Tensor, flip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        flips = flip.tolist() if flip is not None and self.flips else [False] * len(index)
        keys = [("mean_flip", "std_flip") if f else ("mean", "std") for f in flips]
        rows = [(self.rows.row(m, i), self.rows.row(s, i)) for i, (m, s) in zip(index.tolist(), keys)]  # (c, h, w)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def _image_batches(dataset: Dataset, start: int, stop: int, batch_size: int, num_workers: int):
    """Images of items start..stop-1 in order: sliced from memory, or decoded by a DataLoader."""
    if hasattr(dataset, "images_tensor"):
        images = dataset.images_tensor()
        for i in range(start, stop, batch_size):
            yield images[i:min(stop, i + batch_size)]
        return
    loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate)
    for batch in loader:
        yield batch["image"]


@torch.no_grad()
def encode_dataset(autoencoder, dataset: Dataset, path: Path, *, flips: bool, precision: str,
                   device: torch.device, batch_size: int = 64, shard_size: int = 4096, num_workers: int = 0,
                   metadata: dict | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Encode every item of ``dataset`` (built without random flips) into the sharded cache at ``path``.

    With ``flips`` the mirrored images are encoded too: training then picks the original or the mirror
    per sample, which is what a randomly flipping data set would have fed the encoder.
    """
    path = Path(path)
    n = len(dataset)  # type: ignore[arg-type]
    names = []
    for k, start in enumerate(range(0, n, shard_size)):
        stop = min(n, start + shard_size)
        name = f"shard-{k:05d}.safetensors"
        names.append(name)
        if (path / name).is_file():
            continue  # an interrupted run's finished shard (same key: same weights, data and precision)
        parts: dict[str, list[torch.Tensor]] = {"mean": [], "std": [], "mean_flip": [], "std_flip": []}
        for images in _image_batches(dataset, start, stop, batch_size, num_workers):
            views = [("", images)] + ([("_flip", images.flip(-1))] if flips else [])
            for suffix, x in views:
                with autocast(device, precision):
                    mean, std = autoencoder.encode_moments(x.to(device))  # (b, c, h, w) each
                parts["mean" + suffix].append(mean.float().cpu())
                parts["std" + suffix].append(std.float().cpu())
        save_release(path / name, {k: torch.cat(v) for k, v in parts.items() if v},
                     {"kind": "latent_cache_shard", "start": start, "count": stop - start})
        if log:
            log(f"latent cache: {stop}/{n} items encoded")
    index = {"n": n, "shards": names, "flips": flips, "encode_precision": precision, **(metadata or {})}
    atomic_write(path / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return path


class LatentSource:
    """Batches of scaled latents: looked up in a latent cache, or encoded on the fly.

    With a cache that holds mirrored moments, each sample's generator picks the original or the
    mirror (probability 1/2) and the batch's ``image`` is mirrored alike, so conditions made from the
    image (inpainting, super-resolution) match the latent.
    """

    def __init__(self, autoencoder, scale_factor: float, device: torch.device,
                 cache: LatentCache | ShardedLatentCache | None = None):
        self.autoencoder, self.scale_factor, self.device, self.cache = autoencoder, scale_factor, device, cache

    def latents(self, batch: dict, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        """(scaled posterior samples (B, c, h, w), the batch, mirrored where its latents are)."""
        if self.cache is not None:
            flip = None
            if self.cache.flips:
                flip = torch.stack([torch.rand((), generator=g) < 0.5 for g in generators])  # (B,) bool
                if "image" in batch:
                    image = batch["image"]
                    mirrored = torch.where(flip.view(-1, 1, 1, 1).to(image.device), image.flip(-1), image)
                    batch = batch | {"image": mirrored}
            mean, std = (m.to(self.device) for m in self.cache.moments(batch["index"], flip))
        else:
            with torch.no_grad():
                mean, std = self.autoencoder.encode_moments(batch["image"].to(self.device))
        # posterior.sample(), as the original encodes training data; each sample from its own generator
        z = mean + std * noise_lib.randn(mean.shape, generators, device=mean.device, dtype=mean.dtype)
        return z * self.scale_factor, batch


def canonical(data: DataConfig) -> DataConfig:
    """The data config the cache is encoded from: no random flips (mirrors are encoded separately)."""
    return replace(data, flip=False)

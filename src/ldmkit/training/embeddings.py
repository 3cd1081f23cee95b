"""The text-embedding cache: a frozen text encoder's outputs for every caption of a data set, on disk.

A ``text_frozen`` conditioner (nn/text.py) turns a caption into the encoder's last hidden state
(max_length, hidden): a deterministic function of the caption, so ``ldmkit cache-latents --embeddings``
computes it once per caption and train-ldm reads it instead of running the encoder. Layout, beside the
latent cache: ``<first stage's folder>/embedding_cache/<data>-train-<key>/shard-NNNNN.safetensors``
(``embeddings`` (n, max_length, hidden) float32, rows in the order of the index's captions) and
``index.json`` (the sorted unique captions, "" among them for condition dropout; written last, so it marks
the cache complete; shards already written are kept, so an interrupted build picks up where it stopped).

The key hashes the encoder folder's files (weights and tokenizer, with the latent cache's
``weights_digest``), the tokenizer's vocabulary, ``max_length`` and the data config: a changed encoder,
tokenizer, length or caption set looks for another folder, and the index repeats the key, so a folder
copied under another key is refused. Class conditioning has nothing to cache: its embedding table trains
with the UNet, and a lookup in it costs nothing.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..config import ConfigError
from ..data import DataConfig
from ..data.config import data_identity
from ..weights import atomic_write, load_release, save_release
from .latents import INDEX, ShardRows, canonical, weights_digest

FORMAT = 1  # bump when the stored rows change meaning


def embedding_key(conditioner, data: DataConfig) -> str:
    """Encoder files + tokenizer vocabulary + max_length + data config -> a 16-hex-digit key."""
    vocab = json.dumps(sorted(conditioner.tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    blob = json.dumps([data_identity(canonical(data)), conditioner.max_length,
                       hashlib.sha256(vocab).hexdigest(), FORMAT], sort_keys=True).encode()
    return hashlib.sha256(weights_digest(Path(conditioner.encoder_path)).encode() + blob).hexdigest()[:16]


def embedding_cache_dir(first_stage: Path, data: DataConfig, key: str) -> Path:
    return Path(first_stage).parent / "embedding_cache" / f"{data.name}-train-{key}"


def dataset_captions(dataset) -> Iterable[str]:
    """Every caption of a data set, without decoding images where the data set allows it."""
    captions = getattr(dataset, "captions", None)
    if callable(captions):  # tar shards: reads the text parts only
        return captions()
    if captions is not None:  # image_folder (None where an image has no caption), emoji
        return (c or "" for c in captions)
    first = dataset[0]
    if "caption" not in first:
        raise ConfigError(f"data.name: {type(dataset).__name__} items have no caption to embed")
    return (dataset[i]["caption"] for i in range(len(dataset)))


@torch.no_grad()
def build_embedding_cache(conditioner, captions: Iterable[str], path: Path, key: str, batch_size: int = 256,
                          shard_size: int = 4096, metadata: dict | None = None,
                          log: Callable[[str], None] | None = None) -> Path:
    """Encode every distinct caption (and "") with the conditioner's frozen encoder into the cache at ``path``."""
    path = Path(path)
    unique = sorted(set(captions) | {""})
    names = []
    for k, start in enumerate(range(0, len(unique), shard_size)):
        stop = min(len(unique), start + shard_size)
        name = f"shard-{k:05d}.safetensors"
        names.append(name)
        if (path / name).is_file():
            continue  # an interrupted build's finished shard (same key: same encoder and captions)
        rows = [conditioner.encode(unique[i:min(stop, i + batch_size)]) for i in range(start, stop, batch_size)]
        save_release(path / name, {"embeddings": torch.cat(rows)},  # (n, max_length, hidden) float32
                     {"kind": "embedding_cache_shard", "start": start, "count": stop - start})
        if log:
            log(f"embedding cache: {stop}/{len(unique)} captions encoded")
    index = {"key": key, "n": len(unique), "shards": names, "captions": unique,
             "encoder": conditioner.encoder_path, "max_length": conditioner.max_length, **(metadata or {})}
    atomic_write(path / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, ensure_ascii=False)))
    return path


class EmbeddingStore:
    """The cache, for ``FrozenTextConditioner.store``: ``lookup(captions)`` -> {caption: (max_length, hidden)}.

    Up to ``max_bytes`` of shards are read into memory; a larger cache is read row by row from the
    memory-mapped shards.
    """

    def __init__(self, path: Path, index: dict, max_bytes: int = 2 << 30):
        self.path = Path(path)
        self.row_of = {c: i for i, c in enumerate(index["captions"])}
        self.table: Tensor | None = None
        self.rows: ShardRows | None = None
        if sum((self.path / name).stat().st_size for name in index["shards"]) > max_bytes:
            self.rows = ShardRows(self.path, index["shards"], "embeddings")
            n = self.rows.n
        else:
            self.table = torch.cat([load_release(self.path / name)[0]["embeddings"] for name in index["shards"]])
            n = len(self.table)
        if n != len(self.row_of) or n != index["n"]:
            raise ValueError(f"{self.path}: the shards hold {n} rows for {len(self.row_of)} captions")

    @classmethod
    def open(cls, path: Path, key: str, max_bytes: int = 2 << 30) -> EmbeddingStore | None:
        """The complete cache at ``path`` built under ``key``; None when absent or unfinished."""
        path = Path(path)
        if not (path / INDEX).is_file():
            return None
        index = json.loads((path / INDEX).read_text())
        if index.get("key") != key:
            raise ConfigError(f"{path}: an embedding cache of another encoder, tokenizer, max_length or data "
                              f"(key {index.get('key')}, this run's is {key}); delete it and run "
                              "`ldmkit cache-latents PRESET --embeddings`")
        return cls(path, index, max_bytes)

    def __len__(self) -> int:
        return len(self.row_of)

    def __deepcopy__(self, memo: dict) -> EmbeddingStore:
        return self  # read-only: an EMA copy of the conditioner shares it

    def lookup(self, captions: Iterable[str]) -> dict[str, Tensor]:
        hits = {c: self.row_of[c] for c in captions if c in self.row_of}
        if self.table is not None:
            return {c: self.table[i] for c, i in hits.items()}
        return {c: self.rows.row("embeddings", i) for c, i in hits.items()}  # type: ignore[union-attr]

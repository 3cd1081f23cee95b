"""The latent diffusion run's first stage and its caches: pixel space, where the frozen autoencoder comes from,
the latent cache (``ldmkit cache-latents``) and the frozen text encoder's embedding cache."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..autoencoder import AutoencoderConfig, IdentityFirstStage
from ..config import ConfigError, to_dict
from ..convert.loader import load_autoencoder_any, load_pipeline_any
from ..data import DataConfig, build_dataset
from ..data.config import STREAMED
from ..device import resolve_device
from ..nn import build_conditioner
from .embeddings import EmbeddingStore, build_embedding_cache, dataset_captions, embedding_cache_dir, embedding_key
from .latents import LatentCache, ShardedLatentCache, cache_dir, canonical, encode_dataset, uses_flips

if TYPE_CHECKING:
    from .ldm_loop import LDMRunConfig


IDENTITY = "identity"  # first_stage value for pixel-space diffusion (the original's IdentityFirstStage)


def pixel_space(cfg: LDMRunConfig) -> bool:
    return cfg.first_stage == IDENTITY


def identity_first_stage(data: DataConfig) -> tuple[IdentityFirstStage, AutoencoderConfig, float]:
    """The pixel-space first stage for ``data``: latent = image, scale_factor 1."""
    ae_cfg = AutoencoderConfig(kind="identity", in_channels=data.channels, resolution=data.image_size)
    return IdentityFirstStage(ae_cfg), ae_cfg, 1.0


def _first_stage_path(cfg: LDMRunConfig) -> Path:
    """Where the frozen first stage comes from: ``first_stage``, else the pipeline to fine-tune."""
    path = Path(cfg.first_stage or cfg.init_from)
    if not path.exists():
        key = "first_stage" if cfg.first_stage else "init_from"
        raise ConfigError(f"{key}: {path} not found (train one with `ldmkit train-autoencoder`)")
    return path


def open_latent_cache(cfg: LDMRunConfig) -> tuple[Path | None, LatentCache | ShardedLatentCache | None]:
    """(where this run's latent cache lives, the cache if it is complete); (None, None) when caching is off,
    in pixel space (the "latents" are the images) or when the data is streamed from tar shards (no index to
    look latents up by: they are encoded per batch)."""
    if not cfg.train.cache_latents or pixel_space(cfg) or cfg.data.name in STREAMED or cfg.train.prior_data:
        return None, None  # (with prior images the data set is two folders: encoded per batch)
    path = cache_dir(_first_stage_path(cfg), cfg.data, cfg.train.encode_precision)
    return path, LatentCache.load(path)


def _first_stage_of(cfg: LDMRunConfig):
    """The frozen autoencoder (from ``first_stage``, else the pipeline being fine-tuned)."""
    if cfg.first_stage:
        return load_autoencoder_any(_first_stage_path(cfg))[0]
    return load_pipeline_any(cfg.init_from).autoencoder


def cache_latents(cfg: LDMRunConfig, batch_size: int = 64, shard_size: int = 4096, log=print,
                  embeddings: bool = False) -> Path | None:
    """``ldmkit cache-latents``: encode the training set (and its mirror images when it flips) once; with
    ``embeddings`` also the frozen text encoder's output for every caption. Returns the latent cache's folder
    (None for tar shards, which are streamed: only their embeddings are cached)."""
    if pixel_space(cfg):
        raise ConfigError("first_stage: identity (pixel space) has no latents to cache; train-ldm reads the images")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if embeddings:
        cache_embeddings(cfg, log=log)
    if cfg.data.name in STREAMED:
        if not embeddings:
            raise ConfigError(f"data.name: {cfg.data.name} is streamed from tar shards, which have no index to keep "
                              "latents by (train-ldm encodes them per batch); --embeddings caches text embeddings")
        log(f"latent cache: none for streamed {cfg.data.name} data (latents are encoded during training)")
        return None
    path = cache_dir(_first_stage_path(cfg), cfg.data, cfg.train.encode_precision)
    if LatentCache.load(path) is not None:
        log(f"latent cache up to date: {path}")
        return path
    device = resolve_device(cfg.train.device)
    ae = _first_stage_of(cfg).to(device).eval()
    dataset = build_dataset(canonical(cfg.data), "train")
    encode_dataset(ae, dataset, path, flips=uses_flips(cfg.data), precision=cfg.train.encode_precision,
                   device=device, batch_size=batch_size, shard_size=shard_size, num_workers=cfg.train.num_workers,
                   metadata={"first_stage": str(cfg.first_stage or cfg.init_from), "data": to_dict(cfg.data)}, log=log)
    log(f"latent cache: {path}")
    return path


def _require_text_frozen(cfg: LDMRunConfig) -> None:
    if cfg.conditioner.kind != "text_frozen":
        raise ConfigError(f"conditioner.kind: --embeddings caches text_frozen encoders' outputs, this preset's is "
                          f"{cfg.conditioner.kind} (the other conditioners train with the UNet)")


def cache_embeddings(cfg: LDMRunConfig, batch_size: int = 256, shard_size: int = 4096, log=print) -> Path:
    """``ldmkit cache-latents --embeddings``: the frozen text encoder's output for every caption, once."""
    _require_text_frozen(cfg)
    conditioner = build_conditioner(cfg.conditioner)
    key = embedding_key(conditioner, cfg.data)
    path = embedding_cache_dir(_first_stage_path(cfg), cfg.data, key)
    if EmbeddingStore.open(path, key) is not None:
        log(f"embedding cache up to date: {path}")
        return path
    conditioner.to(resolve_device(cfg.train.device))
    dataset = build_dataset(canonical(cfg.data), "train")
    build_embedding_cache(conditioner, dataset_captions(dataset), path, key, batch_size, shard_size,
                          metadata={"data": to_dict(cfg.data)}, log=log)
    log(f"embedding cache: {path}")
    return path


def open_embedding_cache(cfg: LDMRunConfig, conditioner) -> EmbeddingStore | None:
    """The embedding cache of this run's encoder, max_length and data when it was built; else None."""
    if cfg.conditioner.kind != "text_frozen":
        return None
    key = embedding_key(conditioner, cfg.data)
    return EmbeddingStore.open(embedding_cache_dir(_first_stage_path(cfg), cfg.data, key), key)

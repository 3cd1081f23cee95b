"""Reference statistics of real images, computed once per (data, extractor) and cached on disk.

FID-type metrics compare samples against the real split's feature mean and covariance; recomputing those for
every evaluation wastes minutes, and reusing them across a *different* extractor, weights file, resolution or
resize method silently changes the metric. So the cache key holds all of these, the file stores the key in its
metadata (checked on load), and the key and the file's sha256 are returned for the report.

Files: ``<cache>/reference/<data>-<split>-<extractor>-r<res>-<key>.safetensors`` with ``mu`` (D,) and ``sigma``
(D, D) in float64 and ``features`` (N, D) (float32 when that is exact, else float64), written atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, require
from ..weights import file_digest, load_release, save_release
from .features import FeatureExtractor, describe, extract
from .metrics import feature_statistics

FORMAT_VERSION = 1  # bump when what is stored (or how it is computed) changes: old files then miss


def default_cache_dir() -> Path:
    from .classifier import cache_dir

    return cache_dir().parent / "reference"  # next to the classifiers: $LDMKIT_CACHE or ~/.cache/ldmkit


def _dataset_identity(dataset) -> tuple[str, dict]:
    """(short name, the fields that decide which images the data set yields)."""
    from ..data import DataConfig
    from ..data.config import data_identity

    if isinstance(dataset, DataConfig):
        fields = data_identity(dataset)
        for k in ("flip", "download"):  # augmentation is off for reference images; downloading changes nothing
            fields.pop(k)
        if fields.get("root"):
            fields["root"] = str(Path(fields["root"]).expanduser().resolve())
        return dataset.name, fields
    require(isinstance(dataset, str) and bool(dataset), "dataset", f"expected a DataConfig or a name, got {dataset!r}")
    return dataset, {"name": dataset}


def _default_images(dataset, split: str) -> Iterable:
    from ..data import DataConfig, build_dataset

    if not isinstance(dataset, DataConfig):
        raise ConfigError(f"images_fn: required when the data set is given by name ({dataset!r})")
    ds = build_dataset(dataclasses.replace(dataset, flip=False), split)
    if hasattr(ds, "images_tensor"):
        return ds.images_tensor()
    return (ds[i] for i in range(len(ds)))


def reference_key(dataset, split: str, extractor: FeatureExtractor, resolution: int | None = None,
                  num_images: int | None = None) -> tuple[str, dict]:
    """(16-hex key, the fields it hashes): data set, split, extractor name + weights hash, its input resolution
    and resize method, the data resolution and the number of images."""
    from ..data import DataConfig

    name, fields = _dataset_identity(dataset)
    if resolution is None and isinstance(dataset, DataConfig):
        resolution = dataset.image_size
    require(resolution is not None, "resolution", "required when the data set is given by name")
    ext = describe(extractor)
    key_fields = {"version": FORMAT_VERSION, "dataset": fields, "split": split, "resolution": int(resolution),
                  "num_images": num_images, "extractor": ext["extractor"], "weights_sha256": ext["weights_sha256"],
                  "extractor_resolution": ext["resolution"], "resize": ext["resize"]}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return key, key_fields


def _load(path: Path, key_fields: dict) -> dict | None:
    """The cached entry, or None when absent, unreadable or holding another key's statistics."""
    if not path.is_file():
        return None
    try:
        tensors, meta = load_release(path)
    except Exception:  # a truncated or foreign file is recomputed, not trusted
        return None
    meta = meta.get("reference_statistics")
    if not isinstance(meta, dict) or meta.get("key_fields") != key_fields:
        return None
    if not {"mu", "sigma", "features"} <= set(tensors):
        return None
    return {"mu": tensors["mu"].double().numpy(), "sigma": tensors["sigma"].double().numpy(),
            "features": tensors["features"].double().numpy(), "n": int(meta["n"])}


def reference_statistics(dataset, split: str, extractor: FeatureExtractor,
                         images_fn: Callable[[], Iterable] | None = None, *, resolution: int | None = None,
                         num_images: int | None = None, cache_dir: str | Path | None = None, batch_size: int = 50,
                         log: Callable[[str], None] = print) -> dict:
    """Feature mean / covariance (float64) of the real images of ``dataset`` / ``split`` under ``extractor``.

    ``dataset`` is a :class:`~ldmkit.data.DataConfig` (images default to that split, flips off; ``resolution``
    defaults to its image_size) or a name (then ``images_fn`` and ``resolution`` are required). ``images_fn()``
    returns anything :func:`~.features.extract` reads; only the first ``num_images`` are used when given.

    Returns ``mu`` (D,), ``sigma`` (D, D), ``features`` (N, D) float64, ``n``, ``key`` and ``key_fields`` (what
    the key hashes), ``path`` and ``sha256`` of the cache file, and ``cached`` (True on a cache hit).
    """
    require(num_images is None or num_images >= 2, "num_images", f"must be >= 2 (a covariance), got {num_images}")
    key, key_fields = reference_key(dataset, split, extractor, resolution, num_images)
    name = _dataset_identity(dataset)[0]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / f"{name}-{split}-{extractor.name}-r{key_fields['resolution']}-{key}.safetensors"
    entry = _load(path, key_fields)
    cached = entry is not None
    if entry is None:
        images = images_fn() if images_fn is not None else _default_images(dataset, split)
        log(f"reference statistics for {name}/{split} with {extractor.name}: computing (cached at {path})")
        feats = extract(extractor, images, batch_size=batch_size, limit=num_images)
        mu, sigma = feature_statistics(feats)
        f32 = feats.astype(np.float32)
        # network features are float32 to begin with: storing them so halves the file and loses nothing
        stored = f32 if np.array_equal(f32.astype(np.float64), feats) else feats
        save_release(path, {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma),
                            "features": torch.from_numpy(np.ascontiguousarray(stored))},
                     # one metadata entry: safetensors writes several in hash-map order, and a file whose bytes
                     # vary between identical runs would make the recorded sha256 useless for comparisons
                     {"reference_statistics": {"key": key, "key_fields": key_fields, "n": len(feats)}})
        entry = {"mu": mu, "sigma": sigma, "features": feats, "n": len(feats)}
    return entry | {"key": key, "key_fields": key_fields, "path": str(path), "sha256": file_digest(path),
                    "cached": cached}

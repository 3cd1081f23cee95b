"""One interface for the networks whose features feed FID / KID / precision-recall / Inception Score.

A distribution metric is only meaningful together with the exact network that produced the features, so every
extractor carries what a report must record: ``name``, ``weights_sha256``, input ``resolution`` and ``resize``
method. Two extractors exist:

- ``inception-v3-fid``: the TF-ported Inception-v3 (:mod:`.inception`), 2048-d pool3 features, 1008 logits.
  Only its numbers, with the official weights, may be called FID / IS.
- ``fmnist-classifier``: the in-project Fashion-MNIST CNN (:mod:`.classifier`), 256-d features, 10 logits;
  report its distance as ``FD-fmnist``, never "FID".
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..config import ConfigError, require
from .classifier import FashionClassifier
from .inception import InceptionV3

INCEPTION = "inception-v3-fid"
FMNIST = "fmnist-classifier"
ALIASES = {"inception": INCEPTION, INCEPTION: INCEPTION, "fmnist": FMNIST, FMNIST: FMNIST}


@runtime_checkable
class FeatureExtractor(Protocol):
    """``features(images)``: images (B, C, H, W) in [-1, 1] -> (B, D) tensor or array.

    An extractor may also have ``logits(images) -> (B, K)`` (Inception Score, class accuracy); it is optional, so
    it is not part of the protocol: :func:`extract` checks for it.
    """

    name: str
    weights_sha256: str
    resolution: int  # the side the network resizes its inputs to
    resize: str  # the interpolation it resizes with

    def features(self, images: torch.Tensor) -> torch.Tensor | np.ndarray: ...


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in name order: identifies weights held in memory."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes of any dtype, bf16 included
    return h.hexdigest()


def describe(extractor: FeatureExtractor) -> dict:
    """What a report records about the extractor."""
    return {"extractor": extractor.name, "weights_sha256": extractor.weights_sha256,
            "resolution": extractor.resolution, "resize": extractor.resize}


class InceptionExtractor:
    """:class:`InceptionV3` as a :class:`FeatureExtractor`: 2048-d pool3 features, 1008 logits (IS convention)."""

    name = INCEPTION

    def __init__(self, model: InceptionV3, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # a model built without from_file has no file: its in-memory weights identify it
        self.weights_sha256 = model.weights_sha256 or state_dict_sha256(model.state_dict())
        self.resolution = model.resolution
        self.resize = model.resize

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device))  # (B, 2048)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images.to(self.device))  # (B, 1008)


class FashionExtractor:
    """:class:`FashionClassifier` as a :class:`FeatureExtractor`: 256-d penultimate features, 10 logits."""

    name = FMNIST
    resolution = 32  # FashionClassifier resizes to 32x32, bilinear, align_corners=False
    resize = "bilinear"

    def __init__(self, model: FashionClassifier, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.weights_sha256 = state_dict_sha256(model.state_dict())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images.to(self.device))  # (B, 256)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.device))  # (B, 10)


def _load_fashion(weights: str) -> FashionClassifier:
    from ..convert.safe_load import load_state_dict_file

    p = Path(weights).expanduser()
    if not p.is_file():
        raise ConfigError(f"fmnist classifier weights {weights}: file not found (omit it to use the cached classifier)")
    try:
        sd = load_state_dict_file(p)
    except ValueError as e:
        raise ConfigError(f"fmnist classifier weights {weights}: {e}") from None
    model = FashionClassifier()
    missing, unexpected = sorted(set(model.state_dict()) - set(sd)), sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ConfigError(f"fmnist classifier weights {weights}: not a FashionClassifier state dict: missing keys "
                          f"{', '.join(missing[:5]) or 'none'}; unexpected keys {', '.join(unexpected[:5]) or 'none'}")
    model.load_state_dict(sd)
    return model.eval()


def build_extractor(name: str, weights: str | Path | None = None, device: torch.device | str = "cpu",
                    resize: str = "bilinear") -> FeatureExtractor:
    """``inception`` / ``inception-v3-fid`` (needs ``weights``: pytorch-fid's .pth) or ``fmnist`` /
    ``fmnist-classifier`` (``weights`` optional: the cached in-project classifier, trained once if absent).

    ``resize`` applies to Inception only; the classifier always resizes bilinearly to 32x32.
    """
    from ..device import resolve_device

    require(name in ALIASES, "extractor", f"expected one of {', '.join(ALIASES)}, got {name!r}")
    dev = resolve_device(device) if isinstance(device, str) else device
    if ALIASES[name] == INCEPTION:
        require(weights is not None, "inception weights",
                "required for the Inception extractor (pass pt_inception-2015-12-05-6726825d.pth)")
        return InceptionExtractor(InceptionV3.from_file(weights, resize=resize), dev)
    if weights is not None:
        return FashionExtractor(_load_fashion(str(weights)), dev)
    from .classifier import load_or_train_fashion_classifier

    model, _ = load_or_train_fashion_classifier()
    return FashionExtractor(model, dev)


def iter_batches(images: torch.Tensor | np.ndarray | Iterable, batch_size: int) -> Iterator[torch.Tensor]:
    """Re-chunk images into (<= batch_size, C, H, W) tensors.

    ``images`` is one (N, C, H, W) array / tensor, or an iterable of batches (B, C, H, W), single images
    (C, H, W) or data-set items (dicts with ``image``), in any mix.
    """
    require(batch_size >= 1, "batch_size", f"must be >= 1, got {batch_size}")
    if isinstance(images, (torch.Tensor, np.ndarray)):
        images = [images]
    buf: list[torch.Tensor] = []
    held = 0
    for item in images:
        if isinstance(item, dict):
            item = item["image"]
        item = torch.as_tensor(item)
        if item.dim() == 3:
            item = item[None]
        if item.dim() != 4:
            raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got shape {tuple(item.shape)}")
        if not item.is_floating_point():  # uint8 pixels would be read as values far outside [-1, 1]
            raise ValueError(f"expected float images in [-1, 1], got {item.dtype}")
        buf.append(item)
        held += item.shape[0]
        while held >= batch_size:
            allx = torch.cat(buf) if len(buf) > 1 else buf[0]
            yield allx[:batch_size]
            buf, held = [allx[batch_size:]], held - batch_size
    if held:
        yield torch.cat(buf) if len(buf) > 1 else buf[0]


@torch.no_grad()
def extract(extractor: FeatureExtractor, images: torch.Tensor | np.ndarray | Iterable, batch_size: int = 50,
            what: str = "features", limit: int | None = None) -> np.ndarray:
    """Run ``extractor.features`` (or ``.logits`` with ``what="logits"``) over ``images`` in batches of
    ``batch_size``, without gradients; at most ``limit`` images. Returns float64 numpy (N, D)."""
    require(what in ("features", "logits"), "what", f"expected features or logits, got {what!r}")
    require(limit is None or limit >= 1, "limit", f"must be >= 1, got {limit}")
    fn = getattr(extractor, what, None)
    require(callable(fn), "what", f"extractor {extractor.name} has no {what}")
    out: list[np.ndarray] = []
    seen = 0
    for batch in iter_batches(images, batch_size):
        if limit is not None:
            batch = batch[:limit - seen]
        f = fn(batch)  # (B, D)
        f = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
        out.append(f.reshape(f.shape[0], -1))
        seen += f.shape[0]
        if limit is not None and seen >= limit:
            break  # before pulling another batch: a sampling generator would generate it for nothing
    if not out:
        raise ValueError(f"extract: no images given to {extractor.name}")
    return np.concatenate(out).astype(np.float64, copy=False)

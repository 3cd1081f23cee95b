"""Data sets for ldmkit: Fashion-MNIST, a folder of images, tar shards, procedural shapes, emoji, photo crops.

Every item is a dict with ``image`` (float32 (C, H, W) in [-1, 1]) plus whatever
conditioning the source has (``label``, ``caption``, ``boxes``, ``segmentation``).
Wrappers add task inputs: MaskedDataset (``mask``, ``masked_image``) for inpainting,
LowResDataset (``low_res``) for super-resolution.
"""
from __future__ import annotations

from typing import Literal

from torch.utils.data import Dataset

from ldmkit.config import ConfigError

from .collate import collate
from .config import DataConfig, DataError, DataNotFoundError
from .degradation import LowResDataset, bicubic_downsample, bsr_degrade
from .emoji import Emoji
from .fashion_mnist import FashionMNIST
from .image_folder import ImageFolder
from .masks import MaskedDataset, generate_mask
from .photos import Photos
from .shapes import PALETTE, SHAPES, ShapeObject, Shapes, describe
from .webdataset import WebDataset


def build_dataset(cfg: DataConfig, split: Literal["train", "test"]) -> Dataset:
    """The data set named by ``cfg.name``, for ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
    if cfg.name == "fashion_mnist":
        return FashionMNIST(cfg, split)
    if cfg.name == "image_folder":
        return ImageFolder(cfg, split)
    if cfg.name == "emoji":
        return Emoji(cfg, split)
    if cfg.name == "photos":
        return Photos(cfg, split)
    if cfg.name == "webdataset":
        return WebDataset(cfg, split)
    return Shapes(cfg, split)


def first_items(dataset: Dataset, n: int) -> list[dict]:
    """The first ``n`` items (fewer when the data set is smaller): indexed, or the start of a stream."""
    if hasattr(dataset, "head"):
        return dataset.head(n)
    return [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]


__all__ = [
    "DataConfig", "DataError", "DataNotFoundError", "build_dataset", "collate", "first_items",
    "FashionMNIST", "ImageFolder", "WebDataset", "Shapes", "ShapeObject", "PALETTE", "SHAPES", "describe",
    "Emoji", "Photos", "MaskedDataset", "generate_mask", "LowResDataset", "bicubic_downsample", "bsr_degrade",
]

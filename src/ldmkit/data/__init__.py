"""Data sets for ldmkit: Fashion-MNIST, a folder of images, procedural shapes.

Every item is a dict with ``image`` (float32 (C, H, W) in [-1, 1]) plus whatever
conditioning the source has (``label``, ``caption``, ``boxes``, ``segmentation``).
"""
from __future__ import annotations

from typing import Literal

from torch.utils.data import Dataset

from ldmkit.config import ConfigError

from .collate import collate
from .config import DataConfig, DataError, DataNotFoundError
from .fashion_mnist import FashionMNIST
from .image_folder import ImageFolder
from .shapes import PALETTE, SHAPES, ShapeObject, Shapes, describe


def build_dataset(cfg: DataConfig, split: Literal["train", "test"]) -> Dataset:
    """The data set named by ``cfg.name``, for ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
    if cfg.name == "fashion_mnist":
        return FashionMNIST(cfg, split)
    if cfg.name == "image_folder":
        return ImageFolder(cfg, split)
    return Shapes(cfg, split)


__all__ = [
    "DataConfig", "DataError", "DataNotFoundError", "build_dataset", "collate",
    "FashionMNIST", "ImageFolder", "Shapes", "ShapeObject", "PALETTE", "SHAPES", "describe",
]

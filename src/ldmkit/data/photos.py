"""Random patches of the photographs bundled with scikit-image: a tiny natural-image set.

Sixteen photos are far too few for generative training, but multi-scale crops of them are a
useful offline check that an autoencoder reconstructs natural texture (the domain of the
paper's first stages), where shapes and emoji are flat-coloured. Item k of a split comes
from ``numpy.random.default_rng([seed, split_id, k])`` alone: any item, any order, same result.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .config import DataConfig, DataError
from .transforms import to_tensor

# skimage.data function names (``motorcycle`` = left view of ``stereo_motorcycle``). Grey ones
# are converted per cfg.channels like the colour ones.
TRAIN_SOURCES: tuple[str, ...] = (
    "astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "motorcycle", "brick", "grass", "camera", "moon", "cell", "clock",
)
# Held out whole, so test patches are never crops of a training photo: one colour photo,
# one texture, one grey photo.
TEST_SOURCES: tuple[str, ...] = ("coffee", "gravel", "coins")
SPLIT_IDS = {"train": 0, "test": 1}
MAX_SCALE = 4.0  # crops span 1x to 4x the output size, then are resized down to it


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
    """One bundled photo as uint8 (H, W) or (H, W, 3); decoded once per process."""
    try:
        import skimage.data  # lazy: only this data set needs scikit-image
    except ImportError:
        raise DataError("data set 'photos' needs scikit-image: pip install scikit-image") from None
    if name == "motorcycle":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        arr = getattr(skimage.data, name)()
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:  # float images in [0, 1]; none of the listed ones today, but cheap to allow
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    return arr[..., :3] if arr.ndim == 3 else arr


@functools.lru_cache(maxsize=None)
def source_image(name: str, channels: int) -> Image.Image:
    """The photo as a PIL image in L (channels=1) or RGB (channels=3)."""
    arr = load_source(name)
    img = Image.fromarray(arr)
    return img.convert("RGB" if channels == 3 else "L")


class Photos(Dataset):
    """Random square crops of scikit-image's photos, resized to ``cfg.image_size``.

    Length: ``cfg.shapes_size`` train items, ``max(1, shapes_size // 10)`` test items (the
    field is shared with the other procedural set rather than adding a second size knob).
    Each item picks a source photo of its split uniformly, a crop side log-uniform in
    [S, min(4 S, short side)] (so patches show texture at several scales) and a position;
    crops larger than S are downsized with Lanczos; a photo whose short side is below S gives a
    short-side crop resized up (bicubic). With ``cfg.flip`` train items are mirrored with probability 1/2,
    drawn from the same per-item generator so items stay reproducible.
    Items: ``image`` only (sources are listed by :meth:`source`).
    """

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train") -> None:
        self.cfg = cfg
        self.split = split
        self.split_id = SPLIT_IDS[split]
        self.sources = TRAIN_SOURCES if split == "train" else TEST_SOURCES
        self.length = cfg.shapes_size if split == "train" else max(1, cfg.shapes_size // 10)
        self.flip = cfg.flip and split == "train"
        self.skipped = 0
        source_image(self.sources[0], cfg.channels)  # fail now, with the pip hint, not in a worker

    def __len__(self) -> int:
        return self.length

    def _params(self, index: int) -> tuple[str, tuple[int, int, int, int], bool]:
        """(source, crop box (left, top, right, bottom), flip) of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} photo crops")
        rng = np.random.default_rng([self.cfg.seed, self.split_id, index])
        name = self.sources[int(rng.integers(len(self.sources)))]
        w, h = source_image(name, self.cfg.channels).size
        size, short = self.cfg.image_size, min(w, h)
        hi = min(MAX_SCALE * size, short)
        side = short if hi <= size else round(size * math.exp(rng.uniform(0.0, math.log(hi / size))))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        flip = bool(rng.random() < 0.5) and self.flip
        return name, (left, top, left + side, top + side), flip

    def source(self, index: int) -> str:
        """Name of the skimage photo item ``index`` was cropped from."""
        return self._params(int(index))[0]

    def __getitem__(self, index: int) -> dict:
        name, box, flip = self._params(int(index))
        size = self.cfg.image_size
        img = source_image(name, self.cfg.channels).crop(box)
        if img.size != (size, size):
            img = img.resize((size, size), Image.LANCZOS if img.size[0] > size else Image.BICUBIC)
        x = to_tensor(img)  # (C, S, S) in [-1, 1]
        return {"image": x.flip(-1) if flip else x}

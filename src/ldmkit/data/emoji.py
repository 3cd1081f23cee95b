"""Emoji with names: npm ``emoji-datasource-google`` (Noto emoji, 64x64 RGBA PNGs, Apache-2.0).

The package holds 1,911 base emoji in ``package/emoji.json`` plus 1,875 skin-tone variants
listed under each entry's ``skin_variations``: 3,786 images in ``package/img/google/64``.
It is the only captioned RGB set available offline, so it carries text-to-image training.

Lookup order: ``cfg.root``; ``$LDMKIT_EMOJI``; ``~/.cache/ldmkit/emoji/package``
(``$XDG_CACHE_HOME`` respected), which is where ``make data-emoji`` unpacks the package.
A root may be the ``package`` folder itself or the folder holding it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import DataConfig, DataError, DataNotFoundError

log = logging.getLogger("ldmkit.data")

IMAGE_DIR = Path("img") / "google" / "64"
TEST_PERCENT = 5  # share of base names held out; variants follow their base emoji
# Unicode's names for the Fitzpatrick modifiers, as used in CLDR names ("waving hand: light skin tone").
TONES = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}


def cache_dir() -> Path:
    """Where ``make data-emoji`` unpacks the npm package (read at call time, so tests can redirect it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ldmkit" / "emoji" / "package"


def candidate_dirs(root: str | None = None) -> list[Path]:
    """Folders searched for ``emoji.json``, in priority order."""
    dirs = [Path(root).expanduser()] if root else []
    if os.environ.get("LDMKIT_EMOJI"):
        dirs.append(Path(os.environ["LDMKIT_EMOJI"]).expanduser())
    return dirs + [cache_dir()]


def find_package(root: str | None = None) -> Path | None:
    """The first candidate holding ``emoji.json`` and the 64 px image folder (or its ``package/``)."""
    for folder in candidate_dirs(root):
        for cand in (folder, folder / "package"):
            if (cand / "emoji.json").is_file() and (cand / IMAGE_DIR).is_dir():
                return cand
    return None


def tone_caption(name: str, key: str) -> str:
    """``("waving hand", "1F3FB")`` -> "waving hand, light skin tone"; two-person variants name both
    tones ("..., light skin tone, dark skin tone") unless they are equal."""
    parts = key.upper().split("-")
    tones = [TONES.get(p, p.lower()) for p in parts]
    if len(set(tones)) == 1:
        tones = tones[:1]
    return ", ".join([name] + [f"{t} skin tone" for t in tones])


def is_test_name(name: str) -> bool:
    """Held-out test emoji: decided by a hash of the base name, so the split never depends on
    the order of ``emoji.json`` and all skin-tone variants land beside their base emoji.
    (sha1 rather than ``hash()``, which Python salts per process.)"""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT


@dataclass(frozen=True)
class EmojiEntry:
    """One image: file name in the 64 px folder, caption, category and the base name it belongs to."""

    image: str
    caption: str
    category: str
    base: str


def read_entries(package: Path) -> tuple[list[EmojiEntry], list[str]]:
    """All images listed in ``emoji.json`` (base emoji then their variants, file order) and the
    sorted category names. Entries whose ``has_img_google`` is false are left out."""
    path = package / "emoji.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read emoji table ({e})") from None
    if not isinstance(table, list):
        raise DataError(f"{path}: expected a JSON list of emoji, got {type(table).__name__}")
    entries: list[EmojiEntry] = []
    categories: set[str] = set()
    for row in table:
        try:
            name = str(row.get("name") or row["short_name"]).strip().lower()
            category = str(row["category"])
            image = str(row["image"])
        except (AttributeError, KeyError, TypeError):
            raise DataError(f"{path}: entry without name/category/image: {str(row)[:80]!r}") from None
        categories.add(category)
        if row.get("has_img_google", True):
            entries.append(EmojiEntry(image, name, category, name))
        for key, var in (row.get("skin_variations") or {}).items():
            if var.get("has_img_google", True) and var.get("image"):
                entries.append(EmojiEntry(str(var["image"]), tone_caption(name, key), category, name))
    return entries, sorted(categories)


def load_emoji(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode one PNG, composite it over white in float, resize: float32 (C, size, size) in [-1, 1].

    Compositing in float (rgb * a + 255 * (1 - a)) before any resize keeps half-transparent
    edges exact; going through uint8 first would round them twice. Downsizing uses a box
    filter for integer factors (an exact area average) and Lanczos otherwise.
    """
    with Image.open(path) as img:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # (H, W, 3) in [0, 255]
    if channels == 1:
        # ITU-R 601 luma, the weights Pillow's convert("L") uses
        rgb = rgb @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
    h, w = rgb.shape[:2]
    if (h, w) != (size, size):
        if size > min(h, w):
            resample = Image.BICUBIC
        elif h % size == 0 and w % size == 0:
            resample = Image.BOX
        else:
            resample = Image.LANCZOS
        rgb = np.stack([np.asarray(Image.fromarray(rgb[..., c]).resize((size, size), resample))
                        for c in range(rgb.shape[-1])], axis=-1)
    x = rgb.transpose(2, 0, 1) / 127.5 - 1.0
    return np.clip(x, -1.0, 1.0).astype(np.float32)  # Lanczos / bicubic can overshoot


class Emoji(Dataset):
    """Emoji images with captions and category labels.

    Items: ``image`` (C, S, S) in [-1, 1] on white, ``caption`` (lower-case Unicode name,
    "<name>, <tone> skin tone" for variants) and ``label`` (index into ``class_names``, the
    sorted categories of the whole table). Split: ~5% of base names (by hash) are "test".
    ``cfg.flip`` is ignored: mirrored emoji are not the named emoji ("left arrow", text, flags).
    """

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train") -> None:
        self.cfg = cfg
        self.split = split
        package = find_package(cfg.root)
        if package is None:
            looked = ", ".join(str(d) for d in candidate_dirs(cfg.root))
            raise DataNotFoundError(
                f"emoji data (emoji.json + {IMAGE_DIR.as_posix()}/) not found in: {looked}; run "
                "`make data-emoji` (npm pack emoji-datasource-google), set $LDMKIT_EMOJI or data.root=DIR")
        self.root = package
        entries, self.class_names = read_entries(package)
        self.num_classes = len(self.class_names)
        image_dir = package / IMAGE_DIR
        present = [e for e in entries if (image_dir / e.image).is_file()]
        self.skipped = len(entries) - len(present)
        if self.skipped:
            log.warning("%d emoji listed in %s have no image in %s (skipped)", self.skipped,
                        package / "emoji.json", image_dir)
        self.entries = [e for e in present if is_test_name(e.base) == (split == "test")]
        if not self.entries:
            raise DataError(f"no {split} emoji found in {package}")
        self.files = [image_dir / e.image for e in self.entries]
        self.captions = [e.caption for e in self.entries]
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = torch.tensor([index[e.category] for e in self.entries], dtype=torch.int64)
        self._images_cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def _image(self, i: int) -> torch.Tensor:
        if self._images_cache is not None:
            return self._images_cache[i]
        return torch.from_numpy(load_emoji(self.files[i], self.cfg.image_size, self.cfg.channels))

    def __getitem__(self, index: int) -> dict:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} emoji")
        return {"image": self._image(i), "label": self.labels[i], "caption": self.captions[i]}

    def images_tensor(self) -> torch.Tensor:
        """The whole split, (N, C, S, S) float32, decoded once and kept (latent caching reads it)."""
        if self._images_cache is None:
            size, c = self.cfg.image_size, self.cfg.channels
            out = torch.empty(len(self), c, size, size)
            for i, path in enumerate(self.files):
                out[i] = torch.from_numpy(load_emoji(path, size, c))
            self._images_cache = out
        return self._images_cache

    def labels_tensor(self) -> torch.Tensor:
        """All category labels, (N,) int64."""
        return self.labels

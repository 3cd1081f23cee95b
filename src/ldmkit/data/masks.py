"""Inpainting masks of the kind the paper's inpainting model was trained on (LaMa "large" masks).

LaMa (Suvorov et al. 2022) samples thick irregular strokes (random walks of wide lines) and
random boxes; the LDM inpainting experiments follow that protocol. Masks are 1 where the
model must fill in and 0 where the image is known; coverage is held inside [min, max].
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ldmkit.config import require

MaskKind = Literal["large", "box", "stroke"]
KINDS: tuple[str, ...] = ("large", "box", "stroke")
MAX_SHAPES = 40  # draws before giving up on reaching the target coverage with whole shapes
BOX_PROBABILITY = 0.3  # share of boxes among the shapes of a "large" mask
MAX_TURN = math.radians(120)  # largest change of direction between two stroke segments


def as_generator(generator: np.random.Generator | int | None) -> np.random.Generator:
    """A numpy Generator from a Generator (used as is), a seed, or None (fresh entropy)."""
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(generator)


def _stroke(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One thick random-walk polyline, round-jointed: bool (H, W)."""
    s = min(h, w)
    width = max(2, round(s * rng.uniform(0.05, 0.25)))  # LaMa "thick": up to ~0.4 of 256 px
    n_segments = int(rng.integers(1, 6))
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    angle = rng.uniform(0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(n_segments):
        angle += rng.uniform(-MAX_TURN, MAX_TURN)
        length = s * rng.uniform(0.1, 0.4)
        x = float(np.clip(x + length * math.cos(angle), 0, w - 1))
        y = float(np.clip(y + length * math.sin(angle), 0, h - 1))
        points.append((x, y))
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    draw.line(points, fill=255, width=width, joint="curve")
    r = width / 2
    for px, py in (points[0], points[-1]):  # round caps, as cv2 strokes with circles at the ends
        draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return np.asarray(img) > 0


def _box(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One axis-aligned box with sides between 10% and 50% of the image: bool (H, W)."""
    bh = int(rng.integers(max(1, round(0.1 * h)), max(1, round(0.5 * h)) + 1))
    bw = int(rng.integers(max(1, round(0.1 * w)), max(1, round(0.5 * w)) + 1))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = np.zeros((h, w), dtype=bool)
    out[top: top + bh, left: left + bw] = True
    return out


def generate_mask(size: int | tuple[int, int], generator: np.random.Generator | int | None = None,
                  kind: MaskKind = "large", max_coverage: float = 0.5,
                  min_coverage: float = 0.1) -> np.ndarray:
    """An inpainting mask: float32 (H, W) with 1 = region to fill, 0 = known.

    ``kind``: "large" (LaMa: thick strokes plus some boxes), "box" or "stroke". A target
    coverage is drawn uniformly in [min_coverage, max_coverage]; shapes are added until it is
    reached, and a shape that would push coverage past ``max_coverage`` is dropped. If the
    shape budget runs out below ``min_coverage``, small boxes grown from uncovered pixels top
    it up (rare), so the coverage always lands in [min, max] (in whole pixels).
    Same ``generator`` seed -> same mask.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    require(h >= 1 and w >= 1, "size", f"must be positive, got {size}")
    require(kind in KINDS, "kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
    require(0.0 <= min_coverage <= max_coverage <= 1.0 and max_coverage > 0.0, "max_coverage",
            f"need 0 <= min_coverage <= max_coverage <= 1, got [{min_coverage}, {max_coverage}]")
    n = h * w
    min_px, max_px = math.ceil(min_coverage * n - 1e-9), math.floor(max_coverage * n + 1e-9)
    require(min_px <= max_px, "max_coverage",
            f"no whole-pixel coverage of a {h}x{w} mask lies in [{min_coverage}, {max_coverage}]")
    rng = as_generator(generator)
    target = rng.uniform(min_coverage, max_coverage) * n
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(MAX_SHAPES):
        use_box = kind == "box" or (kind == "large" and rng.random() < BOX_PROBABILITY)
        cand = mask | (_box(rng, h, w) if use_box else _stroke(rng, h, w))
        if cand.sum() > max_px:
            continue
        mask = cand
        if mask.sum() >= target:
            break
    covered = int(mask.sum())
    while covered < min_px:
        # A box anchored at an uncovered pixel, no larger than what max_coverage still allows:
        # every pass adds at least one pixel and never overshoots, so the loop ends.
        free = np.flatnonzero(~mask)
        y, x = divmod(int(free[rng.integers(len(free))]), w)
        budget = max_px - covered
        bh = int(rng.integers(1, min(h - y, math.isqrt(budget)) + 1))
        bw = int(rng.integers(1, min(w - x, budget // bh) + 1))
        mask[y: y + bh, x: x + bw] = True
        covered = int(mask.sum())
    return mask.astype(np.float32)


class MaskedDataset(Dataset):
    """Adds ``mask`` (1, H, W) and ``masked_image`` = image * (1 - mask) to every item.

    Masked pixels become 0, mid-grey in [-1, 1], as the original's ``(1 - mask) * image``.
    The mask of item i comes from ``default_rng([seed, i])``: fixed per index, independent of
    the access order and of DataLoader workers. There is deliberately no ``images_tensor``:
    a training loop taking that fast path would silently train without masks.
    """

    def __init__(self, dataset: Any, mask_kind: MaskKind = "large", seed: int = 0,
                 max_coverage: float = 0.5, min_coverage: float = 0.1) -> None:
        require(mask_kind in KINDS, "mask_kind", f"expected one of {', '.join(KINDS)}, got {mask_kind!r}")
        self.dataset = dataset
        self.mask_kind = mask_kind
        self.seed = seed
        self.max_coverage = max_coverage
        self.min_coverage = min_coverage
        for attr in ("class_names", "num_classes", "captions"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.dataset)

    def mask(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        """The mask of item ``index`` at ``size`` (H, W): float32 (1, H, W)."""
        m = generate_mask(size, np.random.default_rng([self.seed, int(index)]), self.mask_kind,
                          self.max_coverage, self.min_coverage)
        return torch.from_numpy(m)[None]

    def __getitem__(self, index: int) -> dict:
        index = int(index) + (len(self) if int(index) < 0 else 0)  # one mask per item, not per spelling
        item = dict(self.dataset[index])
        image = item["image"]  # (C, H, W)
        mask = self.mask(index, tuple(image.shape[-2:])).to(image.dtype)  # (1, H, W)
        item["mask"] = mask
        item["masked_image"] = image * (1.0 - mask)
        return item

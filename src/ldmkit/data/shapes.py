"""Procedural coloured shapes with exact labels, captions, boxes and segmentation maps.

Needs no download, so every conditioning mode of the paper (class, text, layout,
semantic map) can be trained and tested anywhere. Item k of a split is generated from
``numpy.random.default_rng([seed, split_id, k])`` alone: any item, any order, same result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from .config import DataConfig

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 180),
    "orange": (245, 125, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# drawable, never in the data set: a study that teaches a trained model a new shape word draws (and detects) it
EXTRA_SHAPES: tuple[str, ...] = ("diamond",)
COLOURS: tuple[str, ...] = tuple(PALETTE)
SPLIT_IDS = {"train": 0, "test": 1}
SUPERSAMPLE = 4  # drawing resolution factor; pixel colour = exact coverage average
MAX_TRIES = 100  # rejection-sampling attempts per object before giving up on placing it


def class_id(shape: str, colour: str) -> int:
    """1-based (shape x colour) id used in boxes and segmentation; 0 is background."""
    return SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour) + 1


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object; ``box`` is (x0, y0, x1, y1) normalised to [0, 1], y pointing down."""

    shape: str
    colour: str
    box: tuple[float, float, float, float]

    @property
    def class_id(self) -> int:
        return class_id(self.shape, self.colour)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


CLASS_NAMES = [f"{c} {s}" for s in SHAPES for c in COLOURS]  # index = class_id - 1


def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis where their centres differ most."""
    dx = (a.box[0] + a.box[2] - b.box[0] - b.box[2]) / 2
    dy = (a.box[1] + a.box[3] - b.box[1] - b.box[3]) / 2
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _a(obj: ShapeObject) -> str:
    return ("an " if obj.colour[0] in "aeiou" else "a ") + obj.name


def describe(objects: Sequence[ShapeObject]) -> str:
    """Caption: "a red circle", "a red circle left of a blue square"; extra objects are
    appended with "and" (the relation is only stated between the first two)."""
    if not objects:
        return "nothing"
    text = _a(objects[0])
    if len(objects) > 1:
        text += f" {relation(objects[0], objects[1])} {_a(objects[1])}"
    for obj in objects[2:]:
        text += f" and {_a(obj)}"
    return text


def sample_objects(rng: np.random.Generator, size: int, max_objects: int, colours: Sequence[str] = COLOURS,
                   shapes: Sequence[str] = SHAPES) -> list[tuple[int, int, int, str, str]]:
    """Non-overlapping square boxes in pixels: (x0, y0, side, shape, colour), largest first.

    ``colours`` / ``shapes``: the names drawn from (a study of a new word passes a longer list). Sides are in [ceil(size/4), size/2]; boxes keep a margin of >= 1 px, so no pixel is shared
    between two objects. An object that finds no free spot in MAX_TRIES is dropped.
    """
    n = int(rng.integers(1, max_objects + 1))
    lo = math.ceil(size / 4)
    hi = max(lo, size // 2)
    sides = sorted((int(rng.integers(lo, hi + 1)) for _ in range(n)), reverse=True)
    margin = max(1, size // 16)
    placed: list[tuple[int, int, int, str, str]] = []
    for side in sides:
        shape = shapes[int(rng.integers(len(shapes)))]
        colour = colours[int(rng.integers(len(colours)))]
        for _ in range(MAX_TRIES):
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(x0 >= px + ps + margin or px >= x0 + side + margin or
                   y0 >= py + ps + margin or py >= y0 + side + margin for px, py, ps, _, _ in placed):
                placed.append((x0, y0, side, shape, colour))
                break
    return placed


def render(placed: Sequence[tuple[int, int, int, str, str]], size: int,
           background: tuple[int, int, int],
           palette: dict[str, tuple[int, int, int]] = PALETTE) -> tuple[np.ndarray, np.ndarray]:
    """Draw at SUPERSAMPLE x resolution; return (RGB uint8 (S, S, 3), class map int64 (S, S)).

    The image is the exact block average of the fine drawing (antialiased edges) and a
    pixel's class is the object covering at least half of it, so map and image agree.
    ``palette``: colour name -> RGB; class ids run over it (and SHAPES + EXTRA_SHAPES) as :func:`class_id` runs
    over PALETTE and SHAPES.
    """
    f = SUPERSAMPLE
    names, kinds = list(palette), SHAPES + EXTRA_SHAPES
    if len(kinds) * len(names) >= 256:
        raise ValueError(f"render: {len(kinds)} shapes x {len(names)} colours do not fit an 8-bit class map")
    fine = Image.new("P", (size * f, size * f), 0)
    fine.putpalette([v for rgb in [background] + [palette[c] for _ in kinds for c in names] for v in rgb])
    draw = ImageDraw.Draw(fine)
    for x0, y0, side, shape, colour in placed:
        cid = kinds.index(shape) * len(names) + names.index(colour) + 1  # = class_id() on PALETTE and SHAPES
        a, b, c, d = x0 * f, y0 * f, (x0 + side) * f - 1, (y0 + side) * f - 1
        if shape == "circle":
            draw.ellipse((a, b, c, d), fill=cid)
        elif shape == "square":
            draw.rectangle((a, b, c, d), fill=cid)
        elif shape == "triangle":
            draw.polygon([(a, d), (c, d), ((a + c) / 2, b)], fill=cid)
        else:  # diamond: the square turned 45 degrees inside the box
            draw.polygon([((a + c) / 2, b), (c, (b + d) / 2), ((a + c) / 2, d), (a, (b + d) / 2)], fill=cid)
    image = np.asarray(fine.convert("RGB").reduce(f), dtype=np.uint8)
    blocks = np.asarray(fine, dtype=np.uint8).reshape(size, f, size, f)
    covered = 2 * (blocks > 0).sum(axis=(1, 3)) >= f * f
    segmentation = np.where(covered, blocks.max(axis=(1, 3)), 0).astype(np.int64)
    return image, segmentation


class Shapes(Dataset):
    """Procedural shapes: ``shapes_size`` train images, ``max(1, shapes_size // 10)`` test images.

    Items: ``image``, ``label`` (0-based class of the first, largest object), ``caption``,
    ``boxes`` (max_objects, 5) rows [class_id, x0, y0, x1, y1] padded with -1, and
    ``segmentation`` (S, S) with 1-based class ids. ``cfg.flip`` is ignored: the
    distribution is already mirror-symmetric, and flipping would have to rewrite captions.
    """

    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train") -> None:
        self.cfg = cfg
        self.split = split
        self.split_id = SPLIT_IDS[split]
        self.length = cfg.shapes_size if split == "train" else max(1, cfg.shapes_size // 10)
        self.skipped = 0
        self._images: torch.Tensor | None = None

    def images_tensor(self) -> torch.Tensor:
        """All images (N, C, S, S) in [-1, 1], rendered once: lets training encode the latents once."""
        if self._images is None:
            self._images = torch.stack([self[i]["image"] for i in range(self.length)])
        return self._images

    def __len__(self) -> int:
        return self.length

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray, list[ShapeObject]]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} shapes")
        rng = np.random.default_rng([self.cfg.seed, self.split_id, index])
        size = self.cfg.image_size
        grey = int(rng.integers(225, 256))
        placed = sample_objects(rng, size, self.cfg.max_objects)
        image, seg = render(placed, size, (grey, grey, grey))
        objects = [ShapeObject(shape, colour, (x0 / size, y0 / size, (x0 + s) / size, (y0 + s) / size))
                   for x0, y0, s, shape, colour in placed]
        return image, seg, objects

    def objects(self, index: int) -> list[ShapeObject]:
        """The objects of item ``index``, largest first (for detectors and evaluation)."""
        return self._generate(index)[2]

    def __getitem__(self, index: int) -> dict:
        image, seg, objects = self._generate(int(index))
        pil = Image.fromarray(image)
        if self.cfg.channels == 1:
            pil = pil.convert("L")
        arr = np.asarray(pil, dtype=np.float32).reshape(self.cfg.image_size, self.cfg.image_size, -1)
        boxes = torch.full((self.cfg.max_objects, 5), -1.0)
        for row, obj in enumerate(objects):
            boxes[row] = torch.tensor([obj.class_id, *obj.box])
        return {
            "image": torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous(),
            "label": torch.tensor(objects[0].class_id - 1, dtype=torch.int64),
            "caption": describe(objects),
            "boxes": boxes,
            "segmentation": torch.from_numpy(seg),
        }

"""Image preprocessing with Pillow + torch (torchvision is not a dependency).

All data sets hand the model float32 tensors (C, H, W) in [-1, 1], the range the
autoencoder and the diffusion model are trained in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

WHITE = (255, 255, 255, 255)
EXIF_ORIENTATION = 0x0112


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert to RGB (channels=3) or L (channels=1), compositing transparency over white.

    Plain ``convert("RGB")`` would drop alpha and expose whatever colour the transparent
    pixels happen to store (often black), so transparent images are composited first.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # 16-bit / 32-bit grey: scale, do not clip at 255
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255) else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)
    return img.convert("RGB" if channels == 3 else "L")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (bicubic, antialiased by PIL), then center-crop a square."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (L or RGB) -> float32 tensor (C, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip the last axis with probability 1/2.

    ``generator=None`` uses torch's global RNG, which DataLoader seeds differently in each
    worker; a shared explicit generator would give every worker the same flips.
    """
    if torch.rand((), generator=generator).item() < 0.5:
        return x.flip(-1)
    return x


class ImageTransform:
    """Decoded PIL image -> model tensor: mode, resize + center crop, optional flip, [-1, 1]."""

    def __init__(self, image_size: int, channels: int, flip: bool = False,
                 generator: torch.Generator | None = None) -> None:
        self.image_size = image_size
        self.channels = channels
        self.flip = flip
        self.generator = generator

    def __call__(self, img: Image.Image) -> torch.Tensor:
        x = to_tensor(resize_center_crop(to_mode(img, self.channels), self.image_size))
        return random_hflip(x, self.generator) if self.flip else x


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; raises on corrupt or truncated files.

    PIL opens lazily, so ``load()`` is forced here: otherwise a truncated file would only
    fail later, inside the transform, far from the path that explains it.
    """
    with Image.open(path) as img:
        img.load()
        # a phone photo stores its orientation in EXIF: show it as it is seen (a no-op without the tag)
        return ImageOps.exif_transpose(img) if img.getexif().get(EXIF_ORIENTATION, 1) != 1 else img.copy()

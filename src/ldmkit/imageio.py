"""Tensors in [-1, 1] <-> PNG files (with text metadata) and image grids."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .weights import atomic_write


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) in [-1, 1] -> uint8 HWC (or BHWC) array."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) in [-1, 1] -> PIL image (L for one channel, RGB for three)."""
    a = to_uint8(x)
    return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


def from_pil(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """PIL image -> (C, H, W) float in [-1, 1]."""
    img = img.convert("L" if channels == 1 else "RGB")
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float()
    a = a[None] if a.ndim == 2 else a.permute(2, 0, 1)
    return a / 127.5 - 1


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (C, H', W') grid with ``nrow`` images per row, padded with white."""
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    grid = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=x.dtype)
    for k in range(b):
        r, col = divmod(k, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = x[k].cpu()
    return grid


def save_png(img: torch.Tensor | Image.Image, path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Atomic PNG write; ``metadata`` goes into PNG text chunks (JSON for non-strings)."""
    pil = img if isinstance(img, Image.Image) else to_pil(img)
    info = PngImagePlugin.PngInfo()
    for k, v in (metadata or {}).items():
        info.add_text(k, v if isinstance(v, str) else json.dumps(v))
    atomic_write(Path(path), lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))


def save_grid(x: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    save_png(make_grid(x.detach().float().cpu().clamp(-1, 1), nrow), path)

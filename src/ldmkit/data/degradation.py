"""Low-resolution inputs for super-resolution: plain bicubic and a light BSR degradation.

The paper's SR model was trained on bicubic 4x downsampling (SR3's protocol) and, for
real-world inputs, on the BSR degradation of Zhang et al. (blur, random resize, noise, JPEG).
``bsr_degrade`` is a reduced version of that pipeline with the same four stages in the same
order; every random choice comes from one torch.Generator, so it is reproducible.
"""
from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ldmkit.config import require

Degradation = Literal["bicubic", "bsr"]
DOWN_MODES: tuple[str, ...] = ("bicubic", "bilinear", "area")
NOISE_RANGE = (1.0 / 255, 25.0 / 255)  # Gaussian noise std in [0, 1] units, as BSRGAN's 1..25 levels
JPEG_QUALITY = (30, 95)


def _check(x: Tensor, factor: int) -> tuple[int, int]:
    require(isinstance(factor, int) and factor >= 1, "factor", f"must be an integer >= 1, got {factor!r}")
    require(x.ndim == 4, "x", f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    require(h % factor == 0 and w % factor == 0, "factor",
            f"image size {h}x{w} is not divisible by {factor}")
    return h // factor, w // factor


def bicubic_downsample(x: Tensor, factor: int = 4) -> Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, C, H/f, W/f): antialiased bicubic (as PIL / Matlab
    ``imresize``), clamped because the cubic kernel's negative lobes overshoot at edges."""
    size = _check(x, factor)
    if factor == 1:
        return x.clone()
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1.0, 1.0)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable isotropic Gaussian blur of (B, C, H, W), reflect padding, radius ceil(3 sigma)
    (capped below the image size, which reflect padding requires)."""
    radius = min(math.ceil(3.0 * sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    if radius < 1 or sigma <= 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Round-trip one (C, H, W) image in [-1, 1] through Pillow's JPEG at ``quality``."""
    arr = ((x.detach().cpu().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(img.mode), dtype=np.float32)
    out = out.reshape(x.shape[1], x.shape[2], -1)
    return torch.from_numpy(out).permute(2, 0, 1).div(127.5).sub(1.0).to(x.device, x.dtype)


def bsr_degrade(x: Tensor, factor: int = 4, generator: torch.Generator | None = None,
                sigma_range: tuple[float, float] | None = None, jpeg_prob: float = 0.5) -> Tensor:
    """BSR-lite: (B, C, H, W) in [-1, 1] -> (B, C, H/f, W/f) in [-1, 1], each image with its own draws.

    Stages: Gaussian blur (sigma uniform in ``sigma_range``, default [0.1, 0.7 f], BSRGAN's
    2.8 at f=4); downsampling by a random choice of bicubic / bilinear (antialiased) / area;
    Gaussian noise (std 1..25 / 255 of the [0, 1] range); then, with probability
    ``jpeg_prob``, JPEG at a quality in [30, 95]. C must be 1 or 3 for the JPEG stage.
    Random numbers are drawn on ``generator``'s device (torch's default generator if None).
    """
    size = _check(x, factor)
    require(0.0 <= jpeg_prob <= 1.0, "jpeg_prob", f"must be in [0, 1], got {jpeg_prob}")
    lo, hi = sigma_range if sigma_range is not None else (0.1, 0.7 * factor)
    require(0.0 <= lo <= hi, "sigma_range", f"need 0 <= low <= high, got ({lo}, {hi})")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out = []
    for image in x:
        u = torch.rand(5, generator=generator, device=gen_device).tolist()  # fixed draw order
        y = gaussian_blur(image[None], lo + (hi - lo) * u[0])
        mode = DOWN_MODES[min(int(u[1] * len(DOWN_MODES)), len(DOWN_MODES) - 1)]
        if factor > 1:
            kwargs = {} if mode == "area" else {"align_corners": False, "antialias": True}
            y = F.interpolate(y, size=size, mode=mode, **kwargs)
        std = 2.0 * (NOISE_RANGE[0] + (NOISE_RANGE[1] - NOISE_RANGE[0]) * u[2])  # x2: [-1, 1] units
        noise = torch.randn(y.shape, generator=generator, device=gen_device, dtype=y.dtype)
        y = (y + std * noise.to(y.device)).clamp(-1.0, 1.0)
        if u[3] < jpeg_prob:
            quality = JPEG_QUALITY[0] + min(int(u[4] * (JPEG_QUALITY[1] - JPEG_QUALITY[0] + 1)),
                                            JPEG_QUALITY[1] - JPEG_QUALITY[0])
            y = jpeg(y[0], quality)[None]
        out.append(y)
    return torch.cat(out)


class LowResDataset(Dataset):
    """Adds ``low_res`` (C, H/f, W/f) in [-1, 1], the super-resolution model's conditioning input.

    ``degradation="bsr"`` draws from ``torch.Generator().manual_seed(...)`` seeded by
    (seed, index), so item i always gets the same degradation. As with MaskedDataset there
    is no ``images_tensor`` passthrough: the fast path would lose ``low_res``.
    """

    def __init__(self, dataset: Any, factor: int = 4, degradation: Degradation = "bicubic",
                 seed: int = 0) -> None:
        require(degradation in ("bicubic", "bsr"), "degradation",
                f"expected one of bicubic, bsr, got {degradation!r}")
        require(isinstance(factor, int) and factor >= 1, "factor", f"must be an integer >= 1, got {factor!r}")
        self.dataset = dataset
        self.factor = factor
        self.degradation = degradation
        self.seed = seed
        for attr in ("class_names", "num_classes", "captions"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        index = int(index) + (len(self) if int(index) < 0 else 0)
        item = dict(self.dataset[index])
        x = item["image"][None]  # (1, C, H, W)
        if self.degradation == "bicubic":
            low = bicubic_downsample(x, self.factor)
        else:
            seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
            low = bsr_degrade(x, self.factor, torch.Generator().manual_seed(seed))
        item["low_res"] = low[0]  # (C, H/f, W/f)
        return item

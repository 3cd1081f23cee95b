"""Tiled decoding: decode a large latent in overlapping tiles and blend them, so memory stays bounded.

Convolutional sampling (super-resolution, semantic synthesis beyond the training size) can produce
latents whose one-shot decode would not fit in memory. Tiles overlap by ``overlap`` latent pixels and
are blended with linear ramps, which hides the seams a decoder's finite receptive field would leave.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(n: int, width: int, device) -> Tensor:
    """1 in the middle, rising linearly over ``width`` pixels at both ends (never 0)."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.minimum((i + 0.5) / width, (n - i - 0.5) / width).clamp(max=1.0)


@torch.no_grad()
def tiled_decode(decode: Callable[[Tensor], Tensor], z: Tensor, tile: int, overlap: int = 2) -> Tensor:
    """``decode`` applied to (B, c, h, w) latents tile by tile; equals ``decode(z)`` when one tile covers z."""
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    _, _, h, w = z.shape
    if h <= tile and w <= tile:
        return decode(z)
    ys, xs = _starts(h, min(tile, h), tile - overlap), _starts(w, min(tile, w), tile - overlap)
    out = weight = None
    for y in ys:
        for x in xs:
            piece = decode(z[..., y:y + tile, x:x + tile])  # (B, C, th * f, tw * f)
            f = piece.shape[-1] // z[..., y:y + tile, x:x + tile].shape[-1]
            if out is None:
                out = piece.new_zeros(piece.shape[0], piece.shape[1], h * f, w * f)
                weight = piece.new_zeros(1, 1, h * f, w * f)
            width = max(1, overlap * f)
            m = _ramp(piece.shape[-2], width, piece.device)[:, None] * _ramp(piece.shape[-1], width, piece.device)[None]
            out[..., y * f:y * f + piece.shape[-2], x * f:x * f + piece.shape[-1]] += piece * m
            weight[..., y * f:y * f + piece.shape[-2], x * f:x * f + piece.shape[-1]] += m
    return out / weight

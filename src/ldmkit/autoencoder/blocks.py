"""Building blocks of the first-stage encoder/decoder.

Attribute names (norm1, conv1, nin_shortcut, q/k/v/proj_out, conv) follow the original CompVis
``model.py`` so that its checkpoints load key for key.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.fused import group_norm_silu


def num_groups(channels: int) -> int:
    """Largest divisor of ``channels`` that is <= 32.

    The original always uses 32 groups, which every real config satisfies (widths are multiples
    of 32), and for those this returns 32. Tiny test configs (ch=8, 16) would make GroupNorm(32)
    fail, so they fall back to the largest group count that divides the width.
    """
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def normalize(channels: int) -> nn.GroupNorm:
    # eps 1e-6 as in the original autoencoder (the UNet uses 1e-5).
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-norm residual block: (GN, swish, conv3x3) x 2 with dropout before the second conv."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 projection only when the width changes, so keys exist exactly where the original has them.
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # conv1's output is dropped once normalised, before conv2 runs: at a 512x512 decode each map is 128 MiB
        h = group_norm_silu(self.norm2, self.conv1(group_norm_silu(self.norm1, x)))  # (B, out, H, W)
        h = self.conv2(self.dropout(h))  # (B, out, H, W)
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)  # (B, out, H, W)
        # in place: h is conv2's fresh output, which its backward does not need; one map fewer at 512x512
        return h.add_(skip)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections (4-D weights, as the original)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head of HW tokens; SDPA's default scale C^-0.5 matches the original.
        # Head axis and contiguous channels matter: PyTorch's CPU flash kernel takes 4-D inputs with a unit stride
        # last; otherwise SDPA falls back to the math path, which materialises the (HW, HW) matrix (kl-f4 decode
        # at 256, bf16: ~190 ms vs ~25 ms).
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(-1, -2).contiguous() for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return self.proj_out(out).add_(x)  # in place into the fresh projection (see ResnetBlock)


class Downsample(nn.Module):
    """Halve H and W: asymmetric zero pad (right, bottom) then a 3x3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1))  # (B, C, H+1, W+1)
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour resize then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)

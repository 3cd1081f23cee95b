"""Sinusoidal codes: the timestep embedding (the original UNet's [cos, sin] order) and 2-D position codes."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Embed timesteps ``t`` (B,) (float or integer) as (B, dim) float32 features.

    Feature ``i < dim/2`` is ``cos(t * f_i)`` and feature ``dim/2 + i`` is ``sin(t * f_i)`` with
    ``f_i = max_period ** (-i / (dim/2))``. The original LDM/ADM UNet puts cos first (the DDPM
    "Model" puts sin first); pretrained weights only work with this order. An odd ``dim`` gets a
    trailing zero column, as in the original.
    """
    if t.ndim != 1:
        raise ValueError(f"timestep_embedding: expected t of shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


def sincos_2d(x: Tensor, y: Tensor, dim: int, n_freqs: int | None = None) -> Tensor:
    """Fixed code of points (x, y) in [0, 1] (same shape) -> (*x.shape, dim): [sin x, cos x, sin y, cos y] at
    ``n_freqs`` (default dim // 4) frequencies pi * 2^k / 2 (periods 4, 2, 1, ... units), scaled by 0.5 and
    zero-padded to ``dim``. Layout corner tokens and UNet attention positions share it, so a query's position
    and a box corner start in one code."""
    k = max(1, min(dim // 4, n_freqs or dim // 4))
    freqs = torch.pi * 2.0 ** torch.arange(k, dtype=torch.float32, device=x.device) / 2
    ax, ay = x.float()[..., None] * freqs, y.float()[..., None] * freqs  # (..., k)
    code = torch.cat([ax.sin(), ax.cos(), ay.sin(), ay.cos()], dim=-1)  # (..., 4k)
    return torch.nn.functional.pad(code, (0, dim - code.shape[-1])) * 0.5

"""Sinusoidal timestep embedding, in the original UNet's [cos, sin] order."""
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

"""Pixel-space diffusion: the original's ``IdentityFirstStage``, a first stage whose latent is the image.

It has no parameters and the same interface as :class:`~ldmkit.autoencoder.model.Autoencoder`, so the
pipeline, training (no latent cache: there is nothing to encode) and sampling run unchanged in pixel space.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AutoencoderConfig


class IdentityFirstStage(nn.Module):
    is_vq = False

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x  # (B, C, R, R)

    def encode_latents(self, x: torch.Tensor, sample: bool = True,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        return x  # (B, C, R, R)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the image, std 0): a deterministic "posterior", as for VQ latents."""
        return x, torch.zeros_like(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z  # (B, C, R, R)

    def code_indices(self, z: torch.Tensor) -> torch.Tensor:
        raise ValueError("code_indices: only VQ autoencoders have a codebook")

"""Latent regularisers: a diagonal Gaussian posterior (KL) or a vector quantiser (VQ).

Both map ``h = quant_conv(encoder(x))`` to ``(z, reg_loss, info)`` so the autoencoder treats
them alike.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DiagonalGaussian:
    """Posterior N(mean, diag(exp(logvar))) from moments ``(B, 2C, H, W)`` split along channels."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, C, H, W) each
        # Same clamp as the original, keeping exp() finite for untrained encoders.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        if isinstance(generator, (list, tuple)):  # one generator per sample, drawn where it lives, in float32
            if len(generator) != self.mean.shape[0]:
                raise ValueError(f"{len(generator)} generators for a batch of {self.mean.shape[0]}")
            noise = torch.stack([torch.randn(self.mean.shape[1:], generator=g, device=g.device).to(self.mean.device)
                                 for g in generator]).to(self.mean.dtype)
        else:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over C, H, W: shape (B,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class KLRegularizer(nn.Module):
    """Samples (or takes the mode of) the posterior; the loss is the KL summed over CHW, batch-averaged."""

    def forward(
        self, h: torch.Tensor, sample: bool = True, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        posterior = DiagonalGaussian(h)  # h: (B, 2e, h, w)
        z = posterior.sample(generator) if sample else posterior.mode()  # (B, e, h, w)
        return z, posterior.kl().mean(), {"posterior": posterior}


class VQRegularizer(nn.Module):
    """Nearest-neighbour vector quantiser with a straight-through gradient (taming ``VectorQuantizer2``).

    The loss keeps the taming "legacy" placement of ``beta`` on the codebook term:
    ``mean((sg[zq] - z)^2) + beta * mean((zq - sg[z])^2)``; original VQ checkpoints were trained so.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_embed = n_embed
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, h: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Quantise ``h`` (B, e, H, W). ``sample`` is accepted for a common interface; VQ is deterministic."""
        b, e, height, width = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, e)  # (N, e), N = B*H*W
        codebook = self.embedding.weight  # (K, e)
        # ||z - c||^2 = ||z||^2 + ||c||^2 - 2 z.c, without materialising (N, K, e).
        dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2.0 * flat @ codebook.t()  # (N, K)
        indices = dist.argmin(dim=1)  # (N,)
        zq = self.embedding(indices).view(b, height, width, e).permute(0, 3, 1, 2)  # (B, e, H, W)
        loss = F.mse_loss(zq.detach(), h) + self.beta * F.mse_loss(zq, h.detach())
        zq = h + (zq - h).detach()  # straight-through: forward zq, gradient of identity into h

        counts = torch.bincount(indices, minlength=self.n_embed).to(h.dtype)  # (K,)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        info = {
            "perplexity": perplexity,
            "usage": (counts > 0).to(h.dtype).mean(),  # fraction of codebook entries hit in this batch
            "indices": indices.view(b, height, width),
        }
        return zq, loss, info

"""First-stage training loss: reconstruction (+LPIPS) + KL or codebook term + adaptive-weight PatchGAN.

Follows the original ``LPIPSWithDiscriminator`` (KL) and taming ``VQLPIPSWithDiscriminator`` (VQ).
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from .config import AutoencoderLossConfig
from .discriminator import NLayerDiscriminator
from .lpips import LPIPS


def disc_factor(step: int, start: int, factor: float) -> float:
    """GAN weight schedule: 0 before ``start``, ``factor`` from then on."""
    return factor if step >= start else 0.0


def adaptive_weight(nll: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor, disc_weight: float,
                    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Balance the GAN term against the reconstruction term by their gradient norms at the last layer.

    ``||d nll/dW|| / (||d g/dW|| + 1e-4)``, clamped to [0, 1e4], detached, times ``disc_weight``.
    ``reduce`` (data-parallel training: the mean over processes) turns each process's gradients into
    the global batch's before the norms are taken, so every process uses the same weight.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
    if reduce is not None:
        nll_grad, g_grad = reduce(nll_grad), reduce(g_grad)
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


class AutoencoderLoss(nn.Module):
    """Holds the discriminator and the optional frozen LPIPS; two losses for the two optimisers.

    Attribute names match the original's ``loss.*`` keys (``discriminator.main.*``,
    ``perceptual_loss.net.slice*``), so its standalone first-stage checkpoints map 1:1.
    """

    def __init__(self, cfg: AutoencoderLossConfig, kind: Literal["kl", "vq"], in_channels: int) -> None:
        super().__init__()
        if kind not in ("kl", "vq"):
            raise ValueError(f"kind: expected 'kl' or 'vq', got {kind!r}")
        self.cfg = cfg
        self.kind = kind
        self.perceptual_loss: LPIPS | None = None
        if cfg.perceptual_weight > 0:
            if not cfg.lpips_path:
                raise ConfigError(
                    f"loss.lpips_path: perceptual_weight={cfg.perceptual_weight} needs LPIPS weights; set "
                    "`loss.lpips_path` to a VGG16+LPIPS state dict (or 'vgg16.pth,vgg.pth') "
                    "or `loss.perceptual_weight=0`"
                )
            if in_channels not in (1, 3):
                raise ConfigError(f"loss.perceptual_weight: LPIPS needs 1- or 3-channel images, got {in_channels}")
            self.perceptual_loss = LPIPS.from_file(cfg.lpips_path)
        self.discriminator = NLayerDiscriminator(in_channels, cfg.disc_ndf, cfg.disc_num_layers)
        self.grad_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # see adaptive_weight

    def _rec(self, x: torch.Tensor, xrec: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        diff = xrec - x
        rec = diff.abs() if self.cfg.rec_loss == "l1" else diff.pow(2)  # (B, C, H, W)
        log = {"rec_loss": rec.detach().mean().item()}
        if self.perceptual_loss is not None:
            p = self.perceptual_loss(x, xrec).view(-1, 1, 1, 1)  # (B, 1, 1, 1), broadcast per pixel as the original
            rec = rec + self.cfg.perceptual_weight * p
            log["p_loss"] = p.detach().mean().item()
        return rec, log

    def generator_loss(
        self, x: torch.Tensor, xrec: torch.Tensor, reg_loss: torch.Tensor, last_layer: torch.Tensor, global_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Autoencoder objective. ``reg_loss`` is the batch-mean KL (kind 'kl') or the codebook loss ('vq')."""
        rec, log = self._rec(x, xrec)
        if self.kind == "kl":
            # The original divides by exp(logvar) and adds logvar, with logvar an nn.Parameter
            # initialised to 0 that no optimiser ever updates; it is the constant 0 here.
            nll = rec.sum() / rec.shape[0]
            reg = self.cfg.kl_weight * reg_loss
        else:
            nll = rec.mean()
            reg = self.cfg.codebook_weight * reg_loss
        factor = disc_factor(global_step, self.cfg.disc_start, self.cfg.disc_factor)
        total = nll + reg
        if factor > 0:  # before disc_start the discriminator is not even run
            g = -self.discriminator(xrec).mean()
            if torch.is_grad_enabled() and nll.requires_grad and g.requires_grad:
                d_weight = adaptive_weight(nll, g, last_layer, self.cfg.disc_weight, self.grad_reduce)
            else:  # evaluation without autograd: the original also falls back to 0
                d_weight = torch.zeros((), device=x.device)
            total = total + d_weight * factor * g
            log.update(g_loss=g.item(), d_weight=d_weight.item())
        log.update(
            total_loss=total.item(),
            nll_loss=nll.item(),
            **{"kl_loss" if self.kind == "kl" else "codebook_loss": reg_loss.item()},
            disc_factor=factor,
        )
        return total, log

    def discriminator_loss(
        self, x: torch.Tensor, xrec: torch.Tensor, global_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """PatchGAN objective on real ``x`` and (detached) reconstructions, scaled by the disc_factor schedule.

        It runs even before ``disc_start`` (then scaled by 0), as the original, so the returned loss
        always has a graph to backpropagate; skip the call to save compute before then.
        """
        real = self.discriminator(x.detach())  # (B, 1, h, w)
        fake = self.discriminator(xrec.detach())
        if self.cfg.disc_loss == "hinge":
            loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        else:
            loss = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
        factor = disc_factor(global_step, self.cfg.disc_start, self.cfg.disc_factor)
        total = factor * loss
        log = {"disc_loss": total.item(), "logits_real": real.detach().mean().item(),
               "logits_fake": fake.detach().mean().item(), "disc_factor": factor}
        return total, log

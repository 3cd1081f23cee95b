"""First-stage autoencoder: Encoder, Decoder and the KL / VQ ``Autoencoder`` wrapper.

Module structure mirrors the original so ``state_dict`` keys match it exactly, e.g.
``encoder.down.0.block.0.norm1.weight``, ``decoder.up.0.block.2.conv2.weight``,
``encoder.mid.attn_1.q.weight``, ``quant_conv.weight``, ``quantize.embedding.weight``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.fused import group_norm_silu
from .blocks import AttnBlock, Downsample, ResnetBlock, Upsample, normalize
from .config import AutoencoderConfig
from .identity import IdentityFirstStage
from .regularizers import DiagonalGaussian, KLRegularizer, VQRegularizer


def _mid(channels: int, cfg: AutoencoderConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg.dropout)
    # attn_type "none" in the original is an Identity, which contributes no keys.
    mid.attn_1 = AttnBlock(channels) if cfg.mid_attn else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, cfg.dropout)
    return mid


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


class Encoder(nn.Module):
    """Image (B, in_channels, R, R) -> moments (B, 2*z_channels or z_channels, R/f, R/f)."""

    def __init__(self, cfg: AutoencoderConfig, double_z: bool) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + cfg.ch_mult
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            c_in, c_out = cfg.ch * in_mult[i], cfg.ch * mult
            blocks = [ResnetBlock(c_in if j == 0 else c_out, c_out, cfg.dropout) for j in range(cfg.num_res_blocks)]
            attns = [AttnBlock(c_out) for _ in blocks] if res in cfg.attn_resolutions else []
            level = _level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = _mid(c, cfg)
        self.norm_out = normalize(c)
        self.conv_out = nn.Conv2d(c, 2 * cfg.z_channels if double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, R, R)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)  # (B, ch*mult_i, r, r)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, ch*mult_i, r/2, r/2)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))  # (B, ch*mult_last, R/f, R/f)
        return self.conv_out(group_norm_silu(self.norm_out, h))  # (B, (2)z, R/f, R/f)


class Decoder(nn.Module):
    """Latent (B, z_channels, R/f, R/f) -> image (B, in_channels, R, R); ``up.0`` is full resolution."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _mid(c, cfg)
        levels: list[nn.Module | None] = [None] * n
        # Built from the lowest resolution up, but stored by level index like the original's prepend.
        for i in reversed(range(n)):
            c_out = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(c if j == 0 else c_out, c_out, cfg.dropout) for j in range(cfg.num_res_blocks + 1)]
            attns = [AttnBlock(c_out) for _ in blocks] if res in cfg.attn_resolutions else []
            c = c_out
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c)
                res *= 2
            levels[i] = level
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)  # (B, ch*mult_last, R/f, R/f)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)  # (B, ch*mult_i, r, r)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, ch*mult_i, 2r, 2r)
        return self.conv_out(group_norm_silu(self.norm_out, h))  # (B, in_channels, R, R)


class Autoencoder(nn.Module):
    """KL (``AutoencoderKL``) or VQ (``VQModelInterface``) first stage.

    ``encode`` gives ``h = quant_conv(encoder(x))``: the posterior moments (KL, 2*embed_dim channels)
    or the continuous pre-quantisation latent (VQ). The regulariser turns h into z; for KL,
    ``DiagonalGaussian(model.encode(x))`` is q(z|x).
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        if cfg.kind == "identity":
            raise ValueError("Autoencoder: kind 'identity' has no network; build_autoencoder gives IdentityFirstStage")
        self.cfg = cfg
        self.is_vq = cfg.kind == "vq"
        self.encoder = Encoder(cfg, double_z=not self.is_vq)
        self.decoder = Decoder(cfg)
        z, e = cfg.z_channels, cfg.embed_dim
        self.quant_conv = nn.Conv2d(z if self.is_vq else 2 * z, e if self.is_vq else 2 * e, 1)
        self.post_quant_conv = nn.Conv2d(e, z, 1)
        # The VQ codebook must live at `quantize.embedding.weight` (the original key); the KL
        # regulariser has no parameters, so its attribute name never reaches a state_dict.
        self._reg_name = "quantize" if self.is_vq else "kl_regularizer"
        reg = VQRegularizer(cfg.n_embed, e, cfg.beta) if self.is_vq else KLRegularizer()
        self.add_module(self._reg_name, reg)

    @property
    def regularizer(self) -> nn.Module:
        """The ``KLRegularizer`` or ``VQRegularizer`` (registered as ``quantize`` for VQ)."""
        return getattr(self, self._reg_name)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight the adaptive GAN weight differentiates against (original ``get_last_layer``)."""
        return self.decoder.conv_out.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (B, 2e or e, R/f, R/f)

    def encode_latents(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Latents the diffusion model works on: a posterior sample (or mode) for KL,
        the continuous pre-quantisation h for VQ (quantised only at ``decode``, as in LDM)."""
        h = self.encode(x)
        if self.is_vq:
            return h  # (B, e, R/f, R/f)
        posterior = DiagonalGaussian(h)
        return posterior.sample(generator) if sample else posterior.mode()  # (B, e, R/f, R/f)

    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of q(z|x); VQ latents are deterministic (std 0). Lets callers cache the
        encoding of a data set once and still draw a fresh posterior sample every step."""
        h = self.encode(x)
        if self.is_vq:
            return h, torch.zeros_like(h)
        posterior = DiagonalGaussian(h)
        return posterior.mean, posterior.std  # (B, e, R/f, R/f) each

    def code_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Codebook index of every latent position (VQ only): (B, R/f, R/f)."""
        if not self.is_vq:
            raise ValueError("code_indices: only VQ autoencoders have a codebook")
        return self.quantize(z)[2]["indices"]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.is_vq:
            z = self.quantize(z)[0]  # snap diffused pre-quant latents onto the codebook
        return self.decoder(self.post_quant_conv(z))  # (B, in_channels, R, R)

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        h = self.encode(x)  # (B, 2e or e, R/f, R/f)
        kwargs = {} if self.is_vq else {"generator": generator}
        z, reg_loss, info = self.regularizer(h, sample=sample_posterior, **kwargs)  # z: (B, e, R/f, R/f)
        xrec = self.decoder(self.post_quant_conv(z))  # (B, in_channels, R, R)
        return xrec, reg_loss, info


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder | IdentityFirstStage:
    """The first stage a config describes: KL / VQ :class:`Autoencoder`, or the pixel-space identity."""
    return IdentityFirstStage(cfg) if cfg.kind == "identity" else Autoencoder(cfg)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[Autoencoder, AutoencoderConfig, float]:
    """An ``autoencoder.safetensors`` release -> (frozen model in eval mode, its config, scale_factor)."""
    from ..config import ConfigError, from_dict
    from ..weights import load_release

    tensors, meta = load_release(Path(path))
    if meta.get("kind") != "autoencoder":
        raise ConfigError(f"{path}: not an ldmkit autoencoder file (kind={meta.get('kind')!r})")
    cfg = from_dict(AutoencoderConfig, meta["config"])
    model = build_autoencoder(cfg)
    model.load_state_dict(tensors)
    return model.to(device).eval().requires_grad_(False), cfg, float(meta.get("scale_factor", 1.0))

"""The model pairs of benchmarks/perf_vs_diffusers.py: one architecture built in ldmkit and in diffusers, with
identical weights copied through ldmkit's own converter (``to_diffusers`` + the key maps), so any time difference
is the implementation's, not the model's.

Sizes (the issue's): an LDM-style conditional UNet on 32x32x4 latents (model_channels 128, channel_mult 1,2,4, two
res blocks, SpatialTransformers at ds 2 and 4 with 8 heads, context 77 x 512) and the original kl-f4 / kl-f8 first
stages (configs/autoencoder/kl-f4-256.yaml, kl-f8-256.yaml). ``tiny=True`` shrinks all of them for a smoke test.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ldmkit.autoencoder import Autoencoder, AutoencoderConfig
from ldmkit.config import from_dict, load_yaml
from ldmkit.convert.diffusers_config import autoencoder_config_to_diffusers, unet_config_to_diffusers
from ldmkit.convert.diffusers_keys import autoencoder_key_map, to_diffusers, unet_key_map
from ldmkit.nn import UNetConfig, UNetModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "autoencoder"


@dataclass(frozen=True)
class Sizes:
    """Shapes of one benchmark run."""

    unet: UNetConfig
    latent: int  # latent side (square)
    context_len: int
    train_batch: int
    sample_batch: int  # images per guided sample (the UNet sees twice as many)
    vae_sizes: tuple[int, ...]  # pixel sides for encode / decode
    vae_batch: int


def sizes(tiny: bool) -> Sizes:
    if tiny:
        unet = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_resolutions=(2,), num_heads=2, context_dim=32)
        return Sizes(unet, latent=8, context_len=7, train_batch=2, sample_batch=1, vae_sizes=(16, 32), vae_batch=1)
    unet = UNetConfig(in_channels=4, out_channels=4, model_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2,
                      attention_resolutions=(2, 4), num_heads=8, context_dim=512)
    return Sizes(unet, latent=32, context_len=77, train_batch=8, sample_batch=4, vae_sizes=(64, 256), vae_batch=1)


def autoencoder_config(name: str, tiny: bool) -> AutoencoderConfig:
    """The model section of configs/autoencoder/<name>-256.yaml (``tiny``: ch 32, one res block)."""
    cfg = from_dict(AutoencoderConfig, load_yaml(CONFIGS / f"{name}-256.yaml")["model"], prefix="model")
    return replace(cfg, ch=32, num_res_blocks=1) if tiny else cfg


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere: zero-initialised output layers would make both models return 0 and hide a
    mismatch (the outputs are compared, see ``check_same``)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            noise = torch.randn(t.shape, generator=g)
            # weights ~ N(0, 1 / fan_in) keep activations O(1) through the depth; norms and biases near their init
            t.copy_(noise / t[0].numel() ** 0.5 if t.ndim > 1 else t + 0.1 * noise)
    return module


def unet_pair(cfg: UNetConfig, latent: int) -> tuple[UNetModel, nn.Module]:
    """(ldmkit UNetModel, diffusers UNet2DConditionModel) with the same weights."""
    from diffusers import UNet2DConditionModel

    ours = randomize(UNetModel(cfg))
    theirs = UNet2DConditionModel.from_config(unet_config_to_diffusers(cfg, latent))
    theirs.load_state_dict(to_diffusers(ours.state_dict(), unet_key_map(cfg)))
    return ours, theirs


def vae_pair(cfg: AutoencoderConfig) -> tuple[Autoencoder, nn.Module]:
    """(ldmkit Autoencoder, diffusers AutoencoderKL) with the same weights."""
    from diffusers import AutoencoderKL

    ours = randomize(Autoencoder(cfg))
    theirs = AutoencoderKL.from_config(autoencoder_config_to_diffusers(cfg, 1.0))
    theirs.load_state_dict(to_diffusers(ours.state_dict(), autoencoder_key_map(cfg)))
    return ours, theirs


# One calling convention for both sides: (x, t, context) -> eps.
def unet_fn(model: nn.Module):
    if isinstance(getattr(model, "_orig_mod", model), UNetModel):  # _orig_mod: under torch.compile
        return lambda x, t, ctx: model(x, t, context=ctx)
    return lambda x, t, ctx: model(x, t, encoder_hidden_states=ctx, return_dict=False)[0]


def vae_encode_fn(model: nn.Module):
    """Image -> posterior moments (the encoder + quant_conv, no sampling)."""
    if isinstance(model, Autoencoder):
        return model.encode
    return lambda x: model.encode(x, return_dict=False)[0].parameters


def vae_decode_fn(model: nn.Module):
    if isinstance(model, Autoencoder):
        return model.decode
    return lambda z: model.decode(z, return_dict=False)[0]

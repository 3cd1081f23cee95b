"""The architecture of an original Stable Diffusion (or LDM-layout) single file, read off its keys and shapes.

A ``.ckpt`` / ``.safetensors`` without its YAML still says almost everything: every width, level, block count,
attention placement, the text tower and the inpainting channels are in the tensor shapes. Three facts are not:

- attention heads: SD 1.x uses 8 heads at every width, SD 2.x 64 channels per head (told apart by the text
  tower: CLIP ViT-L -> 8 heads, OpenCLIP ViT-H -> 64-channel heads), and CLIP text towers 64 channels per head;
- what the UNet predicts: SD 2.x 768 models predict v, the 512 "base", inpainting and depth models eps. The
  file name decides ("768" or "-v" -> v) unless ``prediction`` is given, and the choice is logged;
- upcast attention: set for SD 2.x, whose code always attends in float32 (2.1 768-v overflows float16);
- the noise schedule: every SD release trains on the same one (1000 steps, "linear" 0.00085-0.012), with latents
  scaled by 0.18215.

Shapes are read with :func:`shape_of`, so a lazy file is not read to infer its architecture.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from ..autoencoder import AutoencoderConfig
from ..config import ConfigError
from ..diffusion import ScheduleConfig
from ..nn import ConditionerConfig, UNetConfig
from ..nn.concat import ConcatConfig
from ..pipeline import PipelineConfig
from .clip_keys import openclip_layers
from .safe_load import shape_of

log = logging.getLogger(__name__)

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP, OPENCLIP = "cond_stage_model.transformer.", "cond_stage_model.model."
SD_SCHEDULE = dict(timesteps=1000, beta_schedule="linear", linear_start=0.00085, linear_end=0.012)
SD_SCALE = 0.18215
HEAD_WIDTH = 64  # channels per head of CLIP / OpenCLIP text towers and of SD 2.x's UNet


def _indices(keys: list[str], prefix: str) -> list[int]:
    """The distinct integers N of ``prefix + "N."`` keys, sorted."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pat.match(k))})


def _unknown(path: str, what: str) -> ConfigError:
    return ConfigError(f"{path}: cannot infer the architecture ({what}): pass --config with its original YAML")


def clip_conditioner(sd: Mapping[str, Tensor], kind: str, layer: str = "penultimate",
                     base: ConditionerConfig | None = None, path: str = "checkpoint") -> ConditionerConfig:
    """The sizes of the text tower stored under ``cond_stage_model.`` (kind clip / openclip), on top of ``base``
    (its clip_skip, pad token, tokenizer). ``layer`` (openclip): "penultimate" reads one layer below the top of a
    complete open_clip tower (one that still holds ``text_projection``; ldmkit and diffusers store it cut)."""
    keys = list(sd)
    base = base or ConditionerConfig(kind=kind)
    if kind == "clip":
        tower = CLIP + "text_model." if any(k.startswith(CLIP + "text_model.") for k in keys) else CLIP
        tok = tower + "embeddings.token_embedding.weight"
        pos = tower + "embeddings.position_embedding.weight"
        n_layer = len(_indices(keys, tower + "encoder.layers."))
        fc1 = tower + "encoder.layers.0.mlp.fc1.weight"
    else:
        tok, pos, fc1 = OPENCLIP + "token_embedding.weight", OPENCLIP + "positional_embedding", \
            OPENCLIP + "transformer.resblocks.0.mlp.c_fc.weight"
        n_layer = openclip_layers(k[len(OPENCLIP):] for k in keys if k.startswith(OPENCLIP))
        if layer == "penultimate" and OPENCLIP + "text_projection" in sd:
            n_layer -= 1
    if tok not in sd or fc1 not in sd or n_layer < 1:
        raise _unknown(path, f"no complete {kind} text tower under cond_stage_model.")
    vocab, width = shape_of(sd, tok)
    return ConditionerConfig(**{**base.__dict__, "kind": kind, "embed_dim": width, "n_layer": n_layer,
                                "n_head": max(1, width // HEAD_WIDTH), "max_length": shape_of(sd, pos)[0],
                                "vocab_size": vocab, "intermediate_size": shape_of(sd, fc1)[0]})


def _unet(sd: Mapping[str, Tensor], keys: list[str], text_kind: str, path: str) -> UNetConfig:
    stem = UNET + "input_blocks.0.0.weight"
    if stem not in sd or UNET + "out.2.weight" not in sd:
        raise _unknown(path, f"no {stem}")
    mc, in_ch = shape_of(sd, stem)[:2]
    mult, n_res, attn, level, depth, context, linear = [], [], [], 0, 1, None, False
    count = 0
    for i in _indices(keys, UNET + "input_blocks.")[1:]:
        block = f"{UNET}input_blocks.{i}."
        if block + "0.op.weight" in sd:  # Downsample: the level ends
            n_res.append(count)
            level, count = level + 1, 0
            continue
        if block + "0.out_layers.3.weight" not in sd:
            raise _unknown(path, f"input block {i} is neither a ResBlock nor a Downsample")
        width = shape_of(sd, block + "0.out_layers.3.weight")[0]
        if count == 0:
            mult.append(width // mc)
        count += 1
        if block + "1.proj_in.weight" in sd:
            attn.append(2 ** level)
            depth = max(depth, len(_indices(keys, block + "1.transformer_blocks.")))
            context = shape_of(sd, block + "1.transformer_blocks.0.attn2.to_k.weight")[1]
            linear = len(shape_of(sd, block + "1.proj_in.weight")) == 2
    n_res.append(count)
    if len(set(n_res)) != 1:
        raise _unknown(path, f"res blocks per level differ ({n_res})")
    heads = dict(num_heads=8) if text_kind == "clip" else dict(num_head_channels=HEAD_WIDTH)
    return UNetConfig(in_channels=in_ch, out_channels=shape_of(sd, UNET + "out.2.weight")[0], model_channels=mc,
                      channel_mult=tuple(mult), num_res_blocks=n_res[0], attention_resolutions=tuple(sorted(set(attn))),
                      use_spatial_transformer=context is not None, transformer_depth=depth, context_dim=context,
                      use_linear_in_transformer=linear, legacy=False, **heads)


def _vae(sd: Mapping[str, Tensor], keys: list[str], resolution: int, path: str) -> AutoencoderConfig:
    stem = VAE + "encoder.conv_in.weight"
    if stem not in sd or VAE + "quant_conv.weight" not in sd:
        raise _unknown(path, f"no KL first stage ({stem}, {VAE}quant_conv.weight)")
    if VAE + "quantize.embedding.weight" in sd:
        raise _unknown(path, "a VQ first stage")
    ch, in_ch = shape_of(sd, stem)[:2]
    levels = _indices(keys, VAE + "encoder.down.")
    mult = tuple(shape_of(sd, f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] // ch for i in levels)
    attn = tuple(resolution // 2 ** i for i in levels if f"{VAE}encoder.down.{i}.attn.0.q.weight" in sd)
    return AutoencoderConfig(kind="kl", in_channels=in_ch, resolution=resolution, ch=ch, ch_mult=mult,
                             num_res_blocks=len(_indices(keys, VAE + "encoder.down.0.block.")), attn_resolutions=attn,
                             mid_attn=VAE + "encoder.mid.attn_1.q.weight" in sd,
                             z_channels=shape_of(sd, VAE + "encoder.conv_out.weight")[0] // 2,
                             embed_dim=shape_of(sd, VAE + "quant_conv.weight")[0] // 2)


def guess_prediction(name: str, text_kind: str) -> str:
    """eps for SD 1.x and SD 2.x 512 / inpainting / depth files, v for SD 2.x 768 ("768", "-v")."""
    low = name.lower()
    if text_kind == "openclip" and ("768" in low or re.search(r"[-_]v[-_.]", low)) and "inpaint" not in low:
        return "v"
    return "eps"


def infer_sd_config(sd: Mapping[str, Tensor], path: str | Path, prediction: str | None = None) -> PipelineConfig:
    """PipelineConfig of an original SD single file (UNet, KL VAE and CLIP / OpenCLIP tower under the original
    prefixes)."""
    keys, name = list(sd), Path(path).name
    kind = "clip" if any(k.startswith(CLIP) for k in keys) else "openclip" if any(
        k.startswith(OPENCLIP) for k in keys) else None
    if kind is None:
        raise _unknown(str(path), "no CLIP (cond_stage_model.transformer.) or OpenCLIP (cond_stage_model.model.) "
                       "text encoder")
    conditioner = clip_conditioner(sd, kind, path=str(path))
    unet = _unet(sd, keys, kind, str(path))
    if unet.context_dim != conditioner.embed_dim:
        raise ConfigError(f"{path}: the text encoder's width {conditioner.embed_dim} is not the UNet's context "
                          f"width {unet.context_dim}")
    if prediction is None:
        prediction = guess_prediction(name, kind)
        if kind == "openclip":  # SD 1.x is always eps; for SD 2.x the name decided, so say so
            log.warning("%s: read as an SD 2.x %s-prediction model (from its name; --prediction eps|v to change)",
                        name, prediction)
    if kind == "openclip":  # SD 2.x's code attends in float32 (its 768-v logits overflow float16)
        unet = dataclasses.replace(unet, upcast_attention=True)
    latent = unet.out_channels
    resolution = 768 if prediction == "v" else 512  # the side each release was trained at
    vae = _vae(sd, keys, resolution, str(path))
    if vae.embed_dim != latent:
        raise _unknown(str(path), f"the UNet predicts {latent} channels, the VAE has {vae.embed_dim}")
    concat = ConcatConfig()
    if unet.in_channels == 2 * latent + 1:  # SD inpainting: [latents, mask, masked image latents]
        concat = ConcatConfig(kind="inpaint", inpaint_layout="sd", paste_known=False)
    elif unet.in_channels != latent:
        raise _unknown(str(path), f"the UNet takes {unet.in_channels} channels for {latent}-channel latents "
                       "(depth-to-image and other concat models are not inferred)")
    return PipelineConfig(autoencoder=vae, unet=unet, conditioner=conditioner,
                          diffusion=ScheduleConfig(**SD_SCHEDULE, parameterization=prediction),
                          scale_factor=SD_SCALE, concat=concat)

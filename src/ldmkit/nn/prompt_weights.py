"""Web-UI prompt syntax: attention weights on words and prompts longer than the encoder's window.

Grammar (AUTOMATIC1111's "attention" syntax, strict about brackets):

    (text)        weight x 1.1          [text]        weight / 1.1
    (text:1.5)    weight x 1.5          nesting multiplies: ((text)) is x 1.21
    \\( \\) \\[ \\] \\\\  literal characters  a ":" not followed by "number)" is literal text

Brackets must nest; an unmatched or crossing bracket is a one-line :class:`PromptSyntaxError` naming its column (1-based), where the web UI would
silently weight the rest of the prompt.

Encoding (:func:`encode_weighted`), as the web UIs do it: the prompt's content tokens are cut into chunks of
``max_length - 2`` tokens; each chunk is wrapped in the encoder's start / end tokens and padding, encoded on its
own, and the chunks are concatenated along the token axis (a 200-token CLIP prompt: 3 chunks, (3 x 77) tokens).
Each chunk's token states are multiplied by their tokens' weights, then rescaled so their mean is the unweighted
mean ("scale, then restore the mean"). The mean is taken per prompt and chunk (the web UI takes it over the
batch), so a prompt's encoding does not depend on the prompts beside it. A prompt with no syntax that fits one
chunk encodes exactly as without weighting.
"""
from __future__ import annotations

import math
import re
from typing import Protocol, Sequence

import torch
from torch import Tensor

ROUND, SQUARE = 1.1, 1 / 1.1

_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|]|[^\\()\[\]:]+|:")


class PromptSyntaxError(ValueError):
    """A prompt's brackets do not match; the message names the column."""


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """``text`` -> [(segment, weight), ...] with equal-weight neighbours merged; "" gives [("", 1.0)]."""
    segments: list[list] = []  # [text, weight]
    stack: list[tuple[str, int, int]] = []  # (bracket, index of the first segment inside, column)

    def close(char: str, col: int, factor: float) -> None:
        opener = "(" if char == ")" else "["
        if not stack:
            raise PromptSyntaxError(f"prompt: column {col}: '{char}' without a matching '{opener}'")
        bracket, start, at = stack.pop()
        if bracket != opener:
            raise PromptSyntaxError(f"prompt: column {col}: '{char}' closes the '{bracket}' of column {at}")
        for seg in segments[start:]:
            seg[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, col = m.group(0), m.start() + 1
        if tok.startswith("\\") and len(tok) == 2:
            segments.append([tok[1], 1.0])
        elif tok in ("(", "["):
            stack.append((tok, len(segments), col))
        elif m.group(1) is not None:
            weight = float(m.group(1))
            if not math.isfinite(weight):
                raise PromptSyntaxError(f"prompt: column {col}: weight {m.group(1)!r} is not a finite number")
            close(")", m.end(), weight)
        elif tok == ")":
            close(")", col, ROUND)
        elif tok == "]":
            close("]", col, SQUARE)
        else:
            segments.append([tok, 1.0])
    if stack:
        bracket, _, col = stack[-1]
        raise PromptSyntaxError(f"prompt: column {col}: '{bracket}' is never closed")
    merged: list[tuple[str, float]] = []
    for seg, weight in segments:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + seg, weight)
        else:
            merged.append((seg, weight))
    return merged or [("", 1.0)]


class ChunkEncoder(Protocol):
    """What a text conditioner offers :func:`encode_weighted`."""

    max_length: int

    def content_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` without start / end tokens or padding."""

    def encode_chunks(self, contents: Sequence[Sequence[int]]) -> Tensor:
        """Wrap each content (at most max_length - 2 ids) and encode: (N, max_length, hidden) float32 states."""

    def project(self, states: Tensor) -> Tensor:
        """Token states -> the context the UNet reads (a trained projection, or the identity)."""


def wrap_chunks(contents: Sequence[Sequence[int]], length: int, start_id: int, end_id: int,
                pad_id: int) -> tuple[Tensor, Tensor]:
    """start content end pad... of each content: (ids (N, length) long, attention mask (N, length) bool)."""
    ids = torch.full((len(contents), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(contents), length, dtype=torch.bool)
    for i, content in enumerate(contents):
        row = [start_id, *content, end_id]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = True
    return ids, mask


def _count(n_ids: int, size: int) -> int:
    return max(1, math.ceil(n_ids / size))  # the empty prompt still encodes one chunk


def prompt_tokens(encoder: ChunkEncoder, prompt: str) -> tuple[list[int], list[float]]:
    """Content ids of ``prompt`` and each one's weight."""
    ids, weights = [], []
    for text, weight in parse_prompt(prompt):
        part = encoder.content_ids(text) if text else []
        ids += part
        weights += [weight] * len(part)
    return ids, weights


def chunk_count(encoder: ChunkEncoder, prompt: str) -> int:
    return _count(len(prompt_tokens(encoder, prompt)[0]), encoder.max_length - 2)


def encode_weighted(encoder: ChunkEncoder, prompts: Sequence[str], chunks: int | None = None) -> Tensor:
    """Prompts -> (B, K x max_length, D) contexts, K = ``chunks`` (at least every prompt's own count; default:
    the largest of them); shorter prompts are padded with chunks of no content (as the empty prompt encodes)."""
    size = encoder.max_length - 2
    tokens = [prompt_tokens(encoder, p) for p in prompts]
    need = max(_count(len(ids), size) for ids, _ in tokens)
    k = need if chunks is None else chunks
    if k < need:
        raise ValueError(f"chunks: {k} is fewer than the longest prompt needs ({need})")
    contents, weights = [], []
    for ids, ws in tokens:
        for c in range(k):
            contents.append(ids[c * size:(c + 1) * size])
            row = torch.ones(encoder.max_length)
            part = torch.tensor(ws[c * size:(c + 1) * size], dtype=torch.float32)
            row[1:1 + len(part)] = part  # position 0 is the start token
            weights.append(row)
    states = encoder.encode_chunks(contents)  # (B * K, L, H)
    w = torch.stack(weights).to(states.device, states.dtype)[..., None]  # (B * K, L, 1)
    if (w != 1).any():
        before = states.mean(dim=(1, 2), keepdim=True)
        states = states * w
        states = states * (before / states.mean(dim=(1, 2), keepdim=True))
    states = states.reshape(len(prompts), k * encoder.max_length, -1)  # (B, K L, H)
    return encoder.project(states)

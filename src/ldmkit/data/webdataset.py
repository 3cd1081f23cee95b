"""WebDataset-style tar shards, streamed: no index, no random access, any size (``data.name: webdataset``).

A shard is a plain (or gzipped) tar; a sample is the files that share a key, the path up to the first dot
of the file name: ``000123.jpg`` + ``000123.txt`` + ``000123.json``. Parts read: the image (``png``,
``jpg``, ``jpeg`` or ``webp``), the caption (``txt``) and JSON with ``"class"`` (int) and / or ``"caption"``;
other parts are ignored. The files of one sample must be adjacent in the tar, as every shard writer
(``ldmkit make-shards``, ``webdataset``'s ``TarWriter``, ``tar`` over sorted names) leaves them.

Shards are read with :mod:`tarfile` in streaming mode (``r|*``): each member once, in order, and only the
current sample is held. This module lists shards, reads raw samples and decodes them; the order across
epochs and ranks, the shuffle buffer and the resumable position are the training stream's
(``training/shard_stream.py``). It does not depend on the ``webdataset`` package.
"""
from __future__ import annotations

import glob
import io
import json
import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from .config import DataConfig, DataError
from .transforms import ImageTransform

IMAGE_PARTS = ("png", "jpg", "jpeg", "webp")
TEXT_PARTS = ("txt", "json")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CLASSES_FILE = "classes.json"   # class names (a JSON list), beside the shards: ``ldmkit make-shards`` writes it

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` -> a-000.tar a-001.tar a-002.tar; ``{x,y}`` lists.

    Numeric ranges keep zero padding (the width of the wider bound when either has a leading zero).
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = _RANGE.fullmatch(body)
    if r:
        a, b = r.groups()
        if int(b) < int(a):
            raise DataError(f"data.shards: range {{{body}}} runs backwards")
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        options = [str(i).zfill(width) for i in range(int(a), int(b) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [out for opt in options for out in expand_braces(head + opt + tail)]


def list_shards(root: str | None, spec: str, key: str = "data.shards") -> list[Path]:
    """The shard files ``spec`` names (brace lists and globs, relative to ``root`` when set), in the order
    given (globs sorted), or every ``*.tar`` / ``*.tar.gz`` directly under ``root`` (sorted) when ``spec``
    is empty. A named shard that does not exist is an error naming it."""
    base = Path(root).expanduser() if root else None
    if not spec:
        if base is None or not base.is_dir():
            raise DataError(f"data.root: {base} is not a folder (of .tar shards)")
        found = sorted(p for p in base.iterdir()
                       if p.name.endswith(SHARD_SUFFIXES) and not p.name.startswith(".") and p.is_file())
        if not found:
            raise DataError(f"data.root: no tar shards ({', '.join(SHARD_SUFFIXES)}) in {base}")
        return found
    paths: list[Path] = []
    for pattern in expand_braces(spec):
        path = Path(pattern).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        if any(c in str(path) for c in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(path)))
            if not matched:
                raise DataError(f"{key}: no file matches {path}")
            paths.extend(matched)
        elif not path.is_file():
            raise DataError(f"{key}: shard {path} not found")
        else:
            paths.append(path)
    return list(dict.fromkeys(paths))


def shard_ids(shards: list[Path]) -> list[str]:
    """Names of the shards relative to their common folder: what a checkpoint records (so a data set
    moved to another mount point, with the config's root changed to match, still resumes)."""
    common = os.path.commonpath([str(p.parent.resolve()) for p in shards])
    return [os.path.relpath(str(p.resolve()), common) for p in shards]


@dataclass
class RawSample:
    """One sample's undecoded parts, {extension (lower case): bytes}."""

    shard: Path
    key: str
    parts: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.shard.name}:{self.key}"


def read_shard(path: Path, parts: Container[str] | None = None) -> Iterator[RawSample]:
    """The samples of one shard, in tar order, reading only the ``parts`` extensions (all when None).

    A missing, truncated or corrupt shard raises a :class:`DataError` that names it.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r|*")
    except FileNotFoundError:
        raise DataError(f"data.shards: shard {path} not found") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar shard ({_first_line(e)})") from None
    with tar:
        current: RawSample | None = None
        try:
            for member in tar:
                if not member.isfile():
                    continue
                folder, base = posixpath.split(member.name)
                stem, dot, ext = base.partition(".")
                if not dot or not stem or base.startswith("."):
                    continue  # no extension, or hidden (macOS ._ files): not a sample part
                key = posixpath.join(folder, stem)
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = RawSample(path, key)
                ext = ext.lower()
                if parts is None or ext in parts:
                    current.parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt tar shard ({_first_line(e)})") from None
        if current is not None:
            yield current


def read_shards(shards: Iterable[Path], parts: Container[str] | None = None) -> Iterator[RawSample]:
    for shard in shards:
        yield from read_shard(shard, parts)


def _json_part(raw: RawSample) -> dict:
    if "json" not in raw.parts:
        return {}
    try:
        meta = json.loads(raw.parts["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{raw.shard}: {raw.key}.json is not valid JSON ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{raw.shard}: {raw.key}.json must hold an object like {{\"class\": 3}}")
    return meta


def sample_caption(raw: RawSample) -> str:
    """The ``.txt`` part, else the JSON's ``"caption"``, else ""."""
    if "txt" in raw.parts:
        try:
            return raw.parts["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{raw.shard}: {raw.key}.txt is not UTF-8 text") from None
    caption = _json_part(raw).get("caption", "")
    if not isinstance(caption, str):
        raise DataError(f"{raw.shard}: {raw.key}.json: \"caption\" must be a string, got {caption!r}")
    return caption


def read_class_names(folder: Path) -> list[str]:
    path = folder / CLASSES_FILE
    if not path.is_file():
        return []
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of class names")
    return names


class NoLengthError(DataError, TypeError):
    """``len()`` of a stream: a DataError for the CLI's one-line report, and a TypeError so that ``list()``
    and other length-hint users fall back to plain iteration."""


class WebDataset(IterableDataset):
    """Tar shards as a data source: ``data.shards`` (or every shard under ``data.root``) for the train split,
    ``data.test_shards`` for the test split.

    Items: ``image`` (C, S, S) in [-1, 1], resized + center-cropped like ``image_folder``; ``caption`` (""
    where a sample has none); ``label`` when the samples carry a class (``classes.json`` beside the shards,
    or a ``"class"`` in the first sample's JSON: then every sample must have one); ``key``
    (``shard.tar:KEY``). Iterating gives every sample in shard order; the training loops read it through
    :class:`~ldmkit.training.shard_stream.ShardStream` instead (shuffled, split across ranks, resumable).
    """

    streamed = True

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train") -> None:
        if split == "test" and not cfg.test_shards:
            raise DataError("data.test_shards: a webdataset has no held-out split of its own; set "
                            "data.test_shards=PATTERN (your validation shards)")
        key = "data.shards" if split == "train" else "data.test_shards"
        self.shards = list_shards(cfg.root, cfg.shards if split == "train" else cfg.test_shards, key)
        self.transform = ImageTransform(cfg.image_size, cfg.channels)
        self.flip = cfg.flip and split == "train"
        self.shuffle_buffer = cfg.shuffle_buffer
        folder = Path(cfg.root).expanduser() if cfg.root else self.shards[0].parent
        self.class_names = read_class_names(folder)
        self.num_classes: int | None = len(self.class_names) or None  # None: not known up front
        first = next(read_shards(self.shards), None)
        if first is None:
            raise DataError(f"{key}: the shards hold no samples (first: {self.shards[0]})")
        self.has_labels = bool(self.class_names) or "class" in _json_part(first)

    def __len__(self) -> int:
        raise NoLengthError("data.name: webdataset is streamed and has no length; this command needs an indexed "
                            "data set (image_folder, ...)")

    def raw_samples(self, shards: Iterable[Path] | None = None,
                    parts: Container[str] | None = None) -> Iterator[RawSample]:
        return read_shards(self.shards if shards is None else shards, parts)

    def decode(self, raw: RawSample, flip: bool = False) -> dict:
        """Raw parts -> an item (the image decoded, resized and cropped; mirrored when ``flip``)."""
        ext = next((e for e in IMAGE_PARTS if e in raw.parts), None)
        if ext is None:
            raise DataError(f"{raw.shard}: sample {raw.key} has no image ({', '.join(IMAGE_PARTS)})")
        try:
            with Image.open(io.BytesIO(raw.parts[ext])) as img:
                img.load()
                x = self.transform(img)  # (C, S, S)
        except Exception as e:  # PIL raises many types on malformed data
            raise DataError(f"{raw.shard}: {raw.key}.{ext} is not a readable image ({_first_line(e)})") from None
        item = {"image": x.flip(-1) if flip else x, "caption": sample_caption(raw)}
        if self.has_labels:
            item["label"] = torch.tensor(self._label(raw), dtype=torch.int64)
        item["key"] = raw.name
        return item

    def _label(self, raw: RawSample) -> int:
        label = _json_part(raw).get("class")
        if label is None:
            raise DataError(f"{raw.shard}: sample {raw.key} has no \"class\" in its .json (the data set has classes)")
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise DataError(f"{raw.shard}: {raw.key}.json: \"class\" must be an integer >= 0, got {label!r}")
        if self.num_classes is not None and label >= self.num_classes:
            raise DataError(f"{raw.shard}: {raw.key}.json: class {label} out of range for the "
                            f"{self.num_classes} classes of {CLASSES_FILE}")
        return label

    def __iter__(self) -> Iterator[dict]:
        return (self.decode(raw) for raw in self.raw_samples())

    def head(self, n: int) -> list[dict]:
        """The first ``n`` items in shard order (fewer when the shards hold fewer)."""
        out = []
        for raw in self.raw_samples():
            if len(out) == n:
                break
            out.append(self.decode(raw))
        return out

    def captions(self) -> Iterator[str]:
        """Every sample's caption, reading only the text parts (no image is decoded)."""
        return (sample_caption(raw) for raw in self.raw_samples(parts=TEXT_PARTS))

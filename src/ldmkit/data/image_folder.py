"""A folder of images (optionally one subfolder per class, optionally captioned) as a data set."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from .config import DataConfig, DataError
from .transforms import ImageTransform, load_image

log = logging.getLogger("ldmkit.data")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def scan(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, case-insensitive extensions, hidden entries
    skipped), sorted by relative path so the order and the train/test split are reproducible."""
    files = [p for p in root.rglob("*")
             if p.suffix.lower() in EXTENSIONS and p.is_file()
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_text(path: Path) -> str:
    """A caption file as text: UTF-8 (a byte-order mark is dropped); anything else is a one-line error naming it."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                        "save the captions as UTF-8") from None


def read_captions_jsonl(path: Path, file_key: str = "file", caption_keys: tuple[str, ...] = ("caption",)) -> dict[str, str]:
    """``captions.jsonl`` lines ``{"file": "rel/path.png", "caption": "..."}`` -> {rel path: caption}; diffusers'
    ``metadata.jsonl`` is the same with ``file_name`` and ``text`` (or ``caption`` / ``prompt``)."""
    captions: dict[str, str] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = next(row[k] for k in caption_keys if k in row)
            captions[Path(row[file_key]).as_posix()] = str(text)
        except (json.JSONDecodeError, KeyError, TypeError, StopIteration):
            raise DataError(f"{path}:{lineno}: expected {{\"{file_key}\": ..., \"{caption_keys[0]}\": ...}}, "
                            f"got {line.strip()[:80]!r}") from None
    return captions


def read_captions_json(path: Path) -> dict[str, str]:
    """``captions.json``: one mapping ``{"rel/path.png": "caption", ...}`` -> {rel path: caption}."""
    try:
        table = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise DataError(f"{path}: expected one mapping {{\"rel/path.png\": \"caption\", ...}}")
    return {Path(k).as_posix(): v for k, v in table.items()}


def folder_classes(root: Path, files: list[Path]) -> list[str]:
    """Sorted first-level subfolder names when *every* image lies in one (the class names), else []."""
    rel = [p.relative_to(root) for p in files]
    return sorted({r.parts[0] for r in rel}) if all(len(r.parts) >= 2 for r in rel) else []


def folder_captions(root: Path, files: list[Path]) -> list[str | None]:
    """Each file's caption: a sidecar ``x.txt`` wins over ``captions.jsonl``, then ``metadata.jsonl``, then
    ``captions.json`` at the root; None where an image has none."""
    table: dict[str, str] = {}
    if (root / "captions.json").is_file():
        table |= read_captions_json(root / "captions.json")
    if (root / "metadata.jsonl").is_file():  # diffusers' / kohya's image-folder layout
        table |= read_captions_jsonl(root / "metadata.jsonl", "file_name", ("text", "caption", "prompt"))
    if (root / "captions.jsonl").is_file():
        table |= read_captions_jsonl(root / "captions.jsonl")
    captions: list[str | None] = []
    for path in files:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            captions.append(read_text(sidecar).strip())
        else:
            captions.append(table.get(path.relative_to(root).as_posix()))
    return captions


class ImageFolder(Dataset):
    """Images under ``cfg.root``, resized + center-cropped to ``cfg.image_size``.

    Split: files are sorted by relative path and every ``cfg.test_every``-th one (index % 10 == 0 by
    default) is held out as "test"; the rest is "train" (``test_every=0``: every file trains).
    Deterministic, no seed needed, and stable when files are added at the end of the order.

    Labels: only when *every* image lies in a first-level subfolder; the sorted subfolder
    names are the classes. Captions: a sidecar ``x.txt`` next to ``x.png``, else the
    ``captions.jsonl`` (or ``captions.json``) entry at the root; when any image has a caption, every item has a
    ``caption`` (empty string when missing) so batches collate uniformly.

    Corrupt files never crash an epoch: a file that fails to decode is recorded in
    ``bad_files``, counted in ``skipped`` and replaced by the next readable one. Call
    :meth:`verify` to find them all up front instead. (With DataLoader workers the
    counters live in each worker's copy.)
    """

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train",
                 generator: torch.Generator | None = None) -> None:
        if not cfg.root:
            raise DataError("root: image_folder needs data.root=DIR (a folder of images)")
        self.root = Path(cfg.root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"root: {self.root} is not a folder")
        all_files = scan(self.root)
        if not all_files:
            raise DataError(f"no images ({', '.join(EXTENSIONS)}) found under {self.root}")
        self.class_names = folder_classes(self.root, all_files)
        self.num_classes = len(self.class_names)
        every = cfg.test_every
        keep = [i for i in range(len(all_files)) if bool(every) and (i % every == 0) == (split == "test")
                or not every and split == "train"]
        self.files = [all_files[i] for i in keep]
        if not self.files:
            held = f"every {every}th is held out as test" if every else "data.test_every=0 holds none out"
            raise DataError(f"no images in the {split} split of {self.root} ({len(all_files)} file(s); {held})")
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = [index[all_files[i].relative_to(self.root).parts[0]] if self.num_classes else -1
                       for i in keep]
        self.captions = folder_captions(self.root, self.files)
        self.has_captions = any(c is not None for c in self.captions)
        self.transform = ImageTransform(cfg.image_size, cfg.channels, cfg.flip and split == "train",
                                        generator)
        self.skipped = 0
        self.bad_files: list[str] = []

    def __len__(self) -> int:
        return len(self.files)

    def _item(self, i: int) -> dict:
        item: dict = {"image": self.transform(load_image(self.files[i]))}
        if self.num_classes:
            item["label"] = torch.tensor(self.labels[i], dtype=torch.int64)
        if self.has_captions:
            item["caption"] = self.captions[i] or ""
        return item

    def _mark_bad(self, i: int, error: Exception) -> None:
        path = str(self.files[i])
        if not self.skipped:
            log.warning("skipping unreadable image %s (%s); further ones are counted in .skipped",
                        path, error)
        else:
            log.debug("skipping unreadable image %s (%s)", path, error)
        self.skipped += 1
        self.bad_files.append(path)

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        bad = set(self.bad_files)
        for step in range(n):
            i = (index + step) % n
            if str(self.files[i]) in bad:
                continue
            try:
                return self._item(i)
            except Exception as e:  # PIL raises many types on malformed data; never crash an epoch
                self._mark_bad(i, e)
                bad.add(str(self.files[i]))
        raise DataError(f"no readable images in {self.root} ({len(self.bad_files)} failed to decode, "
                        f"first: {self.bad_files[0] if self.bad_files else '?'})")

    def verify(self) -> int:
        """Open every file now (PIL ``verify`` + full decode), drop the unreadable ones.

        Returns how many were dropped; emits one warning summarising them. Costs one
        decode per file, so it is opt-in rather than done in the constructor.
        """
        good = []
        bad = list(self.bad_files)
        for i, path in enumerate(self.files):
            if str(path) in self.bad_files:
                continue
            try:
                with Image.open(path) as img:
                    img.verify()
                load_image(path)
                good.append(i)
            except Exception:  # same reason as __getitem__: any decode failure means skip
                bad.append(str(path))
        self.files = [self.files[i] for i in good]
        self.labels = [self.labels[i] for i in good]
        self.captions = [self.captions[i] for i in good]
        self.bad_files, self.skipped = bad, len(bad)
        if bad:
            log.warning("skipped %d unreadable image(s) in %s (first: %s)", len(bad), self.root, bad[0])
        if not self.files:
            raise DataError(f"no readable images in {self.root} ({len(bad)} unreadable, first: {bad[0]})")
        return len(bad)

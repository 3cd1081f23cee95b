"""``ldmkit make-shards``: an image folder -> WebDataset-style tar shards (read back by data.name=webdataset).

Every image becomes one sample ``NNNNNNNN.<ext>`` (the file's own bytes; ``.bmp`` is re-encoded as PNG, the
reader does not take it) + ``NNNNNNNN.json`` ({"file": its path under the folder, "class": its class index
when the folder has class subfolders}) + ``NNNNNNNN.txt`` when it has a caption (a sidecar ``x.txt``,
``captions.jsonl`` or ``captions.json``: the same rules as ``image_folder``). Images are taken in the
sorted order of ``image_folder`` (all of them: no test split is held out), ``per_shard`` to a shard.
Shards are byte-for-byte reproducible (fixed member metadata) and written atomically; the class names go
to ``classes.json`` beside them.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable

from PIL import Image

from ..weights import atomic_write
from .config import DataError
from .image_folder import folder_captions, folder_classes, scan
from .webdataset import CLASSES_FILE, IMAGE_PARTS


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the same folder, the same bytes
    tar.addfile(info, io.BytesIO(data))


def _image_part(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) as stored: the file itself, or a PNG for formats the reader does not take."""
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_PARTS:
        return ext, path.read_bytes()
    buf = io.BytesIO()
    try:
        with Image.open(path) as img:
            img.save(buf, format="PNG")
    except Exception as e:  # PIL raises many types on malformed data
        raise DataError(f"{path}: not a readable image ({e})") from None
    return "png", buf.getvalue()


def write_shards(folder: str | Path, out_dir: str | Path, per_shard: int = 1000, prefix: str = "shard",
                 log: Callable[[str], None] | None = None) -> list[Path]:
    """Write the images under ``folder`` into ``out_dir/<prefix>-NNNNN.tar``; returns the shard paths."""
    root = Path(folder).expanduser()
    if per_shard < 1:
        raise DataError(f"--per-shard: must be >= 1, got {per_shard}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = scan(root)
    if not files:
        raise DataError(f"{root}: no images found")
    classes = folder_classes(root, files)
    class_index = {name: i for i, name in enumerate(classes)}
    captions = folder_captions(root, files)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(files), per_shard)):
        path = out / f"{prefix}-{k:05d}.tar"

        def write(tmp: Path, start: int = start) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, min(start + per_shard, len(files))):
                    key, rel = f"{i:08d}", files[i].relative_to(root)
                    ext, data = _image_part(files[i])
                    _add(tar, f"{key}.{ext}", data)
                    meta = {"file": rel.as_posix()} | ({"class": class_index[rel.parts[0]]} if classes else {})
                    _add(tar, f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())
                    if captions[i] is not None:
                        _add(tar, f"{key}.txt", captions[i].encode())

        atomic_write(path, write)
        os.chmod(path, 0o644)  # the temporary file's 0600 would hide shards from other users and nodes
        shards.append(path)
        if log:
            log(f"{path}: {min(start + per_shard, len(files)) - start} samples")
    if classes:
        atomic_write(out / CLASSES_FILE, lambda tmp: Path(tmp).write_text(json.dumps(classes, ensure_ascii=False)))
        os.chmod(out / CLASSES_FILE, 0o644)
    return shards

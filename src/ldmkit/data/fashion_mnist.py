"""Fashion-MNIST from the official IDX files, found locally or (opt-in) downloaded.

Lookup order: ``cfg.root``; ``$LDMKIT_FASHION_MNIST``; the Debian package location
(``apt-get install dataset-fashion-mnist``); the user cache ``~/.cache/ldmkit/fashion-mnist``
(``$XDG_CACHE_HOME`` respected). Only with ``download=True`` is the network used, and every
downloaded file is md5-checked before it is moved into place.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import DataConfig, DataError, DataNotFoundError
from .transforms import random_hflip

BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def cache_dir() -> Path:
    """The user cache folder the download goes to (read at call time, so tests can redirect it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ldmkit" / "fashion-mnist"


def candidate_dirs(root: str | None = None) -> list[Path]:
    """Folders searched for the IDX files, in priority order."""
    dirs = [Path(root).expanduser()] if root else []
    if os.environ.get("LDMKIT_FASHION_MNIST"):
        dirs.append(Path(os.environ["LDMKIT_FASHION_MNIST"]).expanduser())
    return dirs + [Path(SYSTEM_DIR), cache_dir()]


def _find(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder``; the raw file wins because it loads faster."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_split(split: str, root: str | None = None) -> tuple[Path, Path] | None:
    """(images, labels) paths from the first candidate folder that holds both, else None."""
    for folder in candidate_dirs(root):
        images, labels = (_find(folder, stem) for stem in STEMS[split])
        if images and labels:
            return images, labels
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (optionally gzipped) into a uint8 array.

    The header is checked (magic 0x0000 08 ndim, dims matching the payload length) so a
    wrong, truncated or half-downloaded file fails here with its name, not as a garbled image.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path}: IDX payload is {len(data) - header} bytes, header says {expected - header} "
                        f"for shape {dims} (truncated or corrupt file)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def download(dest: Path | None = None, base_url: str | None = None,
             checksums: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch the four official .gz files into ``dest`` (default: the user cache).

    Each file is streamed to a temporary file in ``dest``, its md5 checked, and only then
    renamed into place, so an interrupted or tampered download never looks like valid data.
    Files already present with the right checksum are kept.
    """
    dest = Path(dest) if dest else cache_dir()
    base_url = base_url or os.environ.get("LDMKIT_FASHION_MNIST_URL") or BASE_URL
    checksums = MD5 if checksums is None else checksums
    dest.mkdir(parents=True, exist_ok=True)
    for name, want in checksums.items():
        target = dest / name
        if target.is_file() and _md5(target) == want:
            continue
        url = base_url.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=dest)
        digest = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as e:
            os.unlink(tmp)
            raise DataError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
        if digest.hexdigest() != want:
            os.unlink(tmp)
            raise DataError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {want} "
                            "(download deleted)")
        os.replace(tmp, target)
    return dest


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FashionMNIST(Dataset):
    """Fashion-MNIST, one official split kept in memory as uint8 (train: 60k, test: the 10k t10k).

    Items: ``image`` (C, S, S) in [-1, 1] and ``label``. At image_size 32 the 28x28 digits are
    padded by 2 px of background (-1) rather than resized, so no pixel is interpolated; other
    sizes are resized bilinearly.
    """

    num_classes = 10
    class_names = CLASS_NAMES

    def __init__(self, cfg: DataConfig, split: Literal["train", "test"] = "train",
                 generator: torch.Generator | None = None, base_url: str | None = None,
                 checksums: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.split = split
        self.flip = cfg.flip and split == "train"
        self.generator = generator
        self.skipped = 0
        self._images_cache: torch.Tensor | None = None
        paths = find_split(split, cfg.root)
        if paths is None and cfg.download:
            download(base_url=base_url, checksums=checksums)
            paths = find_split(split, cfg.root)
        if paths is None:
            looked = ", ".join(str(d) for d in candidate_dirs(cfg.root))
            raise DataNotFoundError(
                f"Fashion-MNIST {split} files ({STEMS[split][0]}[.gz], {STEMS[split][1]}[.gz]) not found in: "
                f"{looked}; install them with `apt-get install dataset-fashion-mnist`, "
                "point data.root=DIR at a folder holding them, or set data.download=true")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{paths[0]} / {paths[1]}: expected (N, H, W) images and N labels, "
                            f"got {images.shape} and {labels.shape}")
        if labels.size and labels.max() >= self.num_classes:
            raise DataError(f"{paths[1]}: label {labels.max()} out of range 0..9")
        self.paths = paths
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def _preprocess(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 28, 28) -> float32 (B, 1, S, S) in [-1, 1]."""
        x = u8.float().div_(127.5).sub_(1.0).unsqueeze(1)
        size, h = self.cfg.image_size, x.shape[-1]
        if size == 32 and h == 28:
            x = F.pad(x, (2, 2, 2, 2), value=-1.0)
        elif size != h:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < h).clamp_(-1.0, 1.0)
        return x

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self._preprocess(self.images[index: index + 1])[0].repeat(self.cfg.channels, 1, 1)
        if self.flip:
            x = random_hflip(x, self.generator)
        return {"image": x, "label": self.labels[index]}

    def images_tensor(self, batch: int = 10000) -> torch.Tensor:
        """The whole split preprocessed, (N, C, S, S) float32, without random flips.

        Training loops index this directly to avoid per-item Python overhead. With
        channels=3 the result is a stride-0 ``expand`` of one channel: indexing it yields
        ordinary tensors while the split costs a third of the memory. Computed once and kept:
        the batch stream, the latent cache and the scale estimate all read it.
        """
        if self._images_cache is None:
            chunks = [self._preprocess(self.images[i: i + batch]) for i in range(0, len(self), batch)]
            size = self.cfg.image_size
            x = torch.cat(chunks) if chunks else torch.empty(0, 1, size, size)
            self._images_cache = x.expand(-1, self.cfg.channels, -1, -1)
        return self._images_cache

    def labels_tensor(self) -> torch.Tensor:
        """All labels, (N,) int64."""
        return self.labels

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every field of the split as whole tensors (image, label), for the training stream's fast path."""
        return {"image": self.images_tensor(), "label": self.labels_tensor()}

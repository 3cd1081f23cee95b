"""Read a foreign state_dict without ever executing code from the file.

``.safetensors`` holds only tensors. Pickle-based files (``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``) go
through ``torch.load(weights_only=True)``, whose restricted unpickler accepts tensors and plain
containers only. Released Lightning checkpoints also pickle callbacks and OmegaConf hyper-parameters,
which it refuses; such a zip checkpoint is re-read with ``restricted_pickle`` (foreign objects become
inert placeholders, nothing is imported or called) and accepted only if its ``state_dict`` is pure
``name -> tensor``; the placeholder-holding entries beside it are dropped with one warning. The full
unpickler is never used.
"""
from __future__ import annotations

import json
import logging
import pickle
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .restricted_pickle import find_foreign, restricted_load

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_log = logging.getLogger(__name__)


class _ForeignGlobals(Exception):
    """weights_only refused a global; carries the one-line reason for the final error message."""


def _refusal_reason(err: Exception) -> str:
    """The useful part of torch's long multi-line message, e.g. ``Unsupported global: GLOBAL posix.system``."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    # torch's advice to allow-list the global is not ours to give: drop it
    return lines[0].split(" Please use", 1)[0] if lines else type(err).__name__


def _refuse(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path}: refusing to load: the pickle needs code execution ({reason})")


def _torch_load(path: Path, mmap: bool = False) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _ForeignGlobals(_refusal_reason(e)) from None
    except RuntimeError as e:
        # older torch versions report the restricted unpickler's refusal as a RuntimeError
        if "Weights only load failed" not in str(e):
            first = " ".join(str(e).split())[:200]
            raise ValueError(f"{path}: cannot read the checkpoint (truncated or corrupt?): {first}") from None
        raise _ForeignGlobals(_refusal_reason(e)) from None
    except EOFError:
        raise ValueError(f"{path}: cannot read the checkpoint: it ends early (truncated?)") from None


LFS_POINTER = b"version https://git-lfs.github.com/spec"


def check_not_a_pointer(path: Path) -> None:
    """A Git LFS pointer (what a clone without ``git lfs`` holds in place of the weights) is named as such."""
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise ValueError(f"{path}: a Git LFS pointer, not the weights: fetch them (git lfs pull) or download the "
                         "file itself")


def _mappable(path: Path) -> bool:
    """A zip checkpoint whose records are all stored uncompressed (as torch.save writes them): only such a file
    can be memory-mapped; a re-zipped, compressed one is read instead."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _restricted_state_dict(path: Path, reason: str, mmap: bool = False) -> dict[str, Tensor]:
    """The Lightning fallback: keep only a pure ``name -> tensor`` mapping, drop (and name) the rest."""
    if not zipfile.is_zipfile(path):
        raise _refuse(path, f"{reason}; only torch zip checkpoints are read with foreign objects dropped")
    try:
        result = restricted_load(path, mmap=mmap)
    except Exception as e:  # malformed archive or a rebuild function's check: one line, nothing ran
        detail = " ".join(str(e).split())
        raise _refuse(path, f"{reason}; restricted read failed: {type(e).__name__}: {detail}") from None
    top = result.obj
    if not isinstance(top, dict):
        raise _refuse(path, f"{reason}; the file holds a {type(top).__name__}, not a dict of tensors")
    wrapped = "state_dict" in top
    sd = top["state_dict"] if wrapped else top
    if not isinstance(sd, dict):
        raise _refuse(path, f"{reason}; its state_dict is a {type(sd).__name__}")
    inside = find_foreign(sd)
    if inside:
        raise _refuse(path, f"{reason}; the state_dict itself holds foreign objects: {_short(inside)}")
    for k, v in sd.items():
        # hooks are callables; the restricted rebuilders refuse them, a BUILD on a tensor could still set them
        if isinstance(v, Tensor) and v._backward_hooks:
            raise _refuse(path, f"{reason}; tensor {k} carries backward hooks")
    if wrapped:
        ignored = [str(k) for k, v in top.items() if k != "state_dict" and find_foreign({k: v})]
        _log.warning(
            "%s: ignored %s (%s) — not executed",
            path, ", ".join(ignored) or "nothing", _short(result.foreign),
        )
    return dict(sd)


ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}


class SafetensorsFile(Mapping):
    """A ``.safetensors`` file as a lazy ``name -> tensor`` mapping: the header is read at once, each tensor
    when it is asked for, straight from the file into its own buffer (``readinto``). Unlike a memory map, no
    page of the file stays counted in the process's memory once a tensor is read, so a caller that casts or
    keeps each tensor as it goes holds one copy of the weights at most. ``shape(name)`` needs no read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise ValueError(f"{self.path}: not a safetensors file (bad header length; truncated?)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError(f"{self.path}: not a safetensors file (unreadable header)") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._base = 8 + n
        for name, e in header.items():
            start, end = e["data_offsets"]
            if e["dtype"] not in ST_DTYPES:
                raise ValueError(f"{self.path}: tensor {name} has dtype {e['dtype']}, which ldmkit does not read")
            if self._base + end > size:
                raise ValueError(f"{self.path}: truncated: tensor {name} ends at byte {self._base + end}, the file "
                                 f"has {size}")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def __getitem__(self, name: str) -> Tensor:
        e = self._entries[name]
        start, end = e["data_offsets"]
        t = torch.empty(e["shape"], dtype=ST_DTYPES[e["dtype"]])
        if end > start:
            with open(self.path, "rb") as f:
                f.seek(self._base + start)
                if f.readinto(t.view(-1).view(torch.uint8).numpy()) != end - start:
                    raise ValueError(f"{self.path}: truncated while reading {name}")
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class Renamed(Mapping):
    """``{new name: old name}`` over a (lazy) mapping: a renaming view that reads nothing until asked."""

    def __init__(self, sd: Mapping[str, Tensor], names: dict[str, str]):
        self._sd, self._names = sd, names

    def __getitem__(self, name: str) -> Tensor:
        return self._sd[self._names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def shape_of(sd: Mapping[str, Tensor], name: str) -> tuple[int, ...]:
    """A tensor's shape without reading it from a lazy file."""
    return sd.shape(name) if isinstance(sd, SafetensorsFile) else tuple(sd[name].shape)


def load_state_dict_file(path: str | Path, lazy: bool = False) -> Mapping[str, Tensor]:
    """``name -> tensor`` from a safetensors or (safely unpickled) torch file; Lightning's
    ``{"state_dict": ...}`` wrapper is removed, and so are its pickled callbacks / hyper-parameters
    (never executed; one warning names them). Raises ValueError (one line) for anything else.

    ``lazy``: a safetensors file comes back as a :class:`SafetensorsFile` (tensors read on access) and a torch
    zip file is memory-mapped (``torch.load(mmap=True)``): neither is read whole before the caller takes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    check_not_a_pointer(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if lazy:
            return SafetensorsFile(path)
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors' own errors (truncated, bad header) are one line
            raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if not head.startswith(b"\x80"):  # every torch pickle starts with the PROTO opcode
            raise ValueError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; "
                             "a partial download?)")
    try:
        obj = _torch_load(path, mmap=lazy and _mappable(path))
    except _ForeignGlobals as e:
        obj = _restricted_state_dict(path, str(e), mmap=lazy)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries are not named tensors: {', '.join(bad[:5])}")
    return obj

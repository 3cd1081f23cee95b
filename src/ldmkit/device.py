"""Device selection: never hard-code a backend."""
from __future__ import annotations

import ctypes
import functools

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return dev


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_free_memory(device: torch.device) -> None:
    """Hand the C heap's freed memory back to the OS (glibc ``malloc_trim``). Tensors under glibc's mmap threshold
    (grown to 32 MiB after the first large free) come from the heap, and what the UNet steps freed stays resident
    there; a 512x512 decode's large maps are mmapped afresh on top of it. Trimming first lowers SD 1.x's peak resident
    set by ~380 MiB (benchmarks/sd_full_size.py). CPU only; elsewhere a no-op."""
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is not None:
        trim(0)

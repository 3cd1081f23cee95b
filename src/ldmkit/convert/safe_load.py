"""Read a foreign state_dict without ever executing code from the file.

``.safetensors`` holds only tensors. Pickle-based files (``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin``) go
through ``torch.load(weights_only=True)``, whose restricted unpickler accepts tensors and plain
containers only; a file that needs anything else is refused, never retried with the full unpickler.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import Tensor

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _refusal_reason(err: Exception) -> str:
    """The useful part of torch's long multi-line message, e.g. ``Unsupported global: GLOBAL posix.system``."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refusing to load: the pickle needs code execution ({_refusal_reason(e)})") from None
    except RuntimeError as e:
        # older torch versions report the restricted unpickler's refusal as a RuntimeError
        if "Weights only load failed" not in str(e):
            raise
        raise ValueError(f"{path}: refusing to load: the pickle needs code execution ({_refusal_reason(e)})") from None


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """``name -> tensor`` from a safetensors or (safely unpickled) torch file; Lightning's
    ``{"state_dict": ...}`` wrapper is removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    obj = _torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries are not named tensors: {', '.join(bad[:5])}")
    return obj

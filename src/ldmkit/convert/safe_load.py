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

import logging
import pickle
import zipfile
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


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _ForeignGlobals(_refusal_reason(e)) from None
    except RuntimeError as e:
        # older torch versions report the restricted unpickler's refusal as a RuntimeError
        if "Weights only load failed" not in str(e):
            raise
        raise _ForeignGlobals(_refusal_reason(e)) from None


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _restricted_state_dict(path: Path, reason: str) -> dict[str, Tensor]:
    """The Lightning fallback: keep only a pure ``name -> tensor`` mapping, drop (and name) the rest."""
    if not zipfile.is_zipfile(path):
        raise _refuse(path, f"{reason}; only torch zip checkpoints are read with foreign objects dropped")
    try:
        result = restricted_load(path)
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


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """``name -> tensor`` from a safetensors or (safely unpickled) torch file; Lightning's
    ``{"state_dict": ...}`` wrapper is removed, and so are its pickled callbacks / hyper-parameters
    (never executed; one warning names them). Raises ValueError (one line) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})")
    try:
        obj = _torch_load(path)
    except _ForeignGlobals as e:
        obj = _restricted_state_dict(path, str(e))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries are not named tensors: {', '.join(bad[:5])}")
    return obj

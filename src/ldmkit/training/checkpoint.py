"""Atomic, resumable training checkpoints.

Training state goes through ``torch.save`` of plain containers (tensors, numbers, strings,
tuples, dicts) so it loads back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..weights import atomic_write


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may touch (dropout uses torch's global generator).

    Stored as tensors / ints / tuples only, so ``torch.load(weights_only=True)`` accepts it.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)




def save_training_state(path: Path, stateful: dict[str, Any], generator: torch.Generator, step: int,
                        config: dict[str, Any]) -> None:
    """Everything a run needs to continue as if never stopped: each object's state_dict, the
    training generator, every global RNG, the step and the resolved config."""
    state = {name: obj.state_dict() for name, obj in stateful.items()}
    save_checkpoint(path, state | {"generator": generator.get_state(), "rng": rng_state(), "step": step,
                                   "config": config})


def load_training_state(path: Path, stateful: dict[str, Any], generator: torch.Generator,
                        device: torch.device) -> int:
    """Restore what :func:`save_training_state` wrote; returns the step to continue from."""
    state = load_checkpoint(path, map_location=device)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors on every device
    set_rng_state(state["rng"])
    return int(state["step"])


class Checkpointer:
    """The run's ``checkpoint.pt``: what the loops save every ``ckpt_every`` steps and resume from."""

    def __init__(self, path: Path, stateful: dict[str, Any], generator: torch.Generator, device: torch.device,
                 config: dict[str, Any]):
        self.path, self.stateful, self.generator, self.device, self.config = Path(path), stateful, generator, device, config

    def restore(self) -> int:
        """The step to continue from: 0 without a checkpoint."""
        if not self.path.exists():
            return 0
        return load_training_state(self.path, self.stateful, self.generator, self.device)

    def save(self, step: int) -> None:
        save_training_state(self.path, self.stateful, self.generator, step, self.config)

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

from ..config import RunStopped
from ..weights import atomic_write
from .distributed import Dist


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


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at (the file is mapped, not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def save_training_state(path: Path, stateful: dict[str, Any], generator: torch.Generator | None, step: int,
                        config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Everything a run needs to continue as if never stopped: each object's state_dict, the
    training generator (if the loop has one), every global RNG, the step and the resolved config."""
    state = {name: obj.state_dict() for name, obj in stateful.items()}
    if generator is not None:
        state["generator"] = generator.get_state()
    save_checkpoint(path, state | {"rng": rng_state(), "step": step, "config": config} | (extra or {}))


def load_training_state(path: Path, stateful: dict[str, Any], generator: torch.Generator | None,
                        device: torch.device, rank: int = 0, world_size: int = 1) -> int:
    """Restore what :func:`save_training_state` wrote; returns the step to continue from.

    Data-parallel checkpoints also hold every rank's global RNG state (``rng_ranks``): rank r takes
    its own when the world size is unchanged, else rank 0 takes the saved one and the others keep
    their fresh per-rank seeds.
    """
    state = load_checkpoint(path, map_location=device)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors on every device
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == world_size:
        set_rng_state(ranks[rank])
    elif rank == 0:
        set_rng_state(state["rng"])
    return int(state["step"])


class Checkpointer:
    """The run's ``checkpoint.pt``: what the loops save every ``ckpt_every`` steps and resume from.

    With a process group every rank calls ``save`` (the RNG states, and the states of objects marked
    ``per_rank``, are gathered), rank 0 writes, and a barrier keeps the others from running ahead of (or
    reading) a half-written checkpoint.
    """

    def __init__(self, path: Path, stateful: dict[str, Any], generator: torch.Generator | None,
                 device: torch.device, config: dict[str, Any], dist: Dist | None = None):
        self.path, self.stateful, self.generator, self.device, self.config = Path(path), stateful, generator, device, config
        self.dist = dist or Dist()
        if self.dist.is_main:  # a write killed midway leaves its hidden temporary file (never the checkpoint)
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                stale.unlink(missing_ok=True)

    def restore(self) -> int:
        """The step to continue from: 0 without a checkpoint (the same on every rank, or an error)."""
        step = 0
        if self.path.exists():
            step = load_training_state(self.path, self.stateful, self.generator, self.device,
                                       self.dist.rank, self.dist.world_size)
        steps = self.dist.gather(step)
        if len(set(steps)) > 1:
            raise RuntimeError(f"ranks would resume from different steps {steps}: every node must see the same "
                               f"{self.path} (put the run folder on a shared file system)")
        return step

    def save(self, step: int) -> None:
        rngs = self.dist.gather(rng_state())  # a collective: every rank takes part
        # objects whose state differs per rank (the shard stream's position): every rank's, in rank order;
        # their load_state_dict picks its own from {"ranks": [...]}
        ranked = {name: {"ranks": self.dist.gather(obj.state_dict())} for name, obj in self.stateful.items()
                  if getattr(obj, "per_rank", False)}
        if self.dist.is_main:
            extra = ({"rng_ranks": rngs} if self.dist.world_size > 1 else {}) | ranked
            try:
                save_training_state(self.path, self.stateful, self.generator, step, self.config, extra)
            except OSError as e:  # a full disk, a lost mount: the previous file is untouched (atomic write)
                kept = (f"the last good checkpoint {self.path} (step {checkpoint_step(self.path)}) is intact"
                        if self.path.exists() else "no earlier checkpoint exists")
                raise RunStopped(f"{self.path}: cannot write the checkpoint of step {step} "
                                 f"({e.strerror or e}): the run stops; {kept}") from None
        self.dist.barrier()

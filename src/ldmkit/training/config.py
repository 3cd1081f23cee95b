"""Training-loop settings shared by both loops, and the run configs that compose components."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import require


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 0.0          # 0 = no clipping
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000        # image grids (PNG) in the run folder
    ckpt_every: int = 500           # resumable training state
    out_dir: str = "runs/run"
    max_minutes: float = 0.0        # wall-clock budget: stop early and save when spent (0 = none)
    device: str = "auto"            # auto | cpu | cuda | cuda:1 | mps
    num_threads: int = 0            # torch intra-op threads (0 = torch's default)
    num_workers: int = 0            # DataLoader workers for data sets decoded per item
    precision: Literal["fp32", "bf16"] = "fp32"   # bf16 = autocast (weights and optimiser stay fp32)

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.sample_every >= 1, "sample_every", "must be >= 1")
        require(self.ckpt_every >= 1, "ckpt_every", "must be >= 1")
        require(self.max_minutes >= 0, "max_minutes", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at ``cfg.steps``."""
    import math

    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return 1.0


def autocast(device: torch.device, precision: str):
    """bf16 autocast on any device (CPUs with AMX / AVX512-BF16 run it several times faster)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

"""Training-loop settings shared by both loops, and the run configs that compose components."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import ConfigError, require


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32            # per process and per micro-batch: global batch = batch_size x world x grad_accum
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
    device: str = "auto"            # auto | cpu | cuda | cuda:1 | mps (under torchrun: each rank's own GPU)
    num_threads: int = 0            # torch intra-op threads (0 = torch's default)
    num_workers: int = 0            # DataLoader workers for data sets decoded per item
    # bf16 = autocast (weights and optimiser stay fp32); fp16 = autocast + GradScaler, CUDA only
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1             # micro-batches per optimiser step
    scale_lr: bool = False          # the original's rule: lr x batch_size x world size x grad_accum
    channels_last: bool = False     # NHWC convolutions (faster on tensor-core GPUs and oneDNN CPUs)
    tensorboard: bool = False       # also log scalars to <out_dir>/tensorboard when tensorboard is installed
    max_bad_steps: int = 10         # consecutive non-finite steps (skipped, not applied) before the run stops

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.sample_every >= 1, "sample_every", "must be >= 1")
        require(self.ckpt_every >= 1, "ckpt_every", "must be >= 1")
        require(self.max_minutes >= 0, "max_minutes", "must be >= 0")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.max_bad_steps >= 1, "max_bad_steps", f"must be >= 1, got {self.max_bad_steps}")
        require(self.precision in ("fp32", "bf16", "fp16"), "precision",
                f"expected fp32, bf16 or fp16, got {self.precision!r}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at ``cfg.steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return 1.0


def base_lr(cfg: TrainConfig, world_size: int) -> float:
    """The peak learning rate; with ``scale_lr`` the original's ``accumulate x ngpu x batch x base_lr``."""
    return cfg.lr * cfg.batch_size * world_size * cfg.grad_accum if cfg.scale_lr else cfg.lr


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """fp16 needs a loss scaler, and the scaler (like fp16 kernels worth using) exists on CUDA only."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (found {device.type}); "
                          "use precision=bf16 or fp32 there")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on any device (CPUs with AMX / AVX512-BF16 run it several times faster); fp16 on CUDA."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

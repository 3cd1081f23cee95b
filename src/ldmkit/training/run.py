"""What every training loop does around its step: run folder, device, seeds, LR, time budget."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..config import save_config
from ..device import resolve_device
from .config import TrainConfig


def start_run(run_config: Any, tc: TrainConfig) -> tuple[Path, torch.device]:
    """Create the run folder with the resolved config, set threads and the global seed."""
    out = Path(tc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(run_config, out / "config.yaml")
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    return out, resolve_device(tc.device)


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


class TimeBudget:
    """``train.max_minutes`` of wall time (0 = unlimited), counted from construction."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.perf_counter()

    def spent(self) -> bool:
        return bool(self.seconds) and time.perf_counter() - self.start > self.seconds

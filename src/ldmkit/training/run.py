"""What every training loop does around its step: run folder, process group, device, seeds, LR, time budget."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..config import save_config
from .config import TrainConfig, check_precision
from .distributed import Dist, setup_distributed


def start_run(run_config: Any, tc: TrainConfig) -> tuple[Path, torch.device, Dist]:
    """Create the run folder with the resolved config, join the process group (under ``torchrun``),
    set threads and the global seed; returns (run folder, this rank's device, the group's view).

    Every rank seeds its global RNG with ``seed``, so models initialise alike; :func:`seed_rank` then
    separates the ranks' streams.
    """
    dist, device = setup_distributed(tc.device)
    try:
        check_precision(tc, device)
    except Exception:
        dist.close()
        raise
    out = Path(tc.out_dir)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(run_config, out / "config.yaml")
    dist.barrier()
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    return out, device, dist


def seed_rank(seed: int, dist: Dist) -> None:
    """Call once the models are built: every rank initialised them from ``seed``, and now each rank's
    global RNG (dropout) gets its own seed. Rank 0 keeps its stream, so one process runs as before."""
    if dist.rank:
        torch.manual_seed(seed + dist.rank)


def set_lr(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


class TimeBudget:
    """``train.max_minutes`` of training wall time (0 = unlimited), counted from construction.

    Time handed to :meth:`exclude` (periodic evaluation, sample grids: measurements, not training) does not
    count, so a run with evaluation trains as long as one without it.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.perf_counter()
        self.excluded = 0.0

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    def spent(self) -> bool:
        return bool(self.seconds) and self.elapsed() > self.seconds

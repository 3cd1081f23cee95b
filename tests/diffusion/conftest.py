"""Shared fixtures for the diffusion tests: an exact denoiser for Gaussian data."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import Tensor

from ldmkit.diffusion import Schedule, ScheduleConfig

SD_CONFIG = dict(timesteps=1000, linear_start=0.00085, linear_end=0.012)


def gaussian_eps(schedule: Schedule, data_std: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Exact E[eps | x_t] when x_0 ~ N(0, s^2 I): sqrt(1-abar) x_t / (abar s^2 + 1 - abar)."""
    def denoise_fn(x: Tensor, t: Tensor) -> Tensor:
        a = schedule.extract("alphas_cumprod", t, x)
        return (1 - a).sqrt() * x / (a * data_std**2 + 1 - a)
    return denoise_fn


@pytest.fixture
def sd_config() -> dict:
    """Stable Diffusion's schedule: "linear" (sqrt-spaced) betas from 0.00085 to 0.012 over T=1000."""
    return dict(SD_CONFIG)


@pytest.fixture
def sd_schedule() -> Schedule:
    return Schedule(ScheduleConfig(**SD_CONFIG))


@pytest.fixture
def gaussian_denoiser() -> Callable[[Schedule, float], Callable[[Tensor, Tensor], Tensor]]:
    return gaussian_eps


@pytest.fixture
def gen() -> Callable[[int], torch.Generator]:
    return lambda seed: torch.Generator().manual_seed(seed)

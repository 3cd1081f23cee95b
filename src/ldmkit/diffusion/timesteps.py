"""Which training timesteps (or noise levels) a sampler visits, and where an img2img run starts.

Spacings (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed", table 2):

    uniform   the original LDM ``make_ddim_timesteps``: arange(0, T, T // N) + 1 (may give more than N)
    quad      the original's quadratic variant: int(linspace(0, sqrt(0.8 T), N)^2) + 1
    leading   arange(0, N) * (T // N) + steps_offset  (diffusers "leading"; ``uniform`` = leading with
              steps_offset=1 whenever N divides T)
    trailing  round(T - k T / N) - 1 for k < N, so the first step is at T - 1 (diffusers "trailing")
    linspace  linspace(0, T - 1, N), which may be fractional (diffusers "linspace" of Euler / Heun;
              DDIM and PLMS round it, as diffusers' DDIM and PNDM schedulers do)

Every function returns float64 NumPy arrays in ascending order; samplers walk them backwards.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np

from ldmkit.config import ConfigError

Spacing = Literal["uniform", "quad", "leading", "trailing", "linspace"]
SPACINGS: tuple[str, ...] = get_args(Spacing)


def original_timesteps(timesteps: int, steps: int, spacing: str = "uniform") -> np.ndarray:
    """The original ``make_ddim_timesteps`` (int64, ascending); see :func:`spaced_timesteps`.

    uniform: arange(0, T, T // steps) + 1 (e.g. T=1000, steps=50 gives 1, 21, ..., 981; when T // steps
    does not divide T this yields more than ``steps`` timesteps, as in the original); quad:
    int(linspace(0, sqrt(0.8 T), steps)^2) + 1. Where the "+1" shift reaches T (e.g. T=1000 with
    steps=3 or steps > 500) the original indexes past its schedule and crashes; here that last
    timestep is dropped instead, which keeps every valid combination identical to the original.
    """
    _check_steps(timesteps, steps)
    if spacing == "uniform":
        ts = np.arange(0, timesteps, timesteps // steps) + 1
    elif spacing == "quad":
        ts = (np.linspace(0, np.sqrt(timesteps * 0.8), steps) ** 2).astype(int) + 1
    else:
        raise ConfigError(f"spacing: expected uniform or quad here, got {spacing!r}")
    return ts[ts < timesteps].astype(np.int64)


def spaced_timesteps(timesteps: int, steps: int, spacing: str = "uniform", steps_offset: int = 0) -> np.ndarray:
    """The ``steps`` training timesteps of ``spacing`` (float64, ascending, within [0, T - 1]).

    ``steps_offset`` shifts the ``leading`` spacing only (diffusers' ``steps_offset``; Stable
    Diffusion's scheduler configs use 1).
    """
    _check_steps(timesteps, steps)
    if spacing in ("uniform", "quad"):
        return original_timesteps(timesteps, steps, spacing).astype(np.float64)
    if spacing == "leading":
        ts = (np.arange(0, steps) * (timesteps // steps)).round() + steps_offset
    elif spacing == "trailing":
        # diffusers' np.arange(T, 0, -T / N) yields an extra point near 0 (timestep -1) for some N
        # (e.g. T=1000, N=61); keeping its first N points gives the same values otherwise
        ts = np.arange(timesteps, 0, -timesteps / steps)[:steps].round()[::-1] - 1
    elif spacing == "linspace":
        ts = np.linspace(0, timesteps - 1, steps, dtype=np.float64)
    else:
        raise ConfigError(f"spacing: expected one of {list(SPACINGS)}, got {spacing!r}")
    if ts[0] < 0 or ts[-1] > timesteps - 1:
        raise ConfigError(f"steps_offset: {steps_offset} moves the {spacing} timesteps outside [0, {timesteps - 1}]")
    return ts.astype(np.float64)


def integer_timesteps(timesteps: int, steps: int, spacing: str = "uniform", steps_offset: int = 0) -> np.ndarray:
    """:func:`spaced_timesteps` rounded to int64 (for samplers that index the discrete schedule)."""
    return spaced_timesteps(timesteps, steps, spacing, steps_offset).round().astype(np.int64)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """n noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho)
    (Karras et al. 2022, "Elucidating the design space", eq. 5), as k-diffusion's ``get_sigmas_karras``
    without the trailing zero."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def steps_to_run(n_steps: int, strength: float) -> int:
    """How many of the last ``n_steps`` steps an img2img run with ``strength`` takes.

    diffusers' convention: min(int(n_steps * strength), n_steps); strength 1 runs them all (from the
    noisiest timestep), strength 0 none (the input comes back unchanged).
    """
    if not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0 and not math.isnan(strength)):
        raise ConfigError(f"strength: must be in [0, 1], got {strength}")
    return min(int(n_steps * strength), n_steps)


def _check_steps(timesteps: int, steps: int) -> None:
    if not (isinstance(steps, (int, np.integer)) and 1 <= steps <= timesteps):
        raise ConfigError(f"steps: must be in [1, {timesteps}] (the number of training timesteps), got {steps}")

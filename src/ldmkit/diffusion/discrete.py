"""A model trained on the discrete schedule, seen as a denoiser in sigma space (as k-diffusion's
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``).

The variance-preserving state x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, divided by sqrt(abar_t),
is the variance-exploding state x = x_0 + sigma eps with sigma_t = sqrt((1 - abar_t) / abar_t)
(Karras et al. 2022, "Elucidating the design space", table 1). A sigma-space sampler works on x; the
model still sees its training input c_in x = x / sqrt(sigma^2 + 1) at the timestep t(sigma), where
t(sigma) interpolates the table linearly in log sigma (fractional between two training timesteps).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion.schedule import Schedule
from ldmkit.diffusion.timesteps import karras_sigmas, spaced_timesteps

DenoiseFn = Callable[[Tensor, Tensor], Tensor]

# A timestep this close to an integer is that integer (log-sigma round trips are exact to ~1e-12).
_SNAP = 1e-6


# A zero-terminal-SNR schedule's last abar (0, sigma infinite) is read as this, as diffusers' sigma-space
# schedulers do (sigma_max ~ 4096)
ZERO_SNR_ABAR = 2.0 ** -24


def schedule_sigmas(schedule: Schedule) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1, float64, increasing."""
    abar = schedule.alphas_cumprod.clamp_min(ZERO_SNR_ABAR) if schedule.alphas_cumprod[-1] == 0 else \
        schedule.alphas_cumprod
    return ((1 - abar) / abar).sqrt()


class DiscreteSchedule:
    """The sigma <-> t maps of a discrete schedule: log sigma is interpolated linearly between
    training timesteps (k-diffusion's ``DiscreteSchedule``, diffusers' ``_sigma_to_t``)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.sigmas = schedule_sigmas(schedule)  # (T,) float64
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float | Tensor) -> Tensor:
        """Fractional timestep(s) of ``sigma`` (float64), clamped to [0, T - 1]."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp_min(1e-10).log()
        low = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1)
        low = low.clamp(0, len(self.log_sigmas) - 2).reshape(log_sigma.shape)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return low.to(torch.float64) + w

    def t_to_sigma(self, t: float | Tensor) -> Tensor:
        """sigma at fractional timestep(s) ``t`` (float64), the inverse of :meth:`sigma_to_t`."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(self.sigmas) - 1)
        low = t.floor().long().clamp(max=len(self.sigmas) - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def sigmas_for(self, steps: int, spacing: str = "linspace", karras: bool = False, steps_offset: int = 0,
                   rho: float = 7.0) -> np.ndarray:
        """The decreasing noise levels of a sampling run, with a final 0: (steps + 1,) float64.

        The timesteps of ``spacing`` give the levels (the same timesteps a DDIM run of that spacing
        visits); ``karras`` respaces them between the same end points with Karras et al.'s rho
        schedule, as diffusers' ``use_karras_sigmas`` does.
        """
        ts = spaced_timesteps(self.schedule.timesteps, steps, spacing, steps_offset)[::-1].copy()
        sigmas = self.t_to_sigma(torch.from_numpy(ts)).numpy()
        if karras:
            sigmas = karras_sigmas(float(sigmas[-1]), float(sigmas[0]), len(sigmas), rho)
        return np.append(sigmas, 0.0)


class DiscreteDenoiser:
    """``denoise_fn(x_t, t)`` (eps, x0 or v on the discrete schedule) -> ``D(x, sigma)``, the denoised x_0.

    ``quantize`` rounds the model's timestep to the nearest training timestep (diffusers'
    DPMSolverMultistep does this for Karras sigmas); otherwise a fractional timestep is passed as a
    float32 tensor, and an integral one as a LongTensor, so any discrete-time model works unchanged.
    """

    def __init__(self, denoise_fn: DenoiseFn, schedule: Schedule, quantize: bool = False) -> None:
        self.denoise_fn = denoise_fn
        self.discrete = DiscreteSchedule(schedule)
        self.parameterization = schedule.parameterization
        self.quantize = quantize

    def model_t(self, sigma: float, batch: int, device: torch.device) -> Tensor:
        """The timestep tensor (B,) the model sees at ``sigma``."""
        t = float(self.discrete.sigma_to_t(sigma))
        if self.quantize or abs(t - round(t)) < _SNAP:
            return torch.full((batch,), int(round(t)), dtype=torch.long, device=device)
        return torch.full((batch,), t, dtype=torch.float32, device=device)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        """D(x, sigma): x (B, ...) in sigma space -> predicted x_0 (B, ...)."""
        if sigma <= 0:
            raise ConfigError(f"sigma: the model is only defined for sigma > 0, got {sigma}")
        c_in = 1.0 / math.sqrt(sigma**2 + 1)
        out = self.denoise_fn(x * c_in, self.model_t(sigma, x.shape[0], x.device))
        if self.parameterization == "eps":
            return x - sigma * out
        if self.parameterization == "v":
            # x_0 = sqrt(abar) x_t - sqrt(1 - abar) v with x_t = c_in x, sqrt(abar) = c_in
            return x * c_in**2 - out * (sigma * c_in)
        if self.parameterization == "x0":
            return out
        raise ConfigError(f"parameterization: expected eps, x0 or v, got {self.parameterization!r}")

"""Noise schedules of the discrete-time forward process (Ho et al. 2020, DDPM).

The forward process is q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (DDPM eq. 2),
with the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4), where
alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s. All tables are computed and stored in
float64; :meth:`Schedule.extract` casts to the working dtype only when gathering.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from torch import Tensor

from ldmkit.config import ConfigError, require

BetaSchedule = Literal["linear", "cosine", "sqrt_linear", "sqrt"]
Parameterization = Literal["eps", "x0", "v"]

# Names of the per-timestep float64 tables a Schedule holds (all of length T).
TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclass
class ScheduleConfig:
    """Forward-process schedule and what the denoiser predicts.

    ``linear`` is the LDM / Stable Diffusion schedule, sqrt-spaced between ``linear_start`` and
    ``linear_end`` (diffusers' "scaled_linear"); ``sqrt_linear`` is the plain DDPM linspace.
    ``v_posterior`` interpolates the reverse variance between beta_tilde (0) and beta (1).
    ``zero_terminal_snr`` rescales the betas so that abar_{T-1} = 0 (Lin et al. 2024, "Common diffusion noise
    schedules and sample steps are flawed", Algorithm 1; diffusers' ``rescale_betas_zero_snr``): the last
    training step then sees pure noise, as sampling starts from it. It needs v prediction: eps
    carries no information about x_0 where the signal is zero (and x0 none about eps).
    """

    timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    linear_start: float = 1e-4
    linear_end: float = 2e-2
    cosine_s: float = 8e-3
    parameterization: Parameterization = "eps"
    v_posterior: float = 0.0
    zero_terminal_snr: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.timesteps, int) and self.timesteps >= 2, "timesteps", "must be an integer >= 2")
        require(self.beta_schedule in get_args(BetaSchedule), "beta_schedule",
                f"expected one of {list(get_args(BetaSchedule))}, got {self.beta_schedule!r}")
        require(0.0 < self.linear_start < self.linear_end < 1.0, "linear_start",
                f"need 0 < linear_start < linear_end < 1, got {self.linear_start} and {self.linear_end}")
        require(0.0 <= self.cosine_s, "cosine_s", f"must be >= 0, got {self.cosine_s}")
        require(self.parameterization in get_args(Parameterization), "parameterization",
                f"expected one of {list(get_args(Parameterization))}, got {self.parameterization!r}")
        require(0.0 <= self.v_posterior <= 1.0, "v_posterior", f"must be in [0, 1], got {self.v_posterior}")
        require(isinstance(self.zero_terminal_snr, bool), "zero_terminal_snr", "must be true or false")
        require(not self.zero_terminal_snr or self.parameterization == "v", "zero_terminal_snr",
                "needs parameterization v (eps and x0 outputs give no eps / x_0 pair at zero signal)")


def make_betas(cfg: ScheduleConfig) -> np.ndarray:
    """The beta_t of ``cfg`` as a float64 array of length T, as in the original ``make_beta_schedule``,
    rescaled to a zero terminal SNR when ``cfg.zero_terminal_snr`` (:func:`rescale_zero_terminal_snr`).

    ``cosine`` is the improved-DDPM schedule (Nichol & Dhariwal 2021, eq. 17):
    abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) / abar(0), beta_t = 1 - abar(t+1)/abar(t), clipped at 0.999.
    """
    betas = _base_betas(cfg)
    return rescale_zero_terminal_snr(betas) if cfg.zero_terminal_snr else betas


def _base_betas(cfg: ScheduleConfig) -> np.ndarray:
    n = cfg.timesteps
    if cfg.beta_schedule == "linear":
        return np.linspace(math.sqrt(cfg.linear_start), math.sqrt(cfg.linear_end), n, dtype=np.float64) ** 2
    if cfg.beta_schedule == "sqrt_linear":
        return np.linspace(cfg.linear_start, cfg.linear_end, n, dtype=np.float64)
    if cfg.beta_schedule == "sqrt":
        return np.linspace(cfg.linear_start, cfg.linear_end, n, dtype=np.float64) ** 0.5
    steps = np.arange(n + 1, dtype=np.float64) / n + cfg.cosine_s
    abar = np.cos(steps / (1 + cfg.cosine_s) * math.pi / 2) ** 2
    abar = abar / abar[0]
    return np.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: shift sqrt(abar) so its last value is 0 and scale it so its first is kept,
    then read the betas back (the last one is 1)."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    abar = ((root - last) * first / (first - last)) ** 2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class Schedule:
    """All per-timestep coefficients of the forward process and of its posterior, in float64.

    Posterior q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta_tilde_t I) (DDPM eqs. 6-7) with
    coef1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t), coef2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
    beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), and abar_{-1} = 1.
    """

    # Tables, set in __init__ from TABLES (float64, length T).
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    log_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        self.timesteps: int = self.config.timesteps
        self.parameterization: Parameterization = self.config.parameterization
        v = self.config.v_posterior

        betas = make_betas(self.config)
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        posterior_variance = (1 - v) * betas * (1 - abar_prev) / (1 - abar) + v * betas
        with np.errstate(divide="ignore"):  # zero terminal SNR: 1 / abar_{T-1} is inf, as it should be
            tables = self._tables(betas, alphas, abar, abar_prev, posterior_variance)
        for name in TABLES:
            setattr(self, name, torch.from_numpy(tables[name]))

    @staticmethod
    def _tables(betas, alphas, abar, abar_prev, posterior_variance) -> dict[str, np.ndarray]:
        return {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
            "posterior_variance": posterior_variance,
            # beta_tilde_0 = 0, so the log is clipped (the original clips at 1e-20).
            "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        }

    def extract(self, name_or_tensor: str | Tensor, t: Tensor, x_shape: Sequence[int] | Tensor,
                dtype: torch.dtype | None = None) -> Tensor:
        """Per-sample coefficients ``table[t]`` shaped (B, 1, ..., 1) to broadcast against ``x_shape``.

        ``x_shape`` may be the tensor itself, whose dtype and device are then used; otherwise the
        result is on ``t.device`` in ``dtype`` (default: torch's default dtype). The table is cast
        at gather time, so it stays float64 on the schedule.
        """
        table = getattr(self, name_or_tensor) if isinstance(name_or_tensor, str) and name_or_tensor in TABLES \
            else name_or_tensor
        if not isinstance(table, Tensor):
            raise ConfigError(f"schedule table {name_or_tensor!r}: unknown (known: {', '.join(TABLES)})")
        if isinstance(x_shape, Tensor):
            dtype, device, shape = dtype or x_shape.dtype, x_shape.device, x_shape.shape
        else:
            dtype, device, shape = dtype or torch.get_default_dtype(), t.device, tuple(x_shape)
        out = table.to(dtype).to(device)[t.to(device)]
        return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))

"""Conversions between what a denoiser predicts (eps, x0 or v) and the forward-process quantities.

Every function takes the :class:`~ldmkit.diffusion.schedule.Schedule`, tensors and a LongTensor
``t`` of shape (B,); coefficients are gathered in float64 and cast to the tensors' dtype.
"""
from __future__ import annotations

from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion.schedule import Schedule


def q_sample(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw of q(x_t | x_0) (DDPM eq. 4)."""
    return (schedule.extract("sqrt_alphas_cumprod", t, x0) * x0
            + schedule.extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise)


def predict_x0_from_eps(schedule: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps (DDPM eq. 4 solved for x_0; DDIM eq. 9)."""
    return (schedule.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - schedule.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)


def predict_eps_from_x0(schedule: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1), the inverse of :func:`predict_x0_from_eps`."""
    return ((schedule.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0)
            / schedule.extract("sqrt_recipm1_alphas_cumprod", t, x_t))


def get_v(schedule: Schedule, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, progressive distillation, sec. 4)."""
    return (schedule.extract("sqrt_alphas_cumprod", t, x0) * eps
            - schedule.extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0)


def predict_x0_from_v(schedule: Schedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
    return (schedule.extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - schedule.extract("sqrt_one_minus_alphas_cumprod", t, x_t) * v)


def predict_eps_from_v(schedule: Schedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
    return (schedule.extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
            + schedule.extract("sqrt_alphas_cumprod", t, x_t) * v)


def model_output_to_eps_x0(schedule: Schedule, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(eps, x0) implied by a denoiser ``output`` under ``schedule.parameterization``."""
    kind = schedule.parameterization
    if kind == "eps":
        return output, predict_x0_from_eps(schedule, x_t, t, output)
    if kind == "x0":
        return predict_eps_from_x0(schedule, x_t, t, output), output
    if kind == "v":
        return predict_eps_from_v(schedule, x_t, t, output), predict_x0_from_v(schedule, x_t, t, output)
    raise ConfigError(f"parameterization: expected eps, x0 or v, got {kind!r}")


def target(schedule: Schedule, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Regression target of the denoiser: eps (DDPM eq. 14, L_simple), x_0, or v."""
    kind = schedule.parameterization
    if kind == "eps":
        return noise
    if kind == "x0":
        return x0
    if kind == "v":
        return get_v(schedule, x0, noise, t)
    raise ConfigError(f"parameterization: expected eps, x0 or v, got {kind!r}")


def q_posterior(schedule: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

    The variance and log-variance are shaped (B, 1, ..., 1).
    """
    mean = (schedule.extract("posterior_mean_coef1", t, x_t) * x0
            + schedule.extract("posterior_mean_coef2", t, x_t) * x_t)
    var = schedule.extract("posterior_variance", t, x_t)
    log_var = schedule.extract("posterior_log_variance_clipped", t, x_t)
    return mean, var, log_var

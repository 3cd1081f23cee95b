"""Diffusion math: schedules, parameterizations, the training loss, guidance and samplers.

Pure tensor functions: this package imports nothing from ldmkit except ``ldmkit.config``.
A denoiser is any ``denoise_fn(x_t, t) -> output`` with ``t`` a LongTensor of shape (B,).
"""
from ldmkit.diffusion.guidance import cfg_denoise, concat_cond
from ldmkit.diffusion.losses import diffusion_loss
from ldmkit.diffusion.noise import randint, randn
from ldmkit.diffusion.parameterization import (
    get_v,
    model_output_to_eps_x0,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_posterior,
    q_sample,
    target,
)
from ldmkit.diffusion.samplers import SAMPLERS, ddim_invert, ddim_timesteps, get_sampler, sample_ddim, sample_ddpm
from ldmkit.diffusion.schedule import TABLES, Schedule, ScheduleConfig, make_betas

__all__ = [
    "SAMPLERS", "TABLES", "Schedule", "ScheduleConfig", "cfg_denoise", "concat_cond", "ddim_invert",
    "ddim_timesteps", "diffusion_loss", "get_sampler", "get_v", "make_betas", "model_output_to_eps_x0",
    "predict_eps_from_v", "predict_eps_from_x0", "predict_x0_from_eps", "predict_x0_from_v", "q_posterior",
    "q_sample", "randint", "randn", "sample_ddim", "sample_ddpm", "target",
]

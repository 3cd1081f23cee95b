"""Diffusion math: schedules, parameterizations, the training loss, guidance and samplers.

Pure tensor functions: this package imports nothing from ldmkit except ``ldmkit.config``.
A denoiser is any ``denoise_fn(x_t, t) -> output`` with ``t`` a LongTensor of shape (B,).
"""
from ldmkit.diffusion.classifier_guidance import classifier_grad, classifier_guided
from ldmkit.diffusion.guidance import GuidanceConfig, cfg_denoise, check_interval, concat_cond
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
from ldmkit.diffusion.discrete import DiscreteDenoiser, DiscreteSchedule
from ldmkit.diffusion.editing import abar_at, paste_known, reimpose_known
from ldmkit.diffusion.nfe import count_nfe, steps_for_nfe
from ldmkit.diffusion.plms import sample_plms
from ldmkit.diffusion.registry import (SAMPLERS, check_options, get_sampler, option_default, sampler_name,
                                       sampler_options, validate_options)
from ldmkit.diffusion.samplers import ddim_invert, ddim_timesteps, sample_ddim, sample_ddpm
from ldmkit.diffusion.samplers_k import sample_dpmpp_2m, sample_euler, sample_euler_ancestral, sample_heun
from ldmkit.diffusion.samplers_lcm import sample_lcm
from ldmkit.diffusion.samplers_sde import (sample_dpmpp_2m_sde, sample_dpmpp_2s, sample_dpmpp_2s_ancestral,
                                          sample_dpmpp_3m_sde)
from ldmkit.diffusion.samplers_unipc import sample_unipc
from ldmkit.diffusion.schedule import TABLES, Schedule, ScheduleConfig, make_betas
from ldmkit.diffusion.timesteps import SPACINGS, karras_sigmas, spaced_timesteps

__all__ = [
    "DiscreteDenoiser", "DiscreteSchedule", "SAMPLERS", "SPACINGS", "Schedule", "ScheduleConfig", "TABLES",
    "abar_at", "cfg_denoise", "check_options", "classifier_grad", "classifier_guided", "concat_cond", "count_nfe",
    "ddim_invert", "ddim_timesteps", "diffusion_loss", "get_sampler", "get_v", "karras_sigmas", "make_betas",
    "model_output_to_eps_x0", "option_default", "paste_known", "predict_eps_from_v", "predict_eps_from_x0",
    "predict_x0_from_eps", "predict_x0_from_v", "q_posterior", "q_sample", "randint", "randn", "reimpose_known",
    "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_2s",
    "sample_dpmpp_2s_ancestral", "sample_dpmpp_3m_sde", "sample_euler", "sample_euler_ancestral", "sample_heun",
    "sample_lcm", "sample_plms", "sample_unipc", "sampler_name", "sampler_options", "spaced_timesteps",
    "steps_for_nfe", "target", "validate_options",
]

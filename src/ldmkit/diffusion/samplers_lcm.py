"""The Latent Consistency Model sampler (Luo et al. 2023, "Latent Consistency Models"; diffusers' ``LCMScheduler``),
for models distilled to map any x_t to x_0 in one call (LCM, LCM-LoRA): 2-8 steps.

Each step applies the consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_pred(x_t, t) with the
boundary scalings of the distillation (sigma_data = 0.5, t scaled by ``timestep_scaling`` = 10:
c_skip = 0.25 / ((10 t)^2 + 0.25), c_out = 10 t / sqrt((10 t)^2 + 0.25)), then re-noises the estimate to the next
timestep with fresh noise (none after the last step). The timesteps are a subset of the distillation's skipping
schedule ``k, 2k, ..., T`` - 1 (k = T // ``original_steps``), picked at floor(linspace(0, M, steps, endpoint=False))
from the top, as diffusers does. On a model that was not distilled this is x_0 prediction + re-noising (the
"consistency" part is in the weights).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.parameterization import model_output_to_eps_x0, q_sample
from ldmkit.diffusion.samplers import Callback, DenoiseFn, _full_t
from ldmkit.diffusion.schedule import Schedule

SIGMA_DATA = 0.5


def lcm_timesteps(timesteps: int, steps: int, original_steps: int = 50, strength: float = 1.0) -> np.ndarray:
    """The descending int64 timesteps an LCM run of ``steps`` visits (diffusers' ``LCMScheduler.set_timesteps``);
    ``strength`` < 1 (img2img) keeps the distillation timesteps below T * strength."""
    if not (isinstance(original_steps, int) and 1 <= original_steps <= timesteps):
        raise ConfigError(f"original_steps: must be in [1, {timesteps}], got {original_steps}")
    if not (0.0 <= strength <= 1.0):
        raise ConfigError(f"strength: must be in [0, 1], got {strength}")
    k = timesteps // original_steps
    origin = (np.arange(1, int(original_steps * strength) + 1) * k - 1)[::-1]
    if not (isinstance(steps, (int, np.integer)) and 1 <= steps <= len(origin)):
        raise ConfigError(f"steps: LCM takes 1 to {len(origin)} steps here (original_steps {original_steps} "
                          f"x strength {strength}), got {steps}")
    return origin[np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)].copy()


def boundary_scalings(t: int, timestep_scaling: float = 10.0) -> tuple[float, float]:
    """(c_skip, c_out) of the consistency function at timestep t."""
    scaled = t * timestep_scaling
    return SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2), scaled / math.sqrt(scaled**2 + SIGMA_DATA**2)


def sample_lcm(denoise_fn: DenoiseFn, x_T: Tensor, schedule: Schedule, *, steps: int | None = 4,
               generator: noise_lib.Generators = None, callback: Callback = None, original_steps: int = 50,
               timestep_scaling: float = 10.0, x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """LCM multistep sampling (see the module doc); ``steps=None`` means 4. One model call per step."""
    if x_init is None and strength != 1.0:
        raise ConfigError("strength: only used with x_init (img2img)")
    if x_init is not None and strength == 0:
        return x_init.clone()
    ts = lcm_timesteps(schedule.timesteps, 4 if steps is None else steps, original_steps, strength)
    abar = schedule.alphas_cumprod
    x = x_T if x_init is None else q_sample(schedule, x_init, _full_t(ts[0], x_T), x_T)
    for i, t in enumerate(ts):
        tt = _full_t(t, x)
        _, x0 = model_output_to_eps_x0(schedule, denoise_fn(x, tt), x, tt)
        c_skip, c_out = boundary_scalings(int(t), timestep_scaling)
        denoised = c_out * x0 + c_skip * x
        if i + 1 < len(ts):
            a_next = abar[int(ts[i + 1])]
            z = noise_lib.randn(x.shape, generator, device=x.device, dtype=x.dtype)
            x = float(a_next.sqrt()) * denoised + float((1 - a_next).sqrt()) * z
        else:
            x = denoised
        if callback is not None:
            callback(i, int(t), x, denoised)
    return x


__all__ = ["boundary_scalings", "lcm_timesteps", "sample_lcm"]

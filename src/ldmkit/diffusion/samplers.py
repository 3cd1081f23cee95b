"""Reverse-process samplers on the discrete schedule: DDPM, DDIM, DDIM inversion.

All samplers (here, :mod:`.plms`, :mod:`.samplers_k`) share one signature:

    sample_xxx(denoise_fn, x_T, schedule, *, steps=None, generator=None, callback=None, **options) -> x_0

``denoise_fn(x_t, t)`` returns the raw model output (eps, x0 or v per ``schedule.parameterization``)
for a tensor ``t`` of shape (B,): a LongTensor of training timesteps (sigma-space samplers may pass
fractional float32 timesteps, see :mod:`.discrete`); ``callback(step_index, t, x, x0_pred)`` runs
after each step. ``generator`` is None, a ``torch.Generator`` or one generator per sample (see
:mod:`.noise`). ``x_init`` + ``strength`` (img2img, SDEdit) start from q_sample(x_init, t) at the
timestep where the last min(int(N strength), N) of the N steps begin, with ``x_T`` as the noise;
strength 0 returns ``x_init``. Step coefficients are computed in float64 on the schedule, then cast
to ``x``'s dtype. The registry of names lives in :mod:`.registry`.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.parameterization import model_output_to_eps_x0, q_posterior, q_sample
from ldmkit.diffusion.schedule import Schedule
from ldmkit.diffusion.timesteps import integer_timesteps, original_timesteps, steps_to_run

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
Callback = Optional[Callable[[int, int, Tensor, Tensor], None]]


def _full_t(t: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _coef(value: Tensor, x: Tensor) -> Tensor:
    """A float64 scalar coefficient cast to x's dtype and device."""
    return value.to(x.dtype).to(x.device)


def start_step(n_steps: int, x_T: Tensor, x_init: Tensor | None, strength: float) -> int:
    """How many of the ``n_steps`` steps run: all for plain sampling, the img2img share otherwise."""
    if x_init is None:
        if strength != 1.0:
            raise ConfigError("strength: only used with x_init (img2img)")
        return n_steps
    if x_init.shape != x_T.shape:
        raise ConfigError(f"x_init: shape {tuple(x_init.shape)} differs from the noise's {tuple(x_T.shape)}")
    return steps_to_run(n_steps, strength)


def sample_ddpm(denoise_fn: DenoiseFn, x_T: Tensor, schedule: Schedule, *, steps: int | None = None,
                generator: noise_lib.Generators = None, callback: Callback = None,
                clip_denoised: bool = False, x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    Each step predicts x_0 (DDPM eq. 15), then draws from the posterior q(x_{t-1} | x_t, x_0) at that
    prediction (eqs. 6-7) with the clipped log-variance, as the original ``p_sample`` does.

    ``steps`` must be None or T. ``clip_denoised`` clamps the predicted x_0 to [-1, 1] (pixel space;
    off by default, as for latents).
    """
    if steps is not None and steps != schedule.timesteps:
        raise ConfigError(f"steps: DDPM sampling runs all {schedule.timesteps} steps, got steps={steps}")
    k = start_step(schedule.timesteps, x_T, x_init, strength)
    if k == 0:
        return x_init.clone()
    x = x_T if x_init is None else q_sample(schedule, x_init, _full_t(k - 1, x_T), x_T)
    for step_index, t in enumerate(range(k - 1, -1, -1)):
        # 1. Predict eps and x_0 from the model output at (x_t, t).
        tt = _full_t(t, x)
        _, x0 = model_output_to_eps_x0(schedule, denoise_fn(x, tt), x, tt)
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        # 2. Posterior q(x_{t-1} | x_t, x_0) at the predicted x_0 (DDPM eqs. 6-7).
        mean, _, log_var = q_posterior(schedule, x0, x, tt)
        # 3. x_{t-1} = mean + sigma_t z, with no noise at t = 0.
        if t > 0:
            z = noise_lib.randn(x.shape, generator, device=x.device, dtype=x.dtype)
            x = mean + (0.5 * log_var).exp() * z
        else:
            x = mean
        if callback is not None:
            callback(step_index, t, x, x0)
    return x


def ddim_timesteps(timesteps: int, steps: int, discretization: str = "uniform") -> np.ndarray:
    """The DDIM sub-sequence of training timesteps (int64, ascending) for any spacing of :mod:`.timesteps`;
    "uniform" / "quad" are the original ``make_ddim_timesteps`` (see :func:`~.timesteps.original_timesteps`)."""
    if discretization in ("uniform", "quad"):
        return original_timesteps(timesteps, steps, discretization)
    return integer_timesteps(timesteps, steps, discretization)


def _ddim_alphas(schedule: Schedule, ts: np.ndarray) -> tuple[Tensor, Tensor]:
    """(abar at each DDIM timestep, abar of the previous one); the first step's previous is abar[0]."""
    abar = schedule.alphas_cumprod
    idx = torch.from_numpy(ts)
    return abar[idx], torch.cat([abar[:1], abar[idx[:-1]]])


def sample_ddim(denoise_fn: DenoiseFn, x_T: Tensor, schedule: Schedule, *, steps: int | None = 50,
                generator: noise_lib.Generators = None, callback: Callback = None,
                eta: float = 0.0, spacing: str = "uniform", x_init: Tensor | None = None,
                strength: float = 1.0) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) on the sub-sequence :func:`ddim_timesteps`.

    x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - a_prev) / (1 - a) (1 - a / a_prev)) (eq. 16). eta = 0 is deterministic
    and draws no noise; eta = 1 matches DDPM's posterior variance. ``steps=None`` means 50.

    The default spacing "uniform" is the original's (diffusers' DDIMScheduler with "leading" spacing
    and steps_offset=1 when ``steps`` divides T); the step from the smallest timestep lands on abar_0
    (diffusers' ``set_alpha_to_one=False``).
    """
    if eta < 0:
        raise ConfigError(f"eta: must be >= 0, got {eta}")
    ts = ddim_timesteps(schedule.timesteps, 50 if steps is None else steps, spacing)
    a, a_prev = _ddim_alphas(schedule, ts)
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    dir_coef = (1 - a_prev - sigma**2).sqrt()
    k = start_step(len(ts), x_T, x_init, strength)
    if k == 0:
        return x_init.clone()
    x = x_T if x_init is None else q_sample(schedule, x_init, _full_t(ts[k - 1], x_T), x_T)
    for step_index, i in enumerate(range(k - 1, -1, -1)):
        # 1. Model output at the DDIM timestep, converted to (eps, x0_pred) (eq. 12, first term).
        tt = _full_t(ts[i], x)
        eps, x0 = model_output_to_eps_x0(schedule, denoise_fn(x, tt), x, tt)
        # 2. Deterministic part: predicted x_0 and the direction pointing to x_t.
        x = _coef(a_prev[i].sqrt(), x) * x0 + _coef(dir_coef[i], x) * eps
        # 3. Random part sigma_t z (skipped when sigma_t = 0, e.g. eta = 0).
        if sigma[i] > 0:
            x = x + _coef(sigma[i], x) * noise_lib.randn(x.shape, generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback(step_index, int(ts[i]), x, x0)
    return x


def ddim_invert(denoise_fn: DenoiseFn, x0: Tensor, schedule: Schedule, *, steps: int = 50,
                spacing: str = "uniform", callback: Callback = None) -> Tensor:
    """Deterministic DDIM inversion x_0 -> x_T: eq. 12 with eta = 0 run upward on the same timesteps.

    As in Stable Diffusion's ``DDIMSampler.encode``, step i moves x from level a_prev[i] to a[i]
    using the model evaluated at (x, ts[i]); x0_pred uses the current level a_prev[i].
    """
    ts = ddim_timesteps(schedule.timesteps, steps, spacing)
    a, a_prev = _ddim_alphas(schedule, ts)
    x = x0
    for i in range(len(ts)):
        # 1. eps at the current x and the target timestep.
        tt = _full_t(ts[i], x)
        eps, _ = model_output_to_eps_x0(schedule, denoise_fn(x, tt), x, tt)
        # 2. x0_pred from the current level a_prev[i].
        x0_pred = (x - _coef((1 - a_prev[i]).sqrt(), x) * eps) / _coef(a_prev[i].sqrt(), x)
        # 3. Move to level a[i] along the same eps.
        x = _coef(a[i].sqrt(), x) * x0_pred + _coef((1 - a[i]).sqrt(), x) * eps
        if callback is not None:
            callback(i, int(ts[i]), x, x0_pred)
    return x

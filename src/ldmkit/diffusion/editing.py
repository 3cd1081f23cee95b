"""Inpainting with any model: the known region is re-imposed at every model call.

Before each call at timestep t the known region of x_t is replaced by q_sample(x_known, t, noise), the
known data noised to the same level with the run's start noise (the original ``DDIMSampler``'s
``mask`` / ``x0`` arguments and diffusers' inpainting with a plain UNet do this to the sampler state).
Every sampler here updates x element-wise from x and the model outputs, so replacing the region in the
model's input is the same for the region to fill as replacing it in the state, and it works for every
sampler unchanged (sigma-space ones included: their model input is the DDPM-convention x_t). The
result's known region is pasted back exactly with :func:`paste_known`.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ldmkit.diffusion.discrete import DiscreteSchedule
from ldmkit.diffusion.schedule import Schedule

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def abar_at(schedule: Schedule, t: Tensor) -> Tensor:
    """abar at timesteps ``t`` (B,) (float64): the table for integer t, and for fractional t the level
    sigma(t) that the sigma-space samplers use (log sigma linear between training timesteps)."""
    if not torch.is_floating_point(t):
        return schedule.alphas_cumprod[t.cpu()]
    sigma = DiscreteSchedule(schedule).t_to_sigma(t.detach().cpu().double())
    return 1.0 / (1.0 + sigma**2)


def reimpose_known(denoise_fn: DenoiseFn, schedule: Schedule, x_known: Tensor, noise: Tensor,
                   mask: Tensor) -> DenoiseFn:
    """``denoise_fn`` seeing q_sample(x_known, t, noise) wherever ``mask`` is 0 (mask: 1 = fill, 0 = keep;
    broadcastable to x_known, e.g. (B, 1, h, w))."""
    keep = 1.0 - mask

    def fn(x: Tensor, t: Tensor) -> Tensor:
        # float64 on the CPU: cast before moving (some backends have no float64)
        a = abar_at(schedule, t).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype).to(x.device)
        known = a.sqrt() * x_known + (1 - a).sqrt() * noise  # (B, ...) at level t
        return denoise_fn(mask.to(x) * x + keep.to(x) * known, t)

    return fn


def paste_known(x: Tensor, x_known: Tensor, mask: Tensor) -> Tensor:
    """x where ``mask`` is 1, x_known elsewhere."""
    return mask.to(x) * x + (1.0 - mask.to(x)) * x_known

"""The simplified denoising objective L_simple (Ho et al. 2020, eq. 14; LDM paper eq. 2)."""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.parameterization import q_sample, target
from ldmkit.diffusion.schedule import Schedule

DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def diffusion_loss(schedule: Schedule, denoise_fn: DenoiseFn, x0: Tensor, *, t: Tensor | None = None,
                   noise: Tensor | None = None, generator: noise_lib.Generators = None,
                   loss_type: Literal["l2", "l1"] = "l2",
                   snr_gamma: float | None = None,
                   snr_weighting: Literal["min_snr", "min_snr_plus_one"] = "min_snr") -> tuple[Tensor, dict[str, Any]]:
    """Per-sample loss E_{t, eps} || target - denoise_fn(x_t, t) ||, averaged over non-batch dims.

    1. t ~ U{0, ..., T-1} and eps ~ N(0, I), unless given (drawn from ``generator``).
    2. x_t = q_sample(x0, t, eps) (DDPM eq. 4).
    3. The output of ``denoise_fn(x_t, t)`` is compared, in float32 or wider, with the target of
       the schedule's parameterization (eps, x0 or v): squared error for "l2", absolute for "l1".
    4. Optional Min-SNR-gamma weighting (Hang et al. 2023, eq. 8): each sample's loss is scaled so
       that it equals min(SNR(t), gamma) times the x0-space error, which stops the easy low-noise
       steps from dominating and speeds up convergence several-fold in short runs. ``snr_weighting``
       "min_snr_plus_one" uses SNR + 1 in place of SNR (see :func:`min_snr_weight`).

    Returns ``(loss (B,), info)`` where info holds ``t``, ``noise``, ``x_t``, ``output`` and ``target``.
    """
    if loss_type not in ("l2", "l1"):
        raise ConfigError(f"loss_type: expected l2 or l1, got {loss_type!r}")
    batch = x0.shape[0]
    if t is None:
        t = noise_lib.randint(schedule.timesteps, batch, generator, device=x0.device)
    if noise is None:
        noise = noise_lib.randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    output = denoise_fn(x_t, t)
    tgt = target(schedule, x0, noise, t)
    wide = torch.promote_types(torch.promote_types(output.dtype, tgt.dtype), torch.float32)
    diff = output.to(wide) - tgt.to(wide)
    per_elem = diff.square() if loss_type == "l2" else diff.abs()
    loss = per_elem.reshape(batch, -1).mean(dim=1)
    if snr_gamma is not None:
        loss = loss * min_snr_weight(schedule, t, snr_gamma, plus_one=snr_weighting == "min_snr_plus_one").to(loss.dtype)
    return loss, {"t": t, "noise": noise, "x_t": x_t, "output": output, "target": tgt}


def min_snr_weight(schedule: Schedule, t: Tensor, gamma: float, plus_one: bool = False) -> Tensor:
    """Per-sample Min-SNR weight for the schedule's parameterization (float64 -> caller's dtype).

    With SNR = abar / (1 - abar): eps-loss * min(SNR, g) / SNR, x0-loss * min(SNR, g),
    v-loss * min(SNR, g) / (SNR + 1) all equal min(SNR, g) * ||x0 - x0_hat||^2, whose weight on the x0
    error vanishes with the SNR at high noise.

    ``plus_one`` puts SNR + 1 in the place of SNR (diffusers' scripts do so for the v objective): the
    weight is then min(SNR + 1, g) * ||x0 - x0_hat||^2, at least 1 (for g >= 1) at every noise level, so
    the x0 estimate is trained where abar is near 0 too; for v that is v-loss * min(SNR + 1, g) / (SNR + 1),
    which is 1 at high noise.
    """
    if plus_one and schedule.parameterization == "eps":
        # eps-loss = SNR x0-loss: a weight >= 1 on the x0 error would be 1 / SNR, ~7,000 at the last step
        raise ConfigError("snr_weighting min_snr_plus_one: needs the v (or x0) parameterization, not eps")
    abar = schedule.alphas_cumprod.to(t.device)[t]
    snr = abar / (1.0 - abar)
    clipped = (snr + 1.0 if plus_one else snr).clamp(max=gamma)
    if schedule.parameterization == "eps":  # eps-loss = SNR x0-loss
        return clipped / snr
    if schedule.parameterization == "v":    # v-loss = (SNR + 1) x0-loss
        return clipped / (snr + 1.0)
    return clipped

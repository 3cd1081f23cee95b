"""Sigma-space samplers (Karras et al. 2022; k-diffusion's ``sampling.py``) for discrete-schedule models.

Same signature as :mod:`.samplers`: ``sampler(denoise_fn, noise, schedule, *, steps, generator,
callback, **options)``, where ``denoise_fn(x_t, t)`` is the model on its training schedule and
:class:`~.discrete.DiscreteDenoiser` turns it into D(x, sigma). The ODE is dx/dsigma = (x - D(x, sigma)) / sigma.

Conventions shared with DDIM and PLMS:

- ``noise`` is the start in the DDPM (variance-preserving) convention, x_T ~ N(0, I); in sigma space
  that is x = noise * sqrt(1 + sigma_max^2) = x_T / sqrt(abar_T), exactly as diffusers' "leading"
  spacing and its DPM-Solver do (diffusers' Euler / Heun with "linspace" / "trailing" start from
  noise * sigma_max instead: pass noise * sigma_max / sqrt(1 + sigma_max^2) to reproduce them).
- ``x_init`` + ``strength`` (img2img, SDEdit): the last min(int(N strength), N) of the N steps run,
  from x = x_init + sigma noise (the q_sample of x_init at that level); strength 0 returns x_init.
- ``callback(step_index, t, x, x0_pred)`` gets x back in the DDPM convention (x / sqrt(1 + sigma^2)).
- Options: ``spacing`` (see :mod:`.timesteps`, default "linspace" as k-diffusion), ``karras``
  (Karras rho=7 sigmas between the same end points), ``steps_offset`` ("leading" only) and
  ``quantize`` (round the model's timestep to an integer).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.discrete import DiscreteDenoiser
from ldmkit.diffusion.schedule import Schedule
from ldmkit.diffusion.timesteps import steps_to_run

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
Callback = Optional[Callable[[int, float, Tensor, Tensor], None]]


class _Run:
    """The set-up every sigma-space sampler shares: the denoiser, the sigmas, the start x."""

    def __init__(self, denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, steps: int | None,
                 spacing: str, karras: bool, steps_offset: int, quantize: bool,
                 x_init: Tensor | None, strength: float, callback: Callback) -> None:
        self.model = DiscreteDenoiser(denoise_fn, schedule, quantize)
        sigmas = self.model.discrete.sigmas_for(50 if steps is None else steps, spacing, karras, steps_offset)
        if x_init is None:
            if strength != 1.0:
                raise ConfigError("strength: only used with x_init (img2img)")
            self.x = noise * math.sqrt(1.0 + sigmas[0] ** 2)
        else:
            k = steps_to_run(len(sigmas) - 1, strength)
            sigmas = sigmas[len(sigmas) - 1 - k:]
            self.x = x_init + float(sigmas[0]) * noise if k > 0 else x_init.clone()
        self.sigmas: list[float] = [float(s) for s in sigmas]
        self.callback = callback

    def __len__(self) -> int:
        return len(self.sigmas) - 1

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        return self.model(x, sigma)

    def report(self, i: int, x: Tensor, denoised: Tensor) -> None:
        if self.callback is not None:
            t = float(self.model.discrete.sigma_to_t(self.sigmas[i]))
            self.callback(i, t, x / math.sqrt(1.0 + self.sigmas[i + 1] ** 2), denoised)


def sample_euler(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                 generator: noise_lib.Generators = None, callback: Callback = None, spacing: str = "linspace",
                 karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                 x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the
    second-order correction); one model call per step. Deterministic: ``generator`` is unused."""
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x = run.x
    for i in range(len(run)):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        d = (x - denoised) / sigma  # dx/dsigma
        x = x + d * (sigma_next - sigma)
        run.report(i, x, denoised)
    return x


def check_eta(eta: float) -> None:
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ConfigError(f"eta: must be >= 0, got {eta}")


def dpm_solver_1(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> Tensor:
    """DPM-Solver++(1) (= DDIM) from sigma to sigma_next with the x_0 estimate ``denoised``:
    (sigma_next / sigma) x - expm1(-h) D, h = log(sigma / sigma_next); the limit D at sigma_next = 0."""
    if sigma_next == 0:
        return denoised
    return (sigma_next / sigma) * x - math.expm1(math.log(sigma_next / sigma)) * denoised


def ancestral_loop(run: "_Run", eta: float, draw: noise_lib.NoiseFn | None,
                   step: Callable[[Tensor, float, float, Tensor], Tensor]) -> Tensor:
    """The loop of the ancestral samplers: per step the model's D, a deterministic ``step(x, sigma, sigma_down, D)``
    to sigma_down, then noise of std sigma_up from ``draw`` (none into sigma = 0, none without ``draw``)."""
    x = run.x
    for i in range(len(run)):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = step(x, sigma, sigma_down, denoised)
        if draw is not None and sigma_next > 0:
            x = x + sigma_up * draw(sigma, sigma_next)
        run.report(i, x, denoised)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): an ancestral step from sigma to sigma_next is a deterministic step to
    sigma_down plus fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2.
    eta = 1 matches the DDPM posterior variance (k-diffusion's ``get_ancestral_step``)."""
    if sigma_next == 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler_ancestral(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                           generator: noise_lib.Generators = None, callback: Callback = None,
                           eta: float = 1.0, spacing: str = "linspace", karras: bool = False,
                           steps_offset: int = 0, quantize: bool = False,
                           x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """Euler ancestral: an Euler step down to sigma_down, then noise of std sigma_up drawn from
    ``generator`` (one draw per step except the last, which adds none). ``eta`` scales sigma_up."""
    check_eta(eta)
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    draw = noise_lib.noise_source("gaussian", run.x, run.sigmas, generator)
    return ancestral_loop(run, eta, draw, lambda x, sigma, sigma_down, d: x + (x - d) / sigma * (sigma_down - sigma))


def sample_heun(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                generator: noise_lib.Generators = None, callback: Callback = None, spacing: str = "linspace",
                karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1, no churn): an Euler step, then the
    average of the slopes at both ends; the last step (to sigma = 0) is plain Euler. 2N - 1 model calls."""
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x = run.x
    for i in range(len(run)):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - run.denoise(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        run.report(i, x, denoised)
    return x


def sample_dpmpp_2m(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                    generator: noise_lib.Generators = None, callback: Callback = None, spacing: str = "linspace",
                    karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                    x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), in k-diffusion's sigma-space form.

    With lambda = -log sigma and h = lambda_next - lambda: x_next = (sigma_next / sigma) x - expm1(-h) D',
    where D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_prev / h (the multistep midpoint correction);
    the first step and the last one (to sigma = 0) are first order (D' = D_i), as diffusers'
    ``DPMSolverMultistepScheduler`` (solver_order=2, midpoint, final_sigmas_type="zero"). One call per step.
    """
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x = run.x
    old_denoised: Tensor | None = None
    for i in range(len(run)):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        d = denoised
        if sigma_next > 0 and old_denoised is not None:
            r = (math.log(run.sigmas[i - 1]) - math.log(sigma)) / (math.log(sigma) - math.log(sigma_next))
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = dpm_solver_1(x, sigma, sigma_next, d)  # D itself at sigma = 0 (the exponential integrator's limit)
        old_denoised = denoised
        run.report(i, x, denoised)
    return x


SIGMA_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler, "euler_ancestral": sample_euler_ancestral, "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}

__all__ = ["SIGMA_SAMPLERS", "ancestral_step", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral",
           "sample_heun"]

"""Stochastic and single-step DPM-Solver++ samplers in sigma space: 2M SDE, 3M SDE, 2S ancestral, 2S.

Same signature and conventions as :mod:`.samplers_k` (start in the DDPM convention, ``spacing`` / ``karras`` /
``x_init`` + ``strength``, callbacks in the DDPM convention). With lambda = -log sigma, h = lambda_next - lambda:

- ``dpmpp_2m_sde`` / ``dpmpp_3m_sde``: the data-prediction SDE solvers of Lu et al. ("DPM-Solver++", sec. 4 and
  diffusers' ``sde-dpmsolver++``; k-diffusion's ``sample_dpmpp_2m_sde`` / ``_3m_sde``). ``eta`` scales the noise
  (1: the reverse SDE, 0: the probability-flow ODE, i.e. DPM++ 2M / 3M).
- ``dpmpp_2s_ancestral``: k-diffusion's single-step DPM-Solver++(2S) to sigma_down through the lambda midpoint, then
  ancestral noise of std sigma_up (the webui's "DPM++ 2S a"); 2 model calls per step, 1 for the last.
- ``dpmpp_2s``: diffusers' ``DPMSolverSinglestepScheduler`` (order 2): the run's own grid points pair up, the odd one
  of each pair is the intermediate point; one call per grid point.

``noise_type``: "gaussian" draws a fresh N(0, I) per step from ``generator`` (diffusers' convention); "brownian" reads
the increments of one Brownian motion in sigma per sample (torchsde's ``BrownianInterval``, seeded from the
generator, k-diffusion's ``BrownianTreeNoiseSampler``), so a seed gives nearly the same image at 20 and 40 steps.

Note on diffusers' 3M SDE (0.42): its D2 coefficient is (1 - e^{-2h} - 2h) / (2h)^2 - 0.5, which tends to -1 as
h -> 0 where the exact integral of the quadratic term is O(h) (k-diffusion's, used here, ends in + 0.5); the
tests compare against diffusers with that one sign changed.
"""
from __future__ import annotations

import math

from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.noise import noise_source
from ldmkit.diffusion.samplers_k import Callback, DenoiseFn, _Run, ancestral_loop, check_eta, dpm_solver_1
from ldmkit.diffusion.schedule import Schedule

def sample_dpmpp_2m_sde(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                        generator: noise_lib.Generators = None, callback: Callback = None, eta: float = 1.0,
                        solver: str = "midpoint", noise_type: str = "gaussian", spacing: str = "linspace",
                        karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                        x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) SDE: x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D'
    + sigma_next sqrt(1 - e^{-2 eta h}) z, with D' the multistep correction of ``solver`` ("midpoint":
    D + (D - D_prev) / (2r), "heun": (D - D_prev) / r weighted by phi_2); first and last steps first order,
    as diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")``. One call per step."""
    return _multistep_sde(2, denoise_fn, noise, schedule, steps, generator, callback, eta, solver, noise_type,
                          spacing, karras, steps_offset, quantize, x_init, strength)


def sample_dpmpp_3m_sde(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                        generator: noise_lib.Generators = None, callback: Callback = None, eta: float = 1.0,
                        solver: str = "midpoint", noise_type: str = "gaussian", lower_order_final: bool = True,
                        spacing: str = "linspace",
                        karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                        x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``): the third-order multistep extrapolation of
    the data prediction through the SDE's exponential integrator. Orders 1, 2, 3, 3, ...; the last step (to
    sigma = 0) first order, and with ``lower_order_final`` (diffusers' rule) the one before it second order
    when the run has fewer than 15 steps. The defaults are diffusers' (``DPMSolverMultistepScheduler``, order 3);
    k-diffusion's is ``solver="heun", lower_order_final=False`` (its second-order warm-up step). One call per step."""
    return _multistep_sde(3, denoise_fn, noise, schedule, steps, generator, callback, eta, solver, noise_type,
                          spacing, karras, steps_offset, quantize, x_init, strength, lower_order_final)


def _multistep_sde(order: int, denoise_fn, noise, schedule, steps, generator, callback, eta, solver, noise_type,
                   spacing, karras, steps_offset, quantize, x_init, strength, lower_order_final=True) -> Tensor:
    check_eta(eta)
    if solver not in ("midpoint", "heun"):
        raise ConfigError(f"solver: expected midpoint or heun, got {solver!r}")
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x, n = run.x, len(run)
    draw = noise_source(noise_type, x, run.sigmas, generator) if eta > 0 else None
    history: list[tuple[Tensor, float]] = []  # (denoised, h of the step that followed it), newest last
    for i in range(n):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised  # the exponential integrator's limit at sigma = 0
        else:
            h = math.log(sigma) - math.log(sigma_next)
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            use = min(order, len(history) + 1)
            if lower_order_final and order == 3 and n < 15 and i == n - 2:
                use = min(use, 2)
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if use == 3:
                (d_2, h_2), (d_1, h_1) = history[-2], history[-1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif use == 2:
                d_1, h_1 = history[-1]
                d = (denoised - d_1) / (h_1 / h)
                x = x + (-0.5 * math.expm1(-h_eta) if solver == "midpoint" else phi_2) * d
            if draw is not None:
                x = x + draw(sigma, sigma_next) * (sigma_next * math.sqrt(-math.expm1(-2 * h * eta)))
            history = [*history[-1:], (denoised, h)]
        run.report(i, x, denoised)
    return x


def _singlestep_2(x: Tensor, sigma: float, sigma_mid: float, sigma_next: float, denoised: Tensor,
                  run: _Run) -> tuple[Tensor, Tensor, Tensor]:
    """DPM-Solver++(2S) from sigma to sigma_next through sigma_mid: (x_next, x_mid, the x_0 at sigma_mid), with
    D' = D + (D_mid - D) / (2 r), r = (lambda_mid - lambda) / h (diffusers' singlestep midpoint update)."""
    r = math.log(sigma / sigma_mid) / math.log(sigma / sigma_next)
    x_mid = dpm_solver_1(x, sigma, sigma_mid, denoised)
    denoised_mid = run.denoise(x_mid, sigma_mid)
    return dpm_solver_1(x, sigma, sigma_next, denoised + (denoised_mid - denoised) / (2 * r)), x_mid, denoised_mid


def sample_dpmpp_2s_ancestral(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                              generator: noise_lib.Generators = None, callback: Callback = None, eta: float = 1.0,
                              noise_type: str = "gaussian", spacing: str = "linspace", karras: bool = False,
                              steps_offset: int = 0, quantize: bool = False, x_init: Tensor | None = None,
                              strength: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral (k-diffusion's ``sample_dpmpp_2s_ancestral``): per step a second-order
    single step to sigma_down through the midpoint in lambda, then noise of std sigma_up (``eta`` scales it; 0
    gives the deterministic DPM++ 2S); the last step, to sigma = 0, is x = D. 2N - 1 model calls."""
    check_eta(eta)
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    draw = noise_source(noise_type, run.x, run.sigmas, generator) if eta > 0 else None

    def step(x: Tensor, sigma: float, sigma_down: float, denoised: Tensor) -> Tensor:
        if sigma_down == 0:
            return denoised
        sigma_mid = math.sqrt(sigma * sigma_down)  # the midpoint in lambda = -log sigma
        return _singlestep_2(x, sigma, sigma_mid, sigma_down, denoised, run)[0]

    return ancestral_loop(run, eta, draw, step)


def sample_dpmpp_2s(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                    generator: noise_lib.Generators = None, callback: Callback = None, spacing: str = "linspace",
                    karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                    x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """diffusers' ``DPMSolverSinglestepScheduler`` (solver_order 2, dpmsolver++, midpoint): grid points 0-1,
    2-3, ... form second-order single steps (point 2k + 1 is the intermediate of the step from 2k to 2k + 2); a
    first-order step where no pair is left and for the last step (to sigma = 0). One call per grid point;
    deterministic (``generator`` unused)."""
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x, n, i = run.x, len(run), 0
    while i < n:
        sigma = run.sigmas[i]
        denoised = run.denoise(x, sigma)
        if i + 2 <= n - 1:  # a pair whose end is not the final step
            x, x_mid, denoised_mid = _singlestep_2(x, sigma, run.sigmas[i + 1], run.sigmas[i + 2], denoised, run)
            run.report(i, x_mid, denoised)
            run.report(i + 1, x, denoised_mid)
            i += 2
        else:
            x = dpm_solver_1(x, sigma, run.sigmas[i + 1], denoised)
            run.report(i, x, denoised)
            i += 1
    return x

__all__ = ["sample_dpmpp_2m_sde", "sample_dpmpp_2s", "sample_dpmpp_2s_ancestral",
           "sample_dpmpp_3m_sde"]

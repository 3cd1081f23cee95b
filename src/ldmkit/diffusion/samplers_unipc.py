"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), data-prediction form, in sigma space; diffusers' ``UniPCMultistepScheduler`` (predict_x0=True).

Each step: the model at the current point gives D; the UniC corrector refines the current point with it (the
corrector's order is the previous predictor's; no extra model call), then the UniP predictor of order p
extrapolates D and the earlier outputs to the next point. With lambda = -log sigma, h = lambda_next - lambda_0:

    x_next = (sigma_next / sigma_0) x - expm1(-h) D_0 - B(h) sum_k rho_k (D_k - D_0) / r_k,
    r_k = (lambda_k - lambda_0) / h,  B(h) = -h ("bh1") or expm1(-h) ("bh2"),

with rho solving the order conditions R rho = b (R_ik = r_k^(i-1), b_i = i! phi_{i+1}(-h) / B(h); the paper's
eq. 11, diffusers' ``multistep_uni_p_bh_update``; rho = 1/2 for the 2nd-order predictor and the 1st-order
corrector). The last step, to sigma = 0, is x = D of the corrected point (the integrator's limit; diffusers'
"bh1" with final_sigmas_type="zero" returns NaN there). ``lower_order_final``: the order is at most the number of
steps left (diffusers' default). Options: ``order`` 1-3 (default 2, diffusers' and the paper's choice for guided
sampling; 3 for unconditional models), ``variant`` "bh1" / "bh2", ``corrector`` (False: UniP alone).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.samplers_k import Callback, DenoiseFn, _Run
from ldmkit.diffusion.schedule import Schedule


def unipc_rhos(rks: list[float], h: float, variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(rho of the predictor, rho of the corrector, B(h)) for the ratios ``rks`` (r_1 .. r_{p-1}) of a step
    of order p = len(rks) + 1 and log-SNR step h (float64)."""
    p = len(rks) + 1
    hh = -h  # data prediction
    b_h = hh if variant == "bh1" else math.expm1(hh)
    r = np.array([*rks, 1.0])
    R = np.stack([r ** (i - 1) for i in range(1, p + 1)])  # (p, p)
    b, h_phi_k, factorial = [], math.expm1(hh) / hh - 1, 1
    for i in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    b = np.array(b)
    rho_p = np.array([0.5]) if p == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if p > 2 else np.zeros(0))
    rho_c = np.array([0.5]) if p == 1 else np.linalg.solve(R, b)
    return rho_p, rho_c, b_h


def sample_unipc(denoise_fn: DenoiseFn, noise: Tensor, schedule: Schedule, *, steps: int | None = 50,
                 generator: noise_lib.Generators = None, callback: Callback = None, order: int = 2,
                 variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True,
                 spacing: str = "linspace", karras: bool = False, steps_offset: int = 0, quantize: bool = False,
                 x_init: Tensor | None = None, strength: float = 1.0) -> Tensor:
    """UniPC-p (see the module doc). One model call per step; deterministic (``generator`` unused)."""
    if order not in (1, 2, 3):
        raise ConfigError(f"order: UniPC takes 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ConfigError(f"variant: expected bh1 or bh2, got {variant!r}")
    run = _Run(denoise_fn, noise, schedule, steps, spacing, karras, steps_offset, quantize, x_init, strength, callback)
    x, n = run.x, len(run)
    outs: list[tuple[Tensor, float]] = []  # (D, lambda) of the points visited, newest last
    x_last, last_order = None, 0
    for i in range(n):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        if corrector and x_last is not None:
            x = _update(x_last, outs, run.sigmas[i - 1], sigma, last_order, variant, corrected_by=denoised)
        outs = [*outs, (denoised, -math.log(sigma))][-order:]
        p = min(order, n - i) if lower_order_final else order
        p = min(p, len(outs))
        x_last, last_order = x, p
        x = denoised if sigma_next == 0 else _update(x, outs, sigma, sigma_next, p, variant)
        run.report(i, x, denoised)
    return x


def _update(x: Tensor, outs: list[tuple[Tensor, float]], sigma: float, sigma_next: float, p: int, variant: str,
            corrected_by: Tensor | None = None) -> Tensor:
    """UniP of order p from (x, sigma) with the outputs ``outs`` (the newest at sigma) to sigma_next, or, given
    ``corrected_by`` (the model's D at sigma_next), UniC of order p: the same step with that D as the last term."""
    d0, lam0 = outs[-1]
    h = -math.log(sigma_next) - lam0
    earlier = outs[-p:-1][::-1]  # D_1, ... D_{p-1}: the newest earlier output first
    rks = [(lam - lam0) / h for _, lam in earlier]
    rho_p, rho_c, b_h = unipc_rhos(rks, h, variant)
    out = (sigma_next / sigma) * x - math.expm1(-h) * d0
    rho = rho_p if corrected_by is None else rho_c[:-1]
    terms = [float(w) * (d - d0) / rk for w, (d, _), rk in zip(rho, earlier, rks)]
    if corrected_by is not None:
        terms.append(float(rho_c[-1]) * (corrected_by - d0))
    return out - b_h * sum(terms[1:], terms[0]) if terms else out


__all__ = ["sample_unipc", "unipc_rhos"]

"""PLMS: the original LDM's pseudo linear multi-step sampler (Liu et al. 2022, "Pseudo numerical
methods for diffusion models on manifolds", F-PLMS), as ``ldm/models/diffusion/plms.py``.

Each step is a DDIM (eta = 0) step whose eps is a linear multistep (Adams-Bashforth) combination of
the current and up to three previous model outputs:

    1 previous: (3 e_t - e_1) / 2,   2: (23 e_t - 16 e_1 + 5 e_2) / 12,
    3 or more:  (55 e_t - 59 e_1 + 37 e_2 - 9 e_3) / 24,

and the first step is a pseudo improved Euler step (e_t + e_next) / 2, with e_next evaluated at the
DDIM step's result and the next timestep: N + 1 model calls for N steps. diffusers'
``PNDMScheduler(skip_prk_steps=True)`` is the same sampler.

``order`` caps the multistep order (4: the original; 2: at most one previous output). Adams-Bashforth
of order 4 is stable only for step x slope up to ~0.3 on the negative real axis (order 2: 1, DDIM's
Euler step: 2), and classifier-free guidance multiplies the slope of a sharp conditional by ~(1 + w):
at high guidance the 4th-order combination overshoots and blotches the image (docs/results.md, issue 23).
"""
from __future__ import annotations

from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion import noise as noise_lib
from ldmkit.diffusion.parameterization import model_output_to_eps_x0, q_sample
from ldmkit.diffusion.samplers import Callback, DenoiseFn, _coef, _ddim_alphas, _full_t, ddim_timesteps, start_step
from ldmkit.diffusion.schedule import Schedule

# Adams-Bashforth weights for [e_t, e_1, e_2, e_3] by the number of previous outputs.
_AB = {1: ((3, -1), 2), 2: ((23, -16, 5), 12), 3: ((55, -59, 37, -9), 24)}


def sample_plms(denoise_fn: DenoiseFn, x_T: Tensor, schedule: Schedule, *, steps: int | None = 50,
                generator: noise_lib.Generators = None, callback: Callback = None, spacing: str = "uniform",
                x_init: Tensor | None = None, strength: float = 1.0, order: int = 4) -> Tensor:
    """PLMS on the DDIM timesteps of ``spacing`` (default: the original's "uniform"). Deterministic:
    ``generator`` is unused. ``x_init`` / ``strength``: img2img, as :func:`~.samplers.sample_ddim`.
    ``order`` (2, 3 or 4): the highest Adams-Bashforth order used (see the module docstring)."""
    if order not in (2, 3, 4):
        raise ConfigError(f"order: PLMS takes 2, 3 or 4, got {order!r}")
    ts = ddim_timesteps(schedule.timesteps, 50 if steps is None else steps, spacing)
    a, a_prev = _ddim_alphas(schedule, ts)
    k = start_step(len(ts), x_T, x_init, strength)
    if k and a[k - 1] == 0:  # its steps read x_0 from eps, which says nothing about x_0 at zero signal
        raise ConfigError(f"plms: the run starts at t = {int(ts[k - 1])}, where this zero-terminal-SNR schedule has "
                          "no signal; use ddim, ddpm, euler, euler_a, heun or dpmpp_2m, or a spacing that starts "
                          "below the last timestep")
    if k == 0:
        return x_init.clone()
    x = x_T if x_init is None else q_sample(schedule, x_init, _full_t(ts[k - 1], x_T), x_T)

    def eps_at(x_t: Tensor, t: int) -> Tensor:
        tt = _full_t(t, x_t)
        return model_output_to_eps_x0(schedule, denoise_fn(x_t, tt), x_t, tt)[0]

    def ddim_step(x_t: Tensor, eps: Tensor, i: int) -> tuple[Tensor, Tensor]:
        # x0_pred from level a[i], then the eta = 0 DDIM update to level a_prev[i] (DDIM eq. 12)
        x0 = (x_t - _coef((1 - a[i]).sqrt(), x_t) * eps) / _coef(a[i].sqrt(), x_t)
        return _coef(a_prev[i].sqrt(), x_t) * x0 + _coef((1 - a_prev[i]).sqrt(), x_t) * eps, x0

    old_eps: list[Tensor] = []  # previous model outputs, most recent last
    for step_index, i in enumerate(range(k - 1, -1, -1)):
        e_t = eps_at(x, int(ts[i]))
        if not old_eps:
            # pseudo improved Euler: average the slopes at both ends of a DDIM step
            x_next, _ = ddim_step(x, e_t, i)
            e_prime = (e_t + eps_at(x_next, int(ts[max(i - 1, 0)]))) / 2
        else:
            weights, denom = _AB[len(old_eps)]
            e_prime = sum(w * e for w, e in zip(weights, [e_t, *old_eps[::-1]])) / denom
        x, x0 = ddim_step(x, e_prime, i)
        old_eps = (old_eps + [e_t])[-(order - 1):]
        if callback is not None:
            callback(step_index, int(ts[i]), x, x0)
    return x

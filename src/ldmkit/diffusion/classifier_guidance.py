"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion models beat GANs", sec. 4.2, eq. 14 / Algorithm 2):
steer a trained model with the gradient of a noise-aware classifier, without retraining it.

With eps = -sqrt(1 - abar_t) grad log p(x_t), the model of p(x_t | y) ∝ p(x_t) p(y | x_t)^s predicts

    eps' = eps - s sqrt(1 - abar_t) grad_{x_t} log p(y | x_t, t).

This is applied as a wrapper of ``denoise_fn(x_t, t)``, the one place every sampler calls the model:
the sigma-space samplers reach it through :class:`~.discrete.DiscreteDenoiser` with the DDPM-convention
x_t and a (possibly fractional) timestep, so one wrapper covers all of them. Wrapped around
:func:`~.guidance.cfg_denoise` it guides the classifier-free-guided prediction. For x0 / v models the
change of eps is carried over to their output (both are affine in eps for a fixed x_t).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ldmkit.config import ConfigError
from ldmkit.diffusion.editing import abar_at
from ldmkit.diffusion.schedule import Schedule

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
ClassifierFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,)) -> logits (B, K)


def classifier_grad(classifier_fn: ClassifierFn, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """grad_x log p(labels | x, t) (B, ...), each sample's gradient of its own log-probability.

    Computed with autograd enabled even inside ``torch.no_grad`` sampling; log-softmax in at least float32.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier_fn(x_in, t)  # (B, K)
        log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        # samples are independent, so the gradient of the sum is each sample's own gradient
        selected = log_p[torch.arange(len(labels), device=log_p.device), labels.to(log_p.device)].sum()
        (grad,) = torch.autograd.grad(selected, x_in)
    return grad.to(x.dtype)


def eps_shift_to_output(delta_eps: Tensor, abar: Tensor, parameterization: str) -> Tensor:
    """The change of the model output (eps, x0 or v) that changes its eps by ``delta_eps`` at fixed x_t.

    eps: the same; v = (eps - sqrt(1 - a) x_t) / sqrt(a): delta / sqrt(a);
    x0 = (x_t - sqrt(1 - a) eps) / sqrt(a): -sqrt(1 - a) delta / sqrt(a).
    """
    if parameterization == "eps":
        return delta_eps
    if parameterization == "v":
        return delta_eps / abar.sqrt()
    if parameterization == "x0":
        return -(1 - abar).sqrt() / abar.sqrt() * delta_eps
    raise ConfigError(f"parameterization: expected eps, x0 or v, got {parameterization!r}")


def classifier_guided(denoise_fn: DenoiseFn, schedule: Schedule, classifier_fn: ClassifierFn, labels: Tensor,
                      scale: float) -> DenoiseFn:
    """``denoise_fn`` whose eps is moved by -scale sqrt(1 - abar_t) grad log p(labels | x_t, t).

    ``labels`` (B,) are the target classes of the batch's samples; ``scale == 0`` returns ``denoise_fn``
    unchanged (no classifier call). abar_t is the table's for integer t and the sigma-space level for
    fractional t (see :func:`~.editing.abar_at`).
    """
    if scale == 0:
        return denoise_fn

    def fn(x: Tensor, t: Tensor) -> Tensor:
        out = denoise_fn(x, t)  # (B, ...) eps, x0 or v
        # float64 on the CPU: cast before moving (some backends have no float64)
        a = abar_at(schedule, t).reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype).to(x.device)  # (B, 1, ...)
        grad = classifier_grad(classifier_fn, x, t, labels)  # (B, ...)
        delta_eps = -scale * (1 - a).sqrt() * grad
        return out + eps_shift_to_output(delta_eps, a, schedule.parameterization).to(out.dtype)

    return fn

"""Classifier-free guidance (Ho & Salimans 2021, eq. 6) as a wrapper producing a denoise_fn.

The guided prediction is out_u + s * (out_c - out_u), i.e. eq. 6 with s = 1 + w. Because eps, x0 and v are all affine in
the model output for fixed (x_t, t), mixing raw outputs is valid for every parameterization.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from ldmkit.config import ConfigError

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]
DenoiseFn = Callable[[Tensor, Tensor], Tensor]


def concat_cond(a: Any, b: Any, key: str = "cond") -> Any:
    """Concatenate two conditioning objects along dim 0, recursively.

    Leaves are tensors (concatenated) or None (both must be None); containers are dicts with the
    same keys or lists / tuples of the same length.
    """
    if a is None or b is None:
        if a is not None or b is not None:
            raise ValueError(f"{key}: one of cond / uncond is None and the other is not")
        return None
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ValueError(f"{key}: cond keys {sorted(a)} differ from uncond keys {sorted(b)}")
        return {k: concat_cond(a[k], b[k], f"{key}.{k}") for k in a}
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(concat_cond(x, y, f"{key}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    raise ValueError(f"{key}: cannot batch cond of type {type(a).__name__} with uncond of type {type(b).__name__}")


def rescale_guided(guided: Tensor, cond_out: Tensor, rescale: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, "Common diffusion noise schedules and sample steps are flawed",
    eq. 15-16): scale each sample's guided output to the standard deviation of its conditional output, then
    mix ``rescale`` of that with ``1 - rescale`` of the plain guided output. Large guidance scales inflate the
    prediction's spread, which over-exposes the sample; this takes the inflation back while keeping the
    guided direction. Applied to the raw model output, as diffusers' ``guidance_rescale`` does."""
    dims = tuple(range(1, guided.ndim))
    std_c, std_g = cond_out.std(dim=dims, keepdim=True), guided.std(dim=dims, keepdim=True)
    return rescale * guided * (std_c / std_g) + (1 - rescale) * guided


def check_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """``guidance_interval`` (lo, hi) in model timesteps, lo <= hi, or None (guide at every step)."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_interval: expected two timesteps (lo, hi), got {interval!r}") from None
    if not 0 <= lo <= hi:
        raise ValueError(f"guidance_interval: expected 0 <= lo <= hi, got ({lo:g}, {hi:g})")
    return lo, hi


@dataclass
class GuidanceConfig:
    """A model's own guidance defaults, stored in its pipeline file and used when a caller does not choose.

    Measured per model (docs/results.md, issue 23): the demo's v-prediction model over-exposes at scale 5
    unless guidance is rescaled and left out of the highest-noise steps. Released SD checkpoints keep plain
    guidance (rescale 0, every step), as they were tuned with it."""
    rescale: float = 0.0                           # guidance_rescale (Lin et al. 2023), 0 = off
    interval: tuple[float, float] | None = None    # guide only at lo <= t <= hi (model timesteps); None = all

    def __post_init__(self) -> None:
        try:
            check_rescale(self.rescale)
            self.interval = check_interval(self.interval)
        except ValueError as e:
            raise ConfigError(str(e).removeprefix("guidance_")) from None  # from_dict adds "guidance."


def check_rescale(rescale: float) -> float:
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale: expected a number in [0, 1], got {rescale}")
    return rescale


def cfg_denoise(model_fn: ModelFn, cond: Any, uncond: Any, scale: float, rescale: float = 0.0,
                interval: tuple[float, float] | None = None) -> DenoiseFn:
    """A ``denoise_fn(x, t)`` running ``model_fn(x, t, cond)`` with classifier-free guidance.

    With ``scale == 1`` the unconditional half is skipped: one call on the batch, returning
    exactly the conditional output. Otherwise one call on a doubled batch [uncond; cond] (the
    original's ordering) gives out_u + scale * (out_c - out_u), with ``rescale`` > 0 passed through
    :func:`rescale_guided`. ``interval`` = (lo, hi) guides only where lo <= t <= hi and returns the
    conditional output elsewhere (Kynkaenniemi et al. 2024, "Applying guidance in a limited interval"):
    at the highest noise levels guidance pushes every sample towards an exaggerated class mean before
    its layout is chosen (less variety, over-exposure), at the lowest it changes little but sharpens.
    """
    check_rescale(rescale)
    interval = check_interval(interval)
    plain = lambda x, t: model_fn(x, t, cond)  # noqa: E731
    if scale == 1:
        return plain
    both = concat_cond(uncond, cond)

    def guided_fn(x: Tensor, t: Tensor) -> Tensor:
        out_u, out_c = model_fn(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        guided = out_u + scale * (out_c - out_u)
        return rescale_guided(guided, out_c, rescale) if rescale > 0 else guided

    if interval is None:
        return guided_fn

    def denoise_fn(x: Tensor, t: Tensor) -> Tensor:  # x: (B, C, h, w), t: (B,)
        inside = (t >= interval[0]) & (t <= interval[1])
        if not bool(inside.any()):
            return plain(x, t)  # one conditional call, as at scale 1
        out = guided_fn(x, t)
        if bool(inside.all()):
            return out
        return torch.where(inside.view(-1, *[1] * (x.ndim - 1)), out, plain(x, t))

    return denoise_fn

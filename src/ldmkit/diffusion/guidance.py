"""Classifier-free guidance (Ho & Salimans 2021, eq. 6) as a wrapper producing a denoise_fn.

The guided prediction is out_u + s * (out_c - out_u), i.e. eq. 6 with s = 1 + w. Because eps, x0 and v are all affine in
the model output for fixed (x_t, t), mixing raw outputs is valid for every parameterization.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

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


def cfg_denoise(model_fn: ModelFn, cond: Any, uncond: Any, scale: float) -> DenoiseFn:
    """A ``denoise_fn(x, t)`` running ``model_fn(x, t, cond)`` with classifier-free guidance.

    With ``scale == 1`` the unconditional half is skipped: one call on the batch, returning
    exactly the conditional output. Otherwise one call on a doubled batch [uncond; cond] (the
    original's ordering) gives out_u + scale * (out_c - out_u).
    """
    if scale == 1:
        return lambda x, t: model_fn(x, t, cond)
    both = concat_cond(uncond, cond)

    def denoise_fn(x: Tensor, t: Tensor) -> Tensor:
        out_u, out_c = model_fn(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)

    return denoise_fn
